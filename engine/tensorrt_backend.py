"""TensorRT backend (TensorRT >= 10 Python API): engine builder and runtime. Imported lazily.

Builder: a strongly typed network parsed from the bundle's ONNX graph, so the graph's own types
hold (fp16 matmuls, fp32 LayerNorm and softmax between explicit casts; int8 from the Q/DQ graph)
instead of the builder choosing per layer, which is what wrecks CLIP ViT accuracy under plain
``--fp16`` (NVIDIA/TensorRT#2709). One explicit optimisation profile (min, opt, max batch); a timing
cache file in the bundle makes rebuilds fast. The engine file is keyed by GPU name, TensorRT
version, precision and profile, stored in the bundle, and never built at run time.

Runtime: ``execute_async_v3`` on torch's current CUDA stream with device tensors allocated by torch
(``set_tensor_address``), so no pycuda is needed and preprocessing, inference and the copy back are
ordered on one stream.

Not run on the project's machines (no GPU, and TensorRT's wheels download from NVIDIA's index).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from affectstream.engine.compiled import chunks
from affectstream.engine.files import ENGINES_DIR
from affectstream.engine.models import ModelSpec
from affectstream.engine.onnx_export import VISUAL_INPUT, VISUAL_OUTPUT
from affectstream.engine.precisions import SUPPORTED, Backend
from affectstream.engine.preprocess import Preprocessor, TensorEncoder
from affectstream.errors import ConfigError, MissingExtraError, ModelError

log = logging.getLogger(__name__)

TIMING_CACHE = f"{ENGINES_DIR}/timing.cache"
TRT_PRECISIONS = SUPPORTED[Backend.TENSORRT]


def require_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError:
        raise MissingExtraError("tensorrt", "tensorrt", "the TensorRT backend") from None
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < 10:
        raise ConfigError(f"TensorRT {tensorrt.__version__} is too old: the backend needs TensorRT >= 10")
    return tensorrt


@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile: smallest, typical and largest batch the engine accepts."""

    min: int = 1
    opt: int = 8
    max: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(f"--batch needs 1 <= MIN <= OPT <= MAX, got {self.min},{self.opt},{self.max}")

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        try:
            low, opt, high = (int(part) for part in text.split(","))
        except ValueError:
            raise ConfigError(f"--batch takes MIN,OPT,MAX (e.g. 1,8,16), got {text!r}") from None
        return cls(low, opt, high)

    def label(self) -> str:
        return f"b{self.min}-{self.opt}-{self.max}"


def engine_key(gpu_name: str, trt_version: str, precision: str, profile: BatchProfile) -> str:
    """A file-name-safe key: an engine only runs on the GPU model and TensorRT version it was built for."""
    if precision not in TRT_PRECISIONS:
        raise ConfigError(f"TensorRT precision {precision!r} is not one of {TRT_PRECISIONS}")
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    version = re.sub(r"[^0-9.]+", "", trt_version) or "unknown"
    return f"{gpu}_trt{version}_{precision}_{profile.label()}"


def key_prefix(gpu_name: str, trt_version: str, precision: str) -> str:
    """The part of ``engine_key`` that must match at run time (any profile will do)."""
    return engine_key(gpu_name, trt_version, precision, BatchProfile()).rsplit("_", 1)[0] + "_"


def current_gpu(device: str) -> str:
    return str(torch.cuda.get_device_name(torch.device(device)))


def find_engine(bundle_path: Path, manifest: dict[str, Any], precision: str, device: str) -> Path | None:
    """The bundle's engine for this GPU, this TensorRT and ``precision``, or None."""
    trt = require_tensorrt()
    prefix = key_prefix(current_gpu(device), trt.__version__, precision)
    entries = manifest.get("engines", {}).get("tensorrt", {})
    for key, entry in sorted(entries.items()):
        plan = bundle_path / entry.get("file", "")
        if key.startswith(prefix) and plan.is_file():
            return plan
    return None


def build_plan(onnx_path: Path, plan_path: Path, precision: str, profile: BatchProfile, image_size: int,
               timing_cache: Path, workspace_gb: float = 4.0) -> dict[str, Any]:
    """Build and write a serialized engine; return what the manifest records about it."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    # Strongly typed: no FP16/INT8 builder flags; the graph's types decide.
    optimisation = builder.create_optimization_profile()
    shape = (3, image_size, image_size)
    optimisation.set_shape(VISUAL_INPUT, (profile.min, *shape), (profile.opt, *shape), (profile.max, *shape))
    config.add_optimization_profile(optimisation)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    seconds = time.perf_counter() - started
    log.info("TensorRT engine %s built in %.0f s", plan_path.name, seconds)
    return {"precision": precision, "profile": [profile.min, profile.opt, profile.max],
            "tensorrt": trt.__version__, "build_seconds": round(seconds, 1), "source": onnx_path.name}


_TORCH_TYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16}


class TensorRtEncoder(TensorEncoder):
    """``ImageEncoder`` running a serialized TensorRT engine on torch's CUDA stream."""

    name = "tensorrt"

    def __init__(self, engine: Any, preprocessor: Preprocessor, spec: ModelSpec, device: str,
                 batch_range: tuple[int, int], plan: Path) -> None:
        super().__init__(preprocessor, spec, device)
        self.engine = engine
        self.context = engine.create_execution_context()
        self.min_batch, self.max_batch = batch_range
        self.plan = plan

    @classmethod
    def from_plan(cls, plan: Path, spec: ModelSpec, device: str) -> TensorRtEncoder:
        trt = require_tensorrt()
        if not device.startswith("cuda"):
            raise ConfigError("the TensorRT backend needs a CUDA device")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with torch.cuda.device(torch.device(device)):
            engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise ModelError(f"TensorRT cannot load {plan} (another GPU or TensorRT version?): rebuild it "
                             f"with `affectstream build-engine` on this machine")
        dtype = _TORCH_TYPES.get(engine.get_tensor_dtype(VISUAL_INPUT).name)
        if dtype is None:
            raise ModelError(f"{plan} takes {engine.get_tensor_dtype(VISUAL_INPUT)} pixels; expected fp32/fp16")
        low, _, high = engine.get_tensor_profile_shape(VISUAL_INPUT, 0)
        preprocessor = Preprocessor.from_spec(spec, device=device, dtype=dtype)
        log.info("tensorrt encoder: %s on %s (batch %d..%d)", plan.name, device, low[0], high[0])
        return cls(engine, preprocessor, spec, device, (int(low[0]), int(high[0])), plan)

    def encode_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        parts = [self._run(pixels[start:stop]) for start, stop in chunks(pixels.shape[0], self.max_batch)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _run(self, pixels: torch.Tensor) -> torch.Tensor:
        rows = pixels.shape[0]
        if rows < self.min_batch:
            pixels = torch.cat([pixels, pixels[-1:].expand(self.min_batch - rows, -1, -1, -1)])
        pixels = pixels.contiguous()
        output = torch.empty((pixels.shape[0], self.embed_dim), dtype=torch.float32, device=pixels.device)
        self.context.set_input_shape(VISUAL_INPUT, tuple(pixels.shape))
        self.context.set_tensor_address(VISUAL_INPUT, pixels.data_ptr())
        self.context.set_tensor_address(VISUAL_OUTPUT, output.data_ptr())
        stream = torch.cuda.current_stream(pixels.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ModelError("TensorRT execution failed (see its log)")
        return output[:rows]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.spec.name, "device": self.device, "engine": self.plan.name}
