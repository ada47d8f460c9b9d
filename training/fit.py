"""One training run from a feature set to a bundle: split, balance, standardise, train, export.

``fit`` computes (no files); ``write_run`` writes the bundle and, inside it, ``training/``::

    <bundle>/training/checkpoint.safetensors, checkpoint.json   the LSTM and every setting of the run
    <bundle>/training/history.json, history.png                  the seed's metrics per epoch
    <bundle>/training/split.json                                 the videos of each side
    <bundle>/training/frame_classifier.safetensors               the per-frame baseline, same training side

so that ``affectstream evaluate`` finds the test side and the baseline trained on the same data.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from affectstream.engine.interfaces import ImageEncoder
from affectstream.errors import ConfigError, MissingExtraError
from affectstream.training import balance as balancing
from affectstream.training.baselines import FrameClassifier, FrameClassifierConfig
from affectstream.training.batching import Split, split_by_video
from affectstream.training.checkpoint import plot_history, save_checkpoint, write_json
from affectstream.training.export import export_bundle
from affectstream.training.featureset import FeatureSet, SequenceFeatures
from affectstream.training.scaling import FeatureScaler, fold_into_linear, fold_into_lstm
from affectstream.training.train import EpochCallback, TrainConfig, TrainResult, evaluate_split, train

log = logging.getLogger(__name__)

TRAINING_DIR = "training"
SPLIT_FILE = "split.json"
FRAME_CLASSIFIER = "frame_classifier.safetensors"


@dataclass(frozen=True)
class FitOptions:
    train: TrainConfig = field(default_factory=TrainConfig)
    balance: balancing.BalanceMethod = balancing.BalanceMethod.NONE
    balance_fill: float = 1.0  # fill each class up to this share of the largest
    standardise: bool = True
    frame_classifier: bool = True  # also train the per-frame baseline on the same training side
    videos_dir: Path | None = None  # for --balance clips
    clip_speeds: tuple[float, float] = (0.8, 1.25)  # --balance clips: playback speed range

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "balance", balancing.BalanceMethod(self.balance))
        except ValueError:
            raise ConfigError(f"balance {self.balance!r} is not one of "
                              f"{[m.value for m in balancing.BalanceMethod]}") from None
        if not 0 < self.clip_speeds[0] <= self.clip_speeds[1]:
            raise ConfigError(f"clip speeds must be 0 < low <= high, got {self.clip_speeds}")
        if not 0 < self.balance_fill <= 1:
            raise ConfigError(f"balance fill must be in (0, 1], got {self.balance_fill}")


@dataclass
class FitOutcome:
    featureset: FeatureSet
    options: FitOptions
    split: Split
    result: TrainResult
    added: list[SequenceFeatures]
    frame_classifier: FrameClassifier | None
    test_metrics: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """What goes into the bundle's manifest under ``metrics``."""
        best = self.result.best
        return {
            "dataset": self.featureset.dataset, "rate_hz": self.featureset.rate_hz,
            "train_config": self.result.config.to_dict(), "best_epoch": self.result.best_epoch,
            "epochs_run": len(self.result.history), "stopped_early": self.result.stopped_early,
            "balance": {"method": self.options.balance.value, "added": len(self.added),
                        "class_counts_before": balancing.class_counts(self.split.train)},
            "segments": {"train": len(self.split.train), "val": len(self.split.val), "test": len(self.split.test)},
            "train": best.get("train"), "val": best.get("val"), "test": self.test_metrics,
        }


EncoderFactory = Callable[[], ImageEncoder]


def augment(
    train_side: tuple[SequenceFeatures, ...], options: FitOptions, encoder_factory: EncoderFactory | None,
) -> list[SequenceFeatures]:
    seed = options.train.seed
    if options.balance is balancing.BalanceMethod.INTERPOLATE:
        return balancing.interpolate(train_side, seed=seed, fill=options.balance_fill)
    if options.balance is balancing.BalanceMethod.CLIPS:
        if options.videos_dir is None or encoder_factory is None:
            raise ConfigError("--balance clips re-reads the videos: pass --videos DIR (the dataset's videos)")
        reader = balancing.video_frame_reader(options.videos_dir)
        return balancing.clips(train_side, encoder_factory(), reader, seed=seed, fill=options.balance_fill,
                               speeds=options.clip_speeds)
    return []


def fit(
    featureset: FeatureSet, options: FitOptions, on_epoch: EpochCallback | None = None,
    encoder_factory: EncoderFactory | None = None,
) -> FitOutcome:
    config = options.train
    split = split_by_video(featureset.sequences, config.split, config.seed)
    if not split.train:
        raise ConfigError(f"{featureset.dataset}: the split left no training videos; the set has "
                          f"{len({s.video_id for s in featureset.sequences})} videos")
    added = augment(split.train, options, encoder_factory)
    train_side = split.train + tuple(added)
    scaler = FeatureScaler.fit(train_side) if options.standardise else FeatureScaler.identity(featureset.embed_dim)
    result = train(scaler.apply(train_side), scaler.apply(split.val), config, on_epoch)
    fold_into_lstm(result.module, scaler)  # from here on the module takes raw encoder features
    test_metrics = evaluate_split(result.module, split.test, config) if split.test else {}
    classifier = None
    if options.frame_classifier:
        frame_config = FrameClassifierConfig(target=config.target, seed=config.seed)
        classifier = FrameClassifier.fit(scaler.apply(train_side), frame_config, scaler.apply(split.val))
        first = classifier.model[0] if isinstance(classifier.model, nn.Sequential) else classifier.model
        assert isinstance(first, nn.Linear)
        fold_into_linear(first, scaler)
    return FitOutcome(featureset, options, split, result, added, classifier, test_metrics)


def fingerprint(featureset: FeatureSet) -> str:
    """sha256 of every sequence's key, times and features: names alone repeat across synthetic sets."""
    digest = hashlib.sha256()
    for sequence in sorted(featureset.sequences, key=lambda s: s.key):
        digest.update(sequence.key.encode())
        digest.update(np.ascontiguousarray(sequence.times, np.float64).tobytes())
        digest.update(np.ascontiguousarray(sequence.features, np.float32).tobytes())
    return digest.hexdigest()


def write_run(out: Path, outcome: FitOutcome, texts: dict[str, Any] | None = None) -> Path:
    """The bundle at ``out`` plus its ``training/`` record; returns the bundle path."""
    path = export_bundle(Path(out), outcome.result.module, outcome.featureset.backbone, outcome.summary(), texts)
    record = path / TRAINING_DIR
    record.mkdir(exist_ok=True)
    save_checkpoint(record, outcome.result, {"dataset": outcome.featureset.dataset,
                                             "balance": outcome.options.balance.value})
    write_json(record / SPLIT_FILE, {"seed": outcome.result.config.seed, "features": fingerprint(outcome.featureset),
                                     **outcome.split.video_ids()})
    if outcome.frame_classifier is not None:
        outcome.frame_classifier.save(record / FRAME_CLASSIFIER)
    try:
        plot_history(outcome.result.history, record / "history.png",
                     f"{outcome.featureset.dataset}: LSTM, best epoch {outcome.result.best_epoch}")
    except MissingExtraError as error:
        log.warning("no history plot: %s", error)
    return path
