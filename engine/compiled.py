"""torch.compile backend: the vision tower compiled once per static batch bucket.

A batch of N frames runs in the smallest bucket >= N, padded with copies of its last frame (the
padding rows are dropped). Static shapes let inductor specialise its kernels and, on CUDA,
``mode="reduce-overhead"`` records each bucket as a CUDA graph, so a call is one graph launch.
Compiling happens on the first call of each bucket; ``warm()`` does it up front (build-engine and
the runtime call it before the first frame), and inductor's on-disk cache makes later processes
start faster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from affectstream.engine.encoder import TORCH_DTYPES, Precision, resolve_precision
from affectstream.engine.models import ModelSpec
from affectstream.engine.preprocess import Preprocessor, TensorEncoder
from affectstream.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class CompileConfig:
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    mode: str | None = None  # None: "reduce-overhead" (CUDA graphs) on CUDA, inductor's default on CPU
    warm: bool = True  # compile every bucket when the encoder is built

    def __post_init__(self) -> None:
        if not self.buckets or any(size < 1 for size in self.buckets):
            raise ConfigError(f"compile buckets must be positive batch sizes, got {self.buckets}")
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ConfigError(f"compile buckets must be increasing and distinct, got {self.buckets}")

    def mode_for(self, device: str) -> str | None:
        if self.mode is not None:
            return self.mode
        return "reduce-overhead" if device.startswith("cuda") else None


def bucket_for(size: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``size`` rows (``size`` must be <= the largest bucket)."""
    for bucket in buckets:
        if bucket >= size:
            return bucket
    raise ValueError(f"{size} rows exceed the largest bucket {buckets[-1]}")


def chunks(size: int, largest: int) -> list[tuple[int, int]]:
    """``(start, stop)`` slices of at most ``largest`` rows covering ``range(size)``."""
    return [(start, min(start + largest, size)) for start in range(0, size, largest)]


class CompiledTorchEncoder(TensorEncoder):
    """``ImageEncoder`` running a ``torch.compile``d vision tower in static batch buckets."""

    name = "compile"

    def __init__(self, compiled: Callable[[torch.Tensor], torch.Tensor], preprocessor: Preprocessor,
                 spec: ModelSpec, device: str, precision: Precision, config: CompileConfig) -> None:
        super().__init__(preprocessor, spec, device)
        self._compiled = compiled
        self.precision = precision
        self.config = config
        self._cuda_graphs = config.mode_for(device) == "reduce-overhead"

    @classmethod
    def from_model(cls, model: Any, spec: ModelSpec, device: str, precision: str | Precision = "auto",
                   config: CompileConfig | None = None) -> CompiledTorchEncoder:
        config = config or CompileConfig()
        chosen = resolve_precision(precision, device)
        dtype = TORCH_DTYPES[chosen]
        visual = model.visual.to(dtype=dtype).eval()

        def forward(pixels: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(visual(pixels).float(), dim=-1)

        compiled = torch.compile(forward, mode=config.mode_for(device), dynamic=False, fullgraph=False)
        encoder = cls(compiled, Preprocessor.from_spec(spec, device=device, dtype=dtype), spec, device,
                      chosen, config)
        if config.warm:
            encoder.warm()
        return encoder

    def warm(self) -> float:
        """Compile (or load from inductor's cache) every bucket; return the seconds it took."""
        started = time.perf_counter()
        size = self.image_size
        for bucket in self.config.buckets:
            pixels = torch.zeros((bucket, 3, size, size), dtype=self.preprocessor.dtype, device=self.device)
            for _ in range(2 if self._cuda_graphs else 1):  # CUDA graphs record on the second call
                self.encode_tensor(pixels)
        elapsed = time.perf_counter() - started
        log.info("torch.compile warmed buckets %s on %s in %.1f s", self.config.buckets, self.device, elapsed)
        return elapsed

    def encode_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        largest = self.config.buckets[-1]
        parts = [self._run_bucket(pixels[start:stop]) for start, stop in chunks(pixels.shape[0], largest)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _run_bucket(self, pixels: torch.Tensor) -> torch.Tensor:
        rows = pixels.shape[0]
        bucket = bucket_for(rows, self.config.buckets)
        if bucket > rows:
            pixels = torch.cat([pixels, pixels[-1:].expand(bucket - rows, -1, -1, -1)])
        with torch.inference_mode():
            if self._cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            # A CUDA graph reuses its output buffer on the next replay: copy the rows out.
            return self._compiled(pixels)[:rows].clone()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.spec.name, "device": self.device,
                "precision": self.precision.value, "buckets": list(self.config.buckets)}
