"""Parity checks: every backend is compared with torch fp32 on the same frames, in one place.

A backend's features must point the same way as the reference's: the cosine of each pair of rows
is computed, and both its mean and its minimum must clear a bound. Floating-point backends (ONNX
Runtime fp32, TensorRT fp16 strongly typed, torch compiled, bf16) share ``FLOAT_BOUND``; int8
quantisation loses more and states its own, looser ``INT8_BOUND``.

The frames are synthetic but image-like (smooth gradients, shapes, a little noise, several sizes),
deterministic from a seed, so a check gives the same answer on every machine and needs no dataset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from affectstream.errors import ConfigError, ModelError


@dataclass(frozen=True)
class ParityBound:
    """Least mean and least minimum cosine similarity a backend must reach against the reference."""

    mean: float
    minimum: float

    def __post_init__(self) -> None:
        if not (-1.0 <= self.minimum <= self.mean <= 1.0):
            raise ConfigError(f"parity bound needs -1 <= minimum <= mean <= 1, got {self}")


FLOAT_BOUND = ParityBound(mean=0.999, minimum=0.995)
INT8_BOUND = ParityBound(mean=0.99, minimum=0.97)


@dataclass(frozen=True)
class ParityResult:
    """How close a backend came; ``passed`` says whether it cleared ``bound``."""

    what: str
    frames: int
    mean_cosine: float
    min_cosine: float
    bound: ParityBound

    @property
    def passed(self) -> bool:
        return self.mean_cosine >= self.bound.mean and self.min_cosine >= self.bound.minimum

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "frames": self.frames, "mean_cosine": round(self.mean_cosine, 6),
                "min_cosine": round(self.min_cosine, 6), "bound": asdict(self.bound), "passed": self.passed}


def row_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair of rows of two ``(N, D)`` arrays."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise ModelError(f"cannot compare features of shapes {reference.shape} and {candidate.shape}: "
                         f"the backends were built from different models")
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return np.asarray((reference * candidate).sum(axis=1) / np.maximum(norms, 1e-12))


def compare(what: str, reference: np.ndarray, candidate: np.ndarray, bound: ParityBound = FLOAT_BOUND
            ) -> ParityResult:
    cosines = row_cosines(reference, candidate)
    if not np.isfinite(cosines).all():
        return ParityResult(what, len(cosines), float("nan"), float("nan"), bound)
    return ParityResult(what, len(cosines), float(cosines.mean()), float(cosines.min()), bound)


def require(result: ParityResult) -> ParityResult:
    """Raise ``ModelError`` when ``result`` missed its bound; return it otherwise."""
    if not result.passed:
        raise ModelError(
            f"{result.what} does not match torch fp32: mean cosine {result.mean_cosine:.5f} (needs "
            f">= {result.bound.mean}), min {result.min_cosine:.5f} (needs >= {result.bound.minimum}) over "
            f"{result.frames} frames. Use another backend or precision, or rebuild with build-engine"
        )
    return result


def parity_frames(count: int = 16, seed: int = 0) -> list[np.ndarray]:
    """``count`` deterministic, image-like uint8 RGB frames of a few sizes (both orientations)."""
    if count < 1:
        raise ConfigError(f"parity needs at least one frame, got {count}")
    rng = np.random.default_rng(seed)
    sizes = [(240, 320), (360, 480), (224, 224), (480, 270)]
    return [_frame(rng, *sizes[index % len(sizes)]) for index in range(count)]


def _frame(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for channel in range(3):
        angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        wave = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) / rng.uniform(20, 80) + phase)
        image[..., channel] = 128 + 90 * wave
    for _ in range(3):  # a few flat rectangles: edges, like objects in a scene
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        image[top : top + height // 3, left : left + width // 3] = rng.uniform(0, 255, size=3)
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)
