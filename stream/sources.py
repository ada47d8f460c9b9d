"""Video sources: files, webcams and network URLs, each giving ``VideoFrame``s with media timestamps.

``open_source(uri, stream_id, config)`` classifies the uri and returns a ``Source``; ``open()`` then
says what the source is (``SourceInfo``) or raises ``SourceOpenError`` with a typed outcome, and
``read()`` gives frames until ``None`` (the normal end of a file) or raises ``SourceReadError``.

- Files and URLs (rtsp, rtmp, http(s), hls, udp, srt) are read with PyAV, so ``pts`` comes from the
  container's presentation timestamps (corrected like FFmpeg's best-effort timestamp where a
  container's pts are out of order). Bad packets are skipped and counted; at the end of a file
  ``source.damage`` says whether it was truncated or corrupt.
- Webcams (an index such as ``"0"`` or ``/dev/videoN``) are read with OpenCV's V4L2 backend.

No source raises anything but ``SourceError`` from ``open()``/``read()``: odd media must give its
typed outcome, never crash the grabber thread.
"""

from __future__ import annotations

import collections
import enum
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import av
import numpy as np

from affectstream.errors import (
    ConfigError,
    PipelineError,
    SourceOpenError,
    SourceOutcome,
    SourceReadError,
)
from affectstream.stream.frames import VideoFrame

if TYPE_CHECKING:
    import av.container
    import av.stream
    import av.video.frame

log = logging.getLogger(__name__)

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "srt://", "tcp://")
# A file that ends this many frame intervals (or this share of its stated length) early is truncated.
_TRUNCATION_INTERVALS = 2.0
_TRUNCATION_SHARE = 0.02
_MAX_CONSECUTIVE_DEMUX_ERRORS = 3  # then the rest of a file is unreadable
_FALLBACK_FPS = 25.0  # spacing of invented timestamps when a stream has neither pts nor a frame rate


class SourceKind(str, enum.Enum):
    FILE = "file"
    WEBCAM = "webcam"
    URL = "url"


@dataclass(frozen=True)
class SourceConfig:
    """How sources open, time out and reconnect (the grabber reads the reconnect settings)."""

    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 8.0
    reconnect_factor: float = 2.0
    max_reconnect_attempts: int | None = None  # None: a live source retries forever
    rtsp_transport: str = "tcp"  # "tcp" survives lossy networks and NAT; "udp" has less latency
    max_plausible_fps: float = 240.0  # a header claiming more than this is treated as absent
    live_probe_s: float = 1.0  # how much of a live stream FFmpeg may analyse before the first frame

    def __post_init__(self) -> None:
        for name in ("open_timeout_s", "read_timeout_s", "reconnect_initial_s", "reconnect_max_s",
                     "max_plausible_fps", "live_probe_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"SourceConfig.{name} must be a positive number of seconds, got {value!r}")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ConfigError(
                f"SourceConfig.reconnect_max_s ({self.reconnect_max_s}) must be at least "
                f"reconnect_initial_s ({self.reconnect_initial_s})"
            )
        if not isinstance(self.reconnect_factor, (int, float)) or self.reconnect_factor < 1:
            raise ConfigError(f"SourceConfig.reconnect_factor must be >= 1, got {self.reconnect_factor!r}")
        attempts = self.max_reconnect_attempts
        if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0):
            raise ConfigError(
                f"SourceConfig.max_reconnect_attempts must be a non-negative integer or None (forever), "
                f"got {attempts!r}"
            )
        if self.rtsp_transport not in ("tcp", "udp", "udp_multicast", "http", "https"):
            raise ConfigError(f"SourceConfig.rtsp_transport must be tcp, udp, udp_multicast, http or https, "
                              f"got {self.rtsp_transport!r}")

    def backoff_s(self, attempt: int) -> float:
        """Delay before reconnect ``attempt`` (1-based): exponential, capped at ``reconnect_max_s``."""
        delay = self.reconnect_initial_s * self.reconnect_factor ** max(0, attempt - 1)
        return float(min(delay, self.reconnect_max_s))


@dataclass(frozen=True)
class SourceInfo:
    """What an opened source is."""

    uri: str
    kind: SourceKind
    is_live: bool
    width: int
    height: int
    nominal_fps: float | None  # None when the header has none, 0, or an absurd rate
    duration_s: float | None  # None when unknown (live sources, some containers)
    codec: str

    def describe(self) -> str:
        fps = f"{self.nominal_fps:g} fps" if self.nominal_fps else "fps unknown"
        return f"{self.kind.value} {self.width}x{self.height} {self.codec}, {fps}"


