"""How a protocol v1 client stays continuous across reconnects: the one rule that `affectstream listen`
(stream/listen.py) and the Python client (affectstream/client.py) both follow. Sans I/O: no socket,
no clock, so it is tested directly (tests/test_client.py).

* **URL**: what a person types (``host:port``, ``http://…``) becomes a ``ws://…/ws`` URL (``websocket_url``).
* **Resume in the URL**: each connection after the first asks the server to resume after the last
  ``seq`` received of each stream (``ResumeCursor.url``). The server applies a resume in the URL before
  it queues anything live, so nothing crosses it (docs/protocol.md, "resume").
* **No duplicate**: per stream, a message with a ``seq`` at or below the last one received is dropped
  (``ResumeCursor.receive``: ``Verdict.DUPLICATE``).
* **A renumbered stream**: a server that resumes a stream never sends it a ``seq`` at or below the
  resume point, so a first message that has one means the server numbers that stream from lower down
  again (it restarted without a file ``--event-log``, or it is another server). The server would also
  keep back every event it numbers up to the old mark, so ``Verdict.RENUMBERED``: the client drops the
  message, warns that what the old server published meanwhile is lost, and reconnects at once with that
  stream resumed from -1, which replays the new numbering from its start. Estimates and stats are what
  reveal it (events are the ones held back), so a resuming client subscribes to stats even when it does
  not show them (``SUBSCRIBE_ALSO``): every stream sends them every few seconds.
* **Lagged**: answered with a ``resume`` of exactly the notice's ``resume_after`` values
  (``ResumeCursor.answer_lagged``); the lagged streams are silent until then, so nothing can cross it.
* **Backoff**: exponential from 0.125-0.25 s up to a maximum, with jitter (``Backoff``), reset once a
  connection is established.
"""

from __future__ import annotations

import enum
import json
import logging
import random
from collections.abc import Collection, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

log = logging.getLogger(__name__)

# What a resuming client subscribes to besides what it shows: the messages that reveal a renumbered stream.
SUBSCRIBE_ALSO = ("stats",)


class Verdict(enum.Enum):
    """What to do with a received message of a stream (``ResumeCursor.receive``)."""

    TAKE = "take"
    DUPLICATE = "duplicate"  # drop it
    RENUMBERED = "renumbered"  # drop it, and reconnect now: the stream is resumed from -1


def websocket_url(url: str, token: str | None = None) -> str:
    """ws:// URL for what the user typed: http(s):// maps to ws(s)://, a bare host:port gets ws:// and /ws;
    ``token`` (when given and the URL has none) goes into the query."""
    if "://" not in url:
        url = "ws://" + url
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    query = parts.query
    if token and "token=" not in query:
        query = (query + "&" if query else "") + f"token={token}"
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def with_resume(url: str, last_seq: Mapping[str, int]) -> str:
    """``url`` asking the server to resume after ``last_seq`` before it sends anything live (a
    `resume` message sent after connecting could cross live messages already on the wire)."""
    if not last_seq:
        return url
    parts = urlsplit(url)
    kept = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True) if key != "resume"]
    query = urlencode([*kept, ("resume", json.dumps(dict(last_seq), separators=(",", ":")))])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


class ResumeCursor:
    """Per stream, the last ``seq`` received: where the next connection resumes, and which messages
    are duplicates. ``start`` (stream -> seq, -1 = everything the log keeps) is resumed by the first
    connection too. With ``resume=False`` every connection is live from its start: nothing is resumed
    nor dropped (``last_seq`` still follows what was received)."""

    def __init__(self, start: Mapping[str, int] | None = None, resume: bool = True) -> None:
        self.last_seq: dict[str, int] = dict(start or {})
        self.resume = resume
        self._resumed: dict[str, int] = {}  # this connection's resume points, until each stream's first message

    def url(self, base: str, streams: Collection[str] | None = None) -> str:
        """The URL of the next connection (call once per attempt): resuming each stream (of ``streams``,
        None = all) after its last seq."""
        if not self.resume:
            self._resumed = {}
            return base
        self._resumed = {stream: seq for stream, seq in self.last_seq.items() if streams is None or stream in streams}
        return with_resume(base, self._resumed)

    def receive(self, stream: str, seq: int) -> Verdict:
        """Note a message of ``stream``: take it, drop it as a duplicate, or reconnect (see the module)."""
        resumed_after = self._resumed.pop(stream, None)
        last = self.last_seq.get(stream)
        if self.resume and last is not None and seq <= last:
            if resumed_after is None:
                return Verdict.DUPLICATE
            log.warning("stream %r: the server numbers it from seq %d again, at or below %d that this client had "
                        "(it restarted without a file --event-log, or it is another server): what the old numbering "
                        "published while this client was away is lost; reconnecting to replay the new numbering "
                        "from its start", stream, seq, resumed_after)
            self.last_seq[stream] = -1
            return Verdict.RENUMBERED
        self.last_seq[stream] = seq
        return Verdict.TAKE

    def answer_lagged(self, resume_after: Mapping[str, int]) -> str:
        """The `resume` message that answers a `lagged` notice (its per-stream ``resume_after``)."""
        log.warning("fell behind the server; resuming after %s", dict(resume_after))
        return json.dumps({"type": "resume", "streams": dict(resume_after)}, separators=(",", ":"))


class Backoff:
    """Delays between connection attempts: 0.125-0.25 s, then doubling up to ``max_s``, each with
    jitter (x0.5-1) so that many clients of one restarted server do not reconnect in step."""

    def __init__(self, max_s: float = 10.0, first_s: float = 0.25) -> None:
        self.max_s = max_s
        self.first_s = first_s
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return min(self.max_s, self.first_s * 2.0 ** min(self.failures - 1, 30)) * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0
