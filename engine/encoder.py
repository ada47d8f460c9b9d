"""The PyTorch image encoder: open_clip's vision tower behind the ``ImageEncoder`` protocol."""

from __future__ import annotations

import enum
import logging
from typing import Any

import torch

from affectstream.engine.models import ModelSpec, build_clip
from affectstream.engine.preprocess import Preprocessor, TensorEncoder
from affectstream.errors import ConfigError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


class Precision(str, enum.Enum):
    AUTO = "auto"  # fp16 on CUDA, fp32 on CPU
    FP32 = "fp32"
    FP16 = "fp16"  # CUDA only: CPU half-precision kernels are slow or missing
    BF16 = "bf16"  # CUDA, or CPUs with bf16 matrix units (AVX512-BF16/AMX), where it is several times faster


TORCH_DTYPES = {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` where a GPU is visible, else ``cpu``; ``cuda:N`` is accepted as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = device.split(":", 1)[0]
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not one of {DEVICES} (or cuda:N)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU: use --device cpu")
    return device


def resolve_precision(precision: str | Precision, device: str) -> Precision:
    try:
        chosen = Precision(precision)
    except ValueError:
        raise ConfigError(f"precision {precision!r} is not one of {[p.value for p in Precision]}") from None
    on_cuda = device.startswith("cuda")
    if chosen is Precision.AUTO:
        return Precision.FP16 if on_cuda else Precision.FP32
    if chosen is Precision.FP16 and not on_cuda:
        raise ConfigError("fp16 needs a CUDA device: use --precision fp32 (or auto) on CPU")
    return chosen


class TorchEncoder(TensorEncoder):
    """Encodes batches of uint8 RGB frames with an open_clip vision tower, eagerly in PyTorch."""

    name = "torch"

    def __init__(
        self,
        model_visual: torch.nn.Module,
        preprocessor: Preprocessor,
        spec: ModelSpec,
        device: str,
        precision: Precision = Precision.FP32,
    ) -> None:
        super().__init__(preprocessor, spec, device)
        self.visual = model_visual
        self.precision = precision

    @classmethod
    def from_spec(
        cls, spec: ModelSpec, device: str = "auto", precision: str | Precision = "auto"
    ) -> TorchEncoder:
        """Build the model, keep only its vision tower, cast it to the chosen precision."""
        device = resolve_device(device)
        return cls.from_model(build_clip(spec, device=device), spec, device, precision)

    @classmethod
    def from_model(
        cls, model: Any, spec: ModelSpec, device: str, precision: str | Precision = "auto"
    ) -> TorchEncoder:
        """Wrap the vision tower of an already built open_clip model (already on ``device``)."""
        chosen = resolve_precision(precision, device)
        dtype = TORCH_DTYPES[chosen]
        # The text tower is dropped here; text embeddings are computed once, elsewhere (engine.text).
        visual = model.visual.to(dtype=dtype).eval()
        preprocessor = Preprocessor.from_spec(spec, device=device, dtype=dtype)
        log.info("torch encoder: %s on %s (%s)", spec.name, device, chosen.value)
        return cls(visual, preprocessor, spec, device, chosen)

    def encode_tensor(self, preprocessed: torch.Tensor) -> torch.Tensor:
        """Features of an already preprocessed ``(N, 3, S, S)`` batch on the device (benchmarks)."""
        with torch.inference_mode():
            features = self.visual(preprocessed).float()
            return torch.nn.functional.normalize(features, dim=-1)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.spec.name, "device": self.device,
                "precision": self.precision.value, "embed_dim": self.embed_dim}
