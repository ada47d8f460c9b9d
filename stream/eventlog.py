"""The event log: every event and summary (and, if asked, recent estimates) in SQLite, for `resume`.

Rows are keyed by (stream, seq), the message's own per-stream sequence number, and hold the exact JSON
text that was sent live, so that a replay is byte-for-byte what a connected client would have seen.
The log is written from one thread at a time (the server's event loop); ``check_same_thread`` is off
only so that it can be opened in one thread and used in another.

``path=None`` keeps the log in memory (lost at exit); a file path survives restarts, which is what
makes resume across a server restart possible.

Every append also covers, per stream, the highest seq of *any* message handed to it (estimates and
stats too, which are not stored): the server appends before it sends, so after a crash (kill -9) a
restarted pipeline numbers on from above everything a client may have seen (``next_seq``). To cost
a write only once per ``SEQ_RESERVE`` messages rather than on every batch of estimates, the stored
mark is a reservation: ``seq + SEQ_RESERVE`` whenever a seq passes the mark. A restart then leaves
a gap of up to that many seqs, which the protocol allows (seqs increase; they need not be dense).

Write failures (a full disk, a read-only or vanished file) raise ``EventLogWriteError``; what to do
then (keep delivering, keep a backlog) is ``stream/log_backlog.py``'s business.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from affectstream.errors import AffectstreamError, ConfigError
from affectstream.stream.messages import MessageType, Record, StreamRecord, Wire

log = logging.getLogger(__name__)

SEQ_RESERVE = 4096  # seqs reserved per write of a stream's high-water mark

# Message types the log always keeps: they are never coalesced, so resume must be able to replay them.
DURABLE_TYPES: frozenset[str] = frozenset({MessageType.EVENT.value, MessageType.SUMMARY.value})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    wall INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (stream, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_wall ON messages (wall);
CREATE TABLE IF NOT EXISTS pruned (
    stream TEXT PRIMARY KEY,
    through_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS high_water (
    stream TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sink_cursors (
    sink TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (sink, stream)
) WITHOUT ROWID;
"""


def kept(kind: str, estimates_kept: bool) -> bool:
    """Whether the log stores messages of this type: events and summaries always, estimates if asked."""
    return kind in DURABLE_TYPES or (kind == MessageType.ESTIMATE.value and estimates_kept)


class EventLogWriteError(AffectstreamError):
    """The log could not store a batch (disk full, file gone read-only); nothing of it was stored."""


class ReplayUnavailable(AffectstreamError):
    """The log cannot be read now and may hold what a replay asks for: the replay must wait."""


@dataclass(frozen=True)
class StoredMessage:
    """One row of the log: the message's text as sent live, with its key."""

    stream: str
    seq: int
    type: str
    text: str

    def message(self) -> Wire:
        decoded: Wire = json.loads(self.text)
        return decoded


@dataclass(frozen=True)
class EventLogConfig:
    path: Path | None = None  # None: in memory
    retention_s: float = 24 * 3600.0  # events and summaries older than this are pruned
    estimate_retention_s: float = 0.0  # 0: estimates are not stored at all

    def __post_init__(self) -> None:
        if self.retention_s <= 0:
            raise ConfigError(f"event log retention must be > 0 s, got {self.retention_s}")
        if self.estimate_retention_s < 0:
            raise ConfigError(f"estimate retention must be >= 0 s, got {self.estimate_retention_s}")


