"""The whole-file report of ``affectstream analyze``: estimates and events in, one summary record out.

Pure logic: ``add_record`` takes the very messages the pipeline emitted for the file, ``summary()``
computes a ``FileSummary`` record, and ``FileSummary.to_dict`` is its JSON form (the summary file).
The HTML report (stream/html_report.py) and the per-frame table's shares (stream/frame_table.py) are
read from the same record, so a figure is computed once. Time shares and means are weighted by the
media time each estimate stands for (``sample_weights``: the gap to the next one), so irregular
sampling (drops, a corrupt stretch) does not skew them.

Memory is flat in the length of the file: each estimate is kept as a few numbers in typed arrays
(about 100 bytes with seven labels, so an hour at 2 Hz is under 1 MB), faces as their sums and lanes,
events as counts plus at most ``max_events`` notes.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from affectstream.engine.labels import NO_FACE
from affectstream.errors import ConfigError
from affectstream.stream.messages import Estimate, EstimateState, Event, EventKind, Record
from affectstream.stream.session_rules import rounded, slope_per_second
from affectstream.stream.sources import SourceDamage

_STATES = tuple(EstimateState)
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Moment:
    """A top moment of one label: its media time, the score, and (with faces) the primary face then."""

    ts: float
    score: float
    face: int | None = None
    box: Box | None = None  # x, y, w, h in source pixels

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ts": rounded(self.ts, 6), "score": rounded(self.score)}
        if self.face is not None:
            out["face"] = self.face
        if self.box is not None:
            out["box"] = [round(float(v), 1) for v in self.box]
        return out


@dataclass(frozen=True)
class Segment:
    """A stretch of media time with one dominant label (or ``no_face``): the emotional arc."""

    start: float
    end: float
    label: str

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {"start": rounded(self.start, 3), "end": rounded(self.end, 3), "label": self.label}


@dataclass(frozen=True)
class TimelinePoint:
    ts: float
    scores: Mapping[str, float]
    sentiment: float

    def to_dict(self) -> dict[str, Any]:
        return {"ts": self.ts, "scores": dict(self.scores), "sentiment": self.sentiment}


@dataclass(frozen=True)
class SentimentSummary:
    mean: float = 0.0
    min: float = 0.0
    max: float = 0.0
    trend_per_min: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "min": self.min, "max": self.max, "trend_per_min": self.trend_per_min}


@dataclass(frozen=True)
class FaceSummary:
    """One face track over the file: when it was seen, its mean smoothed scores, its own arc (a lane)."""

    id: int
    first: float
    last: float
    frames: int
    dominant: str
    mean: Mapping[str, float]
    segments: tuple[Segment, ...]

    @property
    def seen_s(self) -> float:
        return sum(segment.duration_s for segment in self.segments)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "first": rounded(self.first, 3), "last": rounded(self.last, 3), "frames": self.frames,
                "dominant": self.dominant, "mean": dict(self.mean),
                "segments": [segment.to_dict() for segment in self.segments]}


@dataclass(frozen=True)
class EventNote:
    """One event of the file, as the report lists it."""

    ts: float
    kind: EventKind
    label: str | None = None
    face: int | None = None
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ts": rounded(self.ts, 3), "kind": self.kind.value}
        for name in ("label", "face", "value"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


@dataclass(frozen=True)
class FileSummary:
    """What a file's estimates and events add up to (docs/cli.md, "analyze": the summary's fields)."""

    labels: tuple[str, ...]
    frames: int
    threshold: float
    start: float | None
    end: float | None
    duration_s: float
    share: Mapping[str, float]  # of time each label (and no_face, with faces) was the dominant one; sums to 1
    above_threshold: Mapping[str, float]
    mean: Mapping[str, float]
    dominant: str | None
    sentiment: SentimentSummary
    timeline: tuple[TimelinePoint, ...]
    top_moments: Mapping[str, tuple[Moment, ...]]
    segments: tuple[Segment, ...]
    states: Mapping[str, float] | None  # with faces: share of time ok, no_face, uncertain
    events: Mapping[str, int]
    onsets: Mapping[str, int]
    event_list: tuple[EventNote, ...]
    events_left_out: int  # events beyond the notes kept (counted in ``events``, not listed)
    faces: tuple[FaceSummary, ...] | None

    @property
    def has_faces(self) -> bool:
        return self.states is not None

    def to_dict(self, source: Mapping[str, Any] | None = None, damage: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The summary's JSON object (without ``processing``, which the command adds)."""
        out: dict[str, Any] = {
            "source": dict(source or {}),
            "labels": list(self.labels),
            "frames": self.frames,
            "threshold": self.threshold,
            "start": self.start,
            "end": self.end,
            "duration_s": self.duration_s,
            "share": dict(self.share),
            "above_threshold": dict(self.above_threshold),
            "mean": dict(self.mean),
            "dominant": self.dominant,
            "sentiment": self.sentiment.to_dict(),
            "timeline": [point.to_dict() for point in self.timeline],
            "top_moments": {label: [moment.to_dict() for moment in moments]
                            for label, moments in self.top_moments.items()},
            "segments": [segment.to_dict() for segment in self.segments],
        }
        if self.states is not None:
            out["states"] = dict(self.states)
        out["events"] = dict(self.events)
        out["onsets"] = dict(self.onsets)
        out["event_list"] = [note.to_dict() for note in self.event_list]
        if self.events_left_out:
            out["event_list_left_out"] = self.events_left_out
        if self.faces is not None:
            out["faces"] = [face.to_dict() for face in self.faces]
        out["damage"] = dict(damage or {})
        return out


