"""Frames pushed from another thread (a browser's camera over WebRTC) as a stream of a running pipeline.

A real Pipeline with the tiny-random engine; a thread stands in for the WebRTC side and pushes frames
into a PushSource handed over with ``Pipeline.add_stream``. A push source never reconnects: its end,
its failure and a stall each end the stream once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from affectstream.engine.runtime import Engine
from affectstream.errors import PipelineError, SourceOutcome
from affectstream.stream.frames import SourceState
from affectstream.stream.messages import Event, EventKind, StreamRecord
from affectstream.stream.pipeline import Pipeline, PipelineConfig
from affectstream.stream.push_source import CAPACITY, PushSource
from affectstream.stream.sinks import MemorySink
from affectstream.stream.sources import SourceConfig, SourceKind
from tests.test_pipeline import estimates_of
from tests.timeouts import scaled

FAST = SourceConfig(open_timeout_s=2.0, read_timeout_s=2.0)


def make_pipeline(engine: Engine, sources: list[tuple[str, str]] | None = None, allow_empty: bool = True,
                  source: SourceConfig = FAST, **config: object) -> tuple[Pipeline, MemorySink]:
    sink = MemorySink()
    settings = PipelineConfig(rate_hz=10.0, source=source, stats_interval_s=0.2, **config)  # type: ignore[arg-type]
    return Pipeline(sources or [], engine.encoder, engine.head, sink, engine.labels, settings,  # type: ignore[arg-type]
                    allow_empty=allow_empty), sink


def image(index: int) -> np.ndarray:
    return np.full((48, 64, 3), (index * 7) % 256, np.uint8)


@contextmanager
def browser(source: PushSource, fps: float = 25.0, first_pts: float = 0.0) -> Iterator[None]:
    """Pushes frames into ``source`` from its own thread, as the WebRTC side does, while the block runs."""
    done = threading.Event()

    def send() -> None:
        index = 0
        while not done.wait(1 / fps):
            source.push(image(index), first_pts + index / fps)
            index += 1

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(scaled(2))


def of_stream(sink: MemorySink, stream: str) -> list[StreamRecord]:
    return [record for record in sink.messages if isinstance(record, StreamRecord) and record.stream == stream]


def events(records: list[StreamRecord], kind: EventKind) -> list[Event]:
    return [record for record in records if isinstance(record, Event) and record.kind is kind]


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + scaled(seconds)
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {scaled(seconds):.1f} s"
        time.sleep(0.02)


def estimates_for(sink: MemorySink, stream: str, at_least: int) -> Callable[[], bool]:
    return lambda: len(estimates_of(of_stream(sink, stream))) >= at_least


def test_a_stream_added_while_running_gives_estimates_and_ends_without_reconnecting(tiny_engine: Engine) -> None:
    pipeline, sink = make_pipeline(tiny_engine)
    pipeline.start()
    try:
        source = PushSource("cam", FAST)
        pipeline.add_stream("cam", source.uri, source=source)
        assert pipeline.stream_ids == ["cam"]
        with browser(source):
            wait_until(estimates_for(sink, "cam", 3), 20, "estimates of the pushed stream")
        source.end("the tab was closed")
        assert pipeline.wait_stream("cam", scaled(5)), "the stream ends after end()"
    finally:
        pipeline.stop()
    records = of_stream(sink, "cam")
    (started,) = events(records, EventKind.STREAM_STARTED)
    assert records[0] is started
    assert started.source is not None and started.source.info is not None
    info = started.source.info
    assert (info.kind, info.is_live, info.width, info.height, info.codec) == (SourceKind.BROWSER, True, 64, 48, "webrtc")
    (ended,) = events(records, EventKind.STREAM_ENDED)
    assert ended.outcome is SourceOutcome.ENDED and ended.detail is not None
    assert ended.detail.startswith("the tab was closed (") and "frames read" in ended.detail
    assert not events(records, EventKind.STREAM_RECONNECTING) and not events(records, EventKind.STREAM_ERROR)
    times = [estimate.ts for estimate in estimates_of(records)]
    assert times == sorted(times) and times[-1] > times[0]
    outcome = pipeline.outcomes["cam"]
    assert outcome.state is SourceState.ENDED and outcome.estimates == len(estimates_of(records)) >= 3
    assert source.finished
    source.push(image(0), 99.0)  # the WebRTC side may still push until it hears of the end: ignored


def test_push_never_blocks_and_counts_what_it_overwrote() -> None:
    source = PushSource("cam", FAST)
    started = time.monotonic()
    for index in range(200):  # nobody reads: a slow pipeline
        source.push(image(index), index / 25)
    assert time.monotonic() - started < scaled(0.5)
    assert source.overwritten == 200 - CAPACITY
    source.open()
    frames = [source.read() for _ in range(CAPACITY)]
    assert [frame.pts for frame in frames if frame is not None] == [198 / 25, 199 / 25]  # the newest ones
    assert source.damage.overwritten == 198 and "198 overwritten unread" in source.damage.describe()
    source.end()
    assert source.read() is None


def test_a_large_pushed_frame_is_reduced_and_keeps_its_size() -> None:
    source = PushSource("cam", SourceConfig(max_frame_side=64))
    source.push(np.zeros((120, 160, 3), np.uint8), 0.0)
    info = source.open()
    frame = source.read()
    assert frame is not None and (frame.width, frame.height) == (64, 48) and frame.source_size == (160, 120)
    assert (info.width, info.height) == (160, 120)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        source.push(np.zeros((4, 4), np.uint8), 1.0)


def test_a_browser_that_stops_sending_fails_the_stream_once(tiny_engine: Engine) -> None:
    stalls = SourceConfig(open_timeout_s=2.0, read_timeout_s=0.3)
    pipeline, sink = make_pipeline(tiny_engine, source=stalls)
    pipeline.start()
    try:
        source = PushSource("cam", stalls)
        pipeline.add_stream("cam", source.uri, source=source)
        with browser(source):
            wait_until(estimates_for(sink, "cam", 2), 20, "estimates of the pushed stream")
        # The tab went to the background: no more frames.
        assert pipeline.wait_stream("cam", scaled(5)), "a stalled browser stream ends"
        time.sleep(scaled(0.5))  # time in which a reconnect loop would show
    finally:
        pipeline.stop()
    records = of_stream(sink, "cam")
    (error,) = events(records, EventKind.STREAM_ERROR)
    assert error.outcome is SourceOutcome.READ_TIMEOUT
    assert error.detail is not None and error.detail.startswith("the browser stopped sending")
    assert not events(records, EventKind.STREAM_RECONNECTING) and not events(records, EventKind.STREAM_ENDED)
    assert len(events(records, EventKind.STREAM_STARTED)) == 1
    assert pipeline.outcomes["cam"].state is SourceState.FAILED and source.finished


def test_a_failed_peer_connection_fails_the_stream_with_its_detail(tiny_engine: Engine) -> None:
    pipeline, sink = make_pipeline(tiny_engine)
    pipeline.start()
    try:
        source = PushSource("cam", FAST)
        pipeline.add_stream("cam", source.uri, source=source)
        with browser(source):
            wait_until(estimates_for(sink, "cam", 1), 20, "an estimate of the pushed stream")
        source.fail("the peer connection failed (ICE)")
        assert pipeline.wait_stream("cam", scaled(5))
    finally:
        pipeline.stop()
    (error,) = events(of_stream(sink, "cam"), EventKind.STREAM_ERROR)
    assert error.outcome is SourceOutcome.CONNECTION_LOST and error.detail == "the peer connection failed (ICE)"
    assert not events(of_stream(sink, "cam"), EventKind.STREAM_RECONNECTING)


def test_a_browser_that_sends_no_frame_fails_at_open_without_retrying(tiny_engine: Engine) -> None:
    silent = SourceConfig(open_timeout_s=0.3, read_timeout_s=2.0)
    pipeline, sink = make_pipeline(tiny_engine, source=silent)
    pipeline.start()
    try:
        source = PushSource("cam", silent)
        pipeline.add_stream("cam", source.uri, source=source)
        assert pipeline.wait_stream("cam", scaled(5))
    finally:
        pipeline.stop()
    records = of_stream(sink, "cam")
    (error,) = events(records, EventKind.STREAM_ERROR)
    assert error.outcome is SourceOutcome.OPEN_TIMEOUT and "no frame within 0.3 s" in (error.detail or "")
    assert not events(records, EventKind.STREAM_RECONNECTING) and not events(records, EventKind.STREAM_STARTED)


def test_a_running_id_is_refused_and_a_finished_one_continues_its_seqs(tiny_engine: Engine) -> None:
    pipeline, sink = make_pipeline(tiny_engine)
    pipeline.start()
    try:
        first = PushSource("cam", FAST)
        pipeline.add_stream("cam", first.uri, source=first)
        assert pipeline.running_stream_ids() == ["cam"]
        with pytest.raises(PipelineError, match="'cam' is in use"):
            pipeline.add_stream("cam", "browser:cam", source=PushSource("cam", FAST))
        with browser(first):
            wait_until(estimates_for(sink, "cam", 2), 20, "estimates of the first page")
        first.end("reloaded")
        assert pipeline.wait_stream("cam", scaled(5)) and pipeline.running_stream_ids() == []
        old_seqs = [record.seq for record in of_stream(sink, "cam")]
        second = PushSource("cam", FAST)  # the reloaded page, under the same name
        pipeline.add_stream("cam", second.uri, source=second)
        assert pipeline.stream_ids == ["cam"]
        with browser(second):
            wait_until(estimates_for(sink, "cam", len(estimates_of(of_stream(sink, "cam"))) + 2), 20,
                       "estimates of the second page")
        second.end()
        assert pipeline.wait_stream("cam", scaled(5))
    finally:
        pipeline.stop()
    records = of_stream(sink, "cam")
    seqs = [record.seq for record in records]
    assert seqs == list(range(len(seqs))), "one stream id, one increasing numbering across both pages"
    starts = events(records, EventKind.STREAM_STARTED)
    assert len(starts) == 2 and starts[1].seq > max(old_seqs)
    assert len(events(records, EventKind.STREAM_ENDED)) == 2
    assert pipeline.outcomes["cam"].started and pipeline.outcomes["cam"].state is SourceState.ENDED


def test_an_empty_pipeline_waits_for_cameras_until_stopped(tiny_engine: Engine) -> None:
    with pytest.raises(PipelineError, match="no source given"):
        make_pipeline(tiny_engine, allow_empty=False)
    pipeline, sink = make_pipeline(tiny_engine)
    pipeline.start()
    assert pipeline.stream_ids == []
    assert not pipeline.wait(scaled(0.5)), "with allow_empty the run lasts until stop()"
    source = PushSource("cam", FAST)
    pipeline.add_stream("cam", source.uri, source=source)
    with browser(source):
        wait_until(estimates_for(sink, "cam", 1), 20, "an estimate of the pushed stream")
    source.end()
    assert pipeline.wait_stream("cam", scaled(5))
    assert not pipeline.wait(scaled(0.3)), "every stream ended, but more may come"
    pipeline.stop()
    assert pipeline.wait(0)
    with pytest.raises(PipelineError, match="has stopped"):
        pipeline.add_stream("late", "browser:late", source=PushSource("late", FAST))


def test_without_allow_empty_the_run_ends_with_its_last_stream_added_or_not(
        tiny_engine: Engine, short_video: Path) -> None:
    pipeline, sink = make_pipeline(tiny_engine, [("file", str(short_video))], allow_empty=False, pace_files=False)
    with pytest.raises(PipelineError, match="'file' is in use"):
        pipeline.add_stream("file", str(short_video))
    source = PushSource("cam", FAST)
    pipeline.add_stream("cam", source.uri, source=source)  # before start: started with the others
    pipeline.start()
    try:
        with browser(source):
            assert pipeline.wait_stream("file", scaled(30))
            assert not pipeline.wait(scaled(0.3)), "the browser stream still runs"
        source.end()
        assert pipeline.wait(scaled(5)), "the last stream ended: the run is over"
        with pytest.raises(PipelineError, match="finished"):
            pipeline.add_stream("late", "browser:late", source=PushSource("late", FAST))
    finally:
        pipeline.stop()
    assert estimates_of(of_stream(sink, "file")) and estimates_of(of_stream(sink, "cam"))
    assert pipeline.stream_ids == ["file", "cam"]
