"""RingBuffer: counter invariants, order, overflow policies, close and timeouts."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affectstream.errors import ConfigError
from affectstream.stream.frames import OverflowPolicy, VideoFrame
from affectstream.stream.ring import RingBuffer, RingCounters
from tests.timeouts import scaled

_IMAGE = np.zeros((2, 2, 3), dtype=np.uint8)  # shared: the ring never looks at pixels


def frame(index: int) -> VideoFrame:
    return VideoFrame("s", index, index / 30, 0, 0, _IMAGE)


def check_invariants(ring: RingBuffer) -> RingCounters:
    counters = ring.counters()
    assert counters.written == counters.read + counters.overwritten + counters.buffered
    assert 0 <= counters.buffered <= ring.capacity
    if ring.policy is OverflowPolicy.WAIT:
        assert counters.overwritten == 0
    return counters


def is_increasing(indices: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(indices))


# -- single thread: a random interleaving of puts and gets ------------------------------------------

@given(
    capacity=st.integers(1, 8),
    policy=st.sampled_from(list(OverflowPolicy)),
    operations=st.lists(st.booleans(), max_size=60),  # True = put, False = get
)
def test_sequential_operations_keep_invariants_and_order(
    capacity: int, policy: OverflowPolicy, operations: list[bool]
) -> None:
    ring = RingBuffer(capacity, policy)
    model: list[int] = []  # what the ring should hold, oldest first
    next_index = 0
    for is_put in operations:
        if is_put:
            if policy is OverflowPolicy.WAIT and len(model) == capacity:
                assert ring.put(frame(next_index), timeout=0) is False  # full: times out at once
                continue
            assert ring.put(frame(next_index), timeout=0) is True
            model.append(next_index)
            del model[:-capacity]  # DROP_OLDEST keeps the newest `capacity`
            next_index += 1
        else:
            got = ring.get(timeout=0)
            expected = model.pop(0) if model else None
            assert (got.index if got else None) == expected
        assert len(ring) == len(model)
        check_invariants(ring)
    counters = ring.counters()
    assert counters.written == next_index
    assert counters.overwritten == next_index - counters.read - len(model)


# -- two threads: a producer and a paced consumer --------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(
    capacity=st.integers(1, 6),
    policy=st.sampled_from(list(OverflowPolicy)),
    count=st.integers(0, 300),
    consumer_pause_every=st.integers(1, 50),
    consumer_pause_s=st.sampled_from([0.0, 0.0001, 0.001]),
)
def test_concurrent_producer_and_consumer(
    capacity: int, policy: OverflowPolicy, count: int, consumer_pause_every: int, consumer_pause_s: float
) -> None:
    ring = RingBuffer(capacity, policy)
    received: list[int] = []
    snapshots: list[RingCounters] = []

    def consume() -> None:
        while (got := ring.get(timeout=scaled(5))) is not None:
            received.append(got.index)
            if len(received) % consumer_pause_every == 0:
                snapshots.append(check_invariants(ring))  # checked while the producer runs
                time.sleep(consumer_pause_s)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for index in range(count):
        assert ring.put(frame(index), timeout=scaled(5))
    ring.close()
    consumer.join(scaled(10))
    assert not consumer.is_alive()

    counters = check_invariants(ring)
    assert counters.written == count
    assert counters.buffered == 0  # closed and drained
    assert counters.read == len(received)
    assert is_increasing(received)  # FIFO; a subsequence of what was written
    assert set(received) <= set(range(count))
    if policy is OverflowPolicy.WAIT:
        assert received == list(range(count))
    elif count:
        assert received[-1] == count - 1  # the newest frame is never the one dropped
    for earlier, later in itertools.pairwise(snapshots):
        assert later.read >= earlier.read and later.written >= earlier.written


# -- policies ---------------------------------------------------------------------------------------

def test_drop_oldest_keeps_the_newest_frames_and_counts_the_rest() -> None:
    ring = RingBuffer(3, OverflowPolicy.DROP_OLDEST)
    for index in range(10):
        assert ring.put(frame(index))  # never blocks
    assert ring.overwritten == 7
    assert [ring.get(timeout=0).index for _ in range(3)] == [7, 8, 9]  # type: ignore[union-attr]
    assert ring.counters() == RingCounters(capacity=3, written=10, overwritten=7, read=3, buffered=0)


def test_wait_policy_blocks_the_writer_until_a_slot_frees() -> None:
    ring = RingBuffer(1, OverflowPolicy.WAIT)
    assert ring.put(frame(0))
    second_put: list[bool] = []
    writer = threading.Thread(target=lambda: second_put.append(ring.put(frame(1), timeout=scaled(5))))
    writer.start()
    writer.join(0.05)
    assert writer.is_alive()  # blocked on the full ring
    assert ring.get(timeout=0).index == 0  # type: ignore[union-attr]
    writer.join(scaled(5))
    assert second_put == [True]
    assert ring.get(timeout=0).index == 1  # type: ignore[union-attr]
    assert ring.overwritten == 0


def test_wait_policy_put_times_out_on_a_full_ring() -> None:
    ring = RingBuffer(2, OverflowPolicy.WAIT)
    assert ring.put(frame(0)) and ring.put(frame(1))
    assert ring.put(frame(2), timeout=0.01) is False
    assert ring.counters().written == 2


def test_get_times_out_on_an_empty_ring() -> None:
    ring = RingBuffer(2, OverflowPolicy.DROP_OLDEST)
    assert ring.get(timeout=0) is None
    assert ring.get(timeout=0.01) is None
    assert not ring.closed


# -- close ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", list(OverflowPolicy))
def test_close_drains_then_returns_none_and_refuses_puts(policy: OverflowPolicy) -> None:
    ring = RingBuffer(4, policy)
    ring.put(frame(0))
    ring.put(frame(1))
    ring.close()
    assert ring.closed
    assert ring.put(frame(2)) is False
    assert [ring.get().index, ring.get().index] == [0, 1]  # type: ignore[union-attr]
    assert ring.get() is None  # no timeout needed: closed and drained never blocks
    check_invariants(ring)
    assert ring.written == 2


def test_close_wakes_a_blocked_reader() -> None:
    ring = RingBuffer(2, OverflowPolicy.DROP_OLDEST)
    results: list[VideoFrame | None] = []
    reader = threading.Thread(target=lambda: results.append(ring.get()))
    reader.start()
    reader.join(0.05)
    assert reader.is_alive()
    ring.close()
    reader.join(scaled(5))
    assert results == [None]


def test_close_wakes_a_blocked_writer() -> None:
    ring = RingBuffer(1, OverflowPolicy.WAIT)
    ring.put(frame(0))
    results: list[bool] = []
    writer = threading.Thread(target=lambda: results.append(ring.put(frame(1))))
    writer.start()
    writer.join(0.05)
    assert writer.is_alive()
    ring.close()
    writer.join(scaled(5))
    assert results == [False]
    check_invariants(ring)


def test_read_slots_release_their_frames() -> None:
    ring = RingBuffer(2, OverflowPolicy.DROP_OLDEST)
    ring.put(frame(0))
    ring.get()
    assert ring._slots == [None, None]  # the image is not kept alive by the ring


@pytest.mark.parametrize("capacity", [0, -1, 1.5, True])
def test_capacity_must_be_a_positive_integer(capacity: object) -> None:
    with pytest.raises(ConfigError, match="capacity"):
        RingBuffer(capacity, OverflowPolicy.WAIT)  # type: ignore[arg-type]
