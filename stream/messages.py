"""Protocol v1 messages as typed records (docs/protocol.md, JSON Schemas in stream/schemas/).

Inside the program a message is a frozen record: ``Estimate``, ``Summary``, ``Event``, ``Stats``
(per stream: ``stream``, ``seq`` strictly increasing from 0, ``ts`` media time in s, ``wall`` server
time in ms since the epoch), ``Hello``, ``Subscribed``, ``Lagged``, ``ErrorReply`` (per client) and
``ServerStatus`` (the server's own state, to every client).
A record becomes wire JSON once, at the edge: ``to_wire()`` is its JSON object and ``text`` the
encoded line, computed on first use and shared by every sink, the event log and every client.

Code that needs to know what happened reads the records' typed fields (``Event.kind``,
``Event.outcome``, ``Event.source``), never strings of the wire form.
"""

from __future__ import annotations

import abc
import enum
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from affectstream._version import PROTOCOL_VERSION, __version__
from affectstream.errors import SourceOutcome

if TYPE_CHECKING:
    from affectstream.stream.frames import SourceEvent

Wire = dict[str, Any]  # a message's JSON object, as sent

# The largest seq: exact as a JSON number in every client (JavaScript's Number.MAX_SAFE_INTEGER) and
# in SQLite's 64-bit integers. At 1000 messages a second it lasts 285,000 years.
MAX_SEQ = 2**53 - 1


class MessageType(str, enum.Enum):
    HELLO = "hello"
    ESTIMATE = "estimate"
    SUMMARY = "summary"
    EVENT = "event"
    STATS = "stats"
    SUBSCRIBED = "subscribed"
    LAGGED = "lagged"
    ERROR = "error"
    SERVER_STATUS = "server_status"


# What a client may subscribe to: the per-stream types.
STREAM_TYPES: tuple[MessageType, ...] = (MessageType.ESTIMATE, MessageType.SUMMARY, MessageType.EVENT,
                                         MessageType.STATS)


class EventKind(str, enum.Enum):
    ONSET = "onset"
    OFFSET = "offset"
    PEAK = "peak"
    SHIFT = "shift"
    FACE_APPEARED = "face_appeared"
    FACE_LOST = "face_lost"
    STREAM_STARTED = "stream_started"
    STREAM_RECONNECTING = "stream_reconnecting"
    STREAM_ENDED = "stream_ended"
    STREAM_ERROR = "stream_error"
    FRAMES_DROPPED = "frames_dropped"


TERMINAL_KINDS = frozenset({EventKind.STREAM_ENDED, EventKind.STREAM_ERROR})


def wall_ms() -> int:
    """Server wall-clock time in ms since the epoch."""
    return time.time_ns() // 1_000_000


def encode(wire: Wire) -> str:
    """One JSON object as compact text (one line; no NaN)."""
    return json.dumps(wire, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, kw_only=True)
class Record(abc.ABC):
    """A protocol message; subclasses say their ``TYPE`` and their fields of the wire form."""

    TYPE: ClassVar[MessageType]

    @property
    def type(self) -> MessageType:
        return self.TYPE

    @property
    def stream_id(self) -> str | None:
        """The stream this message concerns; None for per-client messages."""
        return None

    @property
    def seq_no(self) -> int | None:
        return None

    def to_wire(self) -> Wire:
        return {"type": self.TYPE.value, "v": PROTOCOL_VERSION, **self._body()}

    @abc.abstractmethod
    def _body(self) -> Wire:
        """The fields of this message type on the wire (after type, v and the stream's header)."""

    @cached_property
    def text(self) -> str:
        """The wire JSON, encoded once (a frozen record cannot change, so neither can this)."""
        return encode(self.to_wire())


@dataclass(frozen=True, kw_only=True)
class StreamRecord(Record):
    """A message about one stream, numbered in that stream's sequence."""

    stream: str
    seq: int
    ts: float
    wall: int

    @property
    def stream_id(self) -> str:
        return self.stream

    @property
    def seq_no(self) -> int:
        return self.seq

    def to_wire(self) -> Wire:
        return {"type": self.TYPE.value, "v": PROTOCOL_VERSION, "stream": self.stream, "seq": self.seq,
                "ts": round(float(self.ts), 6), "wall": int(self.wall), **self._body()}


class EstimateState(str, enum.Enum):
    """Whether an estimate can be trusted (docs/faces.md: abstention)."""

    OK = "ok"
    NO_FACE = "no_face"  # nobody in view: scores are 0 and there is no dominant label, never "neutral"
    UNCERTAIN = "uncertain"  # a face, but the model's confidence is under the documented bound


