"""The pure rules behind a stream's analytics: settings, episodes, shifts, rolling windows.

``StreamSession`` (stream/session.py) and the per-face state (stream/face_session.py) both use them:

- **episodes** per label, with hysteresis: an ``onset`` once a score has stayed at or above
  ``onset_threshold`` for ``min_duration_s``; an ``offset`` once it has stayed below
  ``offset_threshold`` for ``min_gap_s``; then one ``peak`` with the episode's maximum.
- **shifts** of the dominant label (argmax of an exponentially smoothed score): the new label must
  lead the previous dominant by ``shift_margin`` for ``shift_min_dwell_s``.
- **summaries** of rolling windows: every hop of media time, the last ``window_s`` seconds.

They return *drafts*: records with no stream, seq or wall yet (``UNNUMBERED``); the session sorts
them by media time and numbers them. Nothing here reads a clock.
"""

from __future__ import annotations

import enum
import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from affectstream.engine.labels import NEUTRAL, NO_FACE
from affectstream.errors import ConfigError
from affectstream.stream.messages import EstimateState, Event, EventKind, StreamRecord, Summary

ScoreInput = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class AnalyticsConfig:
    """How summaries and events are derived from the estimates of a stream (times in media seconds)."""

    windows_s: tuple[float, ...] = (5.0, 60.0)
    # Hop of each window (same order as windows_s); None: each window hops by its own length.
    hops_s: tuple[float, ...] | None = None
    onset_threshold: float = 0.6
    offset_threshold: float = 0.4
    min_duration_s: float = 1.0
    min_gap_s: float = 1.0
    shift_min_dwell_s: float = 2.0
    shift_margin: float = 0.05
    # Time constant of the smoothing behind the dominant label; 0 follows the raw scores.
    shift_smoothing_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.windows_s:
            raise ConfigError("windows_s needs at least one window length in seconds, e.g. (5.0, 60.0)")
        if any(not _positive_finite(w) for w in self.windows_s):
            raise ConfigError(f"windows_s must be positive seconds, got {self.windows_s}")
        if len(set(self.windows_s)) != len(self.windows_s):
            raise ConfigError(f"windows_s lists a window twice: {self.windows_s}")
        if self.hops_s is not None:
            if len(self.hops_s) != len(self.windows_s):
                raise ConfigError(f"hops_s needs one hop per window: windows {self.windows_s}, hops {self.hops_s}")
            for window, hop in zip(self.windows_s, self.hops_s):
                if not _positive_finite(hop) or hop > window:
                    raise ConfigError(f"the hop of the {window} s window must be in (0, {window}], got {hop}")
        if not 0.0 <= self.offset_threshold <= self.onset_threshold <= 1.0:
            raise ConfigError(
                "thresholds need 0 <= offset_threshold <= onset_threshold <= 1 (hysteresis), got "
                f"offset {self.offset_threshold}, onset {self.onset_threshold}"
            )
        for name in ("min_duration_s", "min_gap_s", "shift_min_dwell_s", "shift_margin", "shift_smoothing_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")

    @property
    def hops(self) -> tuple[float, ...]:
        return self.hops_s if self.hops_s is not None else self.windows_s


def _positive_finite(value: float) -> bool:
    return math.isfinite(value) and value > 0


# A record not numbered yet (stream "", seq -1, wall 0): the session sorts drafts by media time,
# then numbers them (``StreamSession._number``).
Draft = StreamRecord
UNNUMBERED: dict[str, Any] = {"stream": "", "seq": -1, "wall": 0}


def draft_event(kind: EventKind, ts: float, label: str | None = None, value: float | None = None,
           **fields: Any) -> Event:
    return Event(ts=ts, kind=kind, label=label, value=value, **fields, **UNNUMBERED)


def rounded(value: float, places: int = 4) -> float:
    return round(float(value), places)


class EpisodeState(str, enum.Enum):
    IDLE = "idle"
    PENDING = "pending"  # above onset_threshold, not yet for min_duration_s
    ACTIVE = "active"  # onset emitted; waiting for the score to stay below offset_threshold


