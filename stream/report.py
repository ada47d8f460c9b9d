"""The whole-file report of ``affectstream analyze``: estimates and events in, one JSON-ready summary out.

Pure logic: ``add_message`` takes the very messages the pipeline emitted for the file, ``to_dict``
computes the summary. Time shares and means are weighted by the media time each estimate stands for
(the gap to the next one), so irregular sampling (drops, a corrupt stretch) does not skew them.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from affectstream.engine.labels import NO_FACE
from affectstream.errors import ConfigError
from affectstream.stream.messages import Estimate, EstimateState, Event, EventKind, Record
from affectstream.stream.session_rules import rounded, slope_per_second


class FileReport:
    """Accumulates one stream's estimates and events; ``to_dict`` is the analyze summary.

    ``share`` is the share of time each label was the dominant one (neutral, and ``no_face`` with the
    face stage, included), so it sums to 1 whatever the model's score scale; ``above_threshold`` is
    the share of time each score was at or above ``threshold``. Means and sentiment are over the
    estimates that had a face (all of them without the face stage).
    """

    def __init__(self, labels: tuple[str, ...], threshold: float = 0.5, top_k: int = 5,
                 timeline_points: int = 500, min_separation_s: float = 5.0) -> None:
        if not labels:
            raise ConfigError("a file report needs at least one label")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold is a score in [0, 1], got {threshold}")
        if top_k < 0 or timeline_points < 1:
            raise ConfigError(f"top_k must be >= 0 and timeline_points >= 1, got {top_k}, {timeline_points}")
        if not (math.isfinite(min_separation_s) and min_separation_s >= 0):
            raise ConfigError(f"min_separation_s must be seconds >= 0, got {min_separation_s}")
        self.labels = tuple(labels)
        self.threshold = threshold
        self.top_k = top_k
        self.timeline_points = timeline_points
        self.min_separation_s = min_separation_s
        self._ts: list[float] = []
        self._scores: list[np.ndarray] = []
        self._sentiment: list[float] = []
        self._dominant: list[str] = []  # a label, or NO_FACE
        self._states: list[EstimateState | None] = []
        self._faces: dict[int, _FaceTrack] = {}
        self._events: Counter[str] = Counter()
        self._onsets: Counter[str] = Counter()

    def add_estimate(self, ts: float, scores: Sequence[float] | np.ndarray, sentiment: float,
                     dominant: str | None = None, state: EstimateState | None = None) -> None:
        """One estimate; ``dominant`` None with a state means no face (None alone: the scores' argmax)."""
        values = np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), 0.0, 1.0)
        if values.shape[0] != len(self.labels):
            raise ConfigError(f"got {values.shape[0]} scores for the {len(self.labels)} labels {self.labels}")
        if dominant is None:
            dominant = NO_FACE if state is EstimateState.NO_FACE else self.labels[int(np.argmax(values))]
        self._ts.append(float(ts))
        self._scores.append(values)
        self._sentiment.append(float(np.clip(sentiment, -1.0, 1.0)))
        self._dominant.append(dominant)
        self._states.append(state)

    def add_event(self, kind: EventKind, label: str | None = None) -> None:
        self._events[kind.value] += 1
        if kind is EventKind.ONSET and label is not None:
            self._onsets[label] += 1

    def add_record(self, record: Record) -> None:
        """Feed one protocol record: estimates (and their faces) and events count, others are ignored."""
        if isinstance(record, Estimate):
            self.add_estimate(record.ts, [record.scores.get(label, 0.0) for label in self.labels], record.sentiment,
                              record.dominant, record.state)
            for face in record.faces or ():
                track = self._faces.setdefault(face.id, _FaceTrack(face.id, record.ts))
                track.add(record.ts, [face.scores.get(label, 0.0) for label in self.labels])
        elif isinstance(record, Event):
            self.add_event(record.kind, record.label)

    @property
    def frames(self) -> int:
        return len(self._ts)

    @property
    def has_faces(self) -> bool:
        return any(state is not None for state in self._states)

    def to_dict(self, source: dict[str, Any] | None = None, damage: dict[str, Any] | None = None) -> dict[str, Any]:
        report: dict[str, Any] = {
            "source": source or {},
            "labels": list(self.labels),
            "frames": self.frames,
            "threshold": self.threshold,
        }
        if self.frames:
            report.update(self._analysis())
        else:
            zeros = {label: 0.0 for label in self.labels}
            report.update({
                "start": None, "end": None, "duration_s": 0.0, "share": self._share_keys(dict(zeros)),
                "above_threshold": dict(zeros), "mean": dict(zeros), "dominant": None,
                "sentiment": {"mean": 0.0, "min": 0.0, "max": 0.0, "trend_per_min": 0.0},
                "timeline": [], "top_moments": {label: [] for label in self.labels},
            })
        report["events"] = dict(sorted(self._events.items()))
        report["onsets"] = {label: self._onsets.get(label, 0) for label in self.labels}
        if self.has_faces:
            report["faces"] = [track.summary(self.labels) for track in sorted(self._faces.values(), key=lambda t: t.id)]
        report["damage"] = damage or {}
        return report

    def _share_keys(self, share: dict[str, float]) -> dict[str, float]:
        if self.has_faces:
            share.setdefault(NO_FACE, 0.0)
        return share

    def _analysis(self) -> dict[str, Any]:
        order = np.argsort(np.asarray(self._ts), kind="stable")
        ts = np.asarray(self._ts)[order]
        scores = np.stack(self._scores)[order]
        sentiment = np.asarray(self._sentiment)[order]
        dominant = [self._dominant[i] for i in order]
        weights = sample_weights(ts)
        total = float(weights.sum())
        seen = np.array([label != NO_FACE for label in dominant])
        seen_total = float(weights[seen].sum())
        above = (scores >= self.threshold).astype(np.float64)
        shares: dict[str, float] = defaultdict(float)
        for label, weight in zip(dominant, weights):
            shares[label] += float(weight)
        mean = weights[seen] @ scores[seen] / seen_total if seen_total > 0 else np.zeros(len(self.labels))
        report: dict[str, Any] = {
            "start": rounded(ts[0], 6),
            "end": rounded(ts[-1], 6),
            "duration_s": rounded(total, 6),
            "share": self._share_keys({label: rounded(shares[label] / total) for label in self.labels}
                                      | ({NO_FACE: rounded(shares[NO_FACE] / total)} if self.has_faces else {})),
            "above_threshold": self._per_label(weights @ above / total),
            "mean": self._per_label(mean),
            "dominant": self.labels[int(np.argmax(mean))] if seen_total > 0 else None,
            "sentiment": {
                "mean": rounded(weights[seen] @ sentiment[seen] / seen_total) if seen_total > 0 else 0.0,
                "min": rounded(sentiment[seen].min()) if seen.any() else 0.0,
                "max": rounded(sentiment[seen].max()) if seen.any() else 0.0,
                "trend_per_min": rounded(60.0 * slope_per_second(ts[seen], sentiment[seen]), 6),
            },
            "timeline": self._timeline(ts, scores, sentiment),
            "top_moments": {
                label: top_moments(ts, scores[:, i], self.top_k, self.min_separation_s)
                for i, label in enumerate(self.labels)
            },
        }
        if self.has_faces:
            states = [self._states[i] for i in order]
            report["states"] = {state.value: rounded(sum(w for s, w in zip(states, weights) if s is state) / total)
                                for state in EstimateState}
        return report

    def _per_label(self, values: np.ndarray) -> dict[str, float]:
        return {label: rounded(v) for label, v in zip(self.labels, values)}

    def _timeline(self, ts: np.ndarray, scores: np.ndarray, sentiment: np.ndarray) -> list[dict[str, Any]]:
        """At most ``timeline_points`` points: consecutive estimates averaged in equal-count buckets."""
        buckets = np.array_split(np.arange(len(ts)), min(self.timeline_points, len(ts)))
        return [
            {"ts": rounded(ts[b].mean(), 3), "scores": self._per_label(scores[b].mean(axis=0)),
             "sentiment": rounded(sentiment[b].mean())}
            for b in buckets
        ]


