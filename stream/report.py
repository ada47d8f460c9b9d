"""The whole-file report of ``affectstream analyze``: estimates and events in, one JSON-ready summary out.

Pure logic: ``add_message`` takes the very messages the pipeline emitted for the file, ``to_dict``
computes the summary. Time shares and means are weighted by the media time each estimate stands for
(the gap to the next one), so irregular sampling (drops, a corrupt stretch) does not skew them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from affectstream.errors import ConfigError
from affectstream.stream.messages import Estimate, Event, EventKind, Record
from affectstream.stream.session import slope_per_second


def _r(value: float, places: int = 4) -> float:
    return round(float(value), places)


class FileReport:
    """Accumulates one stream's estimates and events; ``to_dict`` is the analyze summary."""

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
        self._events: Counter[str] = Counter()
        self._onsets: Counter[str] = Counter()

    def add_estimate(self, ts: float, scores: Sequence[float] | np.ndarray, sentiment: float) -> None:
        values = np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), 0.0, 1.0)
        if values.shape[0] != len(self.labels):
            raise ConfigError(f"got {values.shape[0]} scores for the {len(self.labels)} labels {self.labels}")
        self._ts.append(float(ts))
        self._scores.append(values)
        self._sentiment.append(float(np.clip(sentiment, -1.0, 1.0)))

    def add_event(self, kind: EventKind, label: str | None = None) -> None:
        self._events[kind.value] += 1
        if kind is EventKind.ONSET and label is not None:
            self._onsets[label] += 1

    def add_record(self, record: Record) -> None:
        """Feed one protocol record: estimates and events count, other types are ignored."""
        if isinstance(record, Estimate):
            self.add_estimate(record.ts, [record.scores.get(label, 0.0) for label in self.labels], record.sentiment)
        elif isinstance(record, Event):
            self.add_event(record.kind, record.label)

    @property
    def frames(self) -> int:
        return len(self._ts)

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
                "start": None, "end": None, "duration_s": 0.0, "share": dict(zeros),
                "dominant_share": dict(zeros), "mean": dict(zeros), "dominant": None,
                "sentiment": {"mean": 0.0, "min": 0.0, "max": 0.0, "trend_per_min": 0.0},
                "timeline": [], "top_moments": {label: [] for label in self.labels},
            })
        report["events"] = dict(sorted(self._events.items()))
        report["onsets"] = {label: self._onsets.get(label, 0) for label in self.labels}
        report["damage"] = damage or {}
        return report

    def _analysis(self) -> dict[str, Any]:
        order = np.argsort(np.asarray(self._ts), kind="stable")
        ts = np.asarray(self._ts)[order]
        scores = np.stack(self._scores)[order]
        sentiment = np.asarray(self._sentiment)[order]
        weights = sample_weights(ts)
        total = float(weights.sum())
        above = (scores >= self.threshold).astype(np.float64)
        dominant = np.zeros_like(scores)
        dominant[np.arange(len(ts)), scores.argmax(axis=1)] = 1.0
        mean = weights @ scores / total
        return {
            "start": _r(ts[0], 6),
            "end": _r(ts[-1], 6),
            "duration_s": _r(total, 6),
            "share": self._per_label(weights @ above / total),
            "dominant_share": self._per_label(weights @ dominant / total),
            "mean": self._per_label(mean),
            "dominant": self.labels[int(np.argmax(mean))],
            "sentiment": {
                "mean": _r(weights @ sentiment / total),
                "min": _r(sentiment.min()),
                "max": _r(sentiment.max()),
                "trend_per_min": _r(60.0 * slope_per_second(ts, sentiment), 6),
            },
            "timeline": self._timeline(ts, scores, sentiment),
            "top_moments": {
                label: top_moments(ts, scores[:, i], self.top_k, self.min_separation_s)
                for i, label in enumerate(self.labels)
            },
        }

    def _per_label(self, values: np.ndarray) -> dict[str, float]:
        return {label: _r(v) for label, v in zip(self.labels, values)}

    def _timeline(self, ts: np.ndarray, scores: np.ndarray, sentiment: np.ndarray) -> list[dict[str, Any]]:
        """At most ``timeline_points`` points: consecutive estimates averaged in equal-count buckets."""
        buckets = np.array_split(np.arange(len(ts)), min(self.timeline_points, len(ts)))
        return [
            {"ts": _r(ts[b].mean(), 3), "scores": self._per_label(scores[b].mean(axis=0)),
             "sentiment": _r(sentiment[b].mean())}
            for b in buckets
        ]


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
    return [{"ts": _r(t, 6), "score": _r(v)} for t, v in kept]
