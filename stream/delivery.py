"""At-least-once delivery to brokers, webhooks and files, from a durable cursor per sink in the event log.

Each ``--sink`` gets a thread that sends what the event log stored after its cursor, in seq order per
stream, and moves the cursor (stored in the log's ``sink_cursors`` table) only after the broker took
the batch. So:

- the pipeline never waits for a sink: the server stores and publishes as before, and only wakes the
  sink threads;
- while a broker is down its events and summaries wait in the log (bounded by ``--retention``), and go
  out in order when it is back; the sink retries with exponential backoff and jitter (1 s to 30 s);
- a batch sent but not acknowledged (the broker went away mid-batch, a timeout) is sent again, so
  duplicates are possible around a failure, recognisable by ``(stream, seq)``, and nothing is lost;
- with a file event log (``--event-log``) the cursors survive a restart: a sink goes on where it was.

Estimates come from the log too while ``--keep-estimates`` keeps them (the default); messages the log
does not store (``stats``; estimates with ``--keep-estimates 0``) go out live from a bounded queue
(newest 1,000, drop-oldest, counted): at most once. ``estimate_hz`` thins estimates per stream by
media time; events and summaries are never thinned. A sink seen for the first time starts at the
log's current end (not 24 h of history).

The choosing is pure (``SinkOutbox``: pages and live messages in, the batch and the new cursor out),
tested with data alone; ``SinkWorker`` is the thread around it and a ``Transport`` (stream/brokers.py).
"""

from __future__ import annotations

import collections
import enum
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from affectstream.stream.brokers import DeliveryError, Outbound, SinkSpec, Transport, open_transport
from affectstream.stream.eventlog import StoredMessage, kept
from affectstream.stream.messages import MessageType, Record, SinkLag, StreamRecord

log = logging.getLogger(__name__)

BATCH = 200  # messages per send
PAGE = 200  # rows read from the log per stream and round
LIVE_LIMIT = 1000  # messages the log does not store, waiting for a sink (drop-oldest)
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0


class LogAccess(Protocol):
    """What a sink needs of the event log; the server runs each call on its own loop (thread-safe)."""

    def since(self, stream: str, after_seq: int, limit: int) -> list[StoredMessage]: ...

    def cursors(self, sink: str) -> dict[str, int]: ...

    def save_cursors(self, sink: str, cursors: dict[str, int]) -> None: ...

    def stored_heads(self) -> dict[str, int]: ...

    def count_since(self, stream: str, after_seq: int) -> int: ...


class SinkState(str, enum.Enum):
    STARTING = "starting"  # no batch tried yet
    UP = "up"  # the last batch was taken
    DOWN = "down"  # the last batch failed: retrying with backoff
    CLOSED = "closed"


@dataclass(frozen=True)
class SinkStatus:
    """A sink's state for people and dashboards (server_status)."""

    name: str
    state: SinkState
    lag: int  # stored messages after its cursor, all streams
    delivered: int
    failures: int  # batches that failed
    live_dropped: int  # unstored messages (stats...) dropped while it could not keep up
    error: str | None = None
    lags: Mapping[str, int] = field(default_factory=dict)  # per stream it is behind on (-1: unknown)


