"""Per-dimension standardisation of features, folded into the LSTM's input weights after training.

CLIP features are unit vectors that share a large common direction; what differs between frames of
one face is small beside it (with the tiny-random encoder, the spread within a video is about a fifth
of the spread between videos). Training on standardised features ``(x - mean) / std`` conditions the
problem far better. The runtime feeds raw encoder features to ``TemporalLSTM``, so the scaling is
folded into the first layer's input weights afterwards, which is exact:

    W (x - m) / s + b  =  (W / s) x + (b - (W / s) m)

and the exported module needs no extra preprocessing step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from affectstream.engine.lstm import TemporalLSTM
from affectstream.training.featureset import SequenceFeatures

MIN_STD = 1e-6


@dataclass(frozen=True)
class FeatureScaler:
    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)

    @classmethod
    def fit(cls, sequences: Sequence[SequenceFeatures]) -> FeatureScaler:
        frames = np.concatenate([s.features for s in sequences]).astype(np.float64)
        return cls(frames.mean(axis=0).astype(np.float32), np.maximum(frames.std(axis=0), MIN_STD).astype(np.float32))

    @classmethod
    def identity(cls, dim: int) -> FeatureScaler:
        return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32))

    def transform(self, features: np.ndarray) -> np.ndarray:
        return ((np.asarray(features, np.float32) - self.mean) / self.std).astype(np.float32)

    def apply(self, sequences: Sequence[SequenceFeatures]) -> tuple[SequenceFeatures, ...]:
        return tuple(dataclasses.replace(s, features=self.transform(s.features)) for s in sequences)


def fold_into_lstm(module: TemporalLSTM, scaler: FeatureScaler) -> TemporalLSTM:
    """Make ``module`` take raw features: rescale the first layer's input weights (both directions)."""
    mean = torch.from_numpy(scaler.mean)
    inverse_std = torch.from_numpy(1.0 / scaler.std)
    with torch.no_grad():
        for suffix in ("l0", "l0_reverse"):
            weight = getattr(module.lstm, f"weight_ih_{suffix}", None)
            if weight is None:
                continue
            weight.mul_(inverse_std.to(weight.dtype))
            bias = getattr(module.lstm, f"bias_ih_{suffix}")
            bias.sub_(weight @ mean.to(weight.dtype))
    return module


def fold_into_linear(layer: torch.nn.Linear, scaler: FeatureScaler) -> torch.nn.Linear:
    """Make a first ``Linear`` layer take raw features (the per-frame classifier's), as above."""
    with torch.no_grad():
        layer.weight.mul_(torch.from_numpy(1.0 / scaler.std).to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.sub_(layer.weight @ torch.from_numpy(scaler.mean).to(layer.weight.dtype))
    return layer
