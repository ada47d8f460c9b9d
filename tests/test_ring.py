"""RingBuffer: counter invariants, order, overflow policies, close and timeouts."""

from __future__ import annotations

import gc
import itertools
import threading
import time
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affectstream.errors import ConfigError
from affectstream.stream.frames import OverflowPolicy, SourceEvent, SourceState, VideoFrame
from affectstream.stream.ring import RingBuffer, RingCounters, RingItem
from tests.timeouts import scaled

_IMAGE = np.zeros((2, 2, 3), dtype=np.uint8)  # shared: the ring never looks at pixels


def frame(index: int) -> VideoFrame:
    return VideoFrame("s", index, index / 30, 0, 0, _IMAGE)


def event(attempt: int, state: SourceState = SourceState.RECONNECTING) -> SourceEvent:
    return SourceEvent("s", state, 0, attempt=attempt)


def describe(item: RingItem | None) -> tuple[str, int] | None:
    """("frame", index) or ("event", attempt): what came out, comparable with a model."""
    if item is None:
        return None
    if isinstance(item, VideoFrame):
        return ("frame", item.index)
    return ("event", item.attempt)


def frame_index(item: RingItem | None) -> int | None:
    assert item is None or isinstance(item, VideoFrame)
    return item.index if item is not None else None


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
            assert frame_index(got) == expected
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
            assert isinstance(got, VideoFrame)
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
    assert [frame_index(ring.get(timeout=0)) for _ in range(3)] == [7, 8, 9]
    assert ring.counters() == RingCounters(capacity=3, written=10, overwritten=7, read=3, buffered=0)


def test_wait_policy_blocks_the_writer_until_a_slot_frees() -> None:
    ring = RingBuffer(1, OverflowPolicy.WAIT)
    assert ring.put(frame(0))
    second_put: list[bool] = []
    writer = threading.Thread(target=lambda: second_put.append(ring.put(frame(1), timeout=scaled(5))))
    writer.start()
    writer.join(0.05)
    assert writer.is_alive()  # blocked on the full ring
    assert frame_index(ring.get(timeout=0)) == 0
    writer.join(scaled(5))
    assert second_put == [True]
    assert frame_index(ring.get(timeout=0)) == 1
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
    assert [frame_index(ring.get()), frame_index(ring.get())] == [0, 1]
    assert ring.get() is None  # no timeout needed: closed and drained never blocks
    check_invariants(ring)
    assert ring.written == 2


def test_close_wakes_a_blocked_reader() -> None:
    ring = RingBuffer(2, OverflowPolicy.DROP_OLDEST)
    results: list[RingItem | None] = []
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


def test_read_and_dropped_frames_are_released() -> None:
    ring = RingBuffer(1, OverflowPolicy.DROP_OLDEST)
    read_image, dropped_image = np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)
    read_ref, dropped_ref = weakref.ref(read_image), weakref.ref(dropped_image)
    ring.put(VideoFrame("s", 0, 0.0, 0, 0, dropped_image))
    ring.put(VideoFrame("s", 1, 0.1, 0, 0, read_image))  # overwrites frame 0
    assert frame_index(ring.get()) == 1
    del read_image, dropped_image
    gc.collect()
    assert read_ref() is None and dropped_ref() is None  # the images are not kept alive by the ring


@pytest.mark.parametrize("capacity", [0, -1, 1.5, True])
def test_capacity_must_be_a_positive_integer(capacity: object) -> None:
    with pytest.raises(ConfigError, match="capacity"):
        RingBuffer(capacity, OverflowPolicy.WAIT)  # type: ignore[arg-type]


# -- lifecycle events in the ring -------------------------------------------------------------------

@given(
    capacity=st.integers(1, 6),
    policy=st.sampled_from(list(OverflowPolicy)),
    operations=st.lists(st.sampled_from(["frame", "event", "get"]), max_size=80),
)
def test_events_come_out_in_order_with_the_frames_and_are_never_dropped(
    capacity: int, policy: OverflowPolicy, operations: list[str]
) -> None:
    ring = RingBuffer(capacity, policy)
    model: list[tuple[str, int]] = []  # what the ring should hold, oldest first
    frames = events = 0
    events_out: list[int] = []
    for operation in operations:
        if operation == "frame":
            buffered = sum(kind == "frame" for kind, _ in model)
            if policy is OverflowPolicy.WAIT and buffered == capacity:
                assert ring.put(frame(frames), timeout=0) is False  # events do not take a frame's slot
                continue
            assert ring.put(frame(frames), timeout=0) is True
            if buffered == capacity:  # DROP_OLDEST: the oldest frame goes, the events around it stay
                model.remove(next(item for item in model if item[0] == "frame"))
            model.append(("frame", frames))
            frames += 1
        elif operation == "event":
            assert ring.put_event(event(events)) is True  # never refused, whatever the frames do
            model.append(("event", events))
            events += 1
        else:
            got = describe(ring.get(timeout=0))
            assert got == (model.pop(0) if model else None)
            if got is not None and got[0] == "event":
                events_out.append(got[1])
        assert len(ring) == sum(kind == "frame" for kind, _ in model)  # len counts frames only
        check_invariants(ring)
    ring.close()
    while (item := describe(ring.get(timeout=0))) is not None:
        assert item == model.pop(0)
        if item[0] == "event":
            events_out.append(item[1])
    assert model == [] and ring.drained
    assert events_out == list(range(events))  # every event, in order
    assert ring.counters().written == frames  # counters are of frames


