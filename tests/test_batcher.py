"""BatchAssembler (driven by a fake clock) and BatchQueue (real threads)."""

from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from affectstream.errors import ConfigError
from affectstream.stream.batcher import BatchAssembler, BatchConfig, BatchQueue
from tests.timeouts import scaled

MS = 1_000_000  # ns


# -- the pure core ---------------------------------------------------------------------------------

def test_a_batch_leaves_when_full() -> None:
    assembler: BatchAssembler[int] = BatchAssembler(max_batch=3, max_wait_ms=10.0)
    assert assembler.add(1, now_ns=0) is None
    assert assembler.add(2, now_ns=1) is None
    assert assembler.add(3, now_ns=2) == [1, 2, 3]
    assert len(assembler) == 0 and assembler.deadline_ns() is None


def test_a_batch_leaves_when_its_oldest_item_waited_long_enough() -> None:
    assembler: BatchAssembler[str] = BatchAssembler(max_batch=8, max_wait_ms=10.0)
    assembler.add("a", now_ns=100 * MS)
    assembler.add("b", now_ns=105 * MS)  # a later item does not push the deadline back
    assert assembler.deadline_ns() == 110 * MS
    assert assembler.poll(now_ns=109 * MS) is None
    assert assembler.poll(now_ns=110 * MS) == ["a", "b"]
    assert assembler.poll(now_ns=200 * MS) is None  # nothing pending


def test_the_deadline_restarts_with_the_next_batch() -> None:
    assembler: BatchAssembler[int] = BatchAssembler(max_batch=2, max_wait_ms=5.0)
    assembler.add(1, now_ns=0)
    assert assembler.add(2, now_ns=4 * MS) == [1, 2]
    assembler.add(3, now_ns=7 * MS)
    assert assembler.deadline_ns() == 12 * MS


def test_zero_wait_makes_every_poll_due() -> None:
    assembler: BatchAssembler[int] = BatchAssembler(max_batch=4, max_wait_ms=0)
    assembler.add(1, now_ns=50)
    assert assembler.poll(now_ns=50) == [1]


def test_flush_hands_over_whatever_is_pending() -> None:
    assembler: BatchAssembler[int] = BatchAssembler(max_batch=4, max_wait_ms=10.0)
    assert assembler.flush() == []
    assembler.add(1, now_ns=0)
    assert assembler.flush() == [1]
    assert assembler.deadline_ns() is None


@given(
    max_batch=st.integers(1, 6),
    max_wait_ms=st.floats(0, 50),
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 20 * MS)), max_size=60),
)
def test_batches_never_exceed_the_limits_and_keep_order(
    max_batch: int, max_wait_ms: float, steps: list[tuple[bool, int]]
) -> None:
    assembler: BatchAssembler[int] = BatchAssembler(max_batch, max_wait_ms)
    now = 0
    added: list[int] = []
    out: list[int] = []
    for is_add, advance in steps:
        now += advance
        if is_add:
            batch = assembler.add(len(added), now)
            added.append(len(added))
        else:
            deadline = assembler.deadline_ns()
            batch = assembler.poll(now)
            assert (batch is not None) == (deadline is not None and now >= deadline)
        if batch is not None:
            assert 1 <= len(batch) <= max_batch
            out.extend(batch)
    out.extend(assembler.flush())
    assert out == added


@pytest.mark.parametrize(
    ("max_batch", "max_wait_ms"), [(0, 10.0), (-1, 10.0), (2.5, 10.0), (True, 1.0), (4, -1.0), (4, math.nan)]
)
def test_invalid_limits_are_config_errors(max_batch: int, max_wait_ms: float) -> None:
    with pytest.raises(ConfigError):
        BatchConfig(max_batch=max_batch, max_wait_ms=max_wait_ms)
    with pytest.raises(ConfigError):
        BatchAssembler(max_batch, max_wait_ms)


def test_default_config() -> None:
    assert BatchConfig() == BatchConfig(max_batch=16, max_wait_ms=10.0)


# -- the thread adapter ----------------------------------------------------------------------------

def test_get_batch_returns_a_full_batch_at_once() -> None:
    queue: BatchQueue[int] = BatchQueue(max_batch=3, max_wait_ms=60_000)
    for item in range(7):
        assert queue.put(item)
    assert queue.pending == 7
    assert queue.get_batch(timeout=scaled(5)) == [0, 1, 2]
    assert queue.get_batch(timeout=scaled(5)) == [3, 4, 5]
    assert queue.pending == 1
    assert queue.get_batch(timeout=0.01) == []  # the last one waits up to a minute for company


