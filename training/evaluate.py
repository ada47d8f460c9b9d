"""Evaluating a trained bundle on a feature set, beside the seeds' baselines.

``evaluate_bundle`` returns a plain-JSON report: for the LSTM, the per-frame classifier and the
zero-shot baseline, the 000 seed's multi-label metrics on the test side, and the 004 seed's
confusion matrix and normalized accuracy on the segments that show exactly one emotion.
``training.report`` renders reports as tables in the seeds' formats.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from affectstream.engine.bundle import ModelBundle, load_bundle
from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError
from affectstream.training.balance import class_of
from affectstream.training.baselines import DEFAULT_DYNAMIC_THRESHOLD, FrameClassifier, zero_shot_baseline
from affectstream.training.batching import select_videos
from affectstream.training.checkpoint import CHECKPOINT_CONFIG
from affectstream.training.featureset import FeatureSet, SequenceFeatures
from affectstream.training.fit import FRAME_CLASSIFIER, SPLIT_FILE, TRAINING_DIR, fingerprint
from affectstream.training.metrics import multilabel_metrics, single_label_metrics
from affectstream.training.train import TrainConfig, predict

log = logging.getLogger(__name__)


def single_label_report(sequences: Sequence[SequenceFeatures], scores: np.ndarray) -> dict[str, Any]:
    """Confusion matrix and normalized accuracy over the single-class segments (argmax of the scores)."""
    rows = [(i, class_of(s)) for i, s in enumerate(sequences)]
    rows = [(i, name) for i, name in rows if name is not None]
    true = [EMOTIONS.index(name) for _, name in rows if name is not None]
    predicted = [int(np.argmax(scores[i])) for i, _ in rows]
    return single_label_metrics(true, predicted, EMOTIONS)


def sentiment_report(sequences: Sequence[SequenceFeatures], predicted: np.ndarray) -> dict[str, Any]:
    """Mean absolute error and Pearson correlation of the sentiment head, over segments that have one."""
    rated = [i for i, s in enumerate(sequences) if s.sentiment is not None]
    truth = np.array([sequences[i].sentiment for i in rated], np.float64)
    guess = np.asarray(predicted, np.float64)[rated]
    spread = truth.std() * guess.std() if rated else 0.0
    return {
        "n": len(rated),
        "mae": float(np.abs(truth - guess).mean()) if rated else float("nan"),
        "pearson": float(((truth - truth.mean()) * (guess - guess.mean())).mean() / spread) if spread > 0 else float("nan"),
    }


def model_report(sequences: Sequence[SequenceFeatures], scores: np.ndarray, **extra: Any) -> dict[str, Any]:
    labels = np.stack([s.labels for s in sequences])
    multi = extra.pop("multi", None) or multilabel_metrics(labels, scores)
    return {"multilabel": multi, "single_label": single_label_report(sequences, scores), **extra}


def read_record(bundle: ModelBundle) -> tuple[TrainConfig, dict[str, Any] | None, dict[str, Any]]:
    """The bundle's training settings, its split (None when absent) and its checkpoint document."""
    record = bundle.path / TRAINING_DIR
    document: dict[str, Any] = {}
    if (record / CHECKPOINT_CONFIG).is_file():
        document = json.loads((record / CHECKPOINT_CONFIG).read_text(encoding="utf-8"))
    config = TrainConfig.from_dict(document["train"]) if "train" in document else TrainConfig()
    split = None
    if (record / SPLIT_FILE).is_file():
        split = json.loads((record / SPLIT_FILE).read_text(encoding="utf-8"))
    return config, split, document


def evaluate_bundle(
    featureset: FeatureSet, bundle_path: Path, baselines: bool = True, side: str = "test",
    dynamic_threshold: float = DEFAULT_DYNAMIC_THRESHOLD,
) -> dict[str, Any]:
    """Score the bundle's LSTM (and the baselines) on one side of its split, or on ``side="all"``."""
    bundle = load_bundle(bundle_path)
    if bundle.embed_dim != featureset.embed_dim:
        raise ConfigError(f"the features are {featureset.embed_dim}-d but the bundle's backbone gives "
                          f"{bundle.embed_dim}-d: extract them with the bundle's model")
    config, split, document = read_record(bundle)
    if side == "all" or split is None:
        if side != "all":
            log.warning("%s has no recorded split: evaluating on every segment", bundle_path)
        sequences, side = featureset.sequences, "all"
    else:
        if side not in ("train", "val", "test"):
            raise ConfigError(f"side {side!r} is not one of train, val, test, all")
        recorded = split.get("features")
        if recorded is not None and recorded != fingerprint(featureset):
            raise ConfigError(f"{bundle_path} was trained on other features than {featureset.dataset}'s here "
                              f"(their fingerprints differ), so its {side} side means nothing on them: pass the "
                              f"FEATURES_DIR it was trained on, or --side all to score every segment")
        sequences = select_videos(featureset.sequences, split[side])
    if not sequences:
        raise ConfigError(f"no segments of {featureset.dataset} on the {side} side of {bundle_path}: "
                          f"evaluate the feature set the bundle was trained on, or pass --side all")
    lstm = predict(bundle.temporal_module(), sequences, config.segment_pool, config.target, config.context)
    report: dict[str, Any] = {
        "dataset": featureset.dataset, "bundle": str(bundle_path), "side": side, "segments": len(sequences),
        "videos": len({s.video_id for s in sequences}), "balance": document.get("balance", "none"),
        "train_config": config.to_dict(),
        "models": {"lstm": model_report(sequences, lstm.probabilities,
                                        sentiment=sentiment_report(sequences, lstm.sentiment))},
    }
    if baselines:
        report["models"].update(baseline_reports(bundle, featureset, sequences, split, dynamic_threshold))
    return report


def baseline_reports(
    bundle: ModelBundle, featureset: FeatureSet, sequences: Sequence[SequenceFeatures],
    split: dict[str, Any] | None, dynamic_threshold: float,
) -> dict[str, Any]:
    zero_shot = zero_shot_baseline(sequences, bundle.emotion_embeddings, bundle.logit_scale, dynamic_threshold)
    from affectstream.training.baselines import zero_shot_segment_scores

    scores = zero_shot_segment_scores(sequences, bundle.emotion_embeddings, bundle.logit_scale)
    reports = {"zero_shot": model_report(sequences, scores, multi=zero_shot)}
    path = bundle.path / TRAINING_DIR / FRAME_CLASSIFIER
    if path.is_file():
        classifier = FrameClassifier.load(path, featureset.embed_dim)
        reports["frame_classifier"] = model_report(sequences, classifier.segment_scores(sequences))
    elif split is not None:
        log.info("the bundle has no per-frame classifier: training one on its training side")
        from affectstream.training.baselines import FrameClassifierConfig

        classifier = FrameClassifier.fit(select_videos(featureset.sequences, split["train"]), FrameClassifierConfig(),
                                         select_videos(featureset.sequences, split["val"]))
        reports["frame_classifier"] = model_report(sequences, classifier.segment_scores(sequences))
    return reports
