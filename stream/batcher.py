"""Gathering sampled frames of all streams into batches for the encoder.

A batch leaves when it is full (``max_batch``) or when its oldest item has waited ``max_wait_ms``,
whichever comes first: a busy server fills batches and uses the accelerator well, a quiet one still
answers within the wait. ``BatchAssembler`` is that rule as pure logic driven by the caller's clock;
``BatchQueue`` is the thin thread-safe adapter that producers (one pump per stream) and the inference
worker share. Items are opaque to both.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from affectstream.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """How big a batch may grow and how long its first item may wait for company."""

    max_batch: int = 16
    max_wait_ms: float = 10.0

    def __post_init__(self) -> None:
        _check_limits(self.max_batch, self.max_wait_ms)


def _check_limits(max_batch: int, max_wait_ms: float) -> None:
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"max batch size must be a positive integer (e.g. 16), got {max_batch!r}")
    if not isinstance(max_wait_ms, (int, float)) or not math.isfinite(max_wait_ms) or max_wait_ms < 0:
        raise ConfigError(f"max batch wait must be a finite number of ms >= 0 (e.g. 10), got {max_wait_ms!r}")


@dataclass(frozen=True)
class Wave(Generic[T]):
    """Items of one batch that advance together: at most one per stream, or a single barrier."""

    items: tuple[T, ...]
    barrier: bool = False


def split_waves(batch: Sequence[T], key: Callable[[T], str], is_barrier: Callable[[T], bool]) -> list[Wave[T]]:
    """Split a batch, in order, into waves a stateful head can step at once.

    A head keeps one state per stream, so a wave holds at most one item of each stream (a stream's
    second frame starts the next wave); a barrier (a stream's lifecycle marker, which may reset its
    state) stands alone, after every item before it and before every item after it.
    """
    waves: list[Wave[T]] = []
    current: list[T] = []
    for item in batch:
        if is_barrier(item):
            if current:
                waves.append(Wave(tuple(current)))
                current = []
            waves.append(Wave((item,), barrier=True))
            continue
        if any(key(queued) == key(item) for queued in current):
            waves.append(Wave(tuple(current)))
            current = []
        current.append(item)
    if current:
        waves.append(Wave(tuple(current)))
    return waves


class BatchAssembler(Generic[T]):
    """The batching rule without threads or clocks: the caller passes ``now_ns`` in."""

    def __init__(self, max_batch: int, max_wait_ms: float) -> None:
        _check_limits(max_batch, max_wait_ms)
        self.max_batch = max_batch
        self.max_wait_ns = int(max_wait_ms * 1_000_000)
        self._items: list[T] = []
        self._oldest_ns: int | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, now_ns: int) -> list[T] | None:
        """Add ``item``; the full batch when this item filled it, else None."""
        if not self._items:
            self._oldest_ns = now_ns
        self._items.append(item)
        if len(self._items) >= self.max_batch:
            return self.flush()
        return None

    def poll(self, now_ns: int) -> list[T] | None:
        """The pending batch if its oldest item has waited ``max_wait_ms`` by ``now_ns``, else None."""
        deadline = self.deadline_ns()
        if deadline is None or now_ns < deadline:
            return None
        return self.flush()

    def deadline_ns(self) -> int | None:
        """When the pending batch is due by waiting; None when nothing is pending."""
        if self._oldest_ns is None:
            return None
        return self._oldest_ns + self.max_wait_ns

    def flush(self) -> list[T]:
        """Everything pending, now (possibly [])."""
        batch, self._items, self._oldest_ns = self._items, [], None
        return batch


class BatchQueue(Generic[T]):
    """Many producers put items, one or more consumers take batches; see the module docstring.

    ``put`` never blocks. With ``max_pending`` set it refuses items beyond that many waiting (the
    caller decides what a refusal means) and counts them in ``rejected``.
    """

    def __init__(
        self,
        max_batch: int,
        max_wait_ms: float,
        clock: Callable[[], int] = time.monotonic_ns,
        max_pending: int | None = None,
    ) -> None:
        if max_pending is not None and (isinstance(max_pending, bool) or max_pending < 1):
            raise ConfigError(f"max pending items must be a positive integer or None, got {max_pending!r}")
        self._assembler: BatchAssembler[T] = BatchAssembler(max_batch, max_wait_ms)
        self._ready: collections.deque[list[T]] = collections.deque()
        self._clock = clock
        self._max_pending = max_pending
        self._ready_items = 0
        self._rejected = 0
        self._closed = False
        self._changed = threading.Condition()

    @classmethod
    def from_config(cls, config: BatchConfig, max_pending: int | None = None) -> BatchQueue[T]:
        return cls(config.max_batch, config.max_wait_ms, max_pending=max_pending)

    @property
    def closed(self) -> bool:
        with self._changed:
            return self._closed

    @property
    def pending(self) -> int:
        """Items put and not yet handed out in a batch."""
        with self._changed:
            return self._pending_locked()

    @property
    def rejected(self) -> int:
        """Items refused because the queue was closed or ``max_pending`` were already waiting."""
        with self._changed:
            return self._rejected

    def put(self, item: T) -> bool:
        """Queue ``item``; False (and counted) if closed or full. Never blocks."""
        with self._changed:
            if self._closed or (
                self._max_pending is not None and self._pending_locked() >= self._max_pending
            ):
                self._rejected += 1
                log.debug("batch queue refused an item (closed=%s)", self._closed)
                return False
            full = self._assembler.add(item, self._clock())
            if full is not None:
                self._ready.append(full)
                self._ready_items += len(full)
            # A new first item sets a deadline the consumer must learn about, a full batch is ready:
            # either way the consumer has to look again.
            self._changed.notify()
            return True

    def get_batch(self, timeout: float | None = None) -> list[T]:
        """The next batch, once full or due by waiting; [] on timeout, or when closed and drained."""
        give_up = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                batch = self._take_locked()
                if batch:
                    return batch
                if self._closed:
                    return []
                if not self._wait_locked(give_up):
                    return []

    def close(self) -> None:
        """Refuse further items; consumers get what is pending at once, then []."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _pending_locked(self) -> int:
        return self._ready_items + len(self._assembler)

    def _take_locked(self) -> list[T]:
        if self._ready:
            batch = self._ready.popleft()
            self._ready_items -= len(batch)
            return batch
        if self._closed:
            return self._assembler.flush()  # no one will add to it: don't make it wait
        return self._assembler.poll(self._clock()) or []

    def _wait_locked(self, give_up: float | None) -> bool:
        """Sleep until notified, the pending batch falls due, or ``give_up``; False once given up."""
        waits: list[float] = []
        if give_up is not None:
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                return False
            waits.append(remaining)
        deadline = self._assembler.deadline_ns()
        if deadline is not None:
            waits.append(max(0.0, (deadline - self._clock()) / 1e9))
        self._changed.wait(min(waits) if waits else None)
        return True
