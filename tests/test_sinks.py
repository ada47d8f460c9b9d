"""JsonlSink, MemorySink and FanoutSink, including a real broken pipe on stdout."""

from __future__ import annotations

import io
import json
import logging
import math
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from affectstream.stream.messages import (
    Estimate,
    Event,
    EventKind,
    MessageType,
    Record,
    SeqCounter,
    Stats,
    StatsFields,
)
from affectstream.stream.sinks import FanoutSink, JsonlSink, MemorySink, Sink
from tests.timeouts import scaled

REPO = Path(__file__).resolve().parent.parent
WALL = 1_700_000_000_000


def estimate(stream: str, seqs: SeqCounter, ts: float) -> Estimate:
    return Estimate(stream=stream, seq=seqs.take(), ts=ts, wall=WALL, scores={"happiness": 0.5}, sentiment=0.1,
                    dominant="happiness")


def stats(seq: int = 0, ts: float = 0.0, stream: str = "cam") -> Stats:
    return Stats(stream=stream, seq=seq, ts=ts, wall=WALL, fields=StatsFields())


class FailingSink:
    """A real sink whose output breaks after ``good_writes`` messages."""

    name = "failing"

    def __init__(self, good_writes: int = 0) -> None:
        self.good_writes = good_writes
        self.written: list[Record] = []
        self.closed = False

    def write(self, message: Record) -> None:
        if len(self.written) >= self.good_writes:
            raise OSError("disk full")
        self.written.append(message)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class LineCountingStream(io.StringIO):
    """A StringIO that records when it was flushed, to tell line flushing from buffering."""

    def __init__(self, tty: bool = False) -> None:
        super().__init__()
        self.tty = tty
        self.flushed_at: list[int] = []

    def isatty(self) -> bool:
        return self.tty

    def flush(self) -> None:
        self.flushed_at.append(self.getvalue().count("\n"))
        super().flush()


# -- JsonlSink -------------------------------------------------------------------------------------

def test_one_message_per_line_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "out" / "messages.jsonl"  # the folder is created
    sink = JsonlSink.to_path(path)
    seqs = SeqCounter()
    sent: list[Record] = [estimate("cam", seqs, ts) for ts in (0.0, 0.25, 0.5)]
    sent.append(Event(stream="cam", seq=seqs.take(), ts=0.5, wall=WALL + 1, kind=EventKind.ONSET,
                      label="happiness", value=0.7))
    for message in sent:
        sink.write(message)
    sink.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [message.to_wire() for message in sent]
    assert lines == [message.text for message in sent]  # the record's own encoding, written as is
    assert all(" " not in line for line in lines)  # compact
    assert sink.lines == 4 and sink.closed


