"""One websocket client's session, sans I/O: what it asked for, what it is owed, and in what order.

The server hands every published message to every ``ClientSession.offer`` and sends, whenever the
client's socket can take more, what ``ClientSession.take`` returns. Nothing here touches a socket,
a thread or a clock, so the delivery rules are tested directly (tests/test_subscriptions.py):

* **Filter**: a client sees the streams and message types it subscribed to (all of them at first).
* **Coalescing**: estimates and stats are "latest wins": an unsent one is replaced by a newer one of
  the same stream and type (the newer goes to the back of the queue, so per-stream order holds).
* **Durable messages** (events, summaries) are never dropped silently. If more of them wait than the
  queue holds, the client is *lagged*: its queue is cleared, it gets one ``lagged`` message saying,
  per stream, the last seq it was sent and how many it missed, and nothing more of those streams
  until it sends ``resume``.
* **Resume** replays durable messages from the event log (``fetch``) page by page as the queue
  drains, then switches the stream back to live, with neither gaps nor duplicates: live durable
  messages of a replaying stream are skipped (the log has them), and the newest estimate/stats seen
  meanwhile is delivered once the replay has caught up. A reconnecting client puts it in its URL
  (``?resume=``, ``resume_in_query``): applied before anything live is queued, it cannot cross live
  messages already on the wire, as a ``resume`` message sent after connecting can.
"""

from __future__ import annotations

import collections
import enum
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from affectstream.stream import messages
from affectstream.stream.eventlog import DURABLE_TYPES, ReplayUnavailable, StoredMessage
from affectstream.stream.messages import MAX_SEQ, LagEntry, Lagged, MessageType, Record, Subscribed

COALESCED_TYPES: frozenset[str] = frozenset({MessageType.ESTIMATE.value, MessageType.STATS.value})
STREAM_TYPES: tuple[str, ...] = tuple(t.value for t in messages.STREAM_TYPES)
CLIENT_TYPES: tuple[str, ...] = ("subscribe", "unsubscribe", "resume")
REPLAY_PAGE = 200

# fetch(stream, after_seq, limit) -> the durable messages of stream with seq > after_seq, oldest first
Fetch = Callable[[str, int, int], list[StoredMessage]]


@dataclass(frozen=True)
class Outgoing:
    """A message ready to send: encoded once, shared by every client it goes to."""

    text: str
    type: str
    stream: str | None = None
    seq: int | None = None
    replayed: bool = False  # from the event log: a replay's estimates are a timeline, none replaces another

    @classmethod
    def of(cls, message: Record) -> Outgoing:
        return cls(message.text, message.type.value, message.stream_id, message.seq_no)

    @classmethod
    def stored(cls, row: StoredMessage) -> Outgoing:
        return cls(row.text, row.type, row.stream, row.seq, replayed=True)

    @property
    def durable(self) -> bool:
        return self.type in DURABLE_TYPES and self.stream is not None

    @property
    def coalesced(self) -> bool:
        return self.type in COALESCED_TYPES and self.stream is not None and not self.replayed


class StreamState(enum.Enum):
    LIVE = "live"
    LAGGED = "lagged"  # durable messages were missed; silent until the client resumes
    REPLAYING = "replaying"  # catching up from the event log


