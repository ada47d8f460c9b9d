"""Local cameras (an index such as ``0`` or ``/dev/videoN``) read with OpenCV's V4L2 backend."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from affectstream.errors import PipelineError, SourceOpenError, SourceOutcome, SourceReadError
from affectstream.stream.frame_clock import FrameClock, plausible_fps
from affectstream.stream.frames import VideoFrame, fit_within
from affectstream.stream.sources import SourceConfig, SourceDamage, SourceInfo, SourceKind

log = logging.getLogger(__name__)


class WebcamSource:
    """A local camera through OpenCV (V4L2 on Linux)."""

    def __init__(self, uri: str, stream_id: str, config: SourceConfig) -> None:
        self.uri = uri
        self.stream_id = stream_id
        self.kind = SourceKind.WEBCAM
        self.is_live = True
        self._config = config
        self._capture: Any = None
        self._clock = FrameClock(None)
        self._first_ns: int | None = None

    @property
    def damage(self) -> SourceDamage:
        return SourceDamage(frames=self._clock.count, last_pts=self._clock.last)

    def open(self) -> SourceInfo:
        import cv2

        device: int | str = int(self.uri) if self.uri.strip().isdigit() else self.uri
        node = Path(f"/dev/video{device}") if isinstance(device, int) else Path(device)
        if not node.exists():
            raise SourceOpenError(f"camera {self.uri} does not exist ({node} is missing); list cameras with "
                                  "`v4l2-ctl --list-devices`", SourceOutcome.NO_SUCH_DEVICE, self.uri)
        capture = cv2.VideoCapture(device, cv2.CAP_V4L2)
        if not capture.isOpened():
            capture.release()
            raise SourceOpenError(f"camera {self.uri} cannot be opened (absent, busy, or no permission: is the user "
                                  "in the 'video' group?)", SourceOutcome.DEVICE_UNAVAILABLE, self.uri)
        self._capture = capture
        fps = plausible_fps(capture.get(cv2.CAP_PROP_FPS), self._config.max_plausible_fps)
        self._clock = FrameClock(fps)
        fourcc = int(capture.get(cv2.CAP_PROP_FOURCC))
        codec = "".join(chr((fourcc >> shift) & 0xFF) for shift in (0, 8, 16, 24)).strip("\x00 ") or "raw"
        return SourceInfo(uri=self.uri, kind=SourceKind.WEBCAM, is_live=True,
                          width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                          height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                          nominal_fps=fps, duration_s=None, codec=codec)

    def read(self) -> VideoFrame | None:
        if self._capture is None:
            raise PipelineError(f"read() on camera {self.uri} before open(): open the source first")
        try:
            return self._read_frame()
        except SourceReadError:
            raise
        except Exception as exc:
            raise SourceReadError(f"camera {self.uri}: {type(exc).__name__}: {exc}", SourceOutcome.CORRUPT,
                                  self.uri) from exc

    def _read_frame(self) -> VideoFrame:
        import cv2

        ok, bgr = self._capture.read()
        captured_ns = time.monotonic_ns()
        wall = time.time_ns() // 1_000_000
        if not ok or bgr is None:
            raise SourceReadError(f"camera {self.uri} stopped delivering frames (unplugged?)",
                                  SourceOutcome.CONNECTION_LOST, self.uri)
        if self._first_ns is None:
            self._first_ns = captured_ns
        position_ms = float(self._capture.get(cv2.CAP_PROP_POS_MSEC))
        # The driver's buffer time when it has one, else the time since the first frame.
        pts_s = position_ms / 1000 if position_ms > 0 else (captured_ns - self._first_ns) / 1e9
        index = self._clock.count
        height, width = bgr.shape[:2]
        target = fit_within(width, height, self._config.max_frame_side)
        reduced = target != (width, height)
        if reduced:  # the same bound as files (SourceConfig.max_frame_side), before the colour copy
            bgr = cv2.resize(bgr, target, interpolation=cv2.INTER_AREA)
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return VideoFrame(self.stream_id, index, self._clock.next(pts_s), captured_ns, wall, image,
                          (width, height) if reduced else None)

    def close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()