class _FaceTrack:
    """One face id over the file: when it was seen and its smoothed scores."""

    def __init__(self, face_id: int, first_ts: float) -> None:
        self.id = face_id
        self.first_ts = first_ts
        self.last_ts = first_ts
        self._sum: np.ndarray | None = None
        self.frames = 0

    def add(self, ts: float, scores: Sequence[float]) -> None:
        values = np.asarray(scores, np.float64)
        self._sum = values if self._sum is None else self._sum + values
        self.last_ts = ts
        self.frames += 1

    def summary(self, labels: tuple[str, ...]) -> dict[str, Any]:
        mean = self._sum / self.frames if self._sum is not None else np.zeros(len(labels))
        return {"id": self.id, "first": rounded(self.first_ts, 3), "last": rounded(self.last_ts, 3), "frames": self.frames,
                "dominant": labels[int(np.argmax(mean))], "mean": {label: rounded(v) for label, v in zip(labels, mean)}}


def sample_weights(ts: np.ndarray) -> np.ndarray:
    """Media time each estimate stands for: the gap to the next; the last gets the median gap.

    A single estimate (or all at one time) weighs 1 so that shares and means stay defined.
    """
    if len(ts) < 2:
        return np.ones(len(ts))
    gaps = np.diff(ts)
    last = float(np.median(gaps))
    weights = np.append(gaps, last)
    if weights.sum() <= 0:
        return np.ones(len(ts))
    return weights


def top_moments(ts: np.ndarray, values: np.ndarray, k: int, min_separation_s: float) -> list[dict[str, float]]:
    """The k highest scores, each at least ``min_separation_s`` from a higher one kept (earliest on ties)."""
    kept: list[tuple[float, float]] = []
    for i in np.argsort(-values, kind="stable"):
        if len(kept) >= k:
            break
        if all(abs(ts[i] - t) >= min_separation_s for t, _ in kept):
            kept.append((float(ts[i]), float(values[i])))
    return [{"ts": rounded(t, 6), "score": rounded(v)} for t, v in kept]