class ProtocolError(Exception):
    """A client message that cannot be acted on; ``code`` goes into the `error` reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Selection:
    """Which streams and types a client wants. ``None`` = all; ``excluded`` removes from that."""

    streams: frozenset[str] | None = None
    types: frozenset[str] | None = None
    excluded_streams: frozenset[str] = frozenset()
    excluded_types: frozenset[str] = frozenset()

    def wants(self, stream: str | None, type_: str) -> bool:
        if stream is None:
            return True  # hello, lagged, error, subscribed: always delivered
        return ((self.streams is None or stream in self.streams) and stream not in self.excluded_streams
                and (self.types is None or type_ in self.types) and type_ not in self.excluded_types)

    def subscribe(self, streams: frozenset[str] | None, types: frozenset[str] | None) -> None:
        if streams is not None:
            self.streams, self.excluded_streams = streams, self.excluded_streams - streams
        if types is not None:
            self.types, self.excluded_types = types, self.excluded_types - types

    def unsubscribe(self, streams: frozenset[str] | None, types: frozenset[str] | None) -> None:
        if streams is not None:
            self.excluded_streams |= streams
        if types is not None:
            self.excluded_types |= types

    def describe(self) -> Subscribed:
        def listed(values: frozenset[str] | None) -> tuple[str, ...] | None:
            return None if values is None else tuple(sorted(values))

        return Subscribed(streams=listed(self.streams), types=listed(self.types),
                          excluded_streams=tuple(sorted(self.excluded_streams)),
                          excluded_types=tuple(sorted(self.excluded_types)))


@dataclass
class _Entry:
    item: Outgoing
    dead: bool = False  # replaced by a newer coalesced message


@dataclass
class _StreamCursor:
    state: StreamState = StreamState.LIVE
    sent_seq: int = -1  # highest seq handed to the socket (in order, so everything below was too)
    queued_seq: int = -1  # highest durable seq queued or sent
    replay_after: int = -1  # REPLAYING: next page starts after this seq
    missed: int = 0  # LAGGED: durable messages not delivered
    held: dict[str, Outgoing] = field(default_factory=dict)  # REPLAYING: newest estimate/stats


@dataclass(frozen=True)
class SessionCounters:
    queued: int
    durable_queued: int
    coalesced: int
    lagged_times: int
    replayed: int


class ClientSession:
    """Delivery state of one client. ``capacity`` bounds the durable messages waiting to be sent."""

    def __init__(self, capacity: int, fetch: Fetch) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.selection = Selection()
        self._fetch = fetch
        self._queue: collections.deque[_Entry] = collections.deque()
        self._durable_queued = 0
        self._dead = 0
        self._unsent: dict[tuple[str, str], _Entry] = {}  # coalesced messages still in the queue
        self._cursors: dict[str, _StreamCursor] = {}
        self._lag_notice: _Entry | None = None
        self._coalesced = 0
        self._lagged_times = 0
        self._replayed = 0

    # -- what the server publishes -------------------------------------------------------------

    def offer(self, item: Outgoing) -> None:
        if not self.selection.wants(item.stream, item.type):
            return
        if item.stream is None:
            self._push(item)
            return
        cursor = self._cursor(item.stream)
        if cursor.state is StreamState.LAGGED:
            cursor.missed += item.durable
            self._refresh_lag_notice(create=False)
        elif cursor.state is StreamState.REPLAYING:
            if item.coalesced:
                cursor.held[item.type] = item  # delivered once the replay catches up
        elif item.durable:
            if item.seq is not None and item.seq <= cursor.queued_seq:
                return  # already queued or sent by a replay
            if self._durable_queued >= self.capacity:
                self._lag(item)
                return
            self._push(item)
        else:
            self._push(item)

    def reply(self, message: Record) -> None:
        """Queue a message for this client alone (hello, subscribed, error)."""
        self._push(Outgoing.of(message))

    # -- what the socket can take ----------------------------------------------------------------

    def take(self, limit: int = 64) -> list[Outgoing]:
        """Up to ``limit`` messages to send now, in order; pulls the next replay page when room."""
        self._refill_from_log()
        batch: list[Outgoing] = []
        while self._queue and len(batch) < limit:
            entry = self._queue.popleft()
            if entry.dead:
                self._dead -= 1
                continue
            item = entry.item
            if entry is self._lag_notice:
                self._lag_notice = None
            if item.stream is not None:
                if item.coalesced:
                    self._unsent.pop((item.stream, item.type), None)
                cursor = self._cursor(item.stream)
                if item.seq is not None:
                    cursor.sent_seq = max(cursor.sent_seq, item.seq)
                self._durable_queued -= item.durable
            batch.append(item)
        return batch

    @property
    def pending(self) -> bool:
        return bool(self._queue) or any(c.state is StreamState.REPLAYING for c in self._cursors.values())

    def counters(self) -> SessionCounters:
        return SessionCounters(len(self._queue) - self._dead, self._durable_queued, self._coalesced,
                               self._lagged_times, self._replayed)

    # -- what the client asks for ------------------------------------------------------------------

    def handle(self, request: Any) -> None:
        """Act on one decoded client message; raises ProtocolError for what cannot be acted on."""
        if not isinstance(request, dict):
            raise ProtocolError("bad_message", "a client message is a JSON object with a 'type'")
        kind = request.get("type")
        if kind in ("subscribe", "unsubscribe"):
            streams = _string_set(request, "streams")
            types = _string_set(request, "types")
            unknown = sorted((types or frozenset()) - set(STREAM_TYPES))
            if unknown:
                raise ProtocolError("bad_message", f"unknown message type(s) {unknown}: use {list(STREAM_TYPES)}")
            change = self.selection.subscribe if kind == "subscribe" else self.selection.unsubscribe
            change(streams, types)
            self._drop_unwanted()
            self.reply(self.selection.describe())
        elif kind == "resume":
            self.resume(_seq_map(request))
        elif isinstance(kind, str):
            raise ProtocolError("unknown_type", f"unknown client message type {kind!r}: use {list(CLIENT_TYPES)}")
        else:
            raise ProtocolError("bad_message", "a client message needs a string 'type'")

    def resume(self, after: dict[str, int]) -> None:
        """Replay durable messages with seq > ``after[stream]``; lagged streams not named resume from
        the last seq they were sent, so a lagged client never gets a silent gap."""
        targets = dict(after)
        for stream, cursor in self._cursors.items():
            if cursor.state is StreamState.LAGGED and stream not in targets:
                targets[stream] = cursor.sent_seq
        for stream, seq in targets.items():
            cursor = self._cursor(stream)
            self._withdraw(stream, cursor)
            cursor.state, cursor.replay_after, cursor.missed = StreamState.REPLAYING, seq, 0
            cursor.queued_seq = seq
            cursor.sent_seq = max(cursor.sent_seq, seq)  # the client says it has everything up to seq
        self._refresh_lag_notice(create=False)

    # -- internals ------------------------------------------------------------------------------------

    def _cursor(self, stream: str) -> _StreamCursor:
        cursor = self._cursors.get(stream)
        if cursor is None:
            cursor = self._cursors[stream] = _StreamCursor()
        return cursor

    def _push(self, item: Outgoing) -> None:
        entry = _Entry(item)
        if item.coalesced:
            key = (str(item.stream), item.type)
            previous = self._unsent.get(key)
            if previous is not None:
                self._discard(previous)
                self._coalesced += 1
            self._unsent[key] = entry
        self._queue.append(entry)
        if item.durable:
            self._durable_queued += 1
        if item.durable and item.stream is not None and item.seq is not None:
            cursor = self._cursor(item.stream)
            cursor.queued_seq = max(cursor.queued_seq, item.seq)
        if self._dead > len(self._queue) // 2 + 8:
            self._compact()

    def _compact(self) -> None:
        self._queue = collections.deque(entry for entry in self._queue if not entry.dead)
        self._dead = 0

    def _lag(self, overflowing: Outgoing) -> None:
        """The client fell too far behind: forget what waits for it and tell it how far."""
        self._lagged_times += 1
        missed_by_stream: collections.Counter[str] = collections.Counter()
        for entry in self._queue:
            if not entry.dead and entry.item.stream is not None:
                missed_by_stream[entry.item.stream] += entry.item.durable
        missed_by_stream[str(overflowing.stream)] += 1
        kept = [entry for entry in self._queue if not entry.dead and entry.item.stream is None]
        self._queue = collections.deque(kept)
        self._unsent.clear()
        self._durable_queued = self._dead = 0
        for stream in set(missed_by_stream) | set(self._cursors):
            cursor = self._cursor(stream)
            cursor.state, cursor.held = StreamState.LAGGED, {}
            cursor.missed += missed_by_stream[stream]
            cursor.queued_seq = cursor.sent_seq
        self._refresh_lag_notice(create=True)

    def _lag_message(self) -> Lagged | None:
        lagged = {stream: LagEntry(resume_after=cursor.sent_seq, missed=cursor.missed)
                  for stream, cursor in sorted(self._cursors.items()) if cursor.state is StreamState.LAGGED}
        if not lagged:
            return None
        return Lagged(streams=lagged)

    def _refresh_lag_notice(self, create: bool) -> None:
        """Keep the unsent `lagged` notice up to date (it is coalesced too). Once sent, the client
        knows where to resume from, so no further notice comes until it lags again."""
        if self._lag_notice is None and not create:
            return
        if self._lag_notice is not None:
            self._discard(self._lag_notice)
            self._lag_notice = None
        message = self._lag_message()
        if message is not None:
            self._lag_notice = _Entry(Outgoing.of(message))
            self._queue.append(self._lag_notice)

    def _withdraw(self, stream: str, cursor: _StreamCursor) -> None:
        """Take back what is queued for ``stream`` before a replay: durable messages come again from
        the log, and the newest estimate/stats is held until the replay has caught up."""
        for entry in self._queue:
            if entry.dead or entry.item.stream != stream:
                continue
            self._discard(entry)
            if entry.item.coalesced:
                cursor.held[entry.item.type] = entry.item

    def _drop_unwanted(self) -> None:
        """A new selection applies to what is still queued too: a client that subscribes right after
        connecting must not be sent what was queued for it before the subscription arrived."""
        for entry in self._queue:
            item = entry.item
            if not entry.dead and item.stream is not None and not self.selection.wants(item.stream, item.type):
                self._discard(entry)

    def _discard(self, entry: _Entry) -> None:
        """Take a queued message back; take() skips it."""
        item = entry.item
        entry.dead = True
        self._dead += 1
        self._durable_queued -= item.durable
        if item.coalesced and item.stream is not None:
            self._unsent.pop((item.stream, item.type), None)

    def _refill_from_log(self) -> None:
        for stream, cursor in self._cursors.items():
            if cursor.state is not StreamState.REPLAYING:
                continue
            room = self.capacity - self._durable_queued
            if room <= 0:
                return
            try:
                page = self._fetch(stream, cursor.replay_after, min(room, REPLAY_PAGE))
            except ReplayUnavailable:
                # Rather than skip what the file holds, the stream waits as lagged (resume_after: the last
                # seq sent to this client); its next resume may repeat a few seqs, never leave a gap.
                cursor.state, cursor.held = StreamState.LAGGED, {}
                self._refresh_lag_notice(create=True)
                continue
            for row in page:
                if self.selection.wants(row.stream, row.type):
                    self._push(Outgoing.stored(row))
                    self._replayed += 1
                cursor.replay_after = row.seq
            cursor.queued_seq = max(cursor.queued_seq, cursor.replay_after)
            if len(page) < min(room, REPLAY_PAGE):
                self._finish_replay(cursor)

    def _finish_replay(self, cursor: _StreamCursor) -> None:
        # Everything published so far is in the log, and offer() runs on the same thread as take(),
        # so the next live durable message follows the last replayed one without a gap.
        cursor.state = StreamState.LIVE
        for item in cursor.held.values():
            if item.seq is None or item.seq > cursor.replay_after:
                self._push(item)
        cursor.held = {}


def _string_set(request: dict[str, Any], key: str) -> frozenset[str] | None:
    value = request.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ProtocolError("bad_message", f"'{key}' must be a list of strings")
    return frozenset(value)


def resume_in_query(query: str) -> dict[str, int]:
    """The ``resume`` of a websocket URL (``?resume={"cam":41}``, JSON, URL-encoded): applied before the
    connection sends anything, so nothing live crosses it; empty when the URL has none."""
    values = parse_qs(query).get("resume")
    if not values:
        return {}
    try:
        decoded = json.loads(values[-1])
    except (ValueError, RecursionError) as error:
        raise ProtocolError("bad_message", f"?resume= must be URL-encoded JSON such as "
                            f"{{\"cam\": 41}} ({str(error)[:80]})") from error
    return _seq_map({"streams": decoded})


def _seq_map(request: dict[str, Any]) -> dict[str, int]:
    value = request.get("streams")
    if not isinstance(value, dict) or not all(
        isinstance(seq, int) and not isinstance(seq, bool) and -1 <= seq <= MAX_SEQ for seq in value.values()
    ):
        raise ProtocolError("bad_message", "'streams' must map stream ids to the last seq received "
                            f"(an integer from -1 to {MAX_SEQ}; -1 replays everything the log keeps)")
    return dict(value)


def outgoing_all(records: Iterable[Record]) -> list[Outgoing]:
    return [Outgoing.of(record) for record in records]