@dataclass(frozen=True)
class SourceDamage:
    """What went wrong while reading, for the report of ``affectstream analyze``."""

    frames: int = 0  # frames delivered
    decode_errors: int = 0  # packets that failed to demux or decode (skipped) or came flagged corrupt
    corrupt_frames: int = 0  # frames delivered, but flagged corrupt by the decoder (concealed damage)
    missing_pts: int = 0  # frames without a timestamp (given previous + 1/fps)
    last_pts: float | None = None
    expected_duration: float | None = None  # what the container claims, s
    expected_frames: int | None = None  # what the container claims
    truncated: bool = False  # reading stopped well before the container's stated end

    @property
    def outcome(self) -> SourceOutcome | None:
        """TRUNCATED or CORRUPT when damage was seen, else None."""
        if self.truncated:
            return SourceOutcome.TRUNCATED
        if self.decode_errors or self.corrupt_frames:
            return SourceOutcome.CORRUPT
        return None

    def describe(self) -> str:
        parts = [f"{self.frames} frames read"]
        if self.last_pts is not None:
            parts.append(f"up to {self.last_pts:.3f} s")
        if self.expected_duration is not None:
            parts.append(f"of {self.expected_duration:.3f} s stated")
        if self.decode_errors:
            parts.append(f"{self.decode_errors} damaged packets")
        if self.corrupt_frames:
            parts.append(f"{self.corrupt_frames} frames decoded with errors")
        if self.missing_pts:
            parts.append(f"{self.missing_pts} frames without timestamp")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Source(Protocol):
    """One video input. Not thread-safe: one grabber thread opens, reads and closes it."""

    stream_id: str
    uri: str
    is_live: bool

    @property
    def damage(self) -> SourceDamage: ...

    def open(self) -> SourceInfo: ...

    def read(self) -> VideoFrame | None: ...

    def close(self) -> None: ...


def classify_uri(uri: str) -> SourceKind:
    """Webcam for a device index or /dev/videoN, URL for a network scheme, else a file."""
    stripped = uri.strip()
    if stripped.isdigit() or stripped.startswith("/dev/video"):
        return SourceKind.WEBCAM
    if stripped.lower().startswith(URL_SCHEMES) or (stripped.lower().endswith(".m3u8") and "://" in stripped):
        return SourceKind.URL
    return SourceKind.FILE


def open_source(uri: str, stream_id: str, config: SourceConfig) -> Source:
    """The source for ``uri`` (not opened yet: call ``open()``)."""
    kind = classify_uri(uri)
    if kind is SourceKind.WEBCAM:
        return WebcamSource(uri, stream_id, config)
    if kind is SourceKind.FILE and uri.startswith("file://"):
        uri = uri[len("file://"):]
    return PyAVSource(uri, stream_id, config, kind)


class TimestampCorrector:
    """FFmpeg's best-effort timestamp: trust pts unless they go backwards more often than dts do.

    Some streams attach pts in decode order; FFmpeg then falls back to the dts, which is what
    ffprobe reports as ``best_effort_timestamp``. AVI has no presentation times at all: what FFmpeg
    guesses as pts there (packed B-frames) can go backwards, while the dts is AVI's own frame counter,
    so ``prefer_dts`` takes the dts whenever there is one.
    """

    def __init__(self, prefer_dts: bool = False) -> None:
        self._prefer_dts = prefer_dts
        self._last_pts: int | None = None
        self._last_dts: int | None = None
        self._faulty_pts = 0
        self._faulty_dts = 0

    def correct(self, pts: int | None, dts: int | None) -> int | None:
        if dts is not None:
            if self._last_dts is not None and dts <= self._last_dts:
                self._faulty_dts += 1
            self._last_dts = dts
        if pts is not None:
            if self._last_pts is not None and pts <= self._last_pts:
                self._faulty_pts += 1
            self._last_pts = pts
        if self._prefer_dts:
            return dts
        if pts is not None and (self._faulty_pts <= self._faulty_dts or dts is None):
            return pts
        return dts


