"""The pump forwards source events in order with the frames read before them, and never loses a terminal one.

Lifecycle events ride the ring with the frames (stream/ring.py), so the pump reads them in the order
the grabber produced them. Regression: an end-of-stream event that arrived while the pump held the
stream's last frame was forwarded ahead of that frame, its "terminal" answer was dropped, and the
pump then spun on the closed ring forever (one core at 100 % after every stopped run).
"""

from __future__ import annotations

import threading

import numpy as np

from affectstream.engine.interfaces import HeadOutput
from affectstream.engine.labels import EMOTIONS
from affectstream.errors import SourceOutcome
from affectstream.stream.frames import SourceEvent, SourceState, VideoFrame
from affectstream.stream.pipeline import Pipeline, PipelineConfig, SampledFrame, StreamMarker
from affectstream.stream.sinks import MemorySink
from tests.timeouts import scaled


class _NoEncoder:
    name, embed_dim, image_size, device = "none", 4, 8, "cpu"
    last_stage_ms: dict[str, float] = {}

    def encode(self, images: object) -> np.ndarray:
        raise AssertionError("not called")


class _NoHead:
    name = "none"

    def step(self, stream_ids: object, features: object) -> HeadOutput:
        raise AssertionError("not called")

    def reset(self, stream_id: str) -> None:
        pass


def frame(index: int) -> VideoFrame:
    return VideoFrame("s", index, index / 10, 0, 0, np.zeros((8, 8, 3), np.uint8))


def pump_until_done(pipeline: Pipeline) -> list[SampledFrame | StreamMarker]:
    """Run the pump of stream "s" on its own thread; it must return by itself. What it queued, in order."""
    runtime = pipeline._streams["s"]
    pump = threading.Thread(target=pipeline._pump_loop, args=(runtime,), daemon=True)
    pump.start()
    pump.join(scaled(5))
    assert not pump.is_alive(), "the pump returns once its stream has ended"
    pipeline._batches.close()
    queued: list[SampledFrame | StreamMarker] = []
    while batch := pipeline._batches.get_batch(timeout=scaled(2)):
        queued += batch
    return queued


def test_an_end_event_written_after_the_last_frame_follows_it_and_ends_the_pump() -> None:
    pipeline = Pipeline([("s", "clip.avi")], _NoEncoder(), _NoHead(), MemorySink(), EMOTIONS,
                        PipelineConfig(rate_hz=0))  # every frame is sampled
    ring = pipeline._streams["s"].ring
    ring.put_event(SourceEvent("s", SourceState.RUNNING, 0))
    for index in range(3):
        ring.put(frame(index))
    ring.put_event(SourceEvent("s", SourceState.ENDED, 0, outcome=SourceOutcome.ENDED, frames_read=3))
    ring.close()  # the grabber closes the ring after its terminal event; the pump still drains it
    queued = pump_until_done(pipeline)
    assert [type(item) for item in queued] == [StreamMarker, SampledFrame, SampledFrame, SampledFrame, StreamMarker]
    first, *frames, last = queued
    assert isinstance(first, StreamMarker) and first.event.state is SourceState.RUNNING
    assert [item.frame.index for item in frames if isinstance(item, SampledFrame)] == [0, 1, 2]
    assert isinstance(last, StreamMarker) and last.event.state is SourceState.ENDED and last.event.terminal


def test_a_reconnect_marker_sits_between_the_frames_of_the_two_connections() -> None:
    pipeline = Pipeline([("s", "clip.avi")], _NoEncoder(), _NoHead(), MemorySink(), EMOTIONS,
                        PipelineConfig(rate_hz=0))
    ring = pipeline._streams["s"].ring
    ring.put(frame(0))
    ring.put_event(SourceEvent("s", SourceState.RECONNECTING, 0, attempt=1))
    ring.put_event(SourceEvent("s", SourceState.RUNNING, 0, restart_ts=0.1))
    ring.put(frame(1))
    ring.put_event(SourceEvent("s", SourceState.FAILED, 0, outcome=SourceOutcome.CONNECTION_LOST))
    queued = pump_until_done(pipeline)  # the ring stays open: the terminal event alone ends the pump
    described = [item.frame.index if isinstance(item, SampledFrame) else item.event.state for item in queued]
    assert described == [0, SourceState.RECONNECTING, SourceState.RUNNING, 1, SourceState.FAILED]


def test_a_ring_closed_without_a_terminal_event_ends_the_stream_with_an_error() -> None:
    pipeline = Pipeline([("s", "clip.avi")], _NoEncoder(), _NoHead(), MemorySink(), EMOTIONS,
                        PipelineConfig(rate_hz=0))
    ring = pipeline._streams["s"].ring
    ring.put(frame(0))
    ring.close()
    queued = pump_until_done(pipeline)  # it does not spin on the drained ring
    assert [type(item) for item in queued] == [SampledFrame, StreamMarker]
    failure = queued[-1]
    assert isinstance(failure, StreamMarker) and failure.event.state is SourceState.FAILED
    assert failure.event.detail == "internal pump error"
