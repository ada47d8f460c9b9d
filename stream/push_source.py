"""A source whose frames are pushed from another thread: a browser's camera, decoded by the WebRTC side.

The producer (aiortc's event loop) calls ``push`` for every decoded frame and the stream's grabber
thread reads them with ``read``. ``push`` never blocks: the source keeps the newest ``CAPACITY``
frames and overwrites the oldest unread one, counting it (``overwritten``), so a slow pipeline never
makes a browser's video late. The frame's capture time is when it was pushed.

A push source opens once: nothing here can call the browser back. ``Pipeline.add_stream(...,
source=...)`` hands it to a grabber that does not reconnect (stream/grabber.py), so each way it stops
is the stream's end:

- ``end(detail)``, the tab closed: what is queued is still read, then the stream ENDS (outcome ENDED,
  the detail in stream_ended's detail);
- ``fail(detail)``, e.g. the peer connection failed: what is queued is read, then the stream FAILS
  (outcome CONNECTION_LOST, the detail);
- no frame for ``read_timeout_s`` (the tab in the background, a frozen camera): it FAILS with outcome
  READ_TIMEOUT and the detail "the browser stopped sending ...". It does not wait for the tab to come
  back: a user who returns reloads the page, which adds the stream again under its name;
- ``open()`` waits up to ``open_timeout_s`` for the first frame (its size is the stream's); none, or an
  end or failure before it, FAILS the stream at open (OPEN_TIMEOUT, STOPPED or CONNECTION_LOST).

After any of these, pushed frames are dropped: the producer may keep calling ``push`` until its own
side learns of the end (``finished``).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

import numpy as np

from affectstream.errors import SourceError, SourceOpenError, SourceOutcome, SourceReadError
from affectstream.stream.frames import VideoFrame, fit_within
from affectstream.stream.sources import SourceConfig, SourceDamage, SourceInfo, SourceKind

CAPACITY = 2  # frames held for the grabber: the newest, and one it may not have taken yet


@dataclass(frozen=True)
class PushDamage(SourceDamage):
    """What the grabber reports when the stream ends: the counts, and why it ended in the producer's words."""

    overwritten: int = 0  # pushed frames replaced by newer ones before the grabber took them
    ended: str = ""  # the detail given to end()

    def describe(self) -> str:
        counts = super().describe()
        if self.overwritten:
            counts += f", {self.overwritten} overwritten unread"
        return f"{self.ended} ({counts})" if self.ended else counts


@dataclass(frozen=True, slots=True)
class _Pushed:
    image: np.ndarray
    pts: float
    source_size: tuple[int, int] | None
    captured_ns: int
    wall_ms: int