class FrameClock:
    """Media time of each frame: the container's, or previous + 1/fps when a frame has none."""

    def __init__(self, nominal_fps: float | None) -> None:
        self._step = 1.0 / (nominal_fps or _FALLBACK_FPS)
        self._first: float | None = None
        self.last: float | None = None
        self.count = 0
        self.missing = 0

    def next(self, pts_s: float | None) -> float:
        if pts_s is None:
            self.missing += 1
            pts_s = 0.0 if self.last is None else self.last + self._step
        if self._first is None:
            self._first = pts_s
        self.last = pts_s
        self.count += 1
        return pts_s

    def mean_interval(self) -> float | None:
        if self._first is None or self.last is None or self.count < 2:
            return None
        return (self.last - self._first) / (self.count - 1)


def _plausible_fps(rate: Any, limit: float) -> float | None:
    try:
        fps = float(rate) if rate is not None else 0.0
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return fps if 0 < fps <= limit else None


def _mp4_without_moov(path: Path) -> bool:
    """An ISO-BMFF file (starts with ``ftyp``) whose top level has no ``moov`` box: cut off."""
    with path.open("rb") as handle:
        size = path.stat().st_size
        offset, types = 0, list[bytes]()
        while offset + 8 <= size and len(types) < 64:
            handle.seek(offset)
            header = handle.read(16)
            box_size, box_type = int.from_bytes(header[:4], "big"), header[4:8]
            if box_size == 1 and len(header) == 16:
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:
                box_size = size - offset
            if box_size < 8:
                break
            types.append(box_type)
            offset += box_size
    return bool(types) and types[0] == b"ftyp" and b"moov" not in types