@dataclass(frozen=True, kw_only=True)
class FaceEstimate:
    """One tracked face in one estimate (not a message of its own: part of ``Estimate.faces``)."""

    id: int  # stable per stream while the face stays in view; never reused in a stream
    box: tuple[float, float, float, float]  # x, y, w, h in source pixels
    score: float  # the detector's
    frame_scores: Mapping[str, float]  # the classifier on this frame alone
    scores: Mapping[str, float]  # after the per-face temporal smoother
    dominant: str
    state: EstimateState
    sentiment: float

    def to_wire(self) -> Wire:
        return {"id": self.id, "box": [round(float(v), 1) for v in self.box], "score": round(self.score, 4),
                "frame_scores": dict(self.frame_scores), "scores": dict(self.scores), "dominant": self.dominant,
                "state": self.state.value, "sentiment": self.sentiment}


@dataclass(frozen=True, kw_only=True)
class Estimate(StreamRecord):
    """One sampled frame's estimate; scores are already rounded as they go on the wire.

    ``state`` and ``faces`` come with the face stage (absent when it is off); ``dominant`` is None
    when no face is in view.
    """

    TYPE: ClassVar[MessageType] = MessageType.ESTIMATE
    scores: Mapping[str, float]
    sentiment: float
    dominant: str | None
    state: EstimateState | None = None
    latency_ms: Mapping[str, float] | None = None
    age_ms: float | None = None
    faces: tuple[FaceEstimate, ...] | None = None

    def _body(self) -> Wire:
        body: Wire = {"scores": dict(self.scores), "sentiment": self.sentiment, "dominant": self.dominant}
        if self.state is not None:
            body["state"] = self.state.value
        if self.latency_ms is not None:
            body["latency_ms"] = dict(self.latency_ms)
        if self.age_ms is not None:
            body["age_ms"] = self.age_ms
        if self.faces is not None:
            body["faces"] = [face.to_wire() for face in self.faces]
        return body


@dataclass(frozen=True, kw_only=True)
class Summary(StreamRecord):
    """A rolling window's summary."""

    TYPE: ClassVar[MessageType] = MessageType.SUMMARY
    window_s: float
    start: float
    end: float
    frames: int
    mean: Mapping[str, float]
    dominant: str | None  # None when no estimate of the window had a face
    share: Mapping[str, float]
    sentiment_mean: float
    sentiment_trend: float
    partial: bool = False
    # With the face stage: share of frames per estimate state (ok, no_face, uncertain).
    states: Mapping[str, float] | None = None

    def _body(self) -> Wire:
        body: Wire = {"window_s": self.window_s, "start": self.start, "end": self.end, "frames": self.frames,
                      "mean": dict(self.mean), "dominant": self.dominant, "share": dict(self.share),
                      "sentiment_mean": self.sentiment_mean, "sentiment_trend": self.sentiment_trend}
        if self.states is not None:
            body["states"] = dict(self.states)
        if self.partial:
            body["partial"] = True
        return body


