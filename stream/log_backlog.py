"""What the server does when the event log cannot write: deliver anyway, keep a backlog, count losses.

A full disk must not cost a connected client anything: the server hands every message to its
clients whether or not the log stored it. Durable messages the log refused wait here, in memory,
in order, and are written (with everything after them) at the next try (after 1 s, then backing off to
30 s while it keeps failing), so a disk that has space again gets them all. The backlog is bounded: past ``limit`` messages the oldest
are dropped and counted as lost, because a process that grows without bound would be killed and
lose everything; what was dropped is counted (``lost``, announced to clients) and cannot be replayed.
A client that resumes meanwhile is replayed from the log *and* the backlog (``since``); if the file
cannot even be read and may hold what it asks for, the replay waits (``ReplayUnavailable``: the
client is told it lagged and resumes later) rather than skip what is on disk.

Sans I/O apart from the ``EventLog`` it wraps; the clock is injected, so the rules are tested with
data alone (tests/test_log_backlog.py), and with a real full tmpfs where root can mount one.
"""

from __future__ import annotations

import collections
import enum
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from affectstream.stream.eventlog import EventLog, EventLogWriteError, ReplayUnavailable, StoredMessage
from affectstream.stream.messages import MAX_SEQ, Record, StreamRecord

log = logging.getLogger(__name__)

RETRY_FIRST_S = 1.0  # the first retry after a failed write; each failure doubles it, up to
RETRY_MAX_S = 30.0  # so that a disk that stays full costs one attempt per 30 s, not 20,000 rows a second
ANNOUNCE_EVERY_S = 1.0  # while failing, clients hear of a growing backlog or loss at most this often
DEFAULT_BACKLOG = 20_000  # durable messages: ~10 MB of JSON; hours of summaries and events


class LogState(enum.Enum):
    OK = "ok"  # every message so far is stored
    FAILING = "failing"  # the last write failed; durable messages wait in the backlog


@dataclass(frozen=True)
class LogHealth:
    """The log's state as the server reports it (the `server_status` message, the exit status)."""

    state: LogState
    backlog: int = 0  # durable messages waiting to be written
    lost: int = 0  # durable messages dropped from a full backlog: never stored, not replayable
    error: str | None = None  # why the last write failed

    @property
    def failed(self) -> bool:
        """Something durable is not in the log: the run did not keep what it promised."""
        return self.lost > 0 or self.backlog > 0


class BufferedLog:
    """An ``EventLog`` that never raises on append; see the module docstring."""

    def __init__(self, eventlog: EventLog, limit: int = DEFAULT_BACKLOG,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError(f"backlog limit must be >= 1, got {limit}")
        self.eventlog = eventlog
        self._limit = limit
        self._clock = clock
        self._backlog: collections.deque[StreamRecord] = collections.deque()
        self._marks: dict[str, StreamRecord] = {}  # newest non-durable record per stream: its seq counts
        self._lost = 0
        self._error: str | None = None
        self._retry_s = RETRY_FIRST_S
        self._next_try = 0.0
        self._announced = LogHealth(LogState.OK)
        self._next_announce = 0.0
        self._stored_through: dict[str, int] = {}  # per stream, the highest seq this process stored

    def append(self, messages: Iterable[Record]) -> bool:
        """Store what the log stores; True when clients should be told the health: it changed state,
        or, while failing, its backlog or loss changed (at most once per ANNOUNCE_EVERY_S)."""
        records = [m for m in messages if isinstance(m, StreamRecord)]
        if self._error is None or self._clock() >= self._next_try:
            self._write(records)
        else:
            self._keep(records)
        return self._announce_due()

    def _announce_due(self) -> bool:
        health, now = self.health(), self._clock()
        said = self._announced
        if health == said:
            return False
        if health.state is said.state and now < self._next_announce:
            return False
        self._announced, self._next_announce = health, now + ANNOUNCE_EVERY_S
        return True

    def since(self, stream: str, after_seq: int, limit: int = 500) -> list[StoredMessage]:
        """The log's rows, then the backlog's, of ``stream`` after ``after_seq``: what a replay owes.
        Raises ReplayUnavailable when the file cannot be read and may hold some of them."""
        try:
            rows = self.eventlog.since(stream, after_seq, limit)
        except sqlite3.Error as error:
            # WAL reads need the -shm file, which a full disk may not let grow. The backlog alone is
            # the whole answer only if this process stored nothing of the stream after after_seq.
            if self._stored_through.get(stream, MAX_SEQ) > after_seq:
                raise ReplayUnavailable(f"the event log cannot be read now ({error})") from error
            rows = []
        last = rows[-1].seq if rows else after_seq
        waiting = [StoredMessage(m.stream, m.seq, m.type.value, m.text) for m in self._backlog
                   if m.stream == stream and m.seq > last]
        return (rows + waiting)[:limit]

    def health(self) -> LogHealth:
        state = LogState.OK if self._error is None else LogState.FAILING
        return LogHealth(state, len(self._backlog), self._lost, self._error)

    def close(self) -> LogHealth:
        """One last try to write the backlog, then close; the health says what was not stored."""
        if self._error is not None:
            self._write([])
        health = self.health()
        self.eventlog.close()
        if health.failed:
            log.error("the event log did not store %d event/summary message(s) (%d dropped while it failed, "
                      "%d unwritten at exit): %s; clients that resume from it later will not get them",
                      health.lost + health.backlog, health.lost, health.backlog, health.error)
        return health

    def _write(self, records: list[StreamRecord]) -> None:
        pending = [*self._backlog, *self._marks.values(), *records]
        try:
            self.eventlog.append(pending)
        except EventLogWriteError as error:
            if self._error is None:
                log.error("%s: live delivery goes on; events and summaries are kept in memory (up to %d) "
                          "and written when it can write again", error, self._limit)
            else:
                self._retry_s = min(RETRY_MAX_S, self._retry_s * 2)
            self._error = str(error)
            self._next_try = self._clock() + self._retry_s
            self._keep(records)
            return
        if self._error is not None:
            log.warning("the event log writes again: %d waiting message(s) stored (%d lost meanwhile)",
                        len(self._backlog), self._lost)
        for record in pending:
            if self.eventlog.stores(record):
                self._stored_through[record.stream] = max(record.seq, self._stored_through.get(record.stream, -1))
        self._backlog.clear()
        self._marks.clear()
        self._error = None
        self._retry_s = RETRY_FIRST_S

    def _keep(self, records: list[StreamRecord]) -> None:
        for record in records:
            if self.eventlog.stores(record):
                self._backlog.append(record)
            else:
                self._marks[record.stream] = record  # only its seq matters: the high-water mark
        overflow = len(self._backlog) - self._limit
        for _ in range(max(0, overflow)):
            self._backlog.popleft()
        if overflow > 0:
            if self._lost == 0:
                log.error("the event log backlog is full (%d messages): the oldest are dropped and counted",
                          self._limit)
            self._lost += overflow
