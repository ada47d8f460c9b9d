"""A bounded, thread-safe FIFO between one grabber thread and one pump thread: frames, and the
source's lifecycle events in order with them.

Lifecycle events (``SourceEvent``) ride the same queue as the frames, so their order relative to the
frames is structural: the reader sees "stream_started, frames, reconnecting, frames, ended" exactly
as the grabber produced it. Events are never dropped and never wait: they do not count against
``capacity``. What a full buffer does with a new *frame* is the ``OverflowPolicy``: DROP_OLDEST
removes the oldest unread frame (live sources: bounded latency, counted losses), WAIT blocks the
writer (files: nothing lost). The grabber sets the policy when a source opens (``set_mode``), since
only the opened source knows whether it is live.

Invariants, checked by the property tests (counters are of frames)::

    written == read + overwritten + len(buffer)
    frames come out in the order they went in (a subsequence of it under DROP_OLDEST)
    under WAIT nothing is ever overwritten; events always come out, in order
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

from affectstream.errors import ConfigError
from affectstream.stream.frames import OverflowPolicy, SourceEvent, VideoFrame

RingItem = VideoFrame | SourceEvent


@dataclass(frozen=True, slots=True)
class RingCounters:
    """A consistent snapshot of a ring's counters (taken under its lock)."""

    capacity: int
    written: int  # frames accepted by put()
    overwritten: int  # frames dropped unread by DROP_OLDEST
    read: int  # frames handed out by get()
    buffered: int  # frames waiting to be read

    @property
    def dropped(self) -> int:
        return self.overwritten


class RingBuffer:
    """Fixed-capacity frame FIFO; see the module docstring."""

    def __init__(self, capacity: int, policy: OverflowPolicy) -> None:
        _check_capacity(capacity)
        self._capacity = capacity
        self._policy = OverflowPolicy(policy)
        self._items: collections.deque[RingItem] = collections.deque()
        self._size = 0  # frames in _items
        self._written = 0
        self._overwritten = 0
        self._read = 0
        self._closed = False
        lock = threading.Lock()
        # Two conditions on one lock: a reader wakes writers and a writer wakes readers, never
        # their own kind.
        self._not_empty = threading.Condition(lock)
        self._not_full = threading.Condition(lock)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def policy(self) -> OverflowPolicy:
        return self._policy

    @property
    def closed(self) -> bool:
        with self._not_empty:
            return self._closed

    @property
    def written(self) -> int:
        with self._not_empty:
            return self._written

    @property
    def overwritten(self) -> int:
        with self._not_empty:
            return self._overwritten

    @property
    def read(self) -> int:
        with self._not_empty:
            return self._read

    def __len__(self) -> int:
        with self._not_empty:
            return self._size

    def counters(self) -> RingCounters:
        with self._not_empty:
            return RingCounters(
                capacity=self._capacity,
                written=self._written,
                overwritten=self._overwritten,
                read=self._read,
                buffered=self._size,
            )

    def set_mode(self, policy: OverflowPolicy, capacity: int) -> None:
        """Switch policy and capacity (the grabber, once the source has said whether it is live)."""
        _check_capacity(capacity)
        with self._not_full:
            self._policy = OverflowPolicy(policy)
            self._capacity = capacity
            while self._size > capacity and self._policy is OverflowPolicy.DROP_OLDEST:
                self._drop_oldest_frame()
            self._not_full.notify_all()

    def put(self, frame: VideoFrame, timeout: float | None = None) -> bool:
        """Append ``frame``; False if the ring is closed or (WAIT only) no slot freed within ``timeout``.

        DROP_OLDEST never blocks: on a full ring it drops the oldest unread frame.
        """
        with self._not_full:
            if self._policy is OverflowPolicy.WAIT and not self._wait_for_slot(timeout):
                return False
            if self._closed:
                return False
            if self._size >= self._capacity:
                # Only DROP_OLDEST gets here with a full ring: the oldest unread frame is lost.
                self._drop_oldest_frame()
            self._items.append(frame)
            self._size += 1
            self._written += 1
            self._not_empty.notify()
            return True

    def put_event(self, event: SourceEvent) -> bool:
        """Append a lifecycle event behind the frames already in; never blocks, never dropped.
        False only once the ring is closed."""
        with self._not_full:
            if self._closed:
                return False
            self._items.append(event)
            self._not_empty.notify()
            return True

    def get(self, timeout: float | None = None) -> RingItem | None:
        """The oldest unread frame or event; None on timeout, or once the ring is closed and drained."""
        with self._not_empty:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items and not self._closed:
                if not _wait(self._not_empty, deadline):
                    return None
            if not self._items:
                return None
            item = self._items.popleft()
            if isinstance(item, VideoFrame):
                self._size -= 1
                self._read += 1
                self._not_full.notify()
            return item

    @property
    def drained(self) -> bool:
        """Closed, and nothing left to read."""
        with self._not_empty:
            return self._closed and not self._items

    def close(self) -> None:
        """Refuse further puts and wake every waiter; readers still drain what is buffered."""
        with self._not_empty:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def _drop_oldest_frame(self) -> None:
        """Under the lock: remove the oldest unread frame (events before it stay, in order)."""
        for index, item in enumerate(self._items):
            if isinstance(item, VideoFrame):
                del self._items[index]
                self._size -= 1
                self._overwritten += 1
                return

    def _wait_for_slot(self, timeout: float | None) -> bool:
        """Under the lock: wait until a slot is free or the ring closes; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._size >= self._capacity and not self._closed:
            if not _wait(self._not_full, deadline):
                return False
        return True


def _wait(condition: threading.Condition, deadline: float | None) -> bool:
    """Wait on ``condition`` until notified or ``deadline`` (monotonic s); False once it has passed."""
    if deadline is None:
        condition.wait()
        return True
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    condition.wait(remaining)
    return True


def _check_capacity(capacity: int) -> None:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ConfigError(f"ring buffer capacity must be a positive integer, got {capacity!r}")
