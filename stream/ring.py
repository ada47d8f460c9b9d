"""A bounded, thread-safe FIFO between one grabber thread and one pump thread: frames, and the
source's lifecycle events in order with them.

Lifecycle events (``SourceEvent``) ride the same queue as the frames, so their order relative to the
frames is structural: the reader sees "stream_started, frames, reconnecting, frames, ended" exactly
as the grabber produced it. Events are never dropped and never wait: they do not count against
``capacity``. What a full buffer does with a new *frame* is the ``OverflowPolicy``: DROP_OLDEST
removes the oldest unread frame (live sources: bounded latency, counted losses), WAIT blocks the
writer (files: nothing lost). The grabber sets the policy when a source opens (``set_mode``), since
only the opened source knows whether it is live.

A ring is full at ``capacity`` frames or at ``max_bytes`` of pixels, whichever comes first: a count
alone lets 32 frames of 8K (3.2 GB) wait in one ring. A frame larger than the whole budget is still
taken when the ring is empty, so that nothing can wait for ever.

Invariants, checked by the property tests (counters are of frames)::

    written == read + overwritten + len(buffer)
    frames come out in the order they went in (a subsequence of it under DROP_OLDEST)
    under WAIT nothing is ever overwritten; events always come out, in order
    buffered_bytes <= max_bytes, or the ring holds one frame
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

from affectstream.errors import ConfigError
from affectstream.stream.frames import OverflowPolicy, SourceEvent, VideoFrame

RingItem = VideoFrame | SourceEvent

# Pixels one ring may hold: 21 frames of 1080p (the size SourceConfig.max_frame_side reduces to), 48
# of 720p; a file ring's 32 frames of 4K or 8K at full resolution would need 0.8 or 3.2 GB.
DEFAULT_MAX_BYTES = 128 * 1024 * 1024


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

    def __init__(self, capacity: int, policy: OverflowPolicy, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        _check_capacity(capacity)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ConfigError(f"ring buffer max_bytes must be a positive integer, got {max_bytes!r}")
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._policy = OverflowPolicy(policy)
        self._items: collections.deque[RingItem] = collections.deque()
        self._size = 0  # frames in _items
        self._bytes = 0  # pixel bytes of the frames in _items
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
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def buffered_bytes(self) -> int:
        with self._not_empty:
            return self._bytes

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
        nbytes = frame.image.nbytes
        with self._not_full:
            if self._policy is OverflowPolicy.WAIT and not self._wait_for_slot(nbytes, timeout):
                return False
            if self._closed:
                return False
            while self._full(nbytes):
                # Only DROP_OLDEST gets here with a full ring: the oldest unread frames are lost.
                self._drop_oldest_frame()
            self._items.append(frame)
            self._size += 1
            self._bytes += nbytes
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
                self._bytes -= item.image.nbytes
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
                self._bytes -= item.image.nbytes
                self._overwritten += 1
                return

    def _full(self, nbytes: int) -> bool:
        """Under the lock: no room for a frame of ``nbytes`` (an empty ring always has room)."""
        return self._size >= self._capacity or (self._size > 0 and self._bytes + nbytes > self._max_bytes)

    def _wait_for_slot(self, nbytes: int, timeout: float | None) -> bool:
        """Under the lock: wait until a frame of ``nbytes`` fits or the ring closes; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._full(nbytes) and not self._closed:
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
