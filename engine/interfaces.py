"""The two seams of the engine: image encoders and temporal heads.

The runtime (``affectstream.stream``) and training both talk to these protocols only, so backends
(torch eager, torch compiled, ONNX Runtime, TensorRT) and heads (zero-shot, LSTM) swap freely.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ImageEncoder(Protocol):
    """Turns a batch of uint8 RGB frames (any size; each ``HxWx3``) into L2-normalised features.

    Frames stay uint8 until they reach the encoder's device; preprocessing (resize, center crop,
    normalise) matches open_clip's own transform for the model.
    """

    name: str  # backend name, e.g. "torch", "onnxruntime"
    embed_dim: int
    image_size: int
    device: str

    @property
    def last_stage_ms(self) -> Mapping[str, float]:
        """Per-stage times of the last ``encode`` call in ms (e.g. preprocess, encode); empty when the
        encoder does not split its time (the caller then times the call as a whole)."""
        ...

    def encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Return ``(N, embed_dim)`` float32 features, each of unit L2 norm."""
        ...


@dataclass(frozen=True, slots=True)
class HeadOutput:
    """Per-row outputs of a head: six emotion scores in [0, 1] and a sentiment in [-1, 1]."""

    scores: np.ndarray  # (N, len(EMOTIONS)) float32
    sentiment: np.ndarray  # (N,) float32


@dataclass(frozen=True)
class EventThresholds:
    """Onset/offset thresholds that fit a model's scores: a softmax over seven classes rarely passes
    the 0.6 that suits a sigmoid head. A model's descriptor or bundle manifest may state its own."""

    onset: float
    offset: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.offset <= self.onset <= 1.0:
            raise ValueError(f"event thresholds need 0 <= offset <= onset <= 1, got {self.offset}, {self.onset}")


class HeadKind(str, enum.Enum):
    """The temporal heads a bundle or the command line can name (a head's ``name`` is one of these)."""

    AUTO = "auto"  # the LSTM where the bundle has temporal weights, else zero-shot
    LSTM = "lstm"
    ZERO_SHOT = "zero-shot"


@runtime_checkable
class TemporalHead(Protocol):
    """Maps features to estimates, one step per sampled frame, keeping state per stream."""

    name: str

    def step(self, stream_ids: Sequence[str], features: np.ndarray) -> HeadOutput:
        """Advance each listed stream by one step; ``features`` is ``(N, D)``, row i for stream i.

        A stream id may appear at most once per call.
        """
        ...

    def reset(self, stream_id: str) -> None:
        """Forget the state of one stream (on a stream restart or reconnect)."""
        ...