@pytest.mark.parametrize("policy", list(OverflowPolicy))
def test_a_terminal_event_put_after_the_frames_comes_out_after_them(policy: OverflowPolicy) -> None:
    ring = RingBuffer(4, policy)
    ring.put_event(event(0, SourceState.RUNNING))
    for index in range(3):
        ring.put(frame(index))
    ended = SourceEvent("s", SourceState.ENDED, 0, frames_read=3)
    ring.put_event(ended)
    ring.close()
    got = [ring.get(timeout=0) for _ in range(5)]
    assert [describe(item) for item in got[:4]] == [("event", 0), ("frame", 0), ("frame", 1), ("frame", 2)]
    assert got[4] is ended and ended.terminal
    assert ring.get(timeout=0) is None and ring.drained


def test_events_survive_drop_oldest_overwrites() -> None:
    ring = RingBuffer(2, OverflowPolicy.DROP_OLDEST)
    ring.put(frame(0))
    ring.put_event(event(1))
    for index in range(1, 6):
        ring.put(frame(index))  # frames 0..3 are overwritten; the event between them stays
    assert ring.counters() == RingCounters(capacity=2, written=6, overwritten=4, read=0, buffered=2)
    assert [describe(ring.get(timeout=0)) for _ in range(3)] == [("event", 1), ("frame", 4), ("frame", 5)]
    check_invariants(ring)


def test_put_event_never_blocks_on_a_full_wait_ring() -> None:
    ring = RingBuffer(1, OverflowPolicy.WAIT)
    assert ring.put(frame(0))
    assert ring.put(frame(1), timeout=0) is False  # full for frames
    started = time.monotonic()
    assert ring.put_event(event(1)) is True
    assert time.monotonic() - started < 0.5
    assert len(ring) == 1  # an event takes no frame slot
    assert ring.put(frame(1), timeout=0) is False  # ... nor frees one
    assert [describe(ring.get(timeout=0)) for _ in range(2)] == [("frame", 0), ("event", 1)]


def test_events_after_close_are_refused_and_buffered_ones_still_come_out() -> None:
    ring = RingBuffer(2, OverflowPolicy.WAIT)
    ring.put_event(event(1))
    ring.close()
    assert not ring.drained  # closed, but an event is still to be read
    assert ring.put_event(event(2)) is False
    assert describe(ring.get()) == ("event", 1)
    assert ring.get() is None and ring.drained


def test_a_blocked_reader_wakes_for_an_event() -> None:
    ring = RingBuffer(2, OverflowPolicy.WAIT)
    results: list[RingItem | None] = []
    reader = threading.Thread(target=lambda: results.append(ring.get(timeout=scaled(5))))
    reader.start()
    reader.join(0.05)
    assert reader.is_alive()
    ring.put_event(event(7))
    reader.join(scaled(5))
    assert [describe(item) for item in results] == [("event", 7)]


def test_set_mode_switches_policy_and_capacity() -> None:
    ring = RingBuffer(4, OverflowPolicy.WAIT)
    for index in range(4):
        ring.put(frame(index))
    ring.put_event(event(1))
    ring.set_mode(OverflowPolicy.DROP_OLDEST, 2)  # live after all: only the newest frames are kept
    assert (ring.policy, ring.capacity) == (OverflowPolicy.DROP_OLDEST, 2)
    assert ring.counters() == RingCounters(capacity=2, written=4, overwritten=2, read=0, buffered=2)
    assert ring.put(frame(4), timeout=0)  # never blocks now
    assert [describe(ring.get(timeout=0)) for _ in range(3)] == [("frame", 3), ("event", 1), ("frame", 4)]
    check_invariants(ring)
    with pytest.raises(ConfigError, match="capacity"):
        ring.set_mode(OverflowPolicy.WAIT, 0)


def test_set_mode_to_a_larger_wait_ring_wakes_a_blocked_writer() -> None:
    ring = RingBuffer(1, OverflowPolicy.WAIT)
    ring.put(frame(0))
    results: list[bool] = []
    writer = threading.Thread(target=lambda: results.append(ring.put(frame(1), timeout=scaled(5))))
    writer.start()
    writer.join(0.05)
    assert writer.is_alive()
    ring.set_mode(OverflowPolicy.WAIT, 4)
    writer.join(scaled(5))
    assert results == [True] and ring.overwritten == 0
    assert [frame_index(ring.get(timeout=0)) for _ in range(2)] == [0, 1]