def test_get_batch_returns_a_partial_batch_after_the_wait() -> None:
    queue: BatchQueue[str] = BatchQueue(max_batch=16, max_wait_ms=20.0)
    queue.put("a")
    queue.put("b")
    assert queue.get_batch(timeout=scaled(5)) == ["a", "b"]


def test_the_wait_is_measured_on_the_given_clock() -> None:
    now = [0]
    queue: BatchQueue[str] = BatchQueue(max_batch=16, max_wait_ms=10.0, clock=lambda: now[0])
    queue.put("a")
    assert queue.get_batch(timeout=0) == []  # the fake clock has not moved
    now[0] = 10 * MS
    assert queue.get_batch(timeout=0) == ["a"]


def test_a_waiting_consumer_wakes_for_a_batch_that_fills() -> None:
    queue: BatchQueue[int] = BatchQueue(max_batch=2, max_wait_ms=60_000)
    result: list[list[int]] = []
    consumer = threading.Thread(target=lambda: result.append(queue.get_batch(timeout=scaled(10))))
    consumer.start()
    queue.put(1)
    queue.put(2)
    consumer.join(scaled(10))
    assert result == [[1, 2]]


def test_get_batch_times_out_empty() -> None:
    queue: BatchQueue[int] = BatchQueue(max_batch=2, max_wait_ms=1.0)
    assert queue.get_batch(timeout=0.01) == []
    assert not queue.closed


def test_close_drains_then_returns_empty_and_refuses_items() -> None:
    queue: BatchQueue[int] = BatchQueue(max_batch=2, max_wait_ms=60_000)
    for item in range(5):
        queue.put(item)
    queue.close()
    assert queue.closed
    assert queue.put(99) is False
    assert queue.rejected == 1
    # Without waiting for the deadline: nothing more can join the last, partial batch.
    assert queue.get_batch() == [0, 1]
    assert queue.get_batch() == [2, 3]
    assert queue.get_batch() == [4]
    assert queue.get_batch() == []
    assert queue.pending == 0


def test_close_wakes_a_blocked_consumer() -> None:
    queue: BatchQueue[int] = BatchQueue(max_batch=2, max_wait_ms=1.0)
    result: list[list[int]] = []
    consumer = threading.Thread(target=lambda: result.append(queue.get_batch()))
    consumer.start()
    consumer.join(0.05)
    assert consumer.is_alive()
    queue.close()
    consumer.join(scaled(5))
    assert result == [[]]


def test_max_pending_refuses_and_counts_items_beyond_the_bound() -> None:
    queue: BatchQueue[int] = BatchQueue(max_batch=2, max_wait_ms=60_000, max_pending=3)
    assert [queue.put(item) for item in range(5)] == [True, True, True, False, False]
    assert queue.rejected == 2
    assert queue.get_batch(timeout=0) == [0, 1]
    assert queue.put(5)  # room again
    assert queue.pending == 2


def test_many_producers_keep_their_own_order_and_lose_nothing() -> None:
    producers, per_producer = 4, 500
    queue: BatchQueue[tuple[int, int]] = BatchQueue(max_batch=7, max_wait_ms=1.0)
    received: list[tuple[int, int]] = []
    sizes: list[int] = []

    def consume() -> None:
        while True:
            batch = queue.get_batch(timeout=scaled(10))
            if not batch:
                return
            sizes.append(len(batch))
            received.extend(batch)

    def produce(producer: int) -> None:
        for index in range(per_producer):
            assert queue.put((producer, index))

    consumer = threading.Thread(target=consume)
    consumer.start()
    threads = [threading.Thread(target=produce, args=(producer,)) for producer in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(scaled(10))
    queue.close()
    consumer.join(scaled(10))
    assert not consumer.is_alive()
    assert len(received) == producers * per_producer
    assert max(sizes) <= 7
    for producer in range(producers):
        assert [index for who, index in received if who == producer] == list(range(per_producer))


def test_from_config() -> None:
    queue: BatchQueue[int] = BatchQueue.from_config(BatchConfig(max_batch=1, max_wait_ms=0))
    queue.put(1)
    assert queue.get_batch(timeout=0) == [1]
