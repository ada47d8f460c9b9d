"""The seeds' metrics on small cases whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError
from affectstream.training.metrics import (
    confusion_matrix,
    multilabel_metrics,
    normalise_rows,
    normalized_accuracy,
    roc_auc,
    single_label_metrics,
)


def test_auc_of_perfect_reversed_and_tied_rankings() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(labels, np.full(4, 0.5)) == 0.5


def test_auc_counts_pairs_with_ties_as_half() -> None:
    # positives 0.4 and 0.6; negatives 0.4 and 0.2: pairs (0.4>0.4 tie .5, 0.4>0.2 1, 0.6>0.4 1, 0.6>0.2 1)
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.4, 0.6, 0.4, 0.2])) == pytest.approx(3.5 / 4)


def test_auc_is_undefined_with_one_class() -> None:
    assert math.isnan(roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3])))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=30))
def test_auc_equals_pair_counting(pairs: list[tuple[bool, int]]) -> None:
    labels = np.array([p[0] for p in pairs])
    scores = np.array([p[1] for p in pairs], float)
    positives, negatives = scores[labels], scores[~labels]
    expected = roc_auc(labels, scores)
    if len(positives) == 0 or len(negatives) == 0:
        assert math.isnan(expected)
        return
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    assert expected == pytest.approx(wins / (len(positives) * len(negatives)))


def test_multilabel_precision_recall_accuracy_at_half() -> None:
    labels = np.zeros((4, 6))
    labels[:2, 0] = 1  # anger in the first two segments
    labels[0, 1] = 1
    probabilities = np.full((4, 6), 0.1)
    probabilities[0, 0] = 0.9  # true positive
    probabilities[2, 0] = 0.7  # false positive
    probabilities[0, 1] = 0.5  # not above 0.5: a miss (Keras's rule is "> 0.5")
    metrics = multilabel_metrics(labels, probabilities)
    assert metrics["precision"] == pytest.approx(1 / 2)
    assert metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["binary_accuracy"] == pytest.approx(21 / 24)
    assert metrics["per_label"]["anger"]["recall"] == pytest.approx(1 / 2)
    assert math.isnan(metrics["per_label"]["fear"]["auc"])  # no positives: undefined, left out of the macro
    assert metrics["macro_auc"] == pytest.approx(np.mean([metrics["per_label"][n]["auc"] for n in ("anger", "happiness")]))


def test_multilabel_uses_given_predictions_instead_of_the_threshold() -> None:
    labels = np.eye(6)[:2]
    probabilities = np.full((2, 6), 0.2)
    predictions = labels.copy()
    metrics = multilabel_metrics(labels, probabilities, predictions=predictions)
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0 and metrics["binary_accuracy"] == 1.0


def test_shapes_are_checked() -> None:
    with pytest.raises(ConfigError):
        multilabel_metrics(np.zeros((3, 6)), np.zeros((3, 5)))


def test_confusion_matrix_and_normalized_accuracy() -> None:
    true = [0, 0, 0, 0, 1, 2, 2]
    predicted = [0, 0, 0, 1, 1, 0, 2]
    matrix = confusion_matrix(true, predicted, 3)
    assert matrix.tolist() == [[3, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert normalise_rows(matrix)[0].tolist() == [0.75, 0.25, 0.0]
    # per-class recall 0.75, 1.0, 0.5: the mean, unlike plain accuracy 5/7, weighs each class once
    assert normalized_accuracy(matrix) == pytest.approx(0.75)
    metrics = single_label_metrics(true, predicted, ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(5 / 7)
    assert metrics["normalized_accuracy"] == pytest.approx(0.75)


def test_normalized_accuracy_ignores_classes_absent_from_the_truth() -> None:
    matrix = confusion_matrix([0, 0, 1], [0, 2, 1], len(EMOTIONS))
    assert normalized_accuracy(matrix) == pytest.approx((0.5 + 1.0) / 2)