class SinkOutbox:
    """Which messages a sink sends next, and where its cursor moves (pure; no threads, no I/O)."""

    def __init__(self, spec: SinkSpec, cursors: dict[str, int], heads: dict[str, int],
                 estimates_stored: bool = True) -> None:
        self.spec = spec
        self.estimates_stored = estimates_stored  # the log keeps estimates: they come from it, not live
        self.cursors = dict(cursors)  # per stream: highest seq delivered or decided (thinned)
        self.heads = {s: seq for s, seq in heads.items() if spec.streams is None or s in spec.streams}
        if not cursors:  # a sink seen for the first time starts at the log's end, not its whole history
            self.cursors = dict(self.heads)
        self._last_estimate_ts: dict[str, float] = {}
        self._pending_ts: dict[str, float] = {}  # what _last_estimate_ts becomes once the chosen batch is taken
        self.live: collections.deque[Outbound] = collections.deque()
        self.live_dropped = 0

    def stored(self, stream: str, seq: int) -> None:
        """The log stored ``seq`` of ``stream``: there is something to send."""
        if self.spec.streams is not None and stream not in self.spec.streams:
            return
        if seq > self.heads.get(stream, -1):
            self.heads[stream] = seq
        self.cursors.setdefault(stream, -1)

    def offer_live(self, message: Outbound) -> None:
        if not self.spec.wants(message.stream, message.type):
            return
        self.live.append(message)
        while len(self.live) > LIVE_LIMIT:
            self.live.popleft()
            self.live_dropped += 1

    def behind(self) -> list[str]:
        """Streams whose stored messages the sink has not all sent."""
        return [s for s, head in self.heads.items() if head > self.cursors.get(s, -1)]

    def choose(self, pages: dict[str, list[StoredMessage]],
               heads: dict[str, int] | None = None) -> tuple[list[Outbound], dict[str, int]]:
        """The next batch from ``pages`` (rows after each stream's cursor) and the live queue, and the
        cursor once it is delivered (rows left out by type or thinning are decided too). ``heads``: the
        stored heads as they were when the pages were asked for (a newer head may not be in them)."""
        heads = self.heads if heads is None else heads
        batch: list[Outbound] = []
        cursors = dict(self.cursors)
        last_ts = dict(self._last_estimate_ts)
        for stream, rows in pages.items():
            if not rows:  # nothing stored after the cursor (lost from a full backlog, pruned): caught up
                cursors[stream] = max(cursors.get(stream, -1), heads.get(stream, -1))
            for row in rows:
                if len(batch) >= BATCH:
                    break
                cursors[stream] = row.seq
                if self._wanted(row, last_ts):
                    batch.append(Outbound(row.stream, row.seq, row.type, row.text))
        for message in list(self.live)[:max(0, BATCH - len(batch))]:
            batch.append(message)
        self._pending_ts = last_ts
        return batch, cursors

    def delivered(self, batch: Sequence[Outbound], cursors: dict[str, int]) -> None:
        self.cursors = cursors
        self._last_estimate_ts = self._pending_ts
        live = sum(1 for m in batch if not self._stored(m.type))
        for _ in range(min(live, len(self.live))):
            self.live.popleft()

    def _stored(self, kind: str) -> bool:
        return kept(kind, self.estimates_stored)

    def _wanted(self, row: StoredMessage, last_ts: dict[str, float]) -> bool:
        if row.type not in self.spec.types:
            return False
        if row.type != MessageType.ESTIMATE.value or self.spec.estimate_hz is None:
            return True
        ts = float(json.loads(row.text).get("ts", 0.0))
        previous = last_ts.get(row.stream)
        if previous is not None and 0 <= ts - previous < 1.0 / self.spec.estimate_hz:
            return False  # thinned: too soon after the last one sent for this stream
        last_ts[row.stream] = ts
        return True


