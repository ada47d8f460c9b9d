"""Protocol v1 messages (docs/protocol.md, JSON Schemas in stream/schemas/).

Messages are plain ``dict``s ready for ``json.dumps``: the JSONL sinks and the websocket server send
the very same objects. Every message has ``type`` and ``v``; a message about a stream also has
``stream``, ``seq`` (per stream, strictly increasing from 0), ``ts`` (media time, s) and ``wall``
(server time, ms since epoch). ``StreamMessages`` hands out the sequence numbers of one stream.
"""

from __future__ import annotations

import enum
import json
import time
from typing import Any

from affectstream._version import PROTOCOL_VERSION, __version__

Message = dict[str, Any]


class MessageType(str, enum.Enum):
    HELLO = "hello"
    ESTIMATE = "estimate"
    SUMMARY = "summary"
    EVENT = "event"
    STATS = "stats"


class EventKind(str, enum.Enum):
    ONSET = "onset"
    OFFSET = "offset"
    PEAK = "peak"
    SHIFT = "shift"
    STREAM_STARTED = "stream_started"
    STREAM_RECONNECTING = "stream_reconnecting"
    STREAM_ENDED = "stream_ended"
    STREAM_ERROR = "stream_error"
    FRAMES_DROPPED = "frames_dropped"


def wall_ms() -> int:
    """Server wall-clock time in ms since the epoch."""
    return time.time_ns() // 1_000_000


class StreamMessages:
    """Builds the messages of one stream and numbers them; pure apart from the sequence counter."""

    def __init__(self, stream_id: str, first_seq: int = 0) -> None:
        self.stream_id = stream_id
        self._next_seq = first_seq

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def make(self, type_: MessageType, ts: float, wall: int, **fields: Any) -> Message:
        message: Message = {
            "type": type_.value,
            "v": PROTOCOL_VERSION,
            "stream": self.stream_id,
            "seq": self._next_seq,
            "ts": round(float(ts), 6),
            "wall": int(wall),
        }
        message.update(fields)
        self._next_seq += 1
        return message

    def event(self, kind: EventKind, ts: float, wall: int, label: str | None = None,
              value: float | None = None, **fields: Any) -> Message:
        return self.make(MessageType.EVENT, ts, wall, kind=kind.value, label=label, value=value, **fields)


def hello(labels: tuple[str, ...], model: dict[str, Any], streams: list[str]) -> Message:
    return {
        "type": MessageType.HELLO.value,
        "v": PROTOCOL_VERSION,
        "server": f"affectstream/{__version__}",
        "protocol": PROTOCOL_VERSION,
        "labels": list(labels),
        "model": model,
        "streams": streams,
        "wall": wall_ms(),
    }


def encode(message: Message) -> str:
    """One message as compact JSON text (one line; no NaN)."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False)
