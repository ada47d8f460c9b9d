"""What ``affectstream build-engine`` does: export, quantise, build and check engines into a bundle.

Every file written is registered in the manifest's hashes (so a damaged copy fails at load) and
described under ``manifest["engines"]`` with its parity against torch fp32 on the same frames. A
build whose parity misses its bound raises ``ModelError`` and records nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affectstream.engine.bundle import ModelBundle, load_bundle, read_manifest, register_file
from affectstream.engine.bundle import write_manifest as _write_manifest
from affectstream.engine.encoder import TorchEncoder, resolve_device
from affectstream.engine.files import TEMPORAL_ONNX, VISUAL_FP16_ONNX, VISUAL_INT8_ONNX, VISUAL_ONNX
from affectstream.engine.models import ModelSpec, build_clip
from affectstream.engine.onnx_export import (
    ExportConfig,
    export_temporal_step,
    export_visual,
)
from affectstream.engine.parity import (
    FLOAT_BOUND,
    INT8_BOUND,
    ParityBound,
    ParityResult,
    compare,
    parity_frames,
    require,
)
from affectstream.engine.precisions import SUPPORTED, Backend
from affectstream.engine.tensorrt_backend import BatchProfile
from affectstream.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

BUILD_BACKENDS = ("onnx", "tensorrt", "compile")
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class BuildConfig:
    backend: str
    precision: str = "fp32"
    profile: BatchProfile = field(default_factory=BatchProfile)
    device: str = "auto"
    opset: int = 17
    parity_frames: int = 16

    def __post_init__(self) -> None:
        if self.backend not in BUILD_BACKENDS:
            raise ConfigError(f"build-engine --backend must be one of {BUILD_BACKENDS}, got {self.backend!r}")
        allowed = SUPPORTED[Backend(self.backend)]
        if self.precision not in allowed:
            raise ConfigError(f"--backend {self.backend} builds {'/'.join(allowed)}, not {self.precision}")


@dataclass
class _Context:
    """What every build step shares: the bundle, the model, the reference features."""

    bundle: ModelBundle
    spec: ModelSpec
    reference: TorchEncoder
    frames: list[np.ndarray]
    expected: np.ndarray
    engines: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    parity: list[ParityResult] = field(default_factory=list)


def build_engine(bundle_path: Path, config: BuildConfig,
                 calibration: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """Build what ``config`` asks into the bundle; return a report (files, parity) for the CLI."""
    bundle = load_bundle(bundle_path)
    spec = ModelSpec.from_manifest(bundle.manifest["backbone"])
    reference = TorchEncoder.from_model(build_clip(spec, device="cpu"), spec, "cpu", "fp32")
    frames = parity_frames(config.parity_frames, seed=7)
    ctx = _Context(bundle, spec, reference, frames, reference.encode(frames))
    if config.backend == "onnx":
        _build_onnx(ctx, config, calibration)
    elif config.backend == "tensorrt":
        _build_tensorrt(ctx, config, calibration)
    else:
        _build_compiled(ctx, config)
    for relative in ctx.files:
        register_file(bundle_path, relative)
    manifest = read_manifest(bundle_path)
    engines = manifest.setdefault("engines", {})
    for name, entry in ctx.engines.items():
        if name == "tensorrt":
            engines.setdefault("tensorrt", {}).update(entry)
        else:
            engines[name] = entry
    _write_manifest(bundle_path, manifest)
    return {"bundle": str(bundle_path), "backend": config.backend, "precision": config.precision,
            "files": ctx.files, "parity": [result.to_dict() for result in ctx.parity]}


def _check(ctx: _Context, what: str, features: np.ndarray, bound: ParityBound = FLOAT_BOUND) -> dict[str, Any]:
    result = require(compare(what, ctx.expected, features, bound))
    ctx.parity.append(result)
    log.info("%s: mean cosine %.6f, min %.6f vs torch fp32", what, result.mean_cosine, result.min_cosine)
    return result.to_dict()


def _ensure_visual_onnx(ctx: _Context, opset: int) -> Path:
    from affectstream.engine.ort_backend import OrtEncoder

    path = export_visual(ctx.reference.visual, ctx.spec.image_size, ctx.bundle.path / VISUAL_ONNX,
                         ExportConfig(opset=opset))
    parity = _check(ctx, "onnxruntime fp32", OrtEncoder.from_file(path, ctx.spec).encode(ctx.frames))
    ctx.files.append(VISUAL_ONNX)
    ctx.engines["onnx"] = {"file": VISUAL_ONNX, "opset": opset, "precision": "fp32", "parity": parity}
    return path


def _build_onnx(ctx: _Context, config: BuildConfig, calibration: Sequence[np.ndarray] | None) -> None:
    path = _ensure_visual_onnx(ctx, config.opset)
    if ctx.bundle.has_temporal:
        _export_temporal(ctx, config.opset)
    if config.precision == "int8":
        _quantize(ctx, path, calibration)


def _quantize(ctx: _Context, fp32_path: Path, calibration: Sequence[np.ndarray] | None) -> Path:
    from affectstream.engine.ort_backend import OrtEncoder, quantize_int8

    if not calibration:
        log.warning("no --calibration footage: calibrating int8 on synthetic frames; a few hundred "
                    "frames of real footage give better activation ranges")
        calibration = parity_frames(32, seed=1)
    with torch.inference_mode():
        batches = [ctx.reference.preprocessor(calibration[i : i + CALIBRATION_BATCH]).numpy()
                   for i in range(0, len(calibration), CALIBRATION_BATCH)]
    path = quantize_int8(fp32_path, ctx.bundle.path / VISUAL_INT8_ONNX, batches)
    encoder = OrtEncoder.from_file(path, ctx.spec, precision="int8")
    parity = _check(ctx, "onnxruntime int8", encoder.encode(ctx.frames), INT8_BOUND)
    ctx.files.append(VISUAL_INT8_ONNX)
    ctx.engines["onnx-int8"] = {"file": VISUAL_INT8_ONNX, "precision": "int8", "calibration_frames":
                                len(calibration), "parity": parity}
    return path


def _export_temporal(ctx: _Context, opset: int) -> None:
    from affectstream.engine.heads import LstmHead
    from affectstream.engine.ort_backend import OrtLstmHead

    module = ctx.bundle.temporal_module()
    path = export_temporal_step(module, ctx.bundle.path / TEMPORAL_ONNX, opset)
    exported = OrtLstmHead.from_file(path, module.config)
    reference = LstmHead(module)
    worst = 0.0
    ids = ["a", "b", "c"]
    for step in range(4):  # a few steps, so that the carried state is checked too
        features = ctx.expected[step : step + len(ids)]
        if len(features) < len(ids):
            break
        want, got = reference.step(ids, features), exported.step(ids, features)
        worst = max(worst, float(np.abs(want.scores - got.scores).max()),
                    float(np.abs(want.sentiment - got.sentiment).max()))
    if worst > 1e-4:
        raise ModelError(f"the exported LSTM step differs from torch by {worst:.2e}: report this with the bundle")
    ctx.files.append(TEMPORAL_ONNX)
    ctx.engines["onnx-temporal"] = {"file": TEMPORAL_ONNX, "opset": opset, "max_abs_diff": worst}


def _build_tensorrt(ctx: _Context, config: BuildConfig, calibration: Sequence[np.ndarray] | None) -> None:
    from affectstream.engine.tensorrt_backend import (
        ENGINES_DIR,
        TensorRtEncoder,
        current_gpu,
        engine_key,
        require_tensorrt,
    )

    trt = require_tensorrt()
    device = resolve_device(config.device)
    if not device.startswith("cuda"):
        raise ConfigError("TensorRT engines are built on the GPU they will run on: use --device cuda")
    source = _ensure_visual_onnx(ctx, config.opset)
    if config.precision == "fp16":
        source = export_visual(ctx.reference.visual, ctx.spec.image_size, ctx.bundle.path / VISUAL_FP16_ONNX,
                               ExportConfig(opset=config.opset, precision="fp16"))
        ctx.files.append(VISUAL_FP16_ONNX)
    elif config.precision == "int8":
        source = _quantize(ctx, source, calibration)
    key = engine_key(current_gpu(device), trt.__version__, config.precision, config.profile)
    relative = f"{ENGINES_DIR}/{key}.plan"
    plan = ctx.bundle.path / relative
    entry = _build_plan_entry(ctx, source, plan, config)
    encoder = TensorRtEncoder.from_plan(plan, ctx.spec, device)
    bound = INT8_BOUND if config.precision == "int8" else FLOAT_BOUND
    entry["parity"] = _check(ctx, f"tensorrt {config.precision}", encoder.encode(ctx.frames), bound)
    entry["file"] = relative
    entry["gpu"] = current_gpu(device)
    ctx.files.append(relative)
    ctx.engines["tensorrt"] = {key: entry}


def _build_plan_entry(ctx: _Context, source: Path, plan: Path, config: BuildConfig) -> dict[str, Any]:
    from affectstream.engine.tensorrt_backend import TIMING_CACHE, build_plan

    return build_plan(source, plan, config.precision, config.profile, ctx.spec.image_size,
                      ctx.bundle.path / TIMING_CACHE)


def _build_compiled(ctx: _Context, config: BuildConfig) -> None:
    from affectstream.engine.compiled import CompileConfig, CompiledTorchEncoder

    device = resolve_device(config.device)
    buckets = tuple(sorted({config.profile.min, config.profile.opt, config.profile.max}))
    encoder = CompiledTorchEncoder.from_model(build_clip(ctx.spec, device=device), ctx.spec, device,
                                              config.precision, CompileConfig(buckets=buckets, warm=False))
    seconds = encoder.warm()
    bound = FLOAT_BOUND
    parity = _check(ctx, f"torch.compile {config.precision}", encoder.encode(ctx.frames), bound)
    # The compiled kernels live in inductor's own on-disk cache (per user, per machine); the
    # manifest records the settings so that the runtime compiles the same buckets.
    ctx.engines["compile"] = {"precision": config.precision, "device": device, "buckets": list(buckets),
                              "warm_seconds": round(seconds, 1), "parity": parity}
