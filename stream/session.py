"""The analytics of one stream, sans I/O: estimates and lifecycle in, numbered protocol records out.

``StreamSession`` turns each sampled frame into an ``estimate`` record and into whatever it completes
(events, summaries: the rules are in stream/session_rules.py). With the face stage, the estimate is
built from the stream's faces (stream/face_session.py: tracks, per-face smoothing and events, the
primary face), fused with whole-frame CLIP when CLIP is loaded, and carries a state: ``ok``,
``no_face`` (nobody in view: no dominant label, zero scores, never "neutral" or the last value) or
``uncertain``.

Event records carry the media time of what they describe (an onset's ``ts`` is where the episode
began, a peak's where its maximum was), so they can be earlier than the estimate that confirmed them;
``seq`` is the order of emission. Nothing here reads a clock: media time and wall time are passed in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from affectstream.engine.face_engine import FaceObservation
from affectstream.engine.labels import EMOTIONS, EXPRESSION_LABELS
from affectstream.errors import ConfigError, PipelineError
from affectstream.stream.face_session import FaceConfig, FaceSet, fuse_with_clip, sentiment_of
from affectstream.stream.frames import SourceEvent, SourceState
from affectstream.stream.messages import (
    TERMINAL_KINDS,
    Estimate,
    EstimateState,
    EventKind,
    FaceEstimate,
    SeqCounter,
    Stats,
    StatsFields,
    StreamRecord,
)
from affectstream.stream.session_rules import (
    AnalyticsConfig,
    Draft,
    Episodes,
    RollingWindow,
    Sample,
    ScoreInput,
    ShiftDetector,
    draft_event,
    rounded,
    slope_per_second,
)

log = logging.getLogger(__name__)

__all__ = ["AnalyticsConfig", "StreamSession", "slope_per_second"]

_LIFECYCLE_KINDS = {
    SourceState.RUNNING: EventKind.STREAM_STARTED,
    SourceState.RECONNECTING: EventKind.STREAM_RECONNECTING,
    SourceState.ENDED: EventKind.STREAM_ENDED,
    SourceState.FAILED: EventKind.STREAM_ERROR,
}


class StreamSession:
    """All messages of one stream, numbered by one counter (estimates, summaries, events, stats).

    Whole-frame mode (``faces=None``): ``on_estimate`` with the head's scores over ``labels``. Face
    mode (``faces=FaceConfig(...)``, labels ``EXPRESSION_LABELS``): ``on_faces`` with the frame's face
    observations and, when CLIP is loaded, its scores over the six emotions.
    """

    def __init__(self, stream_id: str, labels: tuple[str, ...], config: AnalyticsConfig,
                 first_seq: int = 0, faces: FaceConfig | None = None) -> None:
        if not labels:
            raise ConfigError("a stream session needs at least one label")
        if faces is not None and tuple(labels) != EXPRESSION_LABELS:
            raise ConfigError(f"a session with faces scores {EXPRESSION_LABELS}, got labels {tuple(labels)}")
        self.stream_id = stream_id
        self.labels = tuple(labels)
        self.config = config
        self._seq = SeqCounter(first_seq)
        self._episodes = Episodes(self.labels, config)
        self._shifts = ShiftDetector(self.labels, config)
        self._windows = [RollingWindow(w, h, self.labels) for w, h in zip(config.windows_s, config.hops)]
        self._face_config = faces
        self._faces = FaceSet(config, faces) if faces is not None else None
        self._last_ts: float | None = None
        self._dropped_reported = 0

    @property
    def next_seq(self) -> int:
        return self._seq.next_seq

    @property
    def has_faces(self) -> bool:
        """Face mode (``on_faces``), rather than whole-frame scores (``on_estimate``)."""
        return self._faces is not None

    @property
    def open_faces(self) -> int:
        """Face tracks whose state this session keeps (0 without the face stage)."""
        return self._faces.open_faces if self._faces is not None else 0

    def on_estimate(self, ts: float, wall: int, scores: ScoreInput, sentiment: float,
                    latency_ms: Mapping[str, float] | None = None, age_ms: float | None = None) -> list[StreamRecord]:
        """Whole-frame mode: the ``estimate`` record, then the events and summaries it completes."""
        if self._faces is not None:
            raise PipelineError(f"stream {self.stream_id} analyses faces: call on_faces")
        values = self._checked(scores, self.labels, "the head")
        out = self._rewind(ts, wall)
        return out + self._emit(ts, wall, values, _finite(sentiment), self.labels[int(np.argmax(values))], None,
                                None, [], latency_ms, age_ms)

    def on_faces(self, ts: float, wall: int, observations: Sequence[FaceObservation],
                 clip: tuple[np.ndarray, float] | None = None, latency_ms: Mapping[str, float] | None = None,
                 age_ms: float | None = None, source_size: tuple[int, int] | None = None) -> list[StreamRecord]:
        """Face mode: the faces of this frame tracked and smoothed, the stream estimate built from the
        primary face (fused with CLIP's scores and sentiment when given), and what they complete."""
        if self._faces is None or self._face_config is None:
            raise PipelineError(f"stream {self.stream_id} has no face stage: call on_estimate")
        out = self._rewind(ts, wall)
        frame = self._faces.update(ts, observations)
        if frame.primary is None or frame.primary_scores is None:
            values = np.zeros(len(self.labels))
            return out + self._emit(ts, wall, values, 0.0, None, EstimateState.NO_FACE, frame.faces,
                                    list(frame.events), latency_ms, age_ms, source_size=source_size)
        values = frame.primary_scores
        sentiment = sentiment_of(values)
        if clip is not None:
            weight = self._face_config.clip_weight
            values = fuse_with_clip(values, self._checked(clip[0], EMOTIONS, "CLIP"), weight)
            sentiment = (1.0 - weight) * sentiment + weight * _finite(clip[1])
        return out + self._emit(ts, wall, values, sentiment, self.labels[int(np.argmax(values))],
                                frame.primary.state, frame.faces, list(frame.events), latency_ms, age_ms,
                                primary=frame.primary.id, source_size=source_size)

    def _emit(self, ts: float, wall: int, values: np.ndarray, sentiment: float, dominant: str | None,
              state: EstimateState | None, faces: tuple[FaceEstimate, ...] | None, drafts: list[Draft],
              latency_ms: Mapping[str, float] | None, age_ms: float | None,
              primary: int | None = None, source_size: tuple[int, int] | None = None) -> list[StreamRecord]:
        self._last_ts = ts
        sentiment = float(np.clip(sentiment, -1.0, 1.0))
        estimate = Estimate(
            stream=self.stream_id, seq=self._seq.take(), ts=ts, wall=wall,
            scores={label: rounded(v) for label, v in zip(self.labels, values)}, sentiment=rounded(sentiment),
            dominant=dominant, state=state, latency_ms=latency_ms, age_ms=age_ms, faces=faces, primary=primary,
            source_size=source_size,
        )
        drafts += self._episodes.update(ts, values)
        if dominant is not None:  # nobody in view: the dominant emotion neither shifts nor holds
            drafts += self._shifts.update(ts, values)
        sample = Sample(ts, values, sentiment, dominant, state)
        for window in self._windows:
            drafts += window.add(sample)
        log.debug("stream %s ts=%.3f: %d derived messages", self.stream_id, ts, len(drafts))
        return [estimate, *self._number(drafts, wall)]

    def _rewind(self, ts: float, wall: int) -> list[StreamRecord]:
        if self._last_ts is None or ts >= self._last_ts:
            return []
        # Media time went back (a live source restarted its clock): close what ran on the old clock.
        log.info("stream %s: media time went back from %.3f to %.3f; restarting windows and episodes",
                 self.stream_id, self._last_ts, ts)
        return self._number(self._close_all(self._last_ts) + self._flush_windows(self._last_ts), wall)

    def on_source_event(self, event: SourceEvent, ts: float) -> list[StreamRecord]:
        """Lifecycle changes as events; a stream that stops or reconnects closes its open episodes."""
        kind = _LIFECYCLE_KINDS.get(event.state)
        if kind is None:  # NOT_STARTED, OPENING: nothing a client needs to know
            return []
        drafts: list[Draft] = [] if kind is EventKind.STREAM_STARTED else self._close_all(ts)
        terminal = kind in TERMINAL_KINDS
        drafts.append(draft_event(
            kind, ts, detail=event.detail, attempt=event.attempt or None, outcome=event.ended_as,
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
        return self._number([draft_event(EventKind.FRAMES_DROPPED, ts, None, dropped_total, new=new,
                                    total=dropped_total)], wall)

    def stats(self, ts: float, wall: int, fields: StatsFields) -> Stats:
        return Stats(stream=self.stream_id, seq=self._seq.take(), ts=ts, wall=wall, fields=fields)

    def finish(self, ts: float, wall: int) -> list[StreamRecord]:
        """Close open episodes and flush the unfinished windows as ``partial`` summaries."""
        end = max(ts, self._last_ts) if self._last_ts is not None else ts
        return self._number(self._close_all(end) + self._flush_windows(end), wall)

    def _close_all(self, ts: float) -> list[Draft]:
        drafts = self._episodes.close(ts)
        if self._faces is not None:
            drafts += self._faces.close(ts)
        return drafts

    def _flush_windows(self, ts: float) -> list[Draft]:
        drafts: list[Draft] = []
        for window in self._windows:
            drafts += window.flush(ts)
        return drafts

    def _number(self, drafts: list[Draft], wall: int) -> list[StreamRecord]:
        ordered = sorted(drafts, key=lambda d: d.ts)  # stable: same-ts drafts keep their causal order
        return [replace(d, stream=self.stream_id, seq=self._seq.take(), wall=wall) for d in ordered]

    def _checked(self, scores: ScoreInput, labels: tuple[str, ...], source: str) -> np.ndarray:
        """One score per label, finite, clipped to [0, 1]; a head that breaks that is a bug, said plainly."""
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        if values.shape[0] != len(labels):
            raise PipelineError(
                f"stream {self.stream_id}: got {values.shape[0]} scores from {source} for {len(labels)} labels "
                f"{labels}: the head and the session must use the same label set"
            )
        if not np.all(np.isfinite(values)):
            raise PipelineError(f"stream {self.stream_id}: {source} produced non-finite scores {values.tolist()}")
        return np.clip(values, 0.0, 1.0)


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0
