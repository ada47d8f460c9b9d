"""Small synthetic feature sets for the training tests (no video, no encoder: arrays only).

``toy_featureset`` mimics the synthetic videos at the feature level: each frame's feature is a noisy
unit vector pointing towards the emotion shown (or a neutral direction), an expression counts only
once it has been shown for ``hold`` consecutive frames, and short flickers never count.
"""

from __future__ import annotations

import numpy as np

from affectstream.engine.labels import EMOTIONS
from affectstream.training.featureset import FeatureSet, SequenceFeatures

DIM = 16


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def make_sequence(
    key: str, video_id: str, n: int, labels: np.ndarray | None = None, seed: int = 0, dim: int = DIM,
    frame_labels: np.ndarray | None = None, sentiment: float | None = 0.0, class_name: str | None = None,
) -> SequenceFeatures:
    rng = np.random.default_rng(seed)
    return SequenceFeatures(
        key=key, video_id=video_id, times=np.arange(n, dtype=np.float64) * 0.5,
        features=unit(rng.normal(size=(n, dim))),
        labels=np.zeros(6, np.float32) if labels is None else np.asarray(labels, np.float32),
        label_scores=np.zeros(6, np.float32) if labels is None else np.asarray(labels, np.float32),
        sentiment=sentiment, class_name=class_name, frame_labels=frame_labels,
    )


def toy_sequence(
    rng: np.random.Generator, key: str, video_id: str, n: int = 12, hold: int = 4, weights: np.ndarray | None = None,
    noise: float = 0.15,
) -> SequenceFeatures:
    """Episodes of one emotion each, either held (>= hold + 1 frames) or flickers (< hold frames)."""
    directions = np.eye(DIM, dtype=np.float32)[: len(EMOTIONS) + 1]  # six emotions + neutral
    shown = np.full(n, -1)
    t = int(rng.integers(0, 3))
    p = None if weights is None else np.asarray(weights, float) / np.sum(weights)
    while t < n:
        emotion = int(rng.choice(len(EMOTIONS), p=p))
        length = int(rng.integers(hold + 1, hold + 4)) if rng.random() < 0.55 else int(rng.integers(1, hold))
        shown[t:t + length] = emotion
        t += length + int(rng.integers(1, 4))
    frame_labels = np.zeros((n, len(EMOTIONS)), np.float32)
    run = 0
    for i in range(n):
        run = run + 1 if i > 0 and shown[i] == shown[i - 1] and shown[i] >= 0 else (1 if shown[i] >= 0 else 0)
        if run >= hold:
            frame_labels[i, shown[i]] = 1
    features = np.stack([directions[s] if s >= 0 else directions[-1] for s in shown])
    features = unit(features + noise * rng.normal(size=(n, DIM)).astype(np.float32) / np.sqrt(DIM) * 4)
    labels = frame_labels.max(axis=0)
    sentiment = float(labels[1] - labels[[0, 2, 3, 4]].max())
    return SequenceFeatures(key, video_id, np.arange(n) * 0.5, features, labels, labels.copy(), sentiment,
                            None, frame_labels)


def toy_featureset(
    n_videos: int = 30, per_video: int = 4, seed: int = 0, weights: np.ndarray | None = None, n: int = 12,
) -> FeatureSet:
    rng = np.random.default_rng(seed)
    sequences = tuple(
        toy_sequence(rng, f"v{v:03d}/{c}", f"v{v:03d}", n=n, weights=weights)
        for v in range(n_videos) for c in range(per_video)
    )
    return FeatureSet(sequences, {"name": "toy", "embed_dim": DIM}, "toy", 2.0)
