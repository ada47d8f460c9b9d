"""Rolling pipeline statistics of one stream, reported in `stats` messages.

Pure bookkeeping: the emitter records what happened and asks for a snapshot every few seconds.
Latency is frame-to-event: from the moment the grabber held the decoded frame (for a paced file,
the moment it became due) to the moment its estimate was handed to the sinks.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import numpy as np

from affectstream.stream.messages import StatsFields


def percentiles(values: collections.deque[float] | list[float]) -> dict[str, float]:
    if not values:
        return {}
    p50, p95, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


class StreamStats:
    """Counters and recent latencies of one stream; ``window`` estimates are kept for percentiles."""

    def __init__(self, window: int = 512, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ages: collections.deque[float] = collections.deque(maxlen=window)
        self._stages: dict[str, collections.deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=window)
        )
        self._batch_sizes: collections.deque[int] = collections.deque(maxlen=64)
        self._last_time = clock()
        self._last_written = 0
        self._last_sampled = 0
        self.estimates = 0
        self.last_pts: float | None = None

    def record_estimate(self, pts: float, age_ms: float, stage_ms: dict[str, float]) -> None:
        self.estimates += 1
        self.last_pts = pts
        self._ages.append(age_ms)
        for stage, value in stage_ms.items():
            if stage != "batch":
                self._stages[stage].append(value)

    def record_batch(self, size: int) -> None:
        self._batch_sizes.append(size)

    def snapshot(self, written: int, sampled: int, dropped: int, queue_depth: int) -> StatsFields:
        now = self._clock()
        elapsed = max(now - self._last_time, 1e-6)
        fields = StatsFields(
            input_fps=round((written - self._last_written) / elapsed, 3),
            sampled_fps=round((sampled - self._last_sampled) / elapsed, 3),
            frames_in=written,
            frames_sampled=sampled,
            estimates=self.estimates,
            drops=dropped,
            queue_depth=queue_depth,
            batch_size=round(float(np.mean(self._batch_sizes)), 3) if self._batch_sizes else 0.0,
            latency_ms=percentiles(self._ages),
            stage_ms={stage: percentiles(values) for stage, values in self._stages.items()},
        )
        self._last_time, self._last_written, self._last_sampled = now, written, sampled
        return fields
