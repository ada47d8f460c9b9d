"""The seeds' baselines on the same features as the LSTM.

- Zero-shot (the 000 seed's section 5.3): CLIP's per-frame scores against the class text embeddings
  (softmax over the six), averaged per segment, then the dynamic threshold: every score below a
  fraction of the segment's highest is zeroed and the rest count as present.
- A per-frame classifier on frozen features (the 004 seed's classifier role): a small MLP trained on
  single frames, its frame probabilities averaged per segment. It sees no temporal context.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from affectstream.engine.heads import apply_dynamic_threshold, softmax, unit_rows
from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError
from affectstream.training.batching import Target, step_targets
from affectstream.training.featureset import SequenceFeatures
from affectstream.training.metrics import multilabel_metrics

DEFAULT_DYNAMIC_THRESHOLD = 0.5  # the seed names no value; half the top score is the CLI's suggestion


# ----------------------------------------------------------------------------------------- zero-shot


def zero_shot_segment_scores(
    sequences: Sequence[SequenceFeatures], class_embeddings: np.ndarray, logit_scale: float
) -> np.ndarray:
    """``(N, 6)``: per-frame zero-shot probabilities averaged over each segment's frames."""
    classes = unit_rows(class_embeddings)
    return np.stack([
        softmax(logit_scale * unit_rows(s.features) @ classes.T).mean(axis=0) for s in sequences
    ]).astype(np.float32) if sequences else np.zeros((0, len(EMOTIONS)), np.float32)


def zero_shot_baseline(
    sequences: Sequence[SequenceFeatures], class_embeddings: np.ndarray, logit_scale: float,
    ratio: float = DEFAULT_DYNAMIC_THRESHOLD,
) -> dict[str, Any]:
    """The seed's baseline metrics: accuracy, recall and precision after the dynamic threshold.

    AUC is computed on the averaged scores before thresholding (the seed reports none for it).
    """
    scores = zero_shot_segment_scores(sequences, class_embeddings, logit_scale)
    present = apply_dynamic_threshold(scores, ratio) > 0
    labels = np.stack([s.labels for s in sequences])
    metrics = multilabel_metrics(labels, scores, predictions=present)
    metrics["dynamic_threshold"] = ratio
    metrics["emotions_per_segment"] = np.bincount(present.sum(axis=1), minlength=len(EMOTIONS) + 1).tolist()
    return metrics


# ------------------------------------------------------------------------------ per-frame classifier


@dataclass(frozen=True)
class FrameClassifierConfig:
    hidden: int = 128  # 0: logistic regression
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    target: Target = Target.SEGMENT  # what each frame is trained towards (as the LSTM's steps)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden < 0 or self.epochs < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ConfigError("frame classifier: hidden >= 0, epochs and batch_size >= 1, learning_rate > 0")
        try:
            object.__setattr__(self, "target", Target(self.target))
        except ValueError:
            raise ConfigError(f"target {self.target!r} is not one of {[t.value for t in Target]}") from None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = self.target.value
        return data


def build_frame_model(input_dim: int, config: FrameClassifierConfig) -> nn.Module:
    if config.hidden == 0:
        return nn.Linear(input_dim, len(EMOTIONS))
    return nn.Sequential(nn.Linear(input_dim, config.hidden), nn.ReLU(), nn.Linear(config.hidden, len(EMOTIONS)))


def frame_arrays(sequences: Sequence[SequenceFeatures], target: Target) -> tuple[np.ndarray, np.ndarray]:
    features = np.concatenate([s.features for s in sequences]).astype(np.float32)
    targets = np.concatenate([step_targets(s, target) for s in sequences]).astype(np.float32)
    return features, targets


class FrameClassifier:
    """A per-frame MLP; a segment's score is the mean of its frames' probabilities."""

    def __init__(self, model: nn.Module, config: FrameClassifierConfig) -> None:
        self.model = model.eval()
        self.config = config

    @classmethod
    def fit(
        cls, train_set: Sequence[SequenceFeatures], config: FrameClassifierConfig,
        val_set: Sequence[SequenceFeatures] = (),
    ) -> FrameClassifier:
        """Train on single frames; keep the epoch with the best validation macro AUC (last without one)."""
        if not train_set:
            raise ConfigError("the frame classifier needs training sequences")
        torch.manual_seed(config.seed)
        features, targets = frame_arrays(train_set, config.target)
        model = build_frame_model(features.shape[1], config)
        classifier = cls(model, config)
        optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        x, y = torch.from_numpy(features), torch.from_numpy(targets)
        rng = random.Random(config.seed)
        best, best_state = -np.inf, copy.deepcopy(model.state_dict())
        for _ in range(config.epochs):
            model.train()
            order = list(range(len(x)))
            rng.shuffle(order)
            for start in range(0, len(order), config.batch_size):
                rows = torch.tensor(order[start:start + config.batch_size])
                loss = nn.functional.binary_cross_entropy_with_logits(model(x[rows]), y[rows])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            if val_set:
                model.eval()
                score = multilabel_metrics(np.stack([s.labels for s in val_set]),
                                           classifier.segment_scores(val_set))["macro_auc"]
                if not np.isnan(score) and score > best:
                    best, best_state = score, copy.deepcopy(model.state_dict())
        if val_set and best > -np.inf:
            model.load_state_dict(best_state)
        return cls(model.eval(), config)

    def frame_probabilities(self, features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(self.model(torch.from_numpy(np.asarray(features, np.float32)))).numpy()

    def segment_scores(self, sequences: Sequence[SequenceFeatures]) -> np.ndarray:
        if not sequences:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        return np.stack([self.frame_probabilities(s.features).mean(axis=0) for s in sequences])

    def save(self, path: Path) -> Path:
        path = Path(path)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(path),
                  metadata={"config": json.dumps(self.config.to_dict())})
        return path

    @classmethod
    def load(cls, path: Path, input_dim: int) -> FrameClassifier:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            config = FrameClassifierConfig(**json.loads((handle.metadata() or {})["config"]))
        model = build_frame_model(input_dim, config)
        model.load_state_dict(load_file(str(path)))
        return cls(model, config)
