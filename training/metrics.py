"""Metrics as the seeds report them, in plain numpy.

Multi-label (the 000 seed, after Keras): loss (binary cross-entropy), precision, recall and binary
accuracy at a 0.5 threshold, and the area under the ROC curve, per label and as a macro average. Keras
computes its precision, recall and AUC over all label entries at once ("micro"); both are given, so
that our figures can sit beside the seed's.

Single-label (the 004 seed): a confusion matrix whose rows (true classes) are normalised to sum to 1,
and the normalized accuracy: the mean of its diagonal, i.e. the mean per-class recall, which does not
reward a classifier for favouring the common classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError

THRESHOLD = 0.5  # Keras's default for precision, recall and binary accuracy, as the seed used


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of one label: P(score of a positive > score of a negative), ties 1/2.

    Computed with the rank-sum (Mann-Whitney) formula on average ranks, so ties are handled exactly.
    NaN when the labels hold only one class (the AUC is undefined there).
    """
    labels = np.asarray(labels, np.float64).ravel() > 0.5
    scores = np.asarray(scores, np.float64).ravel()
    if labels.shape != scores.shape:
        raise ConfigError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    rank_sum = float(ranks[labels].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    # tied values share the mean of the ranks they span
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(unique) < len(values):
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks


def binary_cross_entropy(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probabilities, np.float64), eps, 1 - eps)
    y = np.asarray(labels, np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def multilabel_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float = THRESHOLD,
    names: Sequence[str] = EMOTIONS, predictions: np.ndarray | None = None,
) -> dict[str, Any]:
    """The 000 seed's metrics for ``(N, L)`` 0/1 labels and ``(N, L)`` probabilities.

    ``predictions`` (0/1) replace ``probabilities > threshold`` where a method decides otherwise (the
    zero-shot baseline's dynamic threshold). Undefined values (no positives) are NaN and left out of
    the macro averages.
    """
    y = np.asarray(labels, np.float64) > 0.5
    p = np.asarray(probabilities, np.float64)
    if y.ndim != 2 or y.shape != p.shape or y.shape[1] != len(names):
        raise ConfigError(f"labels {y.shape} and probabilities {p.shape} must both be (N, {len(names)})")
    decided = (p > threshold) if predictions is None else (np.asarray(predictions) > 0.5)
    per_label: dict[str, dict[str, float]] = {}
    for column, name in enumerate(names):
        truth, guess = y[:, column], decided[:, column]
        true_positives = float((truth & guess).sum())
        per_label[name] = {
            "auc": roc_auc(truth, p[:, column]),
            "precision": _ratio(true_positives, float(guess.sum())),
            "recall": _ratio(true_positives, float(truth.sum())),
            "support": float(truth.sum()),
        }
    true_positives = float((y & decided).sum())
    return {
        "n": int(y.shape[0]),
        "loss": binary_cross_entropy(y, p) if predictions is None else float("nan"),
        "binary_accuracy": float((y == decided).mean()) if y.size else float("nan"),
        "precision": _ratio(true_positives, float(decided.sum())),  # micro, as Keras
        "recall": _ratio(true_positives, float(y.sum())),
        "auc": roc_auc(y, p),  # micro, as Keras's AUC() on flattened labels
        "macro_auc": _nanmean([m["auc"] for m in per_label.values()]),
        "macro_precision": _nanmean([m["precision"] for m in per_label.values()]),
        "macro_recall": _nanmean([m["recall"] for m in per_label.values()]),
        "per_label": per_label,
    }


def confusion_matrix(true: Sequence[int], predicted: Sequence[int], n_classes: int) -> np.ndarray:
    """``(C, C)`` counts: row = true class, column = predicted class."""
    true_array, predicted_array = np.asarray(true, np.int64), np.asarray(predicted, np.int64)
    if true_array.shape != predicted_array.shape:
        raise ConfigError("true and predicted classes differ in length")
    if true_array.size and (min(true_array.min(), predicted_array.min()) < 0
                            or max(true_array.max(), predicted_array.max()) >= n_classes):
        raise ConfigError(f"class indices must be in [0, {n_classes})")
    matrix = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(matrix, (true_array, predicted_array), 1)
    return matrix


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the seed's "normalizada em decimais"); empty rows stay zero."""
    matrix = np.asarray(matrix, np.float64)
    sums = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, sums, out=np.zeros_like(matrix), where=sums > 0)


def normalized_accuracy(matrix: np.ndarray) -> float:
    """Mean per-class recall over the classes present in the truth (the 004 seed's figure)."""
    matrix = np.asarray(matrix, np.float64)
    present = matrix.sum(axis=1) > 0
    if not present.any():
        return float("nan")
    return float(np.diag(normalise_rows(matrix))[present].mean())


def single_label_metrics(true: Sequence[int], predicted: Sequence[int], class_names: Sequence[str]) -> dict[str, Any]:
    """Confusion matrix (counts and row-normalised), accuracy and normalized accuracy."""
    matrix = confusion_matrix(true, predicted, len(class_names))
    total = int(matrix.sum())
    return {
        "n": total,
        "classes": list(class_names),
        "confusion": matrix.tolist(),
        "confusion_normalised": np.round(normalise_rows(matrix), 4).tolist(),
        "accuracy": float(np.trace(matrix) / total) if total else float("nan"),
        "normalized_accuracy": normalized_accuracy(matrix),
    }