@dataclass(frozen=True, kw_only=True)
class Event(StreamRecord):
    """An event. Which optional fields a kind carries is in docs/protocol.md; absent ones are None.

    ``source`` is the lifecycle change a stream_* event came from (not on the wire): a replay feeds it
    to a fresh session instead of reading the wire form back.
    """

    TYPE: ClassVar[MessageType] = MessageType.EVENT
    kind: EventKind
    label: str | None = None
    value: float | None = None
    face: int | None = None  # the face track the event is about (per-face episodes, face_*)
    # episodes and shifts
    started: float | None = None
    confirmed: float | None = None
    duration: float | None = None
    forced: bool = False
    previous: str | None = None
    # stream lifecycle
    detail: str | None = None
    attempt: int | None = None
    outcome: SourceOutcome | None = None
    frames_read: int | None = None
    damage: Mapping[str, Any] | None = None
    restart_ts: float | None = None
    # frames_dropped
    new: int | None = None
    total: int | None = None
    source: SourceEvent | None = None

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS

    def _body(self) -> Wire:
        body: Wire = {"kind": self.kind.value, "label": self.label, "value": self.value}
        if self.face is not None:
            body["face"] = self.face
        for name in ("started", "confirmed", "duration", "previous", "detail", "attempt"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.forced:
            body["forced"] = True
        if self.terminal or self.outcome is not None:
            # A terminal event always says how the stream ended (null for an internal error).
            body["outcome"] = self.outcome.value if self.outcome is not None else None
        for name in ("frames_read", "restart_ts", "new", "total"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.damage is not None:
            body["damage"] = dict(self.damage)
        return body


@dataclass(frozen=True, kw_only=True)
class StatsFields:
    """The pipeline's figures for one stream over the last stats interval (stream/stats.py)."""

    input_fps: float = 0.0
    sampled_fps: float = 0.0
    frames_in: int = 0
    frames_sampled: int = 0
    estimates: int = 0
    drops: int = 0
    queue_depth: int = 0
    batch_size: float = 0.0
    latency_ms: Mapping[str, float] | None = None
    stage_ms: Mapping[str, Mapping[str, float]] | None = None


@dataclass(frozen=True, kw_only=True)
class Stats(StreamRecord):
    TYPE: ClassVar[MessageType] = MessageType.STATS
    fields: StatsFields

    def _body(self) -> Wire:
        f = self.fields
        return {"input_fps": f.input_fps, "sampled_fps": f.sampled_fps, "frames_in": f.frames_in,
                "frames_sampled": f.frames_sampled, "estimates": f.estimates, "drops": f.drops,
                "queue_depth": f.queue_depth, "batch_size": f.batch_size,
                "latency_ms": dict(f.latency_ms or {}),
                "stage_ms": {stage: dict(values) for stage, values in (f.stage_ms or {}).items()}}


@dataclass(frozen=True, kw_only=True)
class Hello(Record):
    """The first message on every connection."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    labels: tuple[str, ...]
    model: Mapping[str, Any]
    streams: tuple[str, ...]
    wall: int

    def _body(self) -> Wire:
        return {"server": f"affectstream/{__version__}", "protocol": PROTOCOL_VERSION, "labels": list(self.labels),
                "model": dict(self.model), "streams": list(self.streams), "wall": self.wall}


def hello(labels: tuple[str, ...], model: Mapping[str, Any], streams: list[str]) -> Hello:
    return Hello(labels=tuple(labels), model=model, streams=tuple(streams), wall=wall_ms())


@dataclass(frozen=True, kw_only=True)
class Subscribed(Record):
    """The selection now in force, in answer to subscribe/unsubscribe."""

    TYPE: ClassVar[MessageType] = MessageType.SUBSCRIBED
    streams: tuple[str, ...] | None
    types: tuple[str, ...] | None
    excluded_streams: tuple[str, ...] = ()
    excluded_types: tuple[str, ...] = ()

    def _body(self) -> Wire:
        return {"streams": None if self.streams is None else list(self.streams),
                "types": None if self.types is None else list(self.types),
                "excluded_streams": list(self.excluded_streams), "excluded_types": list(self.excluded_types)}


@dataclass(frozen=True, kw_only=True)
class LagEntry:
    resume_after: int
    missed: int


@dataclass(frozen=True, kw_only=True)
class Lagged(Record):
    """This client fell behind: per stream, the last seq it was sent and how many it missed."""

    TYPE: ClassVar[MessageType] = MessageType.LAGGED
    streams: Mapping[str, LagEntry]
    hint: str = "send {\"type\": \"resume\", \"streams\": {stream: resume_after}} to get what was missed"

    def _body(self) -> Wire:
        return {"streams": {stream: {"resume_after": entry.resume_after, "missed": entry.missed}
                            for stream, entry in self.streams.items()},
                "hint": self.hint}


@dataclass(frozen=True, kw_only=True)
class ErrorReply(Record):
    """A client message that could not be acted on."""

    TYPE: ClassVar[MessageType] = MessageType.ERROR
    code: str
    message: str

    def _body(self) -> Wire:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, kw_only=True)
class ServerStatus(Record):
    """The server's event log changed state (``ok`` / ``failing``); sent to every client, and after
    ``hello`` to a client that connects while it is failing."""

    TYPE: ClassVar[MessageType] = MessageType.SERVER_STATUS
    event_log: str
    backlog: int
    lost: int
    detail: str | None = None

    def _body(self) -> Wire:
        return {"event_log": self.event_log, "backlog": self.backlog, "lost": self.lost, "detail": self.detail}


class SeqCounter:
    """Hands out one stream's sequence numbers."""

    def __init__(self, first_seq: int = 0) -> None:
        self._next = first_seq

    @property
    def next_seq(self) -> int:
        return self._next

    def take(self) -> int:
        seq = self._next
        self._next += 1
        return seq
