"""Protocol v1 messages as typed records (docs/protocol.md, JSON Schemas in stream/schemas/).

Inside the program a message is a frozen record: ``Estimate``, ``Summary``, ``Event``, ``Stats``
(per stream: ``stream``, ``seq`` strictly increasing from 0, ``ts`` media time in s, ``wall`` server
time in ms since the epoch), ``Hello``, ``Subscribed``, ``Lagged``, ``ErrorReply`` (per client) and
``ServerStatus`` (the server's own state, to every client).
A record becomes wire JSON once, at the edge: ``to_wire()`` is its JSON object and ``text`` the
encoded line, computed on first use and shared by every sink, the event log and every client.
The way back is ``parse_message(wire)`` (or ``parse_text(text)``), what a client (affectstream.client)
uses: strict about the fields a record needs (``MessageError`` names the one missing or of the wrong
type, or another protocol ``v``), tolerant of fields it does not know (the protocol's rule), and
``UnknownMessageError`` (a ``MessageError``) for a message type or event kind this version does not
know, which a client skips. ``parse_message(record.to_wire()) == record`` for every record whose
values are as they go on the wire (tests/test_client.py checks it with generated records).

Code that needs to know what happened reads the records' typed fields (``Event.kind``,
``Event.outcome``, ``Event.source``), never strings of the wire form.
"""

from __future__ import annotations

