"""Bench sections b and c: frame-to-event latency through the real pipeline, and how many streams fit.

Frame-to-event runs from the moment the grabber holds the decoded frame (for a paced file, the
moment the frame became due, as for a camera) to the moment its estimate has been serialised and
sent. Two thin adapters around the real ``Pipeline`` measure the ends: ``TimedSource`` (decode
time, pacing, capture stamp) and ``LatencySink`` (serialise, send over a local socket, record).
The stages between come from the pipeline's own ``latency_ms`` (queue, preprocess, encode, head).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from affectstream.engine.interfaces import ImageEncoder, TemporalHead
from affectstream.engine.labels import EMOTIONS
from affectstream.stream.batcher import BatchConfig
from affectstream.stream.frames import VideoFrame
from affectstream.stream.messages import Estimate, Record
from affectstream.stream.pacing import PacedSource
from affectstream.stream.pipeline import Pipeline, PipelineConfig
from affectstream.stream.sources import Source, SourceConfig, SourceWrapper, open_source
from affectstream.stream.stats import percentiles

STAGES = ("decode", "queue", "preprocess", "encode", "head", "serialize", "send")


class _Registry:
    """(stream, ts) → (capture ns, decode ms), written by sources and read by the sink."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, float], tuple[int, float]] = {}

    def put(self, key: tuple[str, float], value: tuple[int, float]) -> None:
        with self._lock:
            self._items[key] = value

    def pop(self, key: tuple[str, float]) -> tuple[int, float] | None:
        with self._lock:
            return self._items.pop(key, None)


class _DecodeTimer(SourceWrapper):
    """Wraps a source and keeps how long its last ``read`` (demux + decode) took."""

    def __init__(self, inner: Source) -> None:
        super().__init__(inner)
        self.last_ms = 0.0

    def read(self) -> VideoFrame | None:
        started = time.perf_counter()
        frame = self._inner.read()
        self.last_ms = (time.perf_counter() - started) * 1e3
        return frame


class TimedSource(SourceWrapper):
    """Wraps a source: times each decode, paces to media time if asked (the runtime's own
    ``PacedSource``), and registers each frame's capture time for the sink."""

    def __init__(self, inner: Source, registry: _Registry, stop: threading.Event, pace: bool) -> None:
        self._timer = _DecodeTimer(inner)
        super().__init__(PacedSource(self._timer, stop) if pace else self._timer)
        self._registry = registry

    def read(self) -> VideoFrame | None:
        frame = self._inner.read()
        if frame is not None:
            # captured_ns: when the grabber holds the decoded frame (for a paced file, its release).
            self._registry.put((frame.stream_id, round(frame.pts, 6)), (frame.captured_ns, self._timer.last_ms))
        return frame


class LatencySink:
    """Serialises every message, sends it over a local socket pair, records estimates' latencies."""

    def __init__(self, registry: _Registry) -> None:
        self._registry = registry
        self._send, self._receive = socket.socketpair()
        self._drain = threading.Thread(target=self._drain_loop, daemon=True, name="bench-drain")
        self._drain.start()
        self.totals_ms: list[float] = []
        self.stages_ms: dict[str, list[float]] = {stage: [] for stage in STAGES}

    def _drain_loop(self) -> None:
        while self._receive.recv(1 << 16):
            pass

    def write(self, message: Record) -> None:
        started = time.perf_counter_ns()
        data = (message.text + "\n").encode()
        serialized = time.perf_counter_ns()
        self._send.sendall(data)
        sent = time.monotonic_ns()
        if not isinstance(message, Estimate):
            return
        origin = self._registry.pop((message.stream, round(message.ts, 6)))
        if origin is None:
            return
        captured, decode_ms = origin
        self.totals_ms.append((sent - captured) / 1e6)
        stages = {**(message.latency_ms or {}), "decode": decode_ms,
                  "serialize": (serialized - started) / 1e6, "send": (time.perf_counter_ns() - serialized) / 1e6}
        for stage in STAGES:
            if stage in stages:
                self.stages_ms[stage].append(float(stages[stage]))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._send.close()
        self._drain.join(2.0)
        self._receive.close()


@dataclass(frozen=True)
class RunConfig:
    rate_hz: float
    pace: bool
    max_batch: int = 16
    max_wait_ms: float = 10.0
    seconds: float | None = None  # stop after this long (None: to the end of the videos)


def run_pipeline(video: str, streams: int, encoder: ImageEncoder, head: TemporalHead, config: RunConfig
                 ) -> dict[str, Any]:
    """``streams`` copies of ``video`` through the real pipeline; latencies and throughput."""
    registry = _Registry()
    stop = threading.Event()
    sink = LatencySink(registry)

    def factory(uri: str, stream_id: str, source_config: SourceConfig) -> Source:
        return TimedSource(open_source(uri, stream_id, source_config), registry, stop, config.pace)  # type: ignore[return-value]

    pipeline_config = PipelineConfig(rate_hz=config.rate_hz, pace_files=False,
                                     batch=BatchConfig(max_batch=config.max_batch, max_wait_ms=config.max_wait_ms),
                                     stats_interval_s=3600.0)
    sources = [(f"s{i}", video) for i in range(streams)]
    pipeline = Pipeline(sources, encoder, head, sink, EMOTIONS, pipeline_config, source_factory=factory)
    started = time.monotonic()
    pipeline.start()
    try:
        pipeline.wait(config.seconds)
    finally:
        stop.set()
        # A run cut short leaves file streams mid-way; their end does not need to be waited for.
        pipeline.stop(timeout=2.0)
        sink.close()
    elapsed = time.monotonic() - started
    return summarize(sink, streams, elapsed)


def summarize(sink: LatencySink, streams: int, elapsed: float) -> dict[str, Any]:
    return {"streams": streams, "estimates": len(sink.totals_ms), "seconds": round(elapsed, 2),
            "estimates_per_s": round(len(sink.totals_ms) / max(elapsed, 1e-9), 2),
            "frame_to_event_ms": percentiles(sink.totals_ms),
            "stages_ms": {stage: percentiles(values) for stage, values in sink.stages_ms.items() if values}}


def max_streams(video: str, counts: Sequence[int], encoder: ImageEncoder, head_factory: Any,
                config: RunConfig, target_p99_ms: float) -> dict[str, Any]:
    """Raise the stream count until p99 frame-to-event exceeds the target; the last count within it."""
    runs = []
    best = 0
    for count in counts:
        result = run_pipeline(video, count, encoder, head_factory(), config)
        p99 = result["frame_to_event_ms"].get("p99", float("inf"))
        result["within_target"] = p99 <= target_p99_ms
        runs.append(result)
        if not result["within_target"]:
            break
        best = count
    return {"rate_hz": config.rate_hz, "target_p99_ms": target_p99_ms, "max_streams": best, "runs": runs}
