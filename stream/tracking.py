"""Face tracks per stream: stable ids across sampled frames, in the way of SORT and ByteTrack.

Pure: no threads, no clocks. Time is the media timestamp each call passes (seconds), so gaps in the
media, a sampler's rate and dropped frames all mean the same thing: time between observations.

Each :meth:`FaceTracker.update` matches the frame's detections to the open tracks:

1. every open track is predicted to ``ts`` with a constant velocity (its centre; the size stays);
2. detections with ``score >= high_score`` are matched to the predictions by IoU (Hungarian
   assignment, pairs under ``match_iou`` refused);
3. tracks still unmatched get a second chance against the low-score detections
   (``low_score <= score < high_score``) at the stricter ``low_match_iou``: a face whose score
   dipped (blur, a turn of the head) keeps its track, but a weak detection never starts one;
4. high-score detections left over start new tracks, with ids never used before in this stream;
5. a track unseen for more than ``max_missing_s`` of media time is closed and reported in ``lost``
   once; until then it keeps its id and can be matched again.

A jump back in media time (a seek, a restarted source) ends every track, as :meth:`reset` does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from affectstream.engine.faces import FaceBox, box_iou_xyxy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    """Thresholds of :class:`FaceTracker`; the defaults suit 2-10 Hz sampling of faces."""

    high_score: float = 0.6  # detections at or above start and match tracks
    low_score: float = 0.3  # below: ignored; between: only keep existing tracks alive
    match_iou: float = 0.2  # IoU a high-score detection needs with a track's prediction
    low_match_iou: float = 0.4  # IoU a low-score detection needs (it is less trusted)
    max_missing_s: float = 1.0  # media seconds a track may go unseen and keep its id
    min_hits: int = 1  # observations before a track is reported (>1 hides one-frame false positives)
    max_extrapolation_s: float = 0.5  # motion is extrapolated at most this far past the last sighting
    velocity_gain: float = 0.6  # weight of the newest velocity measurement (1: no smoothing)
    motion: bool = True  # constant-velocity prediction; False matches against the last box itself

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_score <= self.high_score:
            raise ValueError(f"need 0 <= low_score <= high_score, got {self.low_score}, {self.high_score}")
        if self.max_missing_s < 0 or self.max_extrapolation_s < 0:
            raise ValueError("max_missing_s and max_extrapolation_s must be >= 0")
        if self.min_hits < 1:
            raise ValueError("min_hits must be >= 1")


@dataclass(frozen=True, slots=True)
class Track:
    """A track seen in this frame: its id and the detection it was matched to (or started from)."""

    id: int
    box: FaceBox  # this frame's detection, in source pixels
    detection: int  # index of ``box`` in the boxes passed to update()
    first_ts: float  # media time of the first sighting
    hits: int  # sightings so far, this one included


@dataclass(frozen=True, slots=True)
class LostTrack:
    """A track that ended: unseen for longer than ``max_missing_s``, or closed by reset()/close()."""

    id: int
    last_box: FaceBox  # the last detection matched to it
    first_ts: float
    last_ts: float  # media time of the last sighting
    lost_ts: float  # media time at which it was declared lost
    hits: int


@dataclass(frozen=True, slots=True)
class TrackUpdate:
    """What one frame did to the tracks of a stream."""

    ts: float
    tracks: tuple[Track, ...]  # reported tracks seen in this frame, in detection order
    appeared: tuple[Track, ...]  # the subset reported for the first time in this frame
    lost: tuple[LostTrack, ...]  # tracks that ended at this frame
    missing: tuple[int, ...]  # ids of reported tracks still open but not seen in this frame

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(track.id for track in self.tracks)


class _State:
    """An open track: the last detection plus a constant-velocity estimate of its centre."""

    __slots__ = ("id", "box", "first_ts", "last_ts", "hits", "vx", "vy", "reported")

    def __init__(self, track_id: int, box: FaceBox, ts: float) -> None:
        self.id = track_id
        self.box = box
        self.first_ts = ts
        self.last_ts = ts
        self.hits = 1
        self.vx = 0.0  # pixels per media second
        self.vy = 0.0
        self.reported = False

    def predict(self, ts: float, settings: TrackerSettings) -> tuple[float, float, float, float]:
        """Corner box ``x1 y1 x2 y2`` expected at ``ts``."""
        box = self.box
        shift = min(max(ts - self.last_ts, 0.0), settings.max_extrapolation_s) if settings.motion else 0.0
        x = box.x + self.vx * shift
        y = box.y + self.vy * shift
        return (x, y, x + box.w, y + box.h)

    def observe(self, box: FaceBox, ts: float, settings: TrackerSettings) -> None:
        dt = ts - self.last_ts
        if dt > 0:
            (cx, cy), (px, py) = box.center, self.box.center
            mx, my = (cx - px) / dt, (cy - py) / dt
            # The second sighting is the first velocity measurement: take it whole.
            gain = 1.0 if self.hits == 1 else settings.velocity_gain
            self.vx += gain * (mx - self.vx)
            self.vy += gain * (my - self.vy)
        self.box = box
        self.last_ts = ts
        self.hits += 1

    def ended(self, lost_ts: float) -> LostTrack:
        return LostTrack(self.id, self.box, self.first_ts, self.last_ts, lost_ts, self.hits)


class FaceTracker:
    """Face tracks of one stream; see the module docstring for the matching rules."""

    def __init__(self, settings: TrackerSettings | None = None) -> None:
        self.settings = settings or TrackerSettings()
        self._open: list[_State] = []
        self._next_id = 1
        self._last_ts: float | None = None
        self._closed = False

    @property
    def open_ids(self) -> tuple[int, ...]:
        """Ids of the reported tracks still open (seen within ``max_missing_s``)."""
        return tuple(state.id for state in self._open if state.reported)

    def update(self, ts: float, boxes: Sequence[FaceBox]) -> TrackUpdate:
        """Match this frame's detections (media time ``ts``, seconds) to the stream's tracks."""
        if self._closed:
            raise RuntimeError("FaceTracker.update() after close()")
        lost = list(self._rewind(ts)) + self._expire(ts)
        self._last_ts = ts
        high = [i for i, box in enumerate(boxes) if box.score >= self.settings.high_score]
        low = [i for i, box in enumerate(boxes) if self.settings.low_score <= box.score < self.settings.high_score]
        matched: dict[int, _State] = {}  # detection index -> track
        unmatched = self._match(self._open, boxes, high, ts, self.settings.match_iou, matched)
        self._match(unmatched, boxes, low, ts, self.settings.low_match_iou, matched)
        for index in (i for i in high if i not in matched):
            matched[index] = self._start(boxes[index], ts)
        seen = {id(state) for state in matched.values()}
        # A track that has not yet been reported is dropped at its first miss (SORT's tentative tracks).
        self._open = [s for s in self._open if id(s) in seen or s.reported]
        return self._report(ts, boxes, matched, seen, lost)

    def reset(self) -> tuple[LostTrack, ...]:
        """End every open track (a stream restart, a seek); ids keep counting up."""
        lost_ts = self._last_ts if self._last_ts is not None else 0.0
        lost = tuple(state.ended(lost_ts) for state in self._open if state.reported)
        self._open = []
        self._last_ts = None
        return lost

    def close(self) -> tuple[LostTrack, ...]:
        """End every open track at the end of the stream; the tracker takes no more updates."""
        lost = self.reset()
        self._closed = True
        return lost

    # --- steps of update() ---

    def _rewind(self, ts: float) -> tuple[LostTrack, ...]:
        if self._last_ts is not None and ts < self._last_ts:
            log.info("media time went back from %.3f to %.3f s: face tracks restart", self._last_ts, ts)
            return self.reset()
        return ()

    def _expire(self, ts: float) -> list[LostTrack]:
        limit = self.settings.max_missing_s
        ended = [s for s in self._open if ts - s.last_ts > limit]
        self._open = [s for s in self._open if ts - s.last_ts <= limit]
        return [state.ended(ts) for state in ended if state.reported]

    def _match(self, tracks: list[_State], boxes: Sequence[FaceBox], candidates: list[int], ts: float,
               min_iou: float, matched: dict[int, _State]) -> list[_State]:
        """Assign ``candidates`` (detection indices) to ``tracks``; returns the tracks left unmatched."""
        if not tracks or not candidates:
            return list(tracks)
        predicted = np.array([state.predict(ts, self.settings) for state in tracks], np.float64)
        detected = np.array([(boxes[i].x, boxes[i].y, boxes[i].x2, boxes[i].y2) for i in candidates], np.float64)
        iou = box_iou_xyxy(predicted, detected)
        taken: set[int] = set()
        for row, column in assign_max(np.where(iou >= min_iou, iou, 0.0)):
            if iou[row, column] < min_iou:
                continue
            index = candidates[column]
            tracks[row].observe(boxes[index], ts, self.settings)
            matched[index] = tracks[row]
            taken.add(row)
        return [state for row, state in enumerate(tracks) if row not in taken]

    def _start(self, box: FaceBox, ts: float) -> _State:
        state = _State(self._next_id, box, ts)
        self._next_id += 1
        self._open.append(state)
        return state

    def _report(self, ts: float, boxes: Sequence[FaceBox], matched: dict[int, _State], seen: set[int],
                lost: list[LostTrack]) -> TrackUpdate:
        tracks, appeared = [], []
        for index in sorted(matched):
            state = matched[index]
            if state.hits < self.settings.min_hits:
                continue
            track = Track(state.id, boxes[index], index, state.first_ts, state.hits)
            tracks.append(track)
            if not state.reported:
                state.reported = True
                appeared.append(track)
        missing = tuple(s.id for s in self._open if s.reported and id(s) not in seen)
        return TrackUpdate(ts, tuple(tracks), tuple(appeared), tuple(lost), missing)


def assign_max(score: np.ndarray) -> list[tuple[int, int]]:
    """Rows and columns paired to maximise the summed ``score`` (Hungarian method, any shape).

    Every row (or every column, when there are fewer columns) is paired; callers drop the pairs
    whose score is too low.
    """
    if score.size == 0:
        return []
    if score.shape[0] > score.shape[1]:
        return [(row, column) for column, row in assign_max(score.T)]
    return _hungarian(score.max() - score)


def _hungarian(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost assignment of every row of ``cost`` (rows <= columns), O(rows^2 * columns).

    The shortest-augmenting-path form with row and column potentials (Kuhn-Munkres).
    """
    rows, columns = cost.shape
    u = np.zeros(rows + 1)
    v = np.zeros(columns + 1)
    owner = np.zeros(columns + 1, dtype=np.int64)  # owner[j]: row (1-based) given column j; 0 none
    way = np.zeros(columns + 1, dtype=np.int64)
    for row in range(1, rows + 1):
        owner[0] = row
        column = 0
        best = np.full(columns + 1, np.inf)
        used = np.zeros(columns + 1, dtype=bool)
        while owner[column] != 0:
            used[column] = True
            current = owner[column]
            reduced = cost[current - 1] - u[current] - v[1:]
            free = ~used[1:]
            improve = free & (reduced < best[1:])
            best[1:][improve] = reduced[improve]
            way[1:][improve] = column
            candidates = np.where(free, best[1:], np.inf)
            step = int(np.argmin(candidates)) + 1
            delta = candidates[step - 1]
            u[owner[used]] += delta
            v[used] -= delta
            best[~used] -= delta
            column = step
        while column != 0:
            previous = way[column]
            owner[column] = owner[previous]
            column = previous
    return [(int(owner[j]) - 1, j - 1) for j in range(1, columns + 1) if owner[j] != 0]
