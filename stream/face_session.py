"""The faces of one stream over time, sans I/O: observations in, per-face estimates and events out.

Each sampled frame's ``FaceObservation``s (engine/face_engine.py) go to the stream's ``FaceTracker``
(stream/tracking.py), which gives every face a stable id. Per track this keeps:

- a **smoother**: an exponential moving average of the classifier's probabilities over media time
  (time constant ``FaceConfig.smoothing_s``; irregular sampling weighs each frame by its gap), the
  per-face counterpart of the zero-shot head's smoothing;
- **episode trackers** (onset/offset/peak per label, stream/session.py's ``EpisodeTracker``), so that
  events can be per face (``face`` in the event);
- nothing else: a track's state is freed when the tracker reports it lost (``face_lost``), so memory
  follows the faces in view, however long the stream runs.

``FaceSet.update`` returns a ``FaceFrame``: the faces of this frame as ``FaceEstimate`` records, the
primary face (the rule the stream-level estimate is built from: the largest face, the longest tracked
on a tie) and the events the frame completed, not numbered yet (the session numbers them).

Abstention: a face is ``uncertain`` when its smoothed top probability is under
``FaceConfig.uncertain_below``; the stream is ``no_face`` when no face is in view.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from affectstream.engine.face_engine import FaceObservation
from affectstream.engine.labels import EXPRESSION_LABELS, VALENCE
from affectstream.errors import ConfigError
from affectstream.stream.messages import EstimateState, Event, EventKind, FaceEstimate, StreamRecord
from affectstream.stream.session_rules import AnalyticsConfig, Episodes, draft_event, ema, rounded
from affectstream.stream.tracking import FaceTracker, LostTrack, TrackerSettings

_VALENCE = np.array([VALENCE[label] for label in EXPRESSION_LABELS])


@dataclass(frozen=True)
class FaceConfig:
    """How faces become estimates (docs/faces.md)."""

    smoothing_s: float = 0.75  # time constant of the per-face smoother, media seconds; 0 = no smoothing
    # A face whose smoothed top probability is under this is 'uncertain': with seven classes, 1/7 is
    # chance and a face the model reads clearly scores 0.5 or more.
    uncertain_below: float = 0.35
    # Share of whole-frame CLIP in the stream-level estimate when CLIP is loaded (the face gives the rest).
    clip_weight: float = 0.3
    tracker: TrackerSettings = field(default_factory=TrackerSettings)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.smoothing_s) and self.smoothing_s >= 0):
            raise ConfigError(f"face smoothing must be seconds >= 0, got {self.smoothing_s}")
        if not 0.0 <= self.uncertain_below <= 1.0:
            raise ConfigError(f"the uncertainty bound is a probability in [0, 1], got {self.uncertain_below}")
        if not 0.0 <= self.clip_weight <= 1.0:
            raise ConfigError(f"the CLIP weight is in [0, 1], got {self.clip_weight}")


def sentiment_of(probabilities: np.ndarray) -> float:
    """Sentiment in [-1, 1] from expression probabilities (engine/labels.py VALENCE)."""
    return float(np.clip(np.asarray(probabilities, np.float64) @ _VALENCE, -1.0, 1.0))


class _FaceState:
    """What one open track keeps."""

    def __init__(self, track_id: int, first_ts: float, analytics: AnalyticsConfig) -> None:
        self.id = track_id
        self.first_ts = first_ts
        self.smoothed: np.ndarray | None = None
        self.last_ts = first_ts
        self.episodes = Episodes(EXPRESSION_LABELS, analytics)

    def smooth(self, ts: float, probabilities: np.ndarray, tau: float) -> np.ndarray:
        self.smoothed = ema(self.smoothed, probabilities, ts - self.last_ts, tau)
        self.last_ts = ts
        return self.smoothed


@dataclass(frozen=True)
class FaceFrame:
    """The faces of one sampled frame."""

    faces: tuple[FaceEstimate, ...]
    primary: FaceEstimate | None  # the face the stream-level estimate is built from
    primary_scores: np.ndarray | None  # its smoothed probabilities, EXPRESSION_LABELS order
    events: tuple[StreamRecord, ...]  # not numbered yet


class FaceSet:
    """All faces of one stream; see the module docstring."""

    def __init__(self, analytics: AnalyticsConfig, config: FaceConfig) -> None:
        self._analytics = analytics
        self._config = config
        self._tracker = FaceTracker(config.tracker)
        self._faces: dict[int, _FaceState] = {}

    @property
    def open_faces(self) -> int:
        """Tracks with state kept (the faces in view, and those missing for under max_missing_s)."""
        return len(self._faces)

    def update(self, ts: float, observations: Sequence[FaceObservation]) -> FaceFrame:
        update = self._tracker.update(ts, [observation.box for observation in observations])
        events: list[StreamRecord] = [event for lost in update.lost for event in self._end(lost)]
        for track in update.appeared:
            self._faces[track.id] = _FaceState(track.id, track.first_ts, self._analytics)
            events.append(draft_event(EventKind.FACE_APPEARED, track.first_ts, value=rounded(track.box.score),
                                      face=track.id))
        faces: list[FaceEstimate] = []
        smoothed: dict[int, np.ndarray] = {}
        for track in update.tracks:
            state = self._faces[track.id]
            frame_probabilities = np.asarray(observations[track.detection].probabilities, np.float64)
            scores = state.smooth(ts, frame_probabilities, self._config.smoothing_s)
            smoothed[track.id] = scores
            faces.append(self._estimate(track.id, track.box.as_list(), track.box.score, frame_probabilities, scores))
            events += [with_face(event, track.id) for event in state.episodes.update(ts, scores)]
        primary = self._primary(faces)
        return FaceFrame(tuple(faces), primary, None if primary is None else smoothed[primary.id], tuple(events))

    def close(self, ts: float) -> list[StreamRecord]:
        """End every track (the stream ended or reconnects): their episodes close, then face_lost."""
        events: list[StreamRecord] = []
        for lost in self._tracker.reset():
            events += self._end(replace(lost, lost_ts=max(ts, lost.last_ts)))
        return events

    def _end(self, lost: LostTrack) -> list[StreamRecord]:
        state = self._faces.pop(lost.id, None)
        events: list[StreamRecord] = []
        if state is not None:
            events += [with_face(event, lost.id) for event in state.episodes.close(lost.last_ts)]
        events.append(self._lost(lost))
        return events

    @staticmethod
    def _lost(lost: LostTrack) -> Event:
        return draft_event(EventKind.FACE_LOST, lost.lost_ts, face=lost.id, duration=round(lost.last_ts - lost.first_ts, 6),
                           confirmed=lost.last_ts)

    def _estimate(self, face_id: int, box: list[float], score: float, frame: np.ndarray,
                  scores: np.ndarray) -> FaceEstimate:
        top = int(np.argmax(scores))
        state = EstimateState.UNCERTAIN if scores[top] < self._config.uncertain_below else EstimateState.OK
        return FaceEstimate(
            id=face_id, box=(box[0], box[1], box[2], box[3]), score=float(score),
            frame_scores={label: rounded(v) for label, v in zip(EXPRESSION_LABELS, frame)},
            scores={label: rounded(v) for label, v in zip(EXPRESSION_LABELS, scores)},
            dominant=EXPRESSION_LABELS[top], state=state, sentiment=rounded(sentiment_of(scores)),
        )

    def _primary(self, faces: list[FaceEstimate]) -> FaceEstimate | None:
        """The largest face; on equal size, the one tracked longest (the smaller id)."""
        if not faces:
            return None
        return max(faces, key=lambda face: (face.box[2] * face.box[3], -self._faces[face.id].first_ts, -face.id))


def with_face(draft: StreamRecord, face_id: int) -> StreamRecord:
    """A per-face episode event: the tracker's draft, marked with the face it is about."""
    return replace(draft, face=face_id) if isinstance(draft, Event) else draft


def fuse_with_clip(face_scores: np.ndarray, clip_scores: np.ndarray, weight: float) -> np.ndarray:
    """The stream-level scores over EXPRESSION_LABELS: the face's, with whole-frame CLIP's six emotions
    given ``weight`` of the emotional (non-neutral) mass; CLIP has no neutral, so the face keeps it."""
    face = np.asarray(face_scores, np.float64)
    clip = np.clip(np.asarray(clip_scores, np.float64), 0.0, None)
    neutral = face[-1]
    total = clip.sum()
    clip_share = clip / total * (1.0 - neutral) if total > 0 else face[:-1]
    fused = face.copy()
    fused[:-1] = (1.0 - weight) * face[:-1] + weight * clip_share
    return fused