import abc
import enum
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from affectstream._version import PROTOCOL_VERSION, __version__
from affectstream.errors import AffectstreamError, SourceOutcome

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
    STREAM_CONTROL = "stream_control"


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
    STREAM_RESTARTED = "stream_restarted"  # run --ray: its actor was lost and it runs on another one
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
    when no face is in view. ``primary`` is the id of the face the stream-level scores were built
    from (stream/face_session.py's rule; not on the wire: the report's thumbnails crop that face).
    """

    TYPE: ClassVar[MessageType] = MessageType.ESTIMATE
    scores: Mapping[str, float]
    sentiment: float
    dominant: str | None
    state: EstimateState | None = None
    latency_ms: Mapping[str, float] | None = None
    age_ms: float | None = None
    faces: tuple[FaceEstimate, ...] | None = None
    primary: int | None = None
    source_size: tuple[int, int] | None = None  # (w, h) of the pixels the faces' boxes are in

    def _body(self) -> Wire:
        body: Wire = {"scores": dict(self.scores), "sentiment": self.sentiment, "dominant": self.dominant}
        if self.source_size is not None:
            body["source_size"] = list(self.source_size)
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
    sinks: tuple[SinkLag, ...] | None = None  # --sink: each sink's state and how far behind this stream it is


@dataclass(frozen=True)
class SinkLag:
    """One sink as a stream's ``stats`` report it: its state and this stream's messages it has not sent."""

    name: str
    state: str
    lag: int  # -1: unknown now

    def to_wire(self) -> Wire:
        return {"name": self.name, "state": self.state, "lag": self.lag}


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
                "stage_ms": {stage: dict(values) for stage, values in (f.stage_ms or {}).items()},
                **({"sinks": [sink.to_wire() for sink in f.sinks]} if f.sinks is not None else {})}


@dataclass(frozen=True, kw_only=True)
class Hello(Record):
    """The first message on every connection."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    labels: tuple[str, ...]
    model: Mapping[str, Any]
    streams: tuple[str, ...]
    wall: int
    server: str = f"affectstream/{__version__}"  # the sending server's name/version (this one's by default)
    protocol: int = PROTOCOL_VERSION

    def _body(self) -> Wire:
        return {"server": self.server, "protocol": self.protocol, "labels": list(self.labels),
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
    """The server's event log changed state (``ok`` / ``failing``), or a sink's did; sent to every
    client, and after ``hello`` to a client that connects while something is failing or sinks exist."""

    TYPE: ClassVar[MessageType] = MessageType.SERVER_STATUS
    event_log: str
    backlog: int
    lost: int
    detail: str | None = None
    sinks: tuple[SinkReport, ...] = ()

    def _body(self) -> Wire:
        body: Wire = {"event_log": self.event_log, "backlog": self.backlog, "lost": self.lost, "detail": self.detail}
        if self.sinks:
            body["sinks"] = [sink.to_wire() for sink in self.sinks]
        return body


@dataclass(frozen=True)
class StreamEntry:
    """One stream as stream control lists it (``GET /api/streams``, ``list_streams``)."""

    name: str
    uri: str
    running: bool
    rate: float | None = None  # its own sampling rate (None: the run's)
    ended: str | None = None  # how it ended (an outcome), once it has
    faces: bool | None = None  # whether the face stage analyses it (None: not said, an older server)

    def to_wire(self) -> Wire:
        return {"name": self.name, "uri": self.uri, "running": self.running, "rate": self.rate, "ended": self.ended,
                "faces": self.faces}


@dataclass(frozen=True, kw_only=True)
class StreamControlReply(Record):
    """The answer to a websocket control message (``list_streams``, ``add_stream``, ``remove_stream``)."""

    TYPE: ClassVar[MessageType] = MessageType.STREAM_CONTROL
    action: str
    ok: bool
    stream: str | None = None
    error: str | None = None
    status: int | None = None  # the HTTP status the same request gets from /api/streams, when not ok
    streams: tuple[StreamEntry, ...] | None = None  # list_streams

    def _body(self) -> Wire:
        body: Wire = {"action": self.action, "ok": self.ok, "stream": self.stream}
        if not self.ok:
            body["error"], body["status"] = self.error, self.status
        if self.streams is not None:
            body["streams"] = [entry.to_wire() for entry in self.streams]
        return body


@dataclass(frozen=True)
class SinkReport:
    """One ``--sink``'s state in ``server_status``: up/down, how far behind the log, what it delivered."""

    name: str
    state: str
    lag: int  # stored messages not yet delivered (-1: unknown now)
    delivered: int
    failures: int
    error: str | None = None

    def to_wire(self) -> Wire:
        return {"name": self.name, "state": self.state, "lag": self.lag, "delivered": self.delivered,
                "failures": self.failures, "error": self.error}


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


# -- parsing: wire JSON back into records (what affectstream.client yields) -----------------------------


class MessageError(AffectstreamError, ValueError):
    """A server message that breaks protocol v1: not a JSON object, a field a record needs missing or
    of the wrong type, or another protocol version ``v``. ``wire`` is what was received."""

    def __init__(self, problem: str, wire: Any = None) -> None:
        super().__init__(problem)
        self.wire = wire


class UnknownMessageError(MessageError):
    """A message type, or an event kind or estimate state, this version does not know. The protocol
    lets a newer server send them and tells clients to ignore them: affectstream.client skips them."""


def parse_text(text: str | bytes) -> Record:
    """The record of one websocket text frame (see ``parse_message``)."""
    try:
        wire = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise MessageError(f"a server message is one JSON object ({str(error)[:80]})", text) from None
    return parse_message(wire)


def parse_message(wire: Any) -> Record:
    """The frozen record of one server message (its decoded JSON object).

    Raises ``MessageError`` when a field the record needs is missing or of the wrong type (the
    message says which), or ``v`` is not this protocol's version; ``UnknownMessageError`` (a
    MessageError) for a type, event kind or estimate state this version does not know. Fields it
    does not know are ignored, as the protocol asks of clients. Fields that are not on the wire
    (``Event.source``, ``Estimate.primary``) are None; an event ``outcome`` this version does not
    know reads as None rather than losing the event.
    """
    f = _Fields(wire, "a server message")
    kind = f.text("type")
    version = f.wire.get("v")
    if not _integer(version) or version != PROTOCOL_VERSION:
        raise MessageError(f"{kind!r} message of protocol version {_short(version)}: this client speaks "
                           f"version {PROTOCOL_VERSION} (upgrade affectstream)", wire)
    parser = _PARSERS.get(kind)
    if parser is None:
        raise UnknownMessageError(f"message type {kind!r} is not one this version knows", wire)
    f.where = f"{kind!r} message"
    return parser(f)


_ABSENT = object()


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _numbers_ok(value: Any) -> bool:
    return isinstance(value, Mapping) and all(_finite_number(x) for x in value.values())


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Fields:
    """Typed reads of one message's fields (``where`` names it in errors). ``opt_*`` reads take an
    absent field or null as None; the others raise MessageError naming the field."""

    def __init__(self, wire: Any, where: str) -> None:
        if not isinstance(wire, Mapping):
            raise MessageError(f"{where} must be a JSON object, got {_short(wire)}", wire)
        self.wire: Mapping[str, Any] = wire
        self.where = where

    def get(self, name: str, ok: Callable[[Any], bool], expected: str, optional: bool = False) -> Any:
        value = self.wire.get(name, _ABSENT)
        if value is _ABSENT or value is None:
            if optional:
                return None
            got = "it is missing" if value is _ABSENT else "got null"
        elif ok(value):
            return value
        else:
            got = f"got {_short(value)}"
        raise MessageError(f"{self.where}: field {name!r} must be {expected} ({got})", self.wire)

    def text(self, name: str) -> str:
        return str(self.get(name, _is_text, "a string"))

    def opt_text(self, name: str) -> str | None:
        value = self.get(name, _is_text, "a string or null", optional=True)
        return None if value is None else str(value)

    def integer(self, name: str, low: int | None = None) -> int:
        value = int(self.get(name, _integer, "an integer"))
        if low is not None and not low <= value <= MAX_SEQ:
            raise MessageError(f"{self.where}: field {name!r} must be from {low} to {MAX_SEQ} (got {value})",
                               self.wire)
        return value

    def opt_integer(self, name: str) -> int | None:
        value = self.get(name, _integer, "an integer or null", optional=True)
        return None if value is None else int(value)

    def number(self, name: str) -> float:
        return float(self.get(name, _finite_number, "a finite number"))

    def opt_number(self, name: str) -> float | None:
        value = self.get(name, _finite_number, "a finite number or null", optional=True)
        return None if value is None else float(value)

    def flag(self, name: str) -> bool:
        """A flag sent only when true: absent or null is False."""
        return bool(self.get(name, lambda v: isinstance(v, bool), "true or false", optional=True))

    def opt_flag(self, name: str) -> bool | None:
        """A flag that may be unsaid: absent or null is None."""
        value = self.get(name, lambda v: isinstance(v, bool), "true, false or null", optional=True)
        return None if value is None else bool(value)

    def obj(self, name: str) -> dict[str, Any]:
        return dict(self.get(name, lambda v: isinstance(v, Mapping), "an object"))

    def opt_obj(self, name: str) -> dict[str, Any] | None:
        value = self.get(name, lambda v: isinstance(v, Mapping), "an object or null", optional=True)
        return None if value is None else dict(value)

    def numbers(self, name: str) -> dict[str, float]:
        """An object of numbers (scores, latencies)."""
        value = self.get(name, _numbers_ok, "an object of finite numbers")
        return {str(key): float(number) for key, number in value.items()}

    def opt_numbers(self, name: str) -> dict[str, float] | None:
        return None if self.wire.get(name) is None else self.numbers(name)

    def texts(self, name: str) -> tuple[str, ...]:
        return tuple(self.get(name, lambda v: isinstance(v, list) and all(map(_is_text, v)), "a list of strings"))

    def opt_texts(self, name: str) -> tuple[str, ...] | None:
        return None if self.wire.get(name) is None else self.texts(name)

    def each(self, name: str, keyed: bool = False, optional: bool = False) -> list[tuple[Any, _Fields]] | None:
        """(index, fields) of each object of a list (``faces``), or with ``keyed`` (key, fields) of each
        value of an object (``streams`` of lagged); None when optional and absent."""
        container = Mapping if keyed else list
        value = self.get(name, lambda v: isinstance(v, container), "an object of objects" if keyed
                         else "a list of objects", optional)
        if value is None:
            return None
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        return [(key, _Fields(item, f"{self.where} {name}[{key!r}]")) for key, item in items]

    def enum_value(self, name: str, enum_type: type[_E], what: str, optional: bool = False) -> _E | None:
        value = self.opt_text(name) if optional else self.text(name)
        if value is None:
            return None
        try:
            return enum_type(value)
        except ValueError:
            raise UnknownMessageError(f"{self.where}: {what} {value!r} is not one this version knows",
                                      self.wire) from None

    def header(self) -> dict[str, Any]:
        """A stream message's stream, seq, ts and wall."""
        return {"stream": self.text("stream"), "seq": self.integer("seq", low=0), "ts": self.number("ts"),
                "wall": self.integer("wall")}


_E = TypeVar("_E", bound=enum.Enum)


def _face(f: _Fields) -> FaceEstimate:
    box = f.get("box", lambda v: isinstance(v, list) and len(v) == 4 and all(map(_finite_number, v)),
                "[x, y, w, h] (4 numbers)")
    state = f.enum_value("state", EstimateState, "face state")
    assert state is not None  # required: enum_value raised otherwise
    return FaceEstimate(id=f.integer("id"), box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                        score=f.number("score"), frame_scores=f.numbers("frame_scores"), scores=f.numbers("scores"),
                        dominant=f.text("dominant"), state=state, sentiment=f.number("sentiment"))


def _estimate(f: _Fields) -> Estimate:
    faces = f.each("faces", optional=True)
    return Estimate(**f.header(), scores=f.numbers("scores"), sentiment=f.number("sentiment"),
                    dominant=f.opt_text("dominant"),
                    state=f.enum_value("state", EstimateState, "estimate state", optional=True),
                    latency_ms=f.opt_numbers("latency_ms"), age_ms=f.opt_number("age_ms"),
                    faces=None if faces is None else tuple(_face(face) for _, face in faces),
                    source_size=_size(f.wire.get("source_size")))


def _size(value: Any) -> tuple[int, int] | None:
    if isinstance(value, list) and len(value) == 2 and all(_integer(v) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    return None  # absent (no face stage), or not a size: boxes then have no reference, as before


def _summary(f: _Fields) -> Summary:
    return Summary(**f.header(), window_s=f.number("window_s"), start=f.number("start"), end=f.number("end"),
                   frames=f.integer("frames"), mean=f.numbers("mean"), dominant=f.opt_text("dominant"),
                   share=f.numbers("share"), sentiment_mean=f.number("sentiment_mean"),
                   sentiment_trend=f.number("sentiment_trend"), partial=f.flag("partial"),
                   states=f.opt_numbers("states"))


_OUTCOMES = {outcome.value: outcome for outcome in SourceOutcome}


def _event(f: _Fields) -> Event:
    kind = f.enum_value("kind", EventKind, "event kind")
    assert kind is not None
    outcome = f.opt_text("outcome")
    return Event(**f.header(), kind=kind, label=f.opt_text("label"), value=f.opt_number("value"),
                 face=f.opt_integer("face"), started=f.opt_number("started"), confirmed=f.opt_number("confirmed"),
                 duration=f.opt_number("duration"), forced=f.flag("forced"), previous=f.opt_text("previous"),
                 detail=f.opt_text("detail"), attempt=f.opt_integer("attempt"),
                 outcome=None if outcome is None else _OUTCOMES.get(outcome),
                 frames_read=f.opt_integer("frames_read"), damage=f.opt_obj("damage"),
                 restart_ts=f.opt_number("restart_ts"), new=f.opt_integer("new"), total=f.opt_integer("total"))


def _stats(f: _Fields) -> Stats:
    default = StatsFields()

    def optional(value: Any, fallback: Any) -> Any:
        return fallback if value is None else value

    stages = f.get("stage_ms", lambda v: isinstance(v, Mapping) and all(map(_numbers_ok, v.values())),
                   "an object of objects of numbers", optional=True) or {}
    return Stats(**f.header(), fields=StatsFields(
        input_fps=f.number("input_fps"), sampled_fps=f.number("sampled_fps"),
        frames_in=optional(f.opt_integer("frames_in"), default.frames_in),
        frames_sampled=optional(f.opt_integer("frames_sampled"), default.frames_sampled),
        estimates=optional(f.opt_integer("estimates"), default.estimates), drops=f.integer("drops"),
        queue_depth=optional(f.opt_integer("queue_depth"), default.queue_depth),
        batch_size=optional(f.opt_number("batch_size"), default.batch_size),
        latency_ms=f.numbers("latency_ms"),
        stage_ms={str(stage): {str(k): float(v) for k, v in values.items()} for stage, values in stages.items()},
        sinks=_sink_lags(f)))


def _sink_lags(f: _Fields) -> tuple[SinkLag, ...] | None:
    listed = f.each("sinks", optional=True)
    if listed is None:
        return None
    return tuple(SinkLag(name=s.text("name"), state=s.text("state"), lag=s.integer("lag")) for _, s in listed)


def _hello(f: _Fields) -> Hello:
    return Hello(labels=f.texts("labels"), model=f.obj("model"), streams=f.texts("streams"), wall=f.integer("wall"),
                 server=f.text("server"), protocol=f.integer("protocol"))


def _subscribed(f: _Fields) -> Subscribed:
    return Subscribed(streams=f.opt_texts("streams"), types=f.opt_texts("types"),
                      excluded_streams=f.opt_texts("excluded_streams") or (),
                      excluded_types=f.opt_texts("excluded_types") or ())


def _lagged(f: _Fields) -> Lagged:
    entries = f.each("streams", keyed=True) or []
    return Lagged(streams={str(stream): LagEntry(resume_after=entry.integer("resume_after", low=-1),
                                                 missed=entry.integer("missed")) for stream, entry in entries},
                  **({"hint": f.text("hint")} if f.wire.get("hint") is not None else {}))


def _error(f: _Fields) -> ErrorReply:
    return ErrorReply(code=f.text("code"), message=f.text("message"))


def _server_status(f: _Fields) -> ServerStatus:
    sinks = f.each("sinks", optional=True) or []
    return ServerStatus(event_log=f.text("event_log"), backlog=f.integer("backlog"), lost=f.integer("lost"),
                        detail=f.opt_text("detail"),
                        sinks=tuple(SinkReport(name=s.text("name"), state=s.text("state"), lag=s.integer("lag"),
                                               delivered=s.integer("delivered"), failures=s.integer("failures"),
                                               error=s.opt_text("error")) for _, s in sinks))


def _stream_control(f: _Fields) -> StreamControlReply:
    listed = f.each("streams", optional=True)
    streams = None if listed is None else tuple(
        StreamEntry(name=e.text("name"), uri=e.text("uri"), running=e.flag("running"), rate=e.opt_number("rate"),
                    ended=e.opt_text("ended"), faces=e.opt_flag("faces")) for _, e in listed)
    return StreamControlReply(action=f.text("action"), ok=f.flag("ok"), stream=f.opt_text("stream"),
                              error=f.opt_text("error"), status=f.opt_integer("status"), streams=streams)


_PARSERS: dict[str, Callable[[_Fields], Record]] = {
    MessageType.HELLO.value: _hello, MessageType.ESTIMATE.value: _estimate, MessageType.SUMMARY.value: _summary,
    MessageType.EVENT.value: _event, MessageType.STATS.value: _stats, MessageType.SUBSCRIBED.value: _subscribed,
    MessageType.LAGGED.value: _lagged, MessageType.ERROR.value: _error,
    MessageType.SERVER_STATUS.value: _server_status, MessageType.STREAM_CONTROL.value: _stream_control,
}