class EventLog:
    """Append-only store of durable messages, replayable per stream from a sequence number."""

    def __init__(self, config: EventLogConfig, clock_ms: Callable[[], int] | None = None) -> None:
        self.config = config
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._db = _open(config.path)
        self._marks: dict[str, int] = {}  # the stored high-water mark per stream (see SEQ_RESERVE)
        self._last_prune_ms = 0
        self.ignored_duplicates = 0

    def stores(self, message: Record) -> bool:
        return isinstance(message, StreamRecord) and kept(message.type.value, self.config.estimate_retention_s > 0)

    def append(self, messages: Iterable[Record]) -> int:
        """Store the durable ones (their JSON text as sent) and every stream's highest seq, in one
        transaction; returns how many messages were stored. Raises EventLogWriteError (nothing stored)."""
        records = [m for m in messages if isinstance(m, StreamRecord)]
        rows = [(m.stream, m.seq, m.type.value, m.wall, m.text) for m in records if self.stores(m)]
        highest: dict[str, int] = {}
        for m in records:
            highest[m.stream] = max(m.seq, highest.get(m.stream, m.seq))
        try:
            marks = {stream: seq + SEQ_RESERVE for stream, seq in highest.items() if seq > self._reserved(stream)}
            if not rows and not marks:
                return 0  # estimates within the reservation: nothing to write
            with self._transaction():
                before = self._db.total_changes
                self._db.executemany("INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?)", rows)
                stored = self._db.total_changes - before
                self._db.executemany(
                    "INSERT INTO high_water VALUES (?, ?) ON CONFLICT(stream) DO UPDATE "
                    "SET seq = MAX(seq, excluded.seq)", sorted(marks.items()))
        except sqlite3.Error as error:
            raise EventLogWriteError(f"the event log {self._where} cannot store messages ({error})") from error
        self._marks.update(marks)
        if stored < len(rows):
            # A pipeline restarted from seq 0 over an existing log: its messages would shadow nothing,
            # so they are ignored here; the lead's runner starts numbering at next_seq() instead.
            self.ignored_duplicates += len(rows) - stored
            log.warning("event log: %d message(s) reused a stored (stream, seq) and were not stored; "
                        "start stream numbering at EventLog.next_seq()", len(rows) - stored)
        try:
            self._maybe_prune()
        except sqlite3.Error as error:  # pruning frees space later; the batch itself is stored
            log.debug("event log: pruning failed: %s", error)
        return stored

    def append_message(self, message: Record) -> int:
        return self.append([message])

    def since(self, stream: str, after_seq: int, limit: int = 500) -> list[StoredMessage]:
        """Stored messages of ``stream`` with seq > ``after_seq``, oldest first, at most ``limit``."""
        rows = self._db.execute(
            "SELECT stream, seq, type, body FROM messages WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
            (stream, after_seq, limit),
        ).fetchall()
        return [StoredMessage(*row) for row in rows]

    def _reserved(self, stream: str) -> int:
        """The stored high-water mark of ``stream`` (-1: none), read once and then kept in memory."""
        if stream not in self._marks:
            row = self._db.execute("SELECT seq FROM high_water WHERE stream = ?", (stream,)).fetchone()
            self._marks[stream] = -1 if row is None else int(row[0])
        return self._marks[stream]

    def pruned_through(self, stream: str) -> int:
        """Highest seq of ``stream`` removed by retention (-1: nothing removed)."""
        row = self._db.execute("SELECT through_seq FROM pruned WHERE stream = ?", (stream,)).fetchone()
        return -1 if row is None else int(row[0])

    def next_seq(self, stream: str) -> int:
        """The seq a restarted pipeline should give its next message of ``stream``; ConfigError when the
        log cannot be read (numbering from a guess could reuse seqs clients have seen)."""
        try:
            row = self._db.execute("SELECT MAX(seq) FROM messages WHERE stream = ?", (stream,)).fetchone()
            stored = -1 if row is None or row[0] is None else int(row[0])
            return max(stored, self._reserved(stream), self.pruned_through(stream)) + 1
        except sqlite3.Error as error:
            raise ConfigError(f"cannot read the event log {self._where} ({error}): free space on its disk "
                              "or pass another --event-log path") from error

    def cursors(self, sink: str) -> dict[str, int]:
        """A sink's delivery cursor: per stream, the highest seq it has delivered (stream/delivery.py)."""
        rows = self._db.execute("SELECT stream, seq FROM sink_cursors WHERE sink = ?", (sink,)).fetchall()
        return {stream: int(seq) for stream, seq in rows}

    def save_cursors(self, sink: str, cursors: dict[str, int]) -> None:
        """Store a sink's cursor (never moving a stream's back); EventLogWriteError when it cannot."""
        try:
            with self._transaction():
                self._db.executemany(
                    "INSERT INTO sink_cursors VALUES (?, ?, ?) ON CONFLICT(sink, stream) DO UPDATE "
                    "SET seq = MAX(seq, excluded.seq)", [(sink, stream, seq) for stream, seq in sorted(cursors.items())])
        except sqlite3.Error as error:
            raise EventLogWriteError(f"the event log {self._where} cannot store sink {sink}'s cursor ({error})") from error

    def heads(self) -> dict[str, int]:
        """Per stream, the highest stored seq."""
        return {stream: int(seq) for stream, seq in self._db.execute("SELECT stream, MAX(seq) FROM messages GROUP BY stream")}

    def count_since(self, stream: str, after_seq: int) -> int:
        """Stored messages of ``stream`` with seq > ``after_seq``: a sink's lag."""
        row = self._db.execute("SELECT COUNT(*) FROM messages WHERE stream = ? AND seq > ?", (stream, after_seq)).fetchone()
        return int(row[0])

    def streams(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT DISTINCT stream FROM messages ORDER BY stream")]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def prune(self, now_ms: int | None = None) -> int:
        """Remove what retention no longer keeps; returns the number of rows removed."""
        now = self._clock_ms() if now_ms is None else now_ms
        cutoffs = [(MessageType.ESTIMATE.value, now - int(self.config.estimate_retention_s * 1000))]
        cutoffs += [(kind, now - int(self.config.retention_s * 1000)) for kind in sorted(DURABLE_TYPES)]
        removed = 0
        with self._transaction():
            for kind, cutoff in cutoffs:
                self._record_pruned(kind, cutoff)
                removed += self._db.execute("DELETE FROM messages WHERE type = ? AND wall < ?",
                                            (kind, cutoff)).rowcount
        self._last_prune_ms = now
        return removed

    def close(self) -> None:
        self._db.close()

    def _record_pruned(self, kind: str, cutoff: int) -> None:
        # Only durable types matter for gaps: estimates may be coalesced anyway.
        if kind not in DURABLE_TYPES:
            return
        self._db.execute(
            "INSERT INTO pruned SELECT stream, MAX(seq) FROM messages WHERE type = ? AND wall < ? "
            "GROUP BY stream ON CONFLICT(stream) DO UPDATE SET through_seq = MAX(through_seq, excluded.through_seq)",
            (kind, cutoff),
        )

    def _maybe_prune(self) -> None:
        now = self._clock_ms()
        if now - self._last_prune_ms >= 10_000:  # retention is coarse: prune at most every 10 s
            self.prune(now)

    @property
    def _where(self) -> str:
        return "in memory" if self.config.path is None else str(self.config.path)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


def _open(path: Path | None) -> sqlite3.Connection:
    """The log's connection with its schema; ConfigError says what is wrong with ``path``."""
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"--event-log {path}: cannot create its directory {path.parent} "
                              f"({error.strerror or error}); pick another path") from error
        if path.is_dir():
            raise ConfigError(f"--event-log {path} is a directory; give a file name")
    try:
        db = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False,
                             isolation_level=None)
        db.executescript(_SCHEMA)
        if path is not None:
            # WAL + NORMAL: a crash of the process loses nothing committed; a power cut may lose the
            # last transaction but never corrupts the log.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.DatabaseError as error:
        if "not a database" in str(error) or "malformed" in str(error):
            raise ConfigError(f"--event-log {path} is not an affectstream event log or is damaged "
                              f"(SQLite: {error}); move it away to start a new log, or pass another path"
                              ) from error
        raise ConfigError(f"cannot open the event log {path} ({error}): check that the path is "
                          "writable and the disk has space") from error
    return db


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error:
                self._rollback()  # a COMMIT that fails (SQLITE_FULL) leaves the transaction open
                raise
        self._rollback()

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:  # nothing to roll back any more: SQLite already did
            pass