class PyAVSource:
    """A file or network stream read with PyAV (FFmpeg)."""

    def __init__(self, uri: str, stream_id: str, config: SourceConfig, kind: SourceKind = SourceKind.FILE) -> None:
        self.uri = uri
        self.stream_id = stream_id
        self.kind = kind
        self.is_live = kind is not SourceKind.FILE
        self._config = config
        self._container: av.container.InputContainer | None = None
        self._stream: av.stream.Stream | None = None
        self._packets: Any = None
        self._pending: collections.deque[av.video.frame.VideoFrame] = collections.deque()
        self._corrector = TimestampCorrector()
        self._clock = FrameClock(None)
        self._info: SourceInfo | None = None
        self._decode_errors = 0
        self._corrupt_frames = 0
        self._truncated = False
        self._expected_frames: int | None = None
        self._ended = False

    @property
    def damage(self) -> SourceDamage:
        return SourceDamage(
            frames=self._clock.count,
            decode_errors=self._decode_errors,
            corrupt_frames=self._corrupt_frames,
            missing_pts=self._clock.missing,
            last_pts=self._clock.last,
            expected_duration=self._info.duration_s if self._info else None,
            expected_frames=self._expected_frames,
            truncated=self._truncated,
        )

    # -- open ------------------------------------------------------------------------------------

    def open(self) -> SourceInfo:
        if self.kind is SourceKind.FILE:
            self._check_file()
        options: dict[str, str] = {}
        if self.is_live:
            # FFmpeg probes 5 s of a stream by default, and those frames then arrive 5 s late.
            options["analyzeduration"] = str(int(self._config.live_probe_s * 1_000_000))
        if self.uri.lower().startswith("rtsp"):
            options["rtsp_transport"] = self._config.rtsp_transport
        started = time.monotonic()
        try:
            container = av.open(self.uri, timeout=(self._config.open_timeout_s, self._config.read_timeout_s),
                                options=options)
        except Exception as exc:  # every FFmpeg failure, mapped to a typed outcome
            # FFmpeg's demuxers often report an interrupted open as invalid data: the clock says why.
            timed_out = self.is_live and time.monotonic() - started >= 0.9 * self._config.open_timeout_s
            raise self._open_error(exc, timed_out) from exc
        try:
            self._info = self._describe(container)
        except SourceOpenError:
            container.close()
            raise
        self._container = container
        self._packets = container.demux(self._stream)
        log.info("opened %s (%s): %s", self.stream_id, self.uri, self._info.describe())
        return self._info

    def _check_file(self) -> None:
        path = Path(self.uri)
        if not path.exists():
            raise SourceOpenError(f"{self.uri}: no such file; check the path", SourceOutcome.MISSING, self.uri)
        if path.is_dir():
            raise SourceOpenError(f"{self.uri} is a directory; pass a video file", SourceOutcome.NOT_VIDEO, self.uri)
        if path.stat().st_size == 0:
            raise SourceOpenError(f"{self.uri} is empty (0 bytes); was the download or copy complete?",
                                  SourceOutcome.EMPTY, self.uri)
        if not os.access(path, os.R_OK):
            raise SourceOpenError(f"{self.uri} is not readable; check its permissions", SourceOutcome.MISSING,
                                  self.uri)

    def _open_error(self, exc: Exception, timed_out: bool) -> SourceOpenError:
        what = f"{self.uri}: {type(exc).__name__}: {exc}"
        if timed_out or isinstance(exc, (av.error.ExitError, TimeoutError)):
            return SourceOpenError(f"{what}; no answer within {self._config.open_timeout_s:g} s",
                                   SourceOutcome.OPEN_TIMEOUT, self.uri)
        if isinstance(exc, (av.error.HTTPNotFoundError, FileNotFoundError)):
            return SourceOpenError(f"{what}; check the address", SourceOutcome.MISSING, self.uri)
        if self.kind is SourceKind.FILE:
            if _mp4_without_moov(Path(self.uri)):
                return SourceOpenError(f"{self.uri} is cut off: its index (moov box) is missing; the file is "
                                       "incomplete (re-download it, or repair it with untrunc)",
                                       SourceOutcome.TRUNCATED, self.uri)
            return SourceOpenError(f"{what}; this is not a video FFmpeg can read", SourceOutcome.NOT_VIDEO, self.uri)
        if isinstance(exc, av.error.InvalidDataError):
            return SourceOpenError(f"{what}; the stream is not a video FFmpeg can read", SourceOutcome.NOT_VIDEO,
                                   self.uri)
        return SourceOpenError(f"{what}; cannot connect (is the server up and the address right?)",
                               SourceOutcome.CONNECTION_LOST, self.uri)

    def _describe(self, container: av.container.InputContainer) -> SourceInfo:
        if not container.streams.video:
            kinds = ", ".join(stream.type for stream in container.streams) or "none"
            raise SourceOpenError(f"{self.uri} has no video track (tracks: {kinds}); pass a video",
                                  SourceOutcome.NO_VIDEO_TRACK, self.uri)
        stream = container.streams.video[0]
        self._stream = stream
        fps = _plausible_fps(stream.average_rate or stream.guessed_rate, self._config.max_plausible_fps)
        self._clock = FrameClock(fps)
        self._corrector = TimestampCorrector(prefer_dts="avi" in container.format.name.split(","))
        duration = None
        if not self.is_live:
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            elif container.duration and container.duration > 0:
                duration = container.duration / 1_000_000
            self._expected_frames = int(stream.frames) if stream.frames and stream.frames > 0 else None
        context = stream.codec_context
        return SourceInfo(uri=self.uri, kind=self.kind, is_live=self.is_live, width=int(context.width),
                          height=int(context.height), nominal_fps=fps, duration_s=duration,
                          codec=str(context.name))

    # -- read ------------------------------------------------------------------------------------

    def read(self) -> VideoFrame | None:
        if self._container is None:
            raise PipelineError(f"read() on {self.uri} before open(): open the source first")
        if self._ended:
            return None
        try:
            decoded = self._next_decoded()
            if decoded is None:
                self._end()
                return None
            return self._to_video_frame(decoded)
        except (SourceReadError, PipelineError):
            raise
        except Exception as exc:  # whatever FFmpeg or numpy throws must not escape as something else
            log.debug("unexpected error reading %s", self.uri, exc_info=True)
            raise SourceReadError(f"{self.uri}: cannot read on ({type(exc).__name__}: {exc})",
                                  SourceOutcome.CORRUPT, self.uri) from exc

    def _next_decoded(self) -> av.video.frame.VideoFrame | None:
        while not self._pending:
            packet = self._next_packet()
            if packet is None:
                return None
            if packet.is_corrupt:
                self._decode_errors += 1  # the demuxer saw damage; the decoder may still conceal it
            try:
                self._pending.extend(packet.decode())
            except av.error.FFmpegError as exc:
                self._decode_errors += 1  # skip the bad packet; the decoder resyncs at the next keyframe
                log.debug("%s: undecodable packet skipped: %s", self.uri, exc)
        return self._pending.popleft()

    def _next_packet(self) -> Any:
        consecutive_errors = 0
        while True:
            try:
                return next(self._packets)
            except StopIteration:
                return None
            except Exception as exc:
                if self.is_live:
                    raise self._live_read_error(exc) from exc
                if not isinstance(exc, (av.error.FFmpegError, OSError)):
                    raise
                self._decode_errors += 1
                consecutive_errors += 1
                log.debug("%s: demuxing failed: %s", self.uri, exc)
                if consecutive_errors >= _MAX_CONSECUTIVE_DEMUX_ERRORS:
                    return None
                # A failed generator is finished; a new one resumes at the current file position.
                assert self._container is not None and self._stream is not None
                self._packets = self._container.demux(self._stream)

    def _live_read_error(self, exc: Exception) -> SourceReadError:
        what = f"{self.uri}: {type(exc).__name__}: {exc}"
        if isinstance(exc, (av.error.ExitError, TimeoutError)):
            return SourceReadError(f"{what}; no data for {self._config.read_timeout_s:g} s",
                                   SourceOutcome.READ_TIMEOUT, self.uri)
        if isinstance(exc, (EOFError, OSError, av.error.FFmpegError)):
            return SourceReadError(f"{what}; the connection was lost", SourceOutcome.CONNECTION_LOST, self.uri)
        return SourceReadError(f"{what}; cannot read on", SourceOutcome.CORRUPT, self.uri)

    def _end(self) -> None:
        self._ended = True
        if self.is_live:
            raise SourceReadError(f"{self.uri}: the stream ended (the server closed it)",
                                  SourceOutcome.CONNECTION_LOST, self.uri)
        self._truncated = self._looks_truncated()
        log.info("%s ended: %s", self.stream_id, self.damage.describe())

    def _looks_truncated(self) -> bool:
        delivered = self._clock.count + self._decode_errors
        if self._expected_frames is not None and delivered < self._expected_frames - max(
                1, int(self._expected_frames * _TRUNCATION_SHARE)):
            return True
        info, last = self._info, self._clock.last
        if info is None or info.duration_s is None or last is None:
            return False
        interval = 1 / info.nominal_fps if info.nominal_fps else (self._clock.mean_interval() or 0.0)
        start = self._start_s()
        expected_end = start + info.duration_s
        tolerance = max(_TRUNCATION_INTERVALS * interval, _TRUNCATION_SHARE * info.duration_s)
        return last + interval < expected_end - tolerance

    def _start_s(self) -> float:
        stream = self._stream
        if stream is not None and stream.start_time is not None and stream.time_base:
            return float(stream.start_time * stream.time_base)
        return 0.0

    def _to_video_frame(self, decoded: av.video.frame.VideoFrame) -> VideoFrame:
        image = np.ascontiguousarray(decoded.to_ndarray(format="rgb24"))
        if decoded.is_corrupt:
            self._corrupt_frames += 1
        captured_ns = time.monotonic_ns()
        wall = time.time_ns() // 1_000_000
        raw = self._corrector.correct(decoded.pts, decoded.dts)
        time_base = decoded.time_base or (self._stream.time_base if self._stream is not None else None)
        pts_s = float(raw * time_base) if raw is not None and time_base else None
        index = self._clock.count
        pts = self._clock.next(pts_s)
        log.debug("%s frame %d pts=%.4f %dx%d", self.stream_id, index, pts, image.shape[1], image.shape[0])
        return VideoFrame(self.stream_id, index, pts, captured_ns, wall, image)

    def close(self) -> None:
        container, self._container = self._container, None
        self._packets = None
        self._pending.clear()
        if container is not None:
            try:
                container.close()
            except Exception:  # closing a broken stream must not hide why it broke
                log.debug("closing %s failed", self.uri, exc_info=True)


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
        if isinstance(device, str) and not Path(device).exists():
            raise SourceOpenError(f"camera {self.uri} does not exist; list cameras with `v4l2-ctl --list-devices`",
                                  SourceOutcome.DEVICE_UNAVAILABLE, self.uri)
        capture = cv2.VideoCapture(device, cv2.CAP_V4L2)
        if not capture.isOpened():
            capture.release()
            raise SourceOpenError(f"camera {self.uri} cannot be opened (absent, busy, or no permission: is the user "
                                  "in the 'video' group?)", SourceOutcome.DEVICE_UNAVAILABLE, self.uri)
        self._capture = capture
        fps = _plausible_fps(capture.get(cv2.CAP_PROP_FPS), self._config.max_plausible_fps)
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
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return VideoFrame(self.stream_id, index, self._clock.next(pts_s), captured_ns, wall, image)

    def close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()
