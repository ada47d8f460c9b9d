"""Files and network streams (rtsp, rtmp, http(s), hls, udp, srt) read with PyAV (FFmpeg).

``pts`` comes from the container's presentation timestamps (``frame_clock.TimestampCorrector``); bad
packets are skipped and counted, and at the end of a file ``damage`` says whether it was truncated or
corrupt. Only ``SourceError`` leaves ``open()`` and ``read()``.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from affectstream.errors import PipelineError, SourceOpenError, SourceOutcome, SourceReadError
from affectstream.stream.frame_clock import FrameClock, TimestampCorrector, plausible_fps
from affectstream.stream.frames import VideoFrame
from affectstream.stream.sources import SourceConfig, SourceDamage, SourceInfo, SourceKind, is_live

if TYPE_CHECKING:
    import av.container
    import av.stream
    import av.video.frame

log = logging.getLogger(__name__)

# A file that ends this many frame intervals (or this share of its stated length) early is truncated.
_TRUNCATION_INTERVALS = 2.0
_TRUNCATION_SHARE = 0.02
_MAX_CONSECUTIVE_DEMUX_ERRORS = 3  # then the rest of a file is unreadable


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


def local_file_problem(uri: str) -> SourceOpenError | None:
    """Why a local file cannot be a video source before anything opens it (None: it may be one)."""
    path = Path(uri)
    if not path.exists():
        return SourceOpenError(f"{uri}: no such file; check the path", SourceOutcome.MISSING, uri)
    if path.is_dir():
        return SourceOpenError(f"{uri} is a directory; pass a video file", SourceOutcome.NOT_VIDEO, uri)
    if path.stat().st_size == 0:
        return SourceOpenError(f"{uri} is empty (0 bytes); was the download or copy complete?",
                               SourceOutcome.EMPTY, uri)
    if not os.access(path, os.R_OK):
        return SourceOpenError(f"{uri} is not readable; check its permissions", SourceOutcome.MISSING, uri)
    return None


def _duration_s(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    """What the media says its duration is (None: it does not say, as a live stream)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and container.duration > 0:
        return float(container.duration / 1_000_000)
    return None


class PyAVSource:
    """A file or network stream read with PyAV (FFmpeg)."""

    def __init__(self, uri: str, stream_id: str, config: SourceConfig, kind: SourceKind = SourceKind.FILE) -> None:
        self.uri = uri
        self.stream_id = stream_id
        self.kind = kind
        self.is_live = is_live(uri)  # until open(): then what the media says of itself decides
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
        problem = local_file_problem(self.uri)
        if problem is not None:
            raise problem

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
        fps = plausible_fps(stream.average_rate or stream.guessed_rate, self._config.max_plausible_fps)
        self._clock = FrameClock(fps)
        self._corrector = TimestampCorrector(prefer_dts="avi" in container.format.name.split(","))
        duration = _duration_s(container, stream)
        self.is_live = is_live(self.uri, duration, opened=True)
        if self.is_live:
            duration = None
        else:
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