class PushSource:
    """A live ``Source`` fed by ``push`` from another thread; see the module docstring."""

    def __init__(self, stream_id: str, config: SourceConfig | None = None, uri: str | None = None) -> None:
        self.stream_id = stream_id
        self.uri = uri or f"browser:{stream_id}"
        self.is_live = True
        self._config = config or SourceConfig()
        self._frames: collections.deque[_Pushed] = collections.deque()
        self._changed = threading.Condition()  # guards everything below; push holds it only to append
        self._overwritten = 0
        self._stopped: SourceError | None = None  # how it failed (fail(), a read timeout)
        self._ended: str | None = None  # end()'s detail once it ended normally
        self._opened = False
        self._read = 0
        self._last_pts: float | None = None

    # -- the producer's side (any thread, never blocks) -----------------------------------------

    def push(self, image: np.ndarray, pts: float, source_size: tuple[int, int] | None = None) -> None:
        """Hand over one HxWx3 uint8 RGB frame at media time ``pts`` (seconds, increasing). The array
        becomes the frame's: do not write to it afterwards. ``source_size``: the (width, height) the
        frame had before the producer reduced it, if it did."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"stream {self.stream_id}: a pushed frame is an HxWx3 uint8 RGB array, "
                             f"got {image.dtype} {image.shape}")
        pushed = _Pushed(image, float(pts), source_size, time.monotonic_ns(), time.time_ns() // 1_000_000)
        with self._changed:
            if self._over():
                return  # nobody reads any more
            if len(self._frames) == CAPACITY:
                self._frames.popleft()
                self._overwritten += 1
            self._frames.append(pushed)
            self._changed.notify_all()

    def end(self, detail: str = "") -> None:
        """The producer is done (the tab closed): the stream ends after what is queued."""
        with self._changed:
            if not self._over():
                self._ended = detail or "the browser ended the stream"
            self._changed.notify_all()

    def fail(self, detail: str) -> None:
        """The producer broke (the peer connection failed): the stream fails after what is queued."""
        with self._changed:
            if not self._over():
                self._stopped = SourceReadError(detail, SourceOutcome.CONNECTION_LOST, self.uri)
            self._changed.notify_all()

    @property
    def finished(self) -> bool:
        """No more frames are taken: ended, failed, stalled or closed."""
        with self._changed:
            return self._over()

    @property
    def overwritten(self) -> int:
        with self._changed:
            return self._overwritten

    # -- the Source protocol (the grabber's thread) ---------------------------------------------

    @property
    def damage(self) -> PushDamage:
        with self._changed:
            return PushDamage(frames=self._read, last_pts=self._last_pts, overwritten=self._overwritten,
                              ended=self._ended or "")

    def open(self) -> SourceInfo:
        if self._opened:
            raise SourceOpenError(f"{self.uri}: a browser stream cannot be reopened; the page adds it again",
                                  SourceOutcome.CONNECTION_LOST, self.uri)
        self._opened = True
        timeout = self._config.open_timeout_s
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._frames and not self._over():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._stopped = SourceOpenError(
                        f"the browser sent no frame within {timeout:g} s (is the camera allowed on the page?)",
                        SourceOutcome.OPEN_TIMEOUT, self.uri)
                    break
                self._changed.wait(remaining)
            if not self._frames:
                raise self._open_error()
            first = self._frames[0]
        height, width = first.image.shape[:2]
        width, height = first.source_size or (width, height)
        return SourceInfo(uri=self.uri, kind=SourceKind.BROWSER, is_live=True, width=width, height=height,
                          nominal_fps=None, duration_s=None, codec="webrtc")

    def read(self) -> VideoFrame | None:
        timeout = self._config.read_timeout_s
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._frames:
                if self._stopped is not None:
                    raise self._stopped
                if self._ended is not None:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    # It stops taking frames: a tab that comes back does not revive a failed stream.
                    self._stopped = SourceReadError(
                        f"the browser stopped sending: no frame for {timeout:g} s (a background tab or a "
                        "frozen camera); reload the capture page to start again",
                        SourceOutcome.READ_TIMEOUT, self.uri)
                    raise self._stopped
                self._changed.wait(remaining)
            pushed = self._frames.popleft()
            index = self._read
            self._read += 1
            self._last_pts = pushed.pts
        return self._frame(pushed, index)

    def close(self) -> None:
        with self._changed:
            self._frames.clear()
            if not self._over():
                self._ended = "closed"
            self._changed.notify_all()

    # -- helpers ------------------------------------------------------------------------------------

    def _over(self) -> bool:
        return self._stopped is not None or self._ended is not None

    def _open_error(self) -> SourceOpenError:
        """Why open() got no first frame (called with the lock held, once the source is over)."""
        if isinstance(self._stopped, SourceOpenError):
            return self._stopped
        if self._stopped is not None:
            return SourceOpenError(f"{self._stopped} (before the first frame)", self._stopped.outcome, self.uri)
        return SourceOpenError(f"{self._ended} before sending a frame", SourceOutcome.STOPPED, self.uri)

    def _frame(self, pushed: _Pushed, index: int) -> VideoFrame:
        # Reduced here, on the grabber's thread, to the size every source keeps to (SourceConfig.max_frame_side).
        image, source_size = pushed.image, pushed.source_size
        height, width = image.shape[:2]
        target = fit_within(width, height, self._config.max_frame_side)
        if target != (width, height):
            import cv2

            image = cv2.resize(image, target, interpolation=cv2.INTER_AREA)
            source_size = source_size or (width, height)
        return VideoFrame(self.stream_id, index, pushed.pts, pushed.captured_ns, pushed.wall_ms, image, source_size)
