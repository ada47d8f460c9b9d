"""The seeds' baselines: zero-shot segment means with the dynamic threshold, and the per-frame classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from affectstream.engine.labels import EMOTIONS
from affectstream.training.baselines import (
    FrameClassifier,
    FrameClassifierConfig,
    zero_shot_baseline,
    zero_shot_segment_scores,
)
from affectstream.training.batching import Target
from affectstream.training.scaling import FeatureScaler, fold_into_linear
from tests._training_helpers import DIM, toy_featureset, unit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CLASSES = np.eye(DIM, dtype=np.float32)[: len(EMOTIONS)]  # text embedding i points along axis i


def _segment(emotions: list[int], n: int = 4, key: str = "v/0") -> object:
    from tests._training_helpers import make_sequence

    labels = np.zeros(6, np.float32)
    labels[emotions] = 1
    sequence = make_sequence(key, key.split("/")[0], n, labels=labels)
    features = np.full((n, DIM), 0.01, np.float32)
    for step in range(n):  # alternate between the segment's emotions, frame by frame
        features[step, emotions[step % len(emotions)]] = 1.0
    return type(sequence)(**{**sequence.__dict__, "features": unit(features)})


def test_zero_shot_averages_frames_then_keeps_scores_near_the_top() -> None:
    both = _segment([0, 5], key="a/0")  # anger and surprise, frame by frame
    one = _segment([1], key="b/0")
    scores = zero_shot_segment_scores([both, one], CLASSES, logit_scale=100.0)
    assert scores[0, 0] == pytest.approx(scores[0, 5], abs=1e-3) and scores[0, 0] > 0.45
    assert int(np.argmax(scores[1])) == 1
    metrics = zero_shot_baseline([both, one], CLASSES, 100.0, ratio=0.5)
    # the threshold keeps both halves of the mixed segment and only the top of the single one
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0 and metrics["binary_accuracy"] == 1.0
    assert metrics["emotions_per_segment"][:3] == [0, 1, 1]
    everything = zero_shot_baseline([both, one], CLASSES, 100.0, ratio=0.0)
    assert everything["precision"] == pytest.approx(3 / 12)  # ratio 0 keeps every score: all present


def test_frame_classifier_learns_frames_and_averages_them_per_segment(tmp_path: Path) -> None:
    featureset = toy_featureset(n_videos=24, per_video=2)
    train, test = featureset.sequences[:36], featureset.sequences[36:]
    classifier = FrameClassifier.fit(train, FrameClassifierConfig(hidden=16, epochs=60, batch_size=32, learning_rate=1e-2, target=Target.FRAMES))
    features = np.concatenate([s.features for s in test])
    truth = np.concatenate([s.frame_labels for s in test if s.frame_labels is not None])
    from affectstream.training.metrics import multilabel_metrics

    frame_auc = multilabel_metrics(truth, classifier.frame_probabilities(features))["macro_auc"]
    assert frame_auc > 0.8, frame_auc
    segment = classifier.segment_scores(test[:1])[0]
    np.testing.assert_allclose(segment, classifier.frame_probabilities(test[0].features).mean(axis=0), rtol=1e-6)
    loaded = FrameClassifier.load(classifier.save(tmp_path / "frames.safetensors"), DIM)
    assert loaded.config == classifier.config
    np.testing.assert_array_equal(loaded.frame_probabilities(features), classifier.frame_probabilities(features))


def test_scaling_folded_into_the_first_layer_is_exact() -> None:
    sequences = toy_featureset(n_videos=3, per_video=2).sequences
    scaler = FeatureScaler.fit(sequences)
    torch.manual_seed(0)
    layer = torch.nn.Linear(DIM, 6)
    raw = np.concatenate([s.features for s in sequences])
    with torch.no_grad():
        scaled_out = layer(torch.from_numpy(scaler.transform(raw))).numpy()
        folded_out = fold_into_linear(layer, scaler)(torch.from_numpy(raw)).numpy()
    np.testing.assert_allclose(folded_out, scaled_out, atol=1e-4)
