"""Choosing and building an image-encoder backend: torch eager, torch compiled, ONNX Runtime, TensorRT.

``choose_backend`` is pure: it takes what is installed and built (``BackendFacts``) and the user's
request, and returns the backend, the precision and why. ``--backend auto`` picks, among what is
ready without building anything at run time, the fastest measured on that kind of device
(docs/benchmarks.md): on a GPU a TensorRT engine built for it, else torch.compile (CUDA graphs); on a
CPU the bundle's ONNX graph (its int8 variant where build-engine made one), else torch eager.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectstream.engine.files import VISUAL_INT8_ONNX, VISUAL_ONNX
from affectstream.engine.interfaces import ImageEncoder
from affectstream.engine.models import ModelSpec
from affectstream.engine.precisions import PRECISIONS, SUPPORTED, Backend
from affectstream.errors import ConfigError, MissingExtraError

log = logging.getLogger(__name__)





@dataclass(frozen=True)
class BackendFacts:
    """What this machine and the bundle offer; gathered by ``gather_facts``, given by tests."""

    on_cuda: bool
    onnxruntime: bool = False
    tensorrt: bool = False
    visual_onnx: bool = False  # the bundle holds visual.onnx
    int8_onnx: bool = False  # ... and visual.int8.onnx, which passed its int8 parity check
    trt_engine: bool = False  # ... and a TensorRT engine for this GPU, TensorRT version and precision


@dataclass(frozen=True)
class BackendChoice:
    backend: Backend
    precision: str
    reason: str


def parse_backend(value: str | Backend) -> Backend:
    try:
        return Backend(value)
    except ValueError:
        raise ConfigError(f"backend {value!r} is not one of {[b.value for b in Backend]}") from None


def choose_backend(requested: str | Backend, precision: str, facts: BackendFacts) -> BackendChoice:
    """The backend and precision to run; raises ``ConfigError`` for combinations that cannot run."""
    backend = parse_backend(requested)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {PRECISIONS}")
    if backend is Backend.AUTO:
        return _auto(precision, facts)
    chosen = _default_precision(backend, facts) if precision == "auto" else precision
    if chosen not in SUPPORTED[backend]:
        raise ConfigError(f"--backend {backend.value} runs {'/'.join(SUPPORTED[backend])}, not {chosen}: "
                          f"pick another --precision or --backend")
    _check_ready(backend, chosen, facts)
    return BackendChoice(backend, chosen, "asked for")


def _default_precision(backend: Backend, facts: BackendFacts) -> str:
    if facts.on_cuda:
        return "fp16"
    if backend is Backend.ONNX and facts.int8_onnx:
        return "int8"  # build-engine made it on purpose and checked it
    return "fp32"


def _auto(precision: str, facts: BackendFacts) -> BackendChoice:
    if facts.on_cuda:
        wanted = "fp16" if precision == "auto" else precision
        if facts.tensorrt and facts.trt_engine and wanted in SUPPORTED[Backend.TENSORRT]:
            return BackendChoice(Backend.TENSORRT, wanted, "a TensorRT engine for this GPU is in the bundle")
        if wanted in SUPPORTED[Backend.COMPILE]:
            return BackendChoice(Backend.COMPILE, wanted, "CUDA: torch.compile with CUDA graphs")
        raise ConfigError(f"no backend runs {wanted} on this GPU without a TensorRT engine: build one with "
                          f"`affectstream build-engine BUNDLE --backend tensorrt --precision {wanted}`")
    onnx_ready = facts.onnxruntime and facts.visual_onnx
    if precision in ("auto", "int8") and onnx_ready and facts.int8_onnx:
        return BackendChoice(Backend.ONNX, "int8", "CPU: the bundle's int8 ONNX graph (fastest measured)")
    if precision == "int8":
        raise ConfigError("int8 needs an int8 graph in the bundle: run `affectstream build-engine BUNDLE "
                          "--backend onnx --precision int8` (and install affectstream[onnx])")
    if precision in ("auto", "fp32") and onnx_ready:
        return BackendChoice(Backend.ONNX, "fp32", "CPU: the bundle's ONNX graph")
    chosen = "fp32" if precision == "auto" else precision
    if chosen == "fp16":
        raise ConfigError("fp16 needs a CUDA device: use --precision fp32 or bf16 on CPU")
    return BackendChoice(Backend.TORCH, chosen, "CPU: torch eager (no ONNX graph built for this model)")


def _check_ready(backend: Backend, precision: str, facts: BackendFacts) -> None:
    if backend is Backend.ONNX and not facts.onnxruntime:
        raise MissingExtraError("onnxruntime", "onnx", "--backend onnx")
    if backend is Backend.ONNX and precision == "int8" and not facts.int8_onnx:
        raise ConfigError("no int8 graph in the bundle: run `affectstream build-engine BUNDLE --backend onnx "
                          "--precision int8` first")
    if backend is Backend.TENSORRT:
        if not facts.on_cuda:
            raise ConfigError("--backend tensorrt needs a CUDA GPU: use --backend onnx or torch on CPU")
        if not facts.tensorrt:
            raise MissingExtraError("tensorrt", "tensorrt", "--backend tensorrt")
        if not facts.trt_engine:
            raise ConfigError(f"no TensorRT engine for this GPU and {precision} in the bundle (engines are "
                              f"never built at run time): run `affectstream build-engine BUNDLE --backend "
                              f"tensorrt --precision {precision}` on this machine")
    if backend in (Backend.TORCH, Backend.COMPILE) and precision == "fp16" and not facts.on_cuda:
        raise ConfigError("fp16 needs a CUDA device: use --precision fp32 or bf16 on CPU")


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def gather_facts(device: str, bundle_path: Path | None, manifest: dict[str, Any] | None,
                 precision: str = "auto") -> BackendFacts:
    """Look at what is installed and what build-engine put in the bundle."""
    on_cuda = device.startswith("cuda")
    engines = (manifest or {}).get("engines", {})
    hashes = (manifest or {}).get("hashes", {})
    visual = bundle_path is not None and VISUAL_ONNX in hashes
    int8 = bundle_path is not None and VISUAL_INT8_ONNX in hashes and bool(
        engines.get("onnx-int8", {}).get("parity", {}).get("passed"))
    has_trt = installed("tensorrt")
    trt_engine = False
    if on_cuda and has_trt and bundle_path is not None:
        from affectstream.engine.tensorrt_backend import find_engine

        wanted = "fp16" if precision == "auto" else precision
        trt_engine = find_engine(bundle_path, manifest or {}, wanted, device) is not None
    return BackendFacts(on_cuda, installed("onnxruntime"), has_trt, visual, int8, trt_engine)


def build_encoder(choice: BackendChoice, spec: ModelSpec, device: str, model: Any | None = None,
                  bundle_path: Path | None = None, manifest: dict[str, Any] | None = None,
                  ort_config: Any | None = None) -> ImageEncoder:
    """The encoder for ``choice``; ``model`` (an open_clip model on ``device``) saves a rebuild.

    ``ort_config`` (an ``OrtConfig``) sets ONNX Runtime's threads and spinning.
    """
    from affectstream.engine.models import build_clip

    log.info("encoder backend: %s (%s): %s", choice.backend.value, choice.precision, choice.reason)
    if choice.backend is Backend.ONNX:
        from affectstream.engine.ort_backend import OrtEncoder

        return OrtEncoder.from_file(_onnx_path(choice.precision, spec, bundle_path, model), spec, device,
                                    choice.precision, ort_config)
    if choice.backend is Backend.TENSORRT:
        from affectstream.engine.tensorrt_backend import TensorRtEncoder, find_engine

        plan = find_engine(bundle_path, manifest or {}, choice.precision, device) if bundle_path else None
        if plan is None:
            raise ConfigError("no TensorRT engine for this GPU: run `affectstream build-engine` first")
        return TensorRtEncoder.from_plan(plan, spec, device)
    model = model if model is not None else build_clip(spec, device=device)
    if choice.backend is Backend.COMPILE:
        from affectstream.engine.compiled import CompileConfig, CompiledTorchEncoder

        # The buckets build-engine warmed (inductor's cache then has them), else the defaults.
        buckets = (manifest or {}).get("engines", {}).get("compile", {}).get("buckets")
        config = CompileConfig(buckets=tuple(buckets)) if buckets else CompileConfig()
        return CompiledTorchEncoder.from_model(model, spec, device, choice.precision, config)
    from affectstream.engine.encoder import TorchEncoder

    return TorchEncoder.from_model(model, spec, device, choice.precision)


def _onnx_path(precision: str, spec: ModelSpec, bundle_path: Path | None, model: Any | None) -> Path:
    name = VISUAL_INT8_ONNX if precision == "int8" else VISUAL_ONNX
    if bundle_path is not None and (bundle_path / name).is_file():
        return bundle_path / name
    # No bundle (a preset): export now, into a temporary directory that lives as long as the
    # process. Bundles keep theirs (build-engine), so that a run never pays for an export.
    from affectstream.engine.models import build_clip
    from affectstream.engine.onnx_export import export_visual

    log.warning("no %s built for %s: exporting it now (use a bundle and build-engine to skip this)",
                name, spec.name)
    directory = Path(tempfile.mkdtemp(prefix="affectstream-onnx-"))
    atexit.register(shutil.rmtree, directory, True)
    visual = (model if model is not None else build_clip(spec)).visual
    return export_visual(visual, spec.image_size, directory / VISUAL_ONNX)