class EpisodeTracker:
    """Onset/offset/peak of one label, with hysteresis and minimum durations."""

    def __init__(self, label: str, config: AnalyticsConfig) -> None:
        self.label = label
        self._config = config
        self.state = EpisodeState.IDLE
        self._start = (0.0, 0.0)  # (ts, value) where the episode began
        self._peak = (0.0, 0.0)  # (ts, value) of its maximum so far
        self._below: tuple[float, float] | None = None  # (ts, value) where it fell below offset
        self._last_value = 0.0

    def update(self, ts: float, value: float) -> list[Draft]:
        config = self._config
        self._last_value = value
        if self.state is EpisodeState.IDLE:
            if value < config.onset_threshold:
                return []
            self.state = EpisodeState.PENDING
            self._start = self._peak = (ts, value)
            self._below = None
        if value > self._peak[1]:
            self._peak = (ts, value)
        if self.state is EpisodeState.PENDING:
            if value < config.onset_threshold:  # a blip shorter than min_duration_s: no episode
                self.state = EpisodeState.IDLE
                return []
            if ts - self._start[0] < config.min_duration_s:
                return []
            self.state = EpisodeState.ACTIVE
            started, start_value = self._start
            return [draft_event(EventKind.ONSET, started, self.label, rounded(start_value), started=started,
                           confirmed=ts)]
        if value >= config.offset_threshold:  # back up before min_gap_s: the episode goes on
            self._below = None
            return []
        if self._below is None:
            self._below = (ts, value)
        if ts - self._below[0] < config.min_gap_s:
            return []
        return self._end(*self._below, forced=False)

    def close(self, ts: float) -> list[Draft]:
        """End an open episode now (stream ended or interrupted): no onset is left without an offset."""
        if self.state is EpisodeState.PENDING:
            self.state = EpisodeState.IDLE
        if self.state is not EpisodeState.ACTIVE:
            return []
        end_ts, end_value = self._below if self._below is not None else (max(ts, self._start[0]), self._last_value)
        return self._end(end_ts, end_value, forced=True)

    def _end(self, end_ts: float, end_value: float, forced: bool) -> list[Draft]:
        self.state = EpisodeState.IDLE
        started = self._start[0]
        duration = round(end_ts - started, 6)
        extra = {"forced": True} if forced else {}
        peak_ts, peak_value = self._peak
        return [
            draft_event(EventKind.PEAK, peak_ts, self.label, rounded(peak_value), started=started, duration=duration),
            draft_event(EventKind.OFFSET, end_ts, self.label, rounded(end_value), started=started, duration=duration,
                   **extra),
        ]


class Episodes:
    """An ``EpisodeTracker`` per emotion of a label set: a neutral face "starting" is not an event."""

    def __init__(self, labels: tuple[str, ...], config: AnalyticsConfig) -> None:
        self._rows = [row for row, label in enumerate(labels) if label != NEUTRAL]
        self._trackers = [EpisodeTracker(labels[row], config) for row in self._rows]

    def update(self, ts: float, values: np.ndarray) -> list[Draft]:
        drafts: list[Draft] = []
        for tracker, row in zip(self._trackers, self._rows):
            drafts += tracker.update(ts, float(values[row]))
        return drafts

    def close(self, ts: float) -> list[Draft]:
        drafts: list[Draft] = []
        for tracker in self._trackers:
            drafts += tracker.close(ts)
        return drafts


class ShiftDetector:
    """Changes of the dominant label of the smoothed scores, held for a dwell time and by a margin."""

    def __init__(self, labels: tuple[str, ...], config: AnalyticsConfig) -> None:
        self._labels = labels
        self._config = config
        self._smoothed: np.ndarray | None = None
        self._last_ts = 0.0
        self.dominant: int | None = None
        self._candidate: tuple[int, float] | None = None  # (label index, ts since it led)

    def update(self, ts: float, scores: np.ndarray) -> list[Draft]:
        self._smooth(ts, scores)
        assert self._smoothed is not None
        smoothed = self._smoothed
        leader = int(np.argmax(smoothed))
        if self.dominant is None:  # the first estimate sets the dominant label: that is not a shift
            self.dominant = leader
            return []
        leads = leader != self.dominant and smoothed[leader] >= smoothed[self.dominant] + self._config.shift_margin
        if not leads:
            self._candidate = None
            return []
        if self._candidate is None or self._candidate[0] != leader:
            self._candidate = (leader, ts)
        since = self._candidate[1]
        if ts - since < self._config.shift_min_dwell_s:
            return []
        previous, self.dominant, self._candidate = self.dominant, leader, None
        return [draft_event(EventKind.SHIFT, since, self._labels[leader], rounded(smoothed[leader]),
                       previous=self._labels[previous], confirmed=ts)]

    def _smooth(self, ts: float, scores: np.ndarray) -> None:
        self._smoothed = ema(self._smoothed, scores, ts - self._last_ts, self._config.shift_smoothing_s)
        self._last_ts = ts


