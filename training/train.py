"""Training the temporal model (engine.lstm.TemporalLSTM) on feature sequences.

A small loop in the spirit of nanoGPT: fixed seeds, Adam at the seed's 1e-3, one loss per valid step
(so that the streaming model's output means something at every frame, not only at a segment's end),
evaluation on the validation side after every epoch, early stopping on its macro AUC, and the best
weights kept. The loop does no I/O: it reports each epoch to an optional callback and returns the
result; ``training.checkpoint`` writes it.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from affectstream.engine.lstm import TemporalConfig, TemporalLSTM
from affectstream.errors import ConfigError
from affectstream.training.batching import (
    Batch,
    Context,
    Pool,
    Target,
    batches,
    make_tracks,
    resolve_pool,
    segment_scores,
)
from affectstream.training.featureset import SequenceFeatures
from affectstream.training.metrics import multilabel_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved beside the checkpoint."""

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3  # the seed's Adam rate
    weight_decay: float = 0.0
    hidden: int = 128  # the seed's
    layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    sentiment: bool = True
    sentiment_weight: float = 0.5  # weight of the sentiment MSE beside the emotions' BCE
    target: Target = Target.SEGMENT
    context: Context = Context.SEGMENT
    pool: Pool = Pool.AUTO
    patience: int = 6  # epochs without a better validation macro AUC before stopping
    seed: int = 0
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ConfigError("epochs, batch_size and patience must be at least 1")
        if not self.learning_rate > 0 or self.weight_decay < 0 or self.sentiment_weight < 0:
            raise ConfigError("learning_rate must be positive; weight_decay and sentiment_weight non-negative")
        for name, kind in (("target", Target), ("context", Context), ("pool", Pool)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                raise ConfigError(f"{name} {getattr(self, name)!r} is not one of {[m.value for m in kind]}") from None
        object.__setattr__(self, "split", tuple(float(f) for f in self.split))

    @property
    def segment_pool(self) -> Pool:
        return resolve_pool(self.pool, self.target, self.bidirectional)

    def temporal_config(self, input_dim: int) -> TemporalConfig:
        return TemporalConfig(input_dim=input_dim, hidden=self.hidden, layers=self.layers,
                              bidirectional=self.bidirectional, sentiment=self.sentiment, dropout=self.dropout)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"], data["context"], data["pool"] = self.target.value, self.context.value, self.pool.value
        data["split"] = list(self.split)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        if "split" in data:
            data["split"] = tuple(data["split"])
        return cls(**data)


@dataclass
class TrainResult:
    module: TemporalLSTM
    config: TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False

    @property
    def best(self) -> dict[str, Any]:
        return self.history[self.best_epoch - 1] if self.history else {}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def sequence_loss(
    module: TemporalLSTM, batch: Batch, sentiment_weight: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over tracks of the mean over their valid steps of BCE (+ weighted sentiment MSE).

    Padded steps carry no weight, so neither their values nor how much padding a batch has change
    the loss. Returns (loss, step logits (B, T, 6), step sentiment (B, T)).
    """
    logits, sentiment, _ = module(batch.features, mask=batch.mask)
    valid = batch.mask.to(logits.dtype)
    bce = nn.functional.binary_cross_entropy_with_logits(logits, batch.targets, reduction="none").mean(dim=-1)
    loss = ((bce * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)).mean()
    rated = batch.has_sentiment & batch.mask
    if module.config.sentiment and sentiment_weight > 0 and bool(rated.any()):
        loss = loss + sentiment_weight * ((sentiment - batch.sentiment) ** 2)[rated].mean()
    return loss, logits, sentiment


@dataclass(frozen=True)
class Predictions:
    """Segment-level outputs of a model over a list of sequences, in their order."""

    probabilities: np.ndarray  # (N, 6)
    sentiment: np.ndarray  # (N,)
    labels: np.ndarray  # (N, 6)
    loss: float


def predict(
    module: TemporalLSTM, sequences: Sequence[SequenceFeatures], pool: Pool, target: Target = Target.SEGMENT,
    context: Context = Context.SEGMENT, batch_size: int = 64, sentiment_weight: float = 0.5,
) -> Predictions:
    """Segment probabilities (per-step sigmoid pooled by ``pool``) and sentiment (mean), in input order."""
    module.eval()
    scores: dict[str, np.ndarray] = {}
    sentiments: dict[str, float] = {}
    losses, weights = [], []
    with torch.inference_mode():
        for batch in batches(make_tracks(sequences, target, context), batch_size):
            loss, logits, sentiment = sequence_loss(module, batch, sentiment_weight)
            probabilities = segment_scores(torch.sigmoid(logits), batch, pool).numpy()
            means = segment_scores(sentiment.unsqueeze(-1), batch, Pool.MEAN)[:, 0].numpy()
            for row, segment in enumerate(batch.segments):
                scores[segment.key], sentiments[segment.key] = probabilities[row], float(means[row])
            losses.append(loss.item())
            weights.append(int(batch.mask.sum()))
    keys = [s.key for s in sequences]
    return Predictions(np.stack([scores[k] for k in keys]), np.array([sentiments[k] for k in keys], np.float32),
                       np.stack([s.labels for s in sequences]), float(np.average(losses, weights=weights)))


def evaluate_split(
    module: TemporalLSTM, sequences: Sequence[SequenceFeatures], config: TrainConfig
) -> dict[str, Any]:
    result = predict(module, sequences, config.segment_pool, config.target, config.context,
                     sentiment_weight=config.sentiment_weight)
    metrics = multilabel_metrics(result.labels, result.probabilities)  # "loss": segment BCE, as the seed's
    metrics["objective"] = result.loss  # what training minimises: per-step BCE (+ sentiment)
    return metrics


EpochCallback = Callable[[dict[str, Any]], None]


def train(
    train_set: Sequence[SequenceFeatures], val_set: Sequence[SequenceFeatures], config: TrainConfig,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train a TemporalLSTM; keep the weights of the epoch with the best validation macro AUC."""
    if not train_set:
        raise ConfigError("no training sequences: the split left the training side empty (more videos needed)")
    seed_everything(config.seed)
    module = TemporalLSTM(config.temporal_config(int(train_set[0].features.shape[1])))
    optimiser = torch.optim.Adam(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    rng = random.Random(config.seed)
    tracks = make_tracks(train_set, config.target, config.context)
    result = TrainResult(module, config)
    best_score, best_state, waited = -np.inf, copy.deepcopy(module.state_dict()), 0
    for epoch in range(1, config.epochs + 1):
        module.train()
        seen: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        losses: list[float] = []
        for batch in batches(tracks, config.batch_size, rng):
            loss, logits, _ = sequence_loss(module, batch, config.sentiment_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
            optimiser.step()
            # Training metrics come from this pass, as Keras reports them: no second pass per epoch.
            seen.append(segment_scores(torch.sigmoid(logits.detach()), batch, config.segment_pool).numpy())
            labels.append(batch.labels.numpy())
            losses.append(loss.item())
        train_metrics = multilabel_metrics(np.concatenate(labels), np.concatenate(seen))
        train_metrics["objective"] = float(np.mean(losses))
        record = {"epoch": epoch, "train": train_metrics}
        if val_set:
            record["val"] = evaluate_split(module, val_set, config)
        result.history.append(record)
        score = _selection_score(record)
        if score > best_score + 1e-6:
            best_score, best_state, waited, result.best_epoch = score, copy.deepcopy(module.state_dict()), 0, epoch
        else:
            waited += 1
        log.debug("epoch %d: %s", epoch, score)
        if on_epoch is not None:
            on_epoch(record)
        if waited >= config.patience:
            result.stopped_early = True
            break
    module.load_state_dict(best_state)
    module.eval()
    return result


def _selection_score(record: dict[str, Any]) -> float:
    """Validation macro AUC (training's where there is no validation side); NaN counts as worst."""
    side = record.get("val", record["train"])
    value = side.get("macro_auc", float("nan"))
    return -np.inf if np.isnan(value) else float(value) - 1e-9 * float(side["loss"])