class FileReport:
    """Accumulates one stream's estimates and events; ``summary()`` is the analyze summary.

    ``share`` is the share of time each label was the dominant one (neutral, and ``no_face`` with the
    face stage, included), so it sums to 1 whatever the model's score scale; ``above_threshold`` is
    the share of time each score was at or above ``threshold``. Means and sentiment are over the
    estimates that had a face (all of them without the face stage). ``segments`` is the arc: runs of
    the label dominant for most of each window of ``min_segment_s`` (longer for a long file: its
    duration over ``max_segments``), equal neighbours joined (``arc``).
    """

    def __init__(self, labels: tuple[str, ...], threshold: float = 0.5, top_k: int = 5,
                 timeline_points: int = 500, min_separation_s: float = 5.0, min_segment_s: float = 2.0,
                 max_segments: int = 120, max_events: int = 1000) -> None:
        if not labels:
            raise ConfigError("a file report needs at least one label")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold is a score in [0, 1], got {threshold}")
        if top_k < 0 or timeline_points < 1:
            raise ConfigError(f"top_k must be >= 0 and timeline_points >= 1, got {top_k}, {timeline_points}")
        if not (math.isfinite(min_separation_s) and min_separation_s >= 0):
            raise ConfigError(f"min_separation_s must be seconds >= 0, got {min_separation_s}")
        if not (math.isfinite(min_segment_s) and min_segment_s >= 0) or max_segments < 1 or max_events < 0:
            raise ConfigError(f"min_segment_s must be seconds >= 0, max_segments >= 1 and max_events >= 0, got "
                              f"{min_segment_s}, {max_segments}, {max_events}")
        self.labels = tuple(labels)
        self.threshold = threshold
        self.top_k = top_k
        self.timeline_points = timeline_points
        self.min_separation_s = min_separation_s
        self.min_segment_s = min_segment_s
        self.max_segments = max_segments
        self.max_events = max_events
        self._index = {label: i for i, label in enumerate(self.labels)}
        # One row per estimate, in typed arrays: flat memory over an hour.
        self._ts = array("d")
        self._scores = array("d")  # len(labels) per row
        self._sentiment = array("d")
        self._dominant = array("b")  # label index; -1: no face
        self._states = array("b")  # index in EstimateState; -1: no state (no face stage)
        self._primary = array("q")  # the primary face's id; -1: none
        self._boxes = array("f")  # its box, 4 per row (nan without one)
        self._faces: dict[int, _FaceTrack] = {}
        self._events: Counter[str] = Counter()
        self._onsets: Counter[str] = Counter()
        self._notes: list[EventNote] = []
        self._notes_left_out = 0

    def add_estimate(self, ts: float, scores: Sequence[float] | np.ndarray, sentiment: float,
                     dominant: str | None = None, state: EstimateState | None = None,
                     primary: int | None = None, box: Box | None = None) -> None:
        """One estimate; ``dominant`` None with a state means no face (None alone: the scores' argmax).
        ``primary`` and ``box``: the face the estimate was built from (for the top moments' thumbnails)."""
        values = np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), 0.0, 1.0)
        if values.shape[0] != len(self.labels):
            raise ConfigError(f"got {values.shape[0]} scores for the {len(self.labels)} labels {self.labels}")
        if dominant is None:
            dominant = NO_FACE if state is EstimateState.NO_FACE else self.labels[int(np.argmax(values))]
        if dominant != NO_FACE and dominant not in self._index:
            raise ConfigError(f"dominant label {dominant!r} is not one of {self.labels}")
        self._ts.append(float(ts))
        self._scores.extend(values.tolist())
        self._sentiment.append(float(np.clip(sentiment, -1.0, 1.0)))
        self._dominant.append(-1 if dominant == NO_FACE else self._index[dominant])
        self._states.append(-1 if state is None else _STATES.index(state))
        self._primary.append(-1 if primary is None else int(primary))
        self._boxes.extend(box if box is not None else (math.nan,) * 4)

    def add_event(self, kind: EventKind, label: str | None = None, ts: float | None = None,
                  face: int | None = None, value: float | None = None) -> None:
        self._events[kind.value] += 1
        if kind is EventKind.ONSET and label is not None:
            self._onsets[label] += 1
        if ts is None:
            return
        if len(self._notes) < self.max_events:
            self._notes.append(EventNote(ts=float(ts), kind=kind, label=label, face=face, value=value))
        else:
            self._notes_left_out += 1

    def add_record(self, record: Record) -> None:
        """Feed one protocol record: estimates (and their faces) and events count, others are ignored."""
        if isinstance(record, Estimate):
            primary = next((face for face in record.faces or () if face.id == record.primary), None)
            self.add_estimate(record.ts, [record.scores.get(label, 0.0) for label in self.labels], record.sentiment,
                              record.dominant, record.state, primary=None if primary is None else primary.id,
                              box=None if primary is None else primary.box)
            for face in record.faces or ():
                track = self._faces.get(face.id)
                if track is None:
                    track = self._faces[face.id] = _FaceTrack(face.id, len(self.labels))
                track.add(record.ts, [face.scores.get(label, 0.0) for label in self.labels],
                          self._index.get(face.dominant, -1))
        elif isinstance(record, Event):
            self.add_event(record.kind, record.label, record.ts, record.face, record.value)

    @property
    def frames(self) -> int:
        return len(self._ts)

    @property
    def has_faces(self) -> bool:
        return any(state >= 0 for state in self._states)

    def to_dict(self, source: Mapping[str, Any] | None = None, damage: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.summary().to_dict(source, damage)

    def summary(self) -> FileSummary:
        has_faces = self.has_faces
        faces = (tuple(track.summary(self.labels, self._window_s(track.span_s)) for track in
                       sorted(self._faces.values(), key=lambda t: t.id)) if has_faces else None)
        common: dict[str, Any] = {
            "labels": self.labels, "frames": self.frames, "threshold": self.threshold,
            "events": dict(sorted(self._events.items())),
            "onsets": {label: self._onsets.get(label, 0) for label in self.labels},
            "event_list": tuple(sorted(self._notes, key=lambda note: note.ts)),
            "events_left_out": self._notes_left_out, "faces": faces,
        }
        if not self.frames:
            zeros = {label: 0.0 for label in self.labels}
            return FileSummary(
                **common, start=None, end=None, duration_s=0.0, share=self._share_keys(dict(zeros), has_faces),
                above_threshold=dict(zeros), mean=dict(zeros), dominant=None, sentiment=SentimentSummary(),
                timeline=(), top_moments={label: () for label in self.labels}, segments=(), states=None)
        return self._analysis(common, has_faces)

    def _share_keys(self, share: dict[str, float], has_faces: bool) -> dict[str, float]:
        if has_faces:
            share.setdefault(NO_FACE, 0.0)
        return share

    def _window_s(self, duration_s: float) -> float:
        return max(self.min_segment_s, duration_s / self.max_segments)

    def _analysis(self, common: dict[str, Any], has_faces: bool) -> FileSummary:
        n = len(self.labels)
        order = np.argsort(np.frombuffer(self._ts, dtype=np.float64), kind="stable")
        ts = np.frombuffer(self._ts, dtype=np.float64)[order]
        scores = np.frombuffer(self._scores, dtype=np.float64).reshape(-1, n)[order]
        sentiment = np.frombuffer(self._sentiment, dtype=np.float64)[order]
        dominant = np.frombuffer(self._dominant, dtype=np.int8)[order]
        weights = sample_weights(ts)
        total = float(weights.sum())
        seen = dominant >= 0
        seen_total = float(weights[seen].sum())
        above = (scores >= self.threshold).astype(np.float64)
        by_label = np.bincount(dominant[seen].astype(np.int64), weights=weights[seen], minlength=n)
        no_face = float(weights[~seen].sum())
        share = {label: rounded(by_label[i] / total) for i, label in enumerate(self.labels)}
        if has_faces:
            share[NO_FACE] = rounded(no_face / total)
        mean = weights[seen] @ scores[seen] / seen_total if seen_total > 0 else np.zeros(n)
        states = None
        if has_faces:
            state_index = np.frombuffer(self._states, dtype=np.int8)[order]
            states = {state.value: rounded(float(weights[state_index == i].sum()) / total)
                      for i, state in enumerate(_STATES)}
        primary = np.frombuffer(self._primary, dtype=np.int64)[order]
        boxes = np.frombuffer(self._boxes, dtype=np.float32).reshape(-1, 4)[order]
        return FileSummary(
            **common,
            start=rounded(ts[0], 6),
            end=rounded(ts[-1], 6),
            duration_s=rounded(total, 6),
            share=self._share_keys(share, has_faces),
            above_threshold=self._per_label(weights @ above / total),
            mean=self._per_label(mean),
            dominant=self.labels[int(np.argmax(mean))] if seen_total > 0 else None,
            sentiment=SentimentSummary(
                mean=rounded(float(weights[seen] @ sentiment[seen]) / seen_total) if seen_total > 0 else 0.0,
                min=rounded(sentiment[seen].min()) if seen.any() else 0.0,
                max=rounded(sentiment[seen].max()) if seen.any() else 0.0,
                trend_per_min=rounded(60.0 * slope_per_second(ts[seen], sentiment[seen]), 6),
            ),
            timeline=self._timeline(ts, scores, sentiment),
            top_moments={
                label: tuple(_moment(ts, scores[:, i], primary, boxes, j)
                             for j in top_moment_indices(ts, scores[:, i], self.top_k, self.min_separation_s))
                for i, label in enumerate(self.labels)
            },
            segments=arc(ts, weights, [self.labels[d] if d >= 0 else NO_FACE for d in dominant.tolist()],
                         self._window_s(total)),
            states=states,
        )

    def _per_label(self, values: np.ndarray) -> dict[str, float]:
        return {label: rounded(v) for label, v in zip(self.labels, values)}

    def _timeline(self, ts: np.ndarray, scores: np.ndarray, sentiment: np.ndarray) -> tuple[TimelinePoint, ...]:
        """At most ``timeline_points`` points: consecutive estimates averaged in equal-count buckets."""
        buckets = np.array_split(np.arange(len(ts)), min(self.timeline_points, len(ts)))
        return tuple(
            TimelinePoint(ts=rounded(ts[b].mean(), 3), scores=self._per_label(scores[b].mean(axis=0)),
                          sentiment=rounded(sentiment[b].mean()))
            for b in buckets
        )


def _moment(ts: np.ndarray, values: np.ndarray, primary: np.ndarray, boxes: np.ndarray, i: int) -> Moment:
    face = int(primary[i]) if primary[i] >= 0 else None
    box = tuple(float(v) for v in boxes[i]) if face is not None and not np.isnan(boxes[i]).any() else None
    return Moment(ts=float(ts[i]), score=float(values[i]), face=face, box=box)  # type: ignore[arg-type]


class _FaceTrack:
    """One face id over the file: its score sums and its lane (media time and dominant label per sighting)."""

    def __init__(self, face_id: int, n_labels: int) -> None:
        self.id = face_id
        self._sum = np.zeros(n_labels)
        self._ts = array("d")
        self._dominant = array("b")

    @property
    def frames(self) -> int:
        return len(self._ts)

    @property
    def span_s(self) -> float:
        return self._ts[-1] - self._ts[0] if self._ts else 0.0

    def add(self, ts: float, scores: Sequence[float], dominant: int) -> None:
        self._sum += np.asarray(scores, np.float64)
        self._ts.append(float(ts))
        self._dominant.append(dominant)

    def summary(self, labels: tuple[str, ...], window_s: float) -> FaceSummary:
        mean = self._sum / max(1, self.frames)
        top = labels[int(np.argmax(mean))]
        ts = np.frombuffer(self._ts, dtype=np.float64)
        names = [labels[d] if d >= 0 else top for d in self._dominant]
        return FaceSummary(id=self.id, first=float(ts[0]), last=float(ts[-1]), frames=self.frames, dominant=top,
                           mean={label: rounded(v) for label, v in zip(labels, mean)},
                           segments=arc(ts, sample_weights(ts), names, window_s))


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


def arc(ts: np.ndarray, weights: np.ndarray, labels: Sequence[str], window_s: float) -> tuple[Segment, ...]:
    """The arc: media time cut into windows of ``window_s`` from the first estimate, each window given
    the label that was dominant for most of its time (an estimate's time counts in the window it
    starts in; a window no estimate starts in continues the one before), equal neighbours joined.
    Shares are exact; the arc is what a person reads, so flicker shorter than a window is smoothed out."""
    if len(ts) == 0:
        return ()
    names = sorted(set(labels))
    code = np.array([names.index(label) for label in labels])
    start = float(ts[0])
    end = float(max(ts[-1] + weights[-1], ts[-1]))
    width = window_s if window_s > 0 else max(end - start, 1e-9)
    bins = np.minimum(((ts - start) / width).astype(np.int64), max(0, math.ceil((end - start) / width) - 1))
    table = np.zeros((int(bins.max()) + 1, len(names)))
    np.add.at(table, (bins, code), weights)
    segments: list[list[Any]] = []  # [start, end, label]
    for b, row in enumerate(table):
        low, high = start + b * width, min(end, start + (b + 1) * width)
        label = names[int(np.argmax(row))] if row.sum() > 0 else (segments[-1][2] if segments else names[code[0]])
        if segments and segments[-1][2] == label:
            segments[-1][1] = high
        else:
            segments.append([low, high, label])
    segments[-1][1] = end
    return tuple(Segment(start=float(a), end=float(b), label=str(label)) for a, b, label in segments)


def top_moment_indices(ts: np.ndarray, values: np.ndarray, k: int, min_separation_s: float) -> list[int]:
    """Indices of the k highest scores, each at least ``min_separation_s`` from a higher one kept
    (earliest on ties)."""
    kept: list[int] = []
    for i in np.argsort(-values, kind="stable").tolist():
        if len(kept) >= k:
            break
        if all(abs(ts[i] - ts[j]) >= min_separation_s for j in kept):
            kept.append(int(i))
    return kept


def top_moments(ts: np.ndarray, values: np.ndarray, k: int, min_separation_s: float) -> list[dict[str, float]]:
    """The JSON form of ``top_moment_indices``: ``{"ts", "score"}`` per moment."""
    return [{"ts": rounded(ts[i], 6), "score": rounded(values[i])}
            for i in top_moment_indices(ts, values, k, min_separation_s)]


@dataclass(frozen=True)
class AnalysisSettings:
    """The settings an analysis ran with, as its report states them."""

    rate_hz: float | None  # sampled frames per second of media time; None: every frame
    onset: float
    offset: float
    windows_s: tuple[float, ...]
    uncertain_below: float | None = None  # with the face stage


@dataclass(frozen=True)
class FileAnalysis:
    """One file's analysis: what its summary JSON and its HTML report are both made from."""

    path: str  # the input as given
    summary: FileSummary
    model: Mapping[str, Any]  # the engine's description (engine.runtime.Engine.model_info)
    settings: AnalysisSettings
    outcome: str | None  # how reading ended (SourceOutcome's value); "unknown" when it never did
    detail: str
    damage: SourceDamage | None
    seconds: float
    interrupted: bool

    def damage_dict(self) -> dict[str, Any]:
        if self.outcome == "unknown":
            return {"outcome": "unknown"}
        return {"outcome": self.outcome, "detail": self.detail, **(self.damage.as_dict() if self.damage else {})}

    def to_dict(self) -> dict[str, Any]:
        """The summary file (docs/cli.md, "analyze")."""
        settings = self.settings
        source = {"path": self.path, "model": dict(self.model),
                  "settings": {"rate_hz": settings.rate_hz, "onset": settings.onset, "offset": settings.offset,
                               "windows_s": list(settings.windows_s), "uncertain_below": settings.uncertain_below}}
        out = self.summary.to_dict(source=source, damage=self.damage_dict())
        out["processing"] = {"seconds": round(self.seconds, 3), "interrupted": self.interrupted}
        if self.interrupted:
            out["partial"] = True  # what was read before the signal; the rest of the file was not
        return out