def ema(previous: np.ndarray | None, value: np.ndarray, gap_s: float, tau_s: float) -> np.ndarray:
    """Time-aware exponential moving average: irregular sampling (drops, rate changes) weighs each new
    value by the media time since the last; ``tau_s`` 0 (or no previous) follows the value itself."""
    if previous is None or tau_s == 0:
        return np.array(value, dtype=np.float64)
    alpha = 1.0 - math.exp(-max(gap_s, 0.0) / tau_s)
    return previous + alpha * (value - previous)


@dataclass(frozen=True)
class Sample:
    """One estimate as the rolling windows see it."""

    ts: float
    scores: np.ndarray
    sentiment: float
    dominant: str | None  # None: no face in view (the face stage's no_face)
    state: EstimateState | None = None  # None without the face stage


class RollingWindow:
    """Summaries of the last ``window`` seconds, one every ``hop`` seconds of media time.

    Window k covers ``[origin + k*hop - window, origin + k*hop)``, where origin is the first estimate's
    media time; an estimate at or after the end of a window completes it. Windows without a frame are
    skipped (a long gap in a live stream does not produce a burst of empty summaries).
    """

    def __init__(self, window: float, hop: float, labels: tuple[str, ...]) -> None:
        self.window = window
        self.hop = hop
        self._labels = labels
        self._samples: deque[Sample] = deque()
        self._origin: float | None = None
        self._k = 1  # index of the next window to complete

    def _end(self) -> float:
        assert self._origin is not None
        return self._origin + self._k * self.hop  # from the origin each time: no drift from summing hops

    def _start(self, end: float) -> float:
        """Where the window ending at ``end`` begins, not before the stream did (overlapping windows)."""
        assert self._origin is not None
        return max(end - self.window, self._origin)

    def add(self, sample: Sample) -> list[Draft]:
        if self._origin is None:
            self._origin = sample.ts
        out: list[Draft] = []
        while sample.ts >= self._end():
            end = self._end()
            inside = [s for s in self._samples if s.ts >= end - self.window]
            if inside:
                out.append(self._summary(inside, self._start(end), end, partial=False))
            self._k += 1
            if not any(s.ts >= self._end() - self.window for s in self._samples):
                # Nothing buffered reaches the next window: jump straight to the one this sample is in.
                self._k = max(self._k, math.floor((sample.ts - self._origin) / self.hop) + 1)
        self._samples.append(sample)
        start = self._end() - self.window
        while self._samples and self._samples[0].ts < start:
            self._samples.popleft()
        return out

    def flush(self, ts: float) -> list[Draft]:
        """The unfinished window as a ``partial`` summary ending at ``ts``; the next estimate starts afresh."""
        out: list[Draft] = []
        if self._samples:
            end = max(ts, self._samples[-1].ts)
            out.append(self._summary(list(self._samples), self._start(self._end()), end, partial=True))
        self._samples.clear()
        self._origin = None
        self._k = 1
        return out

    def _summary(self, samples: list[Sample], start: float, end: float, partial: bool) -> Summary:
        """Shares of time come from each estimate's dominant label (neutral, and no_face with the face
        stage, included); means and sentiment are over the estimates that had a face."""
        seen = [s for s in samples if s.dominant is not None]
        counts = Counter(s.dominant or NO_FACE for s in samples)
        share = {label: rounded(counts[label] / len(samples)) for label in self._labels}
        faces = samples[0].state is not None
        states = None
        if faces:
            share[NO_FACE] = rounded(counts[NO_FACE] / len(samples))
            state_counts = Counter(s.state for s in samples)
            states = {state.value: rounded(state_counts[state] / len(samples)) for state in EstimateState}
        mean = np.stack([s.scores for s in seen]).mean(axis=0) if seen else np.zeros(len(self._labels))
        sentiments = np.array([s.sentiment for s in seen])
        return Summary(
            ts=end, window_s=self.window, start=round(start, 6), end=round(end, 6), frames=len(samples),
            mean={label: rounded(m) for label, m in zip(self._labels, mean)},
            dominant=self._labels[int(np.argmax(mean))] if seen else None,
            share=share,
            sentiment_mean=rounded(float(np.clip(sentiments.mean(), -1.0, 1.0))) if seen else 0.0,
            sentiment_trend=rounded(slope_per_second([s.ts for s in seen], sentiments), 6),
            partial=partial, states=states, **UNNUMBERED,
        )


def slope_per_second(ts: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray) -> float:
    """Least-squares slope of values over media time; 0 with fewer than two distinct times."""
    t = np.asarray(ts, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if len(t) < 2:
        return 0.0
    spread = float(((t - t.mean()) ** 2).sum())
    if spread <= 1e-12:
        return 0.0
    return float(((t - t.mean()) * (v - v.mean())).sum() / spread)
