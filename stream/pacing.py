"""Real-time pacing of a file source, so that `affectstream run FILE` behaves like a live camera.

A paced frame is released when the wall clock reaches its media time (relative to the first frame),
and its capture time is the release time: the frame's age then means what it means for a camera.
Only media that ends is paced: a source that turns out live when opened (``SourceInfo.is_live``) is
read as it comes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from affectstream.stream.frames import VideoFrame
from affectstream.stream.sources import Source, SourceInfo, SourceWrapper


class PacedSource(SourceWrapper):
    """Wraps a source and sleeps (interruptibly) until each frame of media that ends is due."""

    def __init__(
        self,
        inner: Source,
        stop: threading.Event,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        speed: float = 1.0,
    ) -> None:
        super().__init__(inner)
        self._stop = stop
        self._clock_ns = clock_ns
        self._speed = speed
        self._origin: tuple[float, int] | None = None  # (first pts, monotonic ns at its release)
        self._paced = False

    def open(self) -> SourceInfo:
        self._origin = None
        info = self._inner.open()
        self._paced = not info.is_live
        return info

    def read(self) -> VideoFrame | None:
        frame = self._inner.read()
        if frame is None or not self._paced:
            return frame
        now = self._clock_ns()
        if self._origin is None or frame.pts < self._origin[0]:
            # First frame, or media time went backwards (a new segment): restart the clock.
            self._origin = (frame.pts, now)
        first_pts, origin_ns = self._origin
        due_ns = origin_ns + int((frame.pts - first_pts) / self._speed * 1e9)
        if due_ns > now:
            self._stop.wait((due_ns - now) / 1e9)
        released = self._clock_ns()
        return dataclasses.replace(frame, captured_ns=released, wall_ms=time.time_ns() // 1_000_000)
