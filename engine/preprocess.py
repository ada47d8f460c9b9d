"""Batched image preprocessing on the encoder's device, matching open_clip's eval transform.

open_clip's transform works on one PIL image at a time: resize (shortest side to the model's size,
bicubic, antialiased), center crop, to [0, 1], normalise. Here the same steps run on whole batches of
uint8 RGB numpy frames. Frames stay uint8 until they are on the device (a quarter of the bytes to
copy), and frames of equal size are resized in one call, so a batch from a few cameras costs a few
kernel launches rather than one per frame.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from affectstream.errors import ConfigError

if TYPE_CHECKING:
    from affectstream.engine.models import ModelSpec

RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")


def resized_size(height: int, width: int, size: int, resize_mode: str) -> tuple[int, int]:
    """The (height, width) open_clip's transform resizes a frame to, before cropping or padding."""
    if resize_mode == "squash":
        return (size, size)
    short, long = min(height, width), max(height, width)
    if resize_mode == "shortest":
        # torchvision Resize(int): the short side becomes `size`, the long side is truncated.
        new_short, new_long = size, int(size * long / short)
    else:
        # open_clip's ResizeKeepRatio(longest=1): one ratio for both sides, rounded.
        ratio = long / size
        new_short, new_long = round(short / ratio), round(long / ratio)
    return (new_short, new_long) if height <= width else (new_long, new_short)


class Preprocessor:
    """uint8 ``HxWx3`` RGB frames (any sizes) → ``(N, 3, S, S)`` normalised tensor on ``device``."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation {interpolation!r} is not one of {INTERPOLATIONS}")
        if resize_mode not in RESIZE_MODES:
            raise ConfigError(f"resize mode {resize_mode!r} is not one of {RESIZE_MODES}")
        self.image_size = image_size
        self.interpolation = interpolation
        self.resize_mode = resize_mode
        self.device = torch.device(device)
        self.dtype = dtype
        # Normalisation folded into one multiply-add on 0..255 values: (x/255 - mean)/std.
        std_tensor = torch.tensor(std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_tensor)).view(1, 3, 1, 1).to(self.device)
        self._shift = (-torch.tensor(mean, dtype=torch.float32) / std_tensor).view(1, 3, 1, 1).to(self.device)

    @classmethod
    def from_spec(cls, spec: Any, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Preprocessor:
        """From a :class:`affectstream.engine.models.ModelSpec` (the settings its weights expect)."""
        return cls(spec.image_size, spec.mean, spec.std, spec.interpolation, spec.resize_mode, device, dtype)

    def __call__(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        size = self.image_size
        out = torch.empty((len(images), 3, size, size), dtype=self.dtype, device=self.device)
        for shape, indices in _group_by_shape(images).items():
            batch = np.stack([images[i] for i in indices]) if len(indices) > 1 else images[indices[0]][None]
            out[torch.tensor(indices, device=self.device)] = self._process_group(batch, shape).to(self.dtype)
        return out

    def _process_group(self, batch: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
        target = resized_size(shape[0], shape[1], self.image_size, self.resize_mode)
        pixels = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
        pixels = pixels.permute(0, 3, 1, 2).float()
        pixels = self._resize(pixels, target)
        pixels = _center_crop_or_pad(pixels, self.image_size)
        return pixels * self._scale + self._shift

    def _resize(self, pixels: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
        """PIL's resampling: a horizontal pass, then a vertical one, each rounded to uint8 levels.

        One 2-D call differs from PIL by up to 7 levels on detailed images (PIL clips the bicubic
        overshoot between its passes); two passes match it to within one level.
        """
        height, width = pixels.shape[-2:]
        if width != target[1]:
            pixels = self._interpolate(pixels, (height, target[1]))
        if height != target[0]:
            pixels = self._interpolate(pixels, target)
        return pixels

    def _interpolate(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        resized = F.interpolate(
            pixels, size=size, mode=self.interpolation, align_corners=False, antialias=True
        )
        return resized.round_().clamp_(0.0, 255.0)


def _center_crop_or_pad(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """open_clip's center_crop_or_pad: pad a side shorter than ``size`` with black, then center crop."""
    height, width = pixels.shape[-2:]
    if height < size or width < size:
        pad_w, pad_h = max(0, size - width), max(0, size - height)
        pixels = F.pad(pixels, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        height, width = pixels.shape[-2:]
    # torchvision's center_crop offsets.
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return pixels[:, :, top : top + size, left : left + size]


def _group_by_shape(images: Sequence[np.ndarray]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"frame {index} is {image.shape} {image.dtype}: expected HxWx3 uint8 RGB")
        groups.setdefault((image.shape[0], image.shape[1]), []).append(index)
    return groups


class TensorEncoder(abc.ABC):
    """Shared ``encode`` of the backends: preprocess on the device, run ``encode_tensor``, time both.

    Subclasses call ``__init__`` with what every backend has and implement ``encode_tensor``; the
    pipeline reads ``last_stage_ms`` after each call for its per-stage latencies.
    """

    def __init__(self, preprocessor: Preprocessor, spec: ModelSpec, device: str) -> None:
        self.preprocessor = preprocessor
        self.spec = spec
        self.device = device
        self.embed_dim = spec.embed_dim
        self.image_size = spec.image_size
        self.last_stage_ms: dict[str, float] = {}

    def encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, embed_dim)`` float32 features of unit L2 norm, one row per frame."""
        if len(images) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        started = time.perf_counter()
        with torch.inference_mode():
            pixels = self.preprocessor(images)
            preprocessed = time.perf_counter()
            features = self.encode_tensor(pixels).cpu().numpy()
        # On CUDA the preprocess figure only covers queuing its kernels; encode then includes their run.
        self.last_stage_ms = {"preprocess": (preprocessed - started) * 1e3,
                              "encode": (time.perf_counter() - preprocessed) * 1e3}
        return features

    @abc.abstractmethod
    def encode_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        """Features of an already preprocessed ``(N, 3, S, S)`` batch on the device."""
