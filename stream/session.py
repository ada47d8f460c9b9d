"""The analytics of one stream, sans I/O: estimates and lifecycle in, numbered protocol messages out.

``StreamSession`` turns each estimate into an ``estimate`` message and into whatever it completes:

- **episodes** per label, with hysteresis: an ``onset`` once a score has stayed at or above
  ``onset_threshold`` for ``min_duration_s``; an ``offset`` once it has stayed below
  ``offset_threshold`` for ``min_gap_s``; then one ``peak`` with the episode's maximum.
- **shifts** of the dominant label (argmax of an exponentially smoothed score): the new label must
  lead the previous dominant by ``shift_margin`` for ``shift_min_dwell_s``.
- **summaries** of rolling windows: every hop of media time, the last ``window_s`` seconds.

Event messages carry the media time of what they describe (an onset's ``ts`` is where the episode
began, a peak's where its maximum was), so they can be earlier than the estimate that confirmed them;
``seq`` is the order of emission. Nothing here reads a clock: media time and wall time are passed in.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from affectstream.errors import ConfigError, PipelineError, SourceOutcome
from affectstream.stream.frames import SourceEvent, SourceState
from affectstream.stream.messages import (
    Estimate,
    Event,
    EventKind,
    SeqCounter,
    Stats,
    StatsFields,
    StreamRecord,
    Summary,
)

log = logging.getLogger(__name__)

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
_Draft = StreamRecord
_UNNUMBERED: dict[str, Any] = {"stream": "", "seq": -1, "wall": 0}


def _event(kind: EventKind, ts: float, label: str | None = None, value: float | None = None,
           **fields: Any) -> Event:
    return Event(ts=ts, kind=kind, label=label, value=value, **fields, **_UNNUMBERED)


def _r(value: float, places: int = 4) -> float:
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

    def update(self, ts: float, value: float) -> list[_Draft]:
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
            return [_event(EventKind.ONSET, started, self.label, _r(start_value), started=started,
                           confirmed=ts)]
        if value >= config.offset_threshold:  # back up before min_gap_s: the episode goes on
            self._below = None
            return []
        if self._below is None:
            self._below = (ts, value)
        if ts - self._below[0] < config.min_gap_s:
            return []
        return self._end(*self._below, forced=False)

    def close(self, ts: float) -> list[_Draft]:
        """End an open episode now (stream ended or interrupted): no onset is left without an offset."""
        if self.state is EpisodeState.PENDING:
            self.state = EpisodeState.IDLE
        if self.state is not EpisodeState.ACTIVE:
            return []
        end_ts, end_value = self._below if self._below is not None else (max(ts, self._start[0]), self._last_value)
        return self._end(end_ts, end_value, forced=True)

    def _end(self, end_ts: float, end_value: float, forced: bool) -> list[_Draft]:
        self.state = EpisodeState.IDLE
        started = self._start[0]
        duration = round(end_ts - started, 6)
        extra = {"forced": True} if forced else {}
        peak_ts, peak_value = self._peak
        return [
            _event(EventKind.PEAK, peak_ts, self.label, _r(peak_value), started=started, duration=duration),
            _event(EventKind.OFFSET, end_ts, self.label, _r(end_value), started=started, duration=duration,
                   **extra),
        ]


class ShiftDetector:
    """Changes of the dominant label of the smoothed scores, held for a dwell time and by a margin."""

    def __init__(self, labels: tuple[str, ...], config: AnalyticsConfig) -> None:
        self._labels = labels
        self._config = config
        self._smoothed: np.ndarray | None = None
        self._last_ts = 0.0
        self.dominant: int | None = None
        self._candidate: tuple[int, float] | None = None  # (label index, ts since it led)

    def update(self, ts: float, scores: np.ndarray) -> list[_Draft]:
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
        return [_event(EventKind.SHIFT, since, self._labels[leader], _r(smoothed[leader]),
                       previous=self._labels[previous], confirmed=ts)]

    def _smooth(self, ts: float, scores: np.ndarray) -> None:
        tau = self._config.shift_smoothing_s
        if self._smoothed is None or tau == 0:
            self._smoothed = scores.copy()
        else:
            # Time-aware EMA: irregular sampling (drops, rate changes) weighs each estimate by its gap.
            alpha = 1.0 - math.exp(-max(ts - self._last_ts, 0.0) / tau)
            self._smoothed = self._smoothed + alpha * (scores - self._smoothed)
        self._last_ts = ts


@dataclass(frozen=True)
class _Sample:
    ts: float
    scores: np.ndarray
    sentiment: float


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
        self._samples: deque[_Sample] = deque()
        self._origin: float | None = None
        self._k = 1  # index of the next window to complete

    def _end(self) -> float:
        assert self._origin is not None
        return self._origin + self._k * self.hop  # from the origin each time: no drift from summing hops

    def _start(self, end: float) -> float:
        """Where the window ending at ``end`` begins, not before the stream did (overlapping windows)."""
        assert self._origin is not None
        return max(end - self.window, self._origin)

    def add(self, sample: _Sample) -> list[_Draft]:
        if self._origin is None:
            self._origin = sample.ts
        out: list[_Draft] = []
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

    def flush(self, ts: float) -> list[_Draft]:
        """The unfinished window as a ``partial`` summary ending at ``ts``; the next estimate starts afresh."""
        out: list[_Draft] = []
        if self._samples:
            end = max(ts, self._samples[-1].ts)
            out.append(self._summary(list(self._samples), self._start(self._end()), end, partial=True))
        self._samples.clear()
        self._origin = None
        self._k = 1
        return out

    def _summary(self, samples: list[_Sample], start: float, end: float, partial: bool) -> Summary:
        scores = np.stack([s.scores for s in samples])
        mean = scores.mean(axis=0)
        dominant_counts = np.bincount(scores.argmax(axis=1), minlength=len(self._labels))
        share = dominant_counts / len(samples)
        sentiments = np.array([s.sentiment for s in samples])
        return Summary(
            ts=end, window_s=self.window, start=round(start, 6), end=round(end, 6), frames=len(samples),
            mean={label: _r(m) for label, m in zip(self._labels, mean)},
            dominant=self._labels[int(np.argmax(mean))],
            share={label: _r(s) for label, s in zip(self._labels, share)},
            sentiment_mean=_r(float(np.clip(sentiments.mean(), -1.0, 1.0))),
            sentiment_trend=_r(slope_per_second([s.ts for s in samples], sentiments), 6),
            partial=partial, **_UNNUMBERED,
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


_LIFECYCLE_KINDS = {
    SourceState.RUNNING: EventKind.STREAM_STARTED,
    SourceState.RECONNECTING: EventKind.STREAM_RECONNECTING,
    SourceState.ENDED: EventKind.STREAM_ENDED,
    SourceState.FAILED: EventKind.STREAM_ERROR,
}


class StreamSession:
    """All messages of one stream, numbered by one counter (estimates, summaries, events, stats)."""

    def __init__(self, stream_id: str, labels: tuple[str, ...], config: AnalyticsConfig,
                 first_seq: int = 0) -> None:
        if not labels:
            raise ConfigError("a stream session needs at least one label")
        self.stream_id = stream_id
        self.labels = tuple(labels)
        self.config = config
        self._seq = SeqCounter(first_seq)
        self._episodes = [EpisodeTracker(label, config) for label in self.labels]
        self._shifts = ShiftDetector(self.labels, config)
        self._windows = [RollingWindow(w, h, self.labels) for w, h in zip(config.windows_s, config.hops)]
        self._last_ts: float | None = None
        self._dropped_reported = 0

    @property
    def next_seq(self) -> int:
        return self._seq.next_seq

    def on_estimate(self, ts: float, wall: int, scores: ScoreInput, sentiment: float,
                    latency_ms: Mapping[str, float] | None = None, age_ms: float | None = None,
                    faces: tuple[dict[str, Any], ...] | None = None) -> list[StreamRecord]:
        """The ``estimate`` message, then the events and summaries this estimate completes."""
        values = self._check_scores(scores)
        sentiment = float(np.clip(sentiment, -1.0, 1.0)) if math.isfinite(sentiment) else 0.0
        out: list[StreamRecord] = []
        if self._last_ts is not None and ts < self._last_ts:
            # Media time went back (a live source restarted its clock): close what ran on the old clock.
            log.info("stream %s: media time went back from %.3f to %.3f; restarting windows and episodes",
                     self.stream_id, self._last_ts, ts)
            out += self._number(self._close_all(self._last_ts) + self._flush_windows(self._last_ts), wall)
        self._last_ts = ts
        out.append(Estimate(
            stream=self.stream_id, seq=self._seq.take(), ts=ts, wall=wall,
            scores={label: _r(v) for label, v in zip(self.labels, values)}, sentiment=_r(sentiment),
            dominant=self.labels[int(np.argmax(values))], latency_ms=latency_ms, age_ms=age_ms, faces=faces,
        ))
        drafts: list[_Draft] = []
        for tracker, value in zip(self._episodes, values):
            drafts += tracker.update(ts, float(value))
        drafts += self._shifts.update(ts, values)
        sample = _Sample(ts, values, sentiment)
        for window in self._windows:
            drafts += window.add(sample)
        log.debug("stream %s ts=%.3f: %d derived messages", self.stream_id, ts, len(drafts))
        return out + self._number(drafts, wall)

    def on_source_event(self, event: SourceEvent, ts: float) -> list[StreamRecord]:
        """Lifecycle changes as events; a stream that stops or reconnects closes its open episodes."""
        kind = _LIFECYCLE_KINDS.get(event.state)
        if kind is None:  # NOT_STARTED, OPENING: nothing a client needs to know
            return []
        drafts: list[_Draft] = [] if kind is EventKind.STREAM_STARTED else self._close_all(ts)
        terminal = kind in (EventKind.STREAM_ENDED, EventKind.STREAM_ERROR)
        outcome = event.outcome
        if outcome is None and kind is EventKind.STREAM_ENDED:
            outcome = SourceOutcome.ENDED
        drafts.append(_event(
            kind, ts, detail=event.detail, attempt=event.attempt or None, outcome=outcome,
            frames_read=event.frames_read if terminal else None,
            damage=event.damage if terminal else None, restart_ts=event.restart_ts, source=event,
        ))
        return self._number(drafts, event.wall_ms)

    def on_drops(self, ts: float, wall: int, dropped_total: int) -> list[StreamRecord]:
        """A ``frames_dropped`` event when the count rose: ``value``/``total`` so far, ``new`` since last."""
        if dropped_total <= self._dropped_reported:
            return []
        new = dropped_total - self._dropped_reported
        self._dropped_reported = dropped_total
        return self._number([_event(EventKind.FRAMES_DROPPED, ts, None, dropped_total, new=new,
                                    total=dropped_total)], wall)

    def stats(self, ts: float, wall: int, fields: StatsFields) -> Stats:
        return Stats(stream=self.stream_id, seq=self._seq.take(), ts=ts, wall=wall, fields=fields)

    def finish(self, ts: float, wall: int) -> list[StreamRecord]:
        """Close open episodes and flush the unfinished windows as ``partial`` summaries."""
        end = max(ts, self._last_ts) if self._last_ts is not None else ts
        return self._number(self._close_all(end) + self._flush_windows(end), wall)

    def _close_all(self, ts: float) -> list[_Draft]:
        drafts: list[_Draft] = []
        for tracker in self._episodes:
            drafts += tracker.close(ts)
        return drafts

    def _flush_windows(self, ts: float) -> list[_Draft]:
        drafts: list[_Draft] = []
        for window in self._windows:
            drafts += window.flush(ts)
        return drafts

    def _number(self, drafts: list[_Draft], wall: int) -> list[StreamRecord]:
        ordered = sorted(drafts, key=lambda d: d.ts)  # stable: same-ts drafts keep their causal order
        return [replace(d, stream=self.stream_id, seq=self._seq.take(), wall=wall) for d in ordered]

    def _check_scores(self, scores: ScoreInput) -> np.ndarray:
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        if values.shape[0] != len(self.labels):
            raise PipelineError(
                f"stream {self.stream_id}: got {values.shape[0]} scores for {len(self.labels)} labels "
                f"{self.labels}: the head and the session must use the same label set"
            )
        if not np.all(np.isfinite(values)):
            raise PipelineError(f"stream {self.stream_id}: the head produced non-finite scores {values.tolist()}")
        return np.clip(values, 0.0, 1.0)
