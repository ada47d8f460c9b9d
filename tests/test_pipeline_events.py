"""The pump forwards a source event only after every frame written before it, and never loses a terminal one.

Regression: an end-of-stream event that arrived while the pump held the stream's last frame was
forwarded ahead of that frame, its "terminal" answer was dropped, and the pump then spun on the
closed ring forever (one core at 100 % after every stopped run).
"""

from __future__ import annotations

import numpy as np

from affectstream.engine.interfaces import HeadOutput
from affectstream.engine.labels import EMOTIONS
from affectstream.stream.frames import SourceEvent, SourceState, VideoFrame
from affectstream.stream.pipeline import Pipeline, PipelineConfig, SampledFrame, StreamMarker
from affectstream.stream.sinks import MemorySink
from tests.timeouts import scaled


class _NoEncoder:
    name, embed_dim, image_size, device = "none", 4, 8, "cpu"

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


def test_an_end_event_written_after_the_held_frame_waits_for_it() -> None:
    pipeline = Pipeline([("s", "clip.avi")], _NoEncoder(), _NoHead(), MemorySink(), EMOTIONS, PipelineConfig())
    runtime = pipeline._streams["s"]
    runtime.ring.put(frame(0))
    ended = SourceEvent("s", SourceState.ENDED, 0)
    pipeline._on_source_event(runtime, ended)  # stamped: one frame written before it
    runtime.ring.close()
    held = runtime.ring.get(timeout=0)
    assert held is not None
    # The pump holds frame 0: the end must not overtake it.
    assert pipeline._release_events(runtime, held=1) is False
    assert pipeline._batches.pending == 0
    pipeline._batches.put(SampledFrame(held, 0))
    # Once the frame is queued the end passes, and the pump is told so.
    assert pipeline._release_events(runtime) is True
    batch = pipeline._batches.get_batch(timeout=scaled(2))  # due after the batcher's max wait
    assert [type(item) for item in batch] == [SampledFrame, StreamMarker]