class SinkWorker:
    """One sink's thread: choose from the log and the live queue, send, move the cursor, back off."""

    def __init__(self, spec: SinkSpec, access: LogAccess, estimates_stored: bool,
                 transport_factory: Callable[[SinkSpec], Transport] = open_transport) -> None:
        self.spec = spec
        self._access = access
        self._transport = transport_factory(spec)
        self._outbox = SinkOutbox(spec, access.cursors(spec.name), access.stored_heads(), estimates_stored)
        self._lock = threading.Lock()  # the outbox: the server's loop offers, this thread chooses
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._state = SinkState.STARTING
        self._error: str | None = None
        self._delivered = self._failures = 0
        self._retry_s = RETRY_FIRST_S
        self._thread = threading.Thread(target=self._run, name=f"sink-{spec.kind.value}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def on_messages(self, stored: Iterable[StreamRecord], live: Iterable[StreamRecord]) -> None:
        """The server's loop, after each batch: what the log stored, and what it does not store."""
        with self._lock:
            for record in stored:
                self._outbox.stored(record.stream, record.seq)
            for record in live:
                self._outbox.offer_live(Outbound(record.stream, record.seq, record.type.value, record.text))
        self._wake.set()

    def status(self) -> SinkStatus:
        with self._lock:
            behind = {s: self._outbox.cursors.get(s, -1) for s in self._outbox.behind()}
            dropped = self._outbox.live_dropped
        lags: dict[str, int] = {}
        for stream, cursor in behind.items():
            try:
                lags[stream] = self._access.count_since(stream, cursor)
            except Exception:  # the log cannot be read now: the lag is unknown, not zero
                lags[stream] = -1
        lag = -1 if -1 in lags.values() else sum(lags.values())
        return SinkStatus(self.spec.name, self._state, lag, self._delivered, self._failures, dropped, self._error,
                          lags)

    def close(self, timeout: float) -> None:
        """Deliver what is waiting for up to ``timeout`` s (a broker that is down gets no more), then stop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._state is not SinkState.DOWN and self._has_work():
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.1, deadline - time.monotonic()) + 1.0)
        try:
            self._transport.close()
        except Exception:  # closing a connection that is gone
            log.debug("sink %s: closing its connection failed", self.spec.name, exc_info=True)
        self._state = SinkState.CLOSED

    def _has_work(self) -> bool:
        with self._lock:
            return bool(self._outbox.behind() or self._outbox.live)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                batch, cursors = self._choose()
            except Exception as error:  # the log cannot be read now: try again a little later
                log.debug("sink %s: cannot read the event log: %s", self.spec.name, error)
                self._stop.wait(1.0)
                continue
            if not batch and cursors == self._outbox.cursors:
                self._wake.wait(1.0)
                continue
            if batch and not self._send(batch):
                continue
            with self._lock:
                self._outbox.delivered(batch, cursors)
            self._delivered += len(batch)
            self._save(cursors)

    def _choose(self) -> tuple[list[Outbound], dict[str, int]]:
        with self._lock:
            wanted = {s: self._outbox.cursors.get(s, -1) for s in self._outbox.behind()}
            heads = dict(self._outbox.heads)
        pages = {stream: self._access.since(stream, after, PAGE) for stream, after in wanted.items()}
        with self._lock:
            return self._outbox.choose(pages, heads)

    def _send(self, batch: list[Outbound]) -> bool:
        try:
            self._transport.send(batch)
        except DeliveryError as error:
            self._failures += 1
            if self._state is not SinkState.DOWN:
                log.warning("sink %s is down (%s): events and summaries wait in the event log and go out "
                            "in order when it is back", self.spec.name, error)
            self._state, self._error = SinkState.DOWN, str(error)
            delay = self._retry_s * random.uniform(0.5, 1.0)  # jitter: sinks of one broker do not stampede it
            self._retry_s = min(RETRY_MAX_S, self._retry_s * 2)
            self._stop.wait(delay)
            return False
        if self._state is SinkState.DOWN:
            log.warning("sink %s is back: sending what waited", self.spec.name)
        self._state, self._error, self._retry_s = SinkState.UP, None, RETRY_FIRST_S
        return True

    def _save(self, cursors: dict[str, int]) -> None:
        try:
            self._access.save_cursors(self.spec.name, cursors)
        except Exception as error:  # EventLogWriteError, or the loop gone: kept in memory; a restart may resend
            log.debug("sink %s: its cursor is not stored now: %s", self.spec.name, error)


class Delivery:
    """Every ``--sink`` of a run; the server calls ``on_drained`` after it stored and published a batch."""

    def __init__(self, specs: Sequence[SinkSpec], access: LogAccess, estimates_stored: bool,
                 transport_factory: Callable[[SinkSpec], Transport] = open_transport) -> None:
        self._estimates_stored = estimates_stored
        self.workers = [SinkWorker(spec, access, estimates_stored, transport_factory) for spec in specs]
        self._snapshot = [SinkStatus(spec.name, SinkState.STARTING, 0, 0, 0, 0) for spec in specs]

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def on_drained(self, messages: Sequence[Record]) -> None:
        records = [m for m in messages if isinstance(m, StreamRecord)]
        stored = [m for m in records if kept(m.type.value, self._estimates_stored)]
        live = [m for m in records if not kept(m.type.value, self._estimates_stored)]
        for worker in self.workers:
            worker.on_messages(stored, live)

    def statuses(self) -> list[SinkStatus]:
        """Each sink's state now (reads the log: the server's loop calls it every few seconds); also
        kept for ``lags_of``."""
        statuses = [worker.status() for worker in self.workers]
        self._snapshot = statuses
        return statuses

    def lags_of(self, stream: str) -> tuple[SinkLag, ...]:
        """Each sink's state and lag for ``stream``, as last seen (for its stats; never waits)."""
        return tuple(SinkLag(s.name, s.state.value, s.lags.get(stream, 0)) for s in self._snapshot)

    def close(self, timeout: float = 5.0) -> None:
        for worker in self.workers:
            worker.close(timeout / max(1, len(self.workers)))