def test_to_path_overwrites_and_append_appends(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    for sink in (JsonlSink.to_path(path), JsonlSink.to_path(path)):
        sink.write(stats())
        sink.close()
    assert len(path.read_text().splitlines()) == 1
    appending = JsonlSink.to_path(path, append=True)
    appending.write(stats())
    appending.close()
    assert len(path.read_text().splitlines()) == 2


def test_a_file_is_flushed_on_close_not_per_line() -> None:
    stream = LineCountingStream(tty=False)
    sink = JsonlSink(stream)
    for ts in range(3):
        sink.write(stats(ts, ts))
    assert stream.flushed_at == []
    sink.close()
    assert stream.flushed_at == [3]
    assert not stream.closed  # a stream handed in is flushed, not closed


def test_a_terminal_is_flushed_every_line() -> None:
    stream = LineCountingStream(tty=True)
    sink = JsonlSink(stream)
    for ts in range(3):
        sink.write(stats(ts, ts))
    assert stream.flushed_at == [1, 2, 3]


def test_writes_after_close_are_ignored(tmp_path: Path) -> None:
    sink = JsonlSink.to_path(tmp_path / "m.jsonl")
    sink.close()
    sink.write(stats())
    sink.flush()
    sink.close()  # twice is fine
    assert (tmp_path / "m.jsonl").read_text() == ""


def test_a_message_that_is_not_json_is_left_out_and_the_rest_go_on(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    sink = JsonlSink(stream)
    with caplog.at_level(logging.ERROR, logger="affectstream.stream.sinks"):
        sink.write(Estimate(stream="cam", seq=0, ts=0.0, wall=WALL, scores={"happiness": 0.5},
                            sentiment=math.nan, dominant="happiness"))
    sink.write(stats(1))
    assert sink.skipped == 1
    assert [json.loads(line)["type"] for line in stream.getvalue().splitlines()] == ["stats"]
    assert "not valid JSON" in caplog.text


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    sink = JsonlSink.to_path(path)
    writers, per_writer = 4, 300

    def write_all(writer: int) -> None:
        for index in range(per_writer):
            sink.write(Event(stream=f"writer-{writer}", seq=index, ts=0.0, wall=WALL, kind=EventKind.STREAM_STARTED,
                             detail="x" * 200))

    threads = [threading.Thread(target=write_all, args=(writer,)) for writer in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(scaled(10))
    sink.close()
    messages = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(messages) == writers * per_writer
    for writer in range(writers):
        assert [m["seq"] for m in messages if m["stream"] == f"writer-{writer}"] == list(range(per_writer))


def test_a_closed_pipe_closes_the_sink_quietly(caplog: pytest.LogCaptureFixture) -> None:
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything was written
    stream = os.fdopen(write_end, "w")
    sink = JsonlSink(stream, line_flush=True)
    with caplog.at_level(logging.INFO, logger="affectstream.stream.sinks"):
        for ts in range(5):
            sink.write(stats(ts, ts))
    assert sink.closed
    assert caplog.text.count("broken pipe") == 1  # logged once, not per message
    try:
        stream.close()
    except BrokenPipeError:
        pass  # the unflushed line still sits in the Python buffer


_PIPE_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from affectstream.stream.messages import Event, EventKind
from affectstream.stream.sinks import JsonlSink
sink = JsonlSink.to_stdout()
for index in range(200_000):
    sink.write(Event(stream="cam", seq=index, ts=0.0, wall=0, kind=EventKind.STREAM_STARTED, detail="x" * 100))
    if sink.closed:
        break
sink.close()
print("writer stopped at", index, file=sys.stderr)
print("a last line on stdout, e.g. from the CLI, goes nowhere instead of raising")
"""


def test_stdout_piped_into_a_reader_that_exits_does_not_crash() -> None:
    """`affectstream run ... | head -n 3`: the writer notices and exits 0 without a traceback."""
    writer = subprocess.Popen([sys.executable, "-c", _PIPE_SCRIPT], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert writer.stdout is not None and writer.stderr is not None
    first_lines = [writer.stdout.readline() for _ in range(3)]
    writer.stdout.close()  # what `head` does after its lines
    stderr = writer.stderr.read().decode()
    assert writer.wait(timeout=scaled(30)) == 0, stderr
    assert [json.loads(line)["seq"] for line in first_lines] == [0, 1, 2]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert stderr.count("broken pipe") == 1
    assert "writer stopped at" in stderr
    assert "199999" not in stderr  # it stopped early rather than writing into the void


# -- MemorySink ------------------------------------------------------------------------------------

def test_memory_sink_keeps_messages_in_order_and_filters_by_type() -> None:
    sink = MemorySink()
    seqs = SeqCounter()
    sink.write(estimate("a", seqs, 0.0))
    sink.write(Event(stream="a", seq=seqs.take(), ts=0.0, wall=1, kind=EventKind.STREAM_STARTED))
    sink.write(estimate("a", seqs, 0.5))
    assert [m.seq_no for m in sink.messages] == [0, 1, 2]
    assert [m.to_wire()["ts"] for m in sink.of_type(MessageType.ESTIMATE)] == [0.0, 0.5]
    assert all(isinstance(m, Estimate) for m in sink.of_type(MessageType.ESTIMATE))
    assert [m["type"] for m in sink.wire()] == ["estimate", "event", "estimate"]
    assert sink.wire() == [m.to_wire() for m in sink.messages]
    snapshot = sink.messages
    sink.write(estimate("a", seqs, 1.0))
    assert len(snapshot) == 3  # a copy, safe to iterate while writers go on
    sink.close()
    sink.write(estimate("a", seqs, 1.5))
    assert len(sink.messages) == 4 and sink.closed


def test_memory_sink_is_thread_safe() -> None:
    sink = MemorySink()
    threads = [
        threading.Thread(target=lambda: [sink.write(stats(seq)) for seq in range(1000)])
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(scaled(10))
    assert len(sink.messages) == 4000


# -- FanoutSink ------------------------------------------------------------------------------------

def test_fanout_writes_to_every_sink() -> None:
    first, second = MemorySink(), MemorySink()
    fanout = FanoutSink([first, second])
    record = stats()
    fanout.write(record)
    fanout.flush()
    fanout.close()
    assert first.messages == second.messages == [record]
    assert first.messages[0] is record and second.messages[0] is record  # the same record, not copies
    assert first.closed and second.closed


def test_fanout_drops_a_failing_sink_logs_once_and_the_others_go_on(caplog: pytest.LogCaptureFixture) -> None:
    before, failing, after = MemorySink(), FailingSink(good_writes=2), MemorySink()
    fanout = FanoutSink([before, failing, after])
    with caplog.at_level(logging.ERROR, logger="affectstream.stream.sinks"):
        for index in range(5):
            fanout.write(stats(index))
    assert len(before.messages) == len(after.messages) == 5
    assert len(failing.written) == 2
    assert failing.closed  # closed when dropped
    assert fanout.sinks == [before, after]
    assert caplog.text.count("failed to write") == 1
    assert "FailingSink(failing)" in caplog.text and "disk full" in caplog.text


def test_sinks_satisfy_the_protocol(tmp_path: Path) -> None:
    sinks: list[Sink] = [MemorySink(), JsonlSink.to_path(tmp_path / "x.jsonl"), FanoutSink([]), FailingSink()]
    assert all(isinstance(sink, Sink) for sink in sinks)
