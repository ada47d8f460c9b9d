"""Files and network streams (rtsp, rtmp, http(s), hls, udp, srt) read with PyAV (FFmpeg).

``pts`` comes from the container's presentation timestamps (``frame_clock.TimestampCorrector``; a
clock that does not advance is respaced by ``frame_clock.FrameClock``); bad packets are skipped and
counted, and at the end of a file ``damage`` says whether it was truncated or corrupt. Frames come
out as players show them: turned by their display matrix, and reduced to
``SourceConfig.max_frame_side`` inside the conversion to RGB (docs/architecture.md, "Frame size" and
"Rotation"). Only ``SourceError`` leaves ``open()`` and ``read()``.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from affectstream.errors import PipelineError, SourceOpenError, SourceOutcome, SourceReadError
from affectstream.stream.frame_clock import FrameClock, TimestampCorrector, plausible_fps
from affectstream.stream.frames import VideoFrame, fit_within
from affectstream.stream.netloc import uri_host, uri_host_port
from affectstream.stream.sources import (
    DamageKind,
    DamageLog,
    DamageSpan,
    SourceConfig,
    SourceDamage,
    SourceInfo,
    SourceKind,
    is_live,
    is_on_demand,
)

if TYPE_CHECKING:
    import av.container
    import av.stream
    import av.video.frame

log = logging.getLogger(__name__)

# A file that ends this many frame intervals (or this share of its stated length) early is truncated.
_TRUNCATION_INTERVALS = 2.0
_TRUNCATION_SHARE = 0.02
_MAX_CONSECUTIVE_DEMUX_ERRORS = 3  # then the rest of a file is unreadable
# swscale's area averaging: every source pixel counts (no aliasing on a 4x reduction), and it is faster
# than the bilinear default (8K to 1080p: 14 vs 20 ms a frame on 2 cores).
_REDUCE_WITH = "AREA"


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


# Answers (HTTP, and RTSP's, which FFmpeg maps to the same errors) that retrying cannot change. 429
# and 5xx are not here: a busy or failing server may recover, so they reconnect like a lost one.
_DEFINITIVE_ANSWERS: tuple[tuple[type[Exception], SourceOutcome, str], ...] = (
    (av.error.HTTPNotFoundError, SourceOutcome.MISSING, "has nothing at this address (404 Not Found): check the path"),
    (av.error.HTTPUnauthorizedError, SourceOutcome.DENIED,
     "asks for a user and password (401 Unauthorized): check the user:password@ part of the URL"),
    (av.error.HTTPForbiddenError, SourceOutcome.DENIED,
     "refuses access (403 Forbidden): check the credentials and the server's access rules"),
    (av.error.HTTPBadRequestError, SourceOutcome.MISSING, "cannot serve this address (400 Bad Request): check the URL"),
    (av.error.HTTPOtherClientError, SourceOutcome.MISSING,
     "refuses this address (HTTP 4xx: gone, or not allowed): check the URL"),
)


def _no_picture_yet(container: av.container.InputContainer) -> bool:
    """FFmpeg opened a video track but has no picture size for it: none of its packets arrived."""
    video = container.streams.video
    return bool(video) and not video[0].codec_context.width


def _reason(exc: BaseException) -> str:
    """What FFmpeg or the OS said, without the exception's class or errno number (they help nobody)."""
    text = getattr(exc, "strerror", None)
    return str(text) if text else str(exc) or type(exc).__name__


def _network_open_failure(uri: str, exc: Exception) -> tuple[SourceOutcome, str]:
    """The outcome and the message of a URL that failed to open (not by timing out)."""
    where = uri_host_port(uri)
    for kind, outcome, meaning in _DEFINITIVE_ANSWERS:
        if isinstance(exc, kind):
            return outcome, f"{where} {meaning}"
    if isinstance(exc, (av.error.HTTPTooManyRequestsError, av.error.HTTPServerError)):
        return SourceOutcome.CONNECTION_LOST, f"{where} answered with an error ({_reason(exc)})"
    if isinstance(exc, av.error.InvalidDataError) and is_on_demand(uri):
        return SourceOutcome.NOT_VIDEO, (f"what {where} sent is not a video FFmpeg can read: is this the stream's "
                                         "own address, not a web page that plays it?")
    if isinstance(exc, av.error.InvalidDataError):
        # A streaming protocol's handshake that broke off: a server still starting, or another protocol
        # on this port; worth retrying, unlike a web server's page.
        scheme = uri.strip().partition("://")[0].upper()
        return SourceOutcome.CONNECTION_LOST, (f"{where} closed the connection or did not answer in {scheme}: "
                                               f"is the server up, and is this its {scheme} port?")
    if isinstance(exc, ConnectionRefusedError):
        return SourceOutcome.CONNECTION_LOST, (f"{where} refused the connection: is the camera or server running, "
                                               "and is this its port?")
    # FFmpeg reports a host name it cannot resolve as a bare I/O error: ask the resolver why.
    unresolved = _unresolved_host(uri) if isinstance(exc, OSError) and exc.errno == errno.EIO else None
    if unresolved is not None:
        return SourceOutcome.CONNECTION_LOST, unresolved
    return SourceOutcome.CONNECTION_LOST, (f"cannot connect to {where} ({_reason(exc)}): is the camera or server "
                                           "up, and is this its address?")


def _unresolved_host(uri: str) -> str | None:
    """Why the host of ``uri`` does not resolve (None: it resolves, or the URL names no host)."""
    host = uri_host(uri)
    if host is None:
        return None
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            return f"cannot resolve host {host}: the DNS gave no answer; check the network and the DNS settings"
        return f"cannot resolve host {host}: no such name; check it"
    except OSError:
        return None
    return None


def _duration_s(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    """What the media says its duration is (None: it does not say, as a live stream)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and container.duration > 0:
        return float(container.duration / 1_000_000)
    return None


def _reduced_rgb(decoded: av.video.frame.VideoFrame, max_side: int | None) -> np.ndarray:
    """The frame as RGB, its long side at most ``max_side``: reduced inside swscale's conversion, so the
    full-size RGB array of a 4K or 8K frame is never made."""
    width, height = int(decoded.width), int(decoded.height)
    target = fit_within(width, height, max_side)
    if target == (width, height):
        return decoded.to_ndarray(format="rgb24")
    return decoded.to_ndarray(width=target[0], height=target[1], format="rgb24", interpolation=_REDUCE_WITH)


def _upright_size(width: int, height: int, turns: int) -> tuple[int, int]:
    return (height, width) if turns % 2 else (width, height)


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
        self._damage_log = DamageLog()
        self._truncated = False
        self._expected_frames: int | None = None
        self._ended = False
        self._exhausted = False  # the demuxer and decoder have given everything
        self._odd_rotation_noted = False

    @property
    def damage(self) -> SourceDamage:
        return SourceDamage(
            frames=self._clock.count,
            decode_errors=self._decode_errors,
            corrupt_frames=self._corrupt_frames,
            missing_pts=self._clock.missing,
            repaired_pts=self._clock.repaired,
            last_pts=self._clock.last,
            expected_duration=self._info.duration_s if self._info else None,
            expected_frames=self._expected_frames,
            truncated=self._truncated,
            spans=self._damage_log.spans() + self._truncated_span(),
        )

    def _truncated_span(self) -> tuple[DamageSpan, ...]:
        """A truncated file: from the last frame read to the end it states, nothing."""
        if not self._truncated or self._info is None or self._info.duration_s is None:
            return ()
        start = self._clock.last or 0.0
        missing = max(0, (self._expected_frames or 0) - self._clock.count - self._decode_errors)
        return (DamageSpan(kind=DamageKind.TRUNCATED, start=start,
                           end=max(start, self._start_s() + self._info.duration_s), count=missing),)

    def _decode_error(self) -> None:
        """A packet that failed to demux or decode, or came flagged corrupt: after the last frame read."""
        self._decode_errors += 1
        self._damage_log.note(DamageKind.DECODE_ERROR, self._clock.last)

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
            # PyAV gives each of FFmpeg's two open steps (connect and handshake, then probing the first
            # packets) the open timeout, and each av_read_frame the read timeout, through its own
            # interrupt callback; nothing else can cut them short (stop() leaves a blocked open
            # behind, see stream/grabber.py).
            container = av.open(self.uri, timeout=(self._config.open_timeout_s, self._config.read_timeout_s),
                                options=options)
        except Exception as exc:  # every FFmpeg failure, mapped to a typed outcome
            raise self._open_error(exc, time.monotonic() - started) from exc
        if self._timed_out(time.monotonic() - started) and _no_picture_yet(container):
            # A server that answers and then sends nothing: FFmpeg's probe is interrupted at the open
            # timeout and the open "succeeds" with a video of 0x0. (A slow stream whose size comes with
            # its first keyframe, after a probe that ended on its own, is still opened.)
            container.close()
            raise SourceOpenError(f"{self.uri}: {uri_host_port(self.uri)} answered but sent no video within "
                                  f"{self._config.open_timeout_s:g} s (--open-timeout): is the camera streaming?",
                                  SourceOutcome.OPEN_TIMEOUT, self.uri)
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

    def _open_error(self, exc: Exception, elapsed_s: float) -> SourceOpenError:
        if self.kind is SourceKind.FILE:
            return self._file_open_error(exc)
        # FFmpeg's demuxers often report an interrupted open as invalid data: the clock says why.
        if self._timed_out(elapsed_s) or isinstance(exc, (av.error.ExitError, TimeoutError)):
            return SourceOpenError(
                f"{self.uri}: no answer from {uri_host_port(self.uri)} within {self._config.open_timeout_s:g} s "
                "(--open-timeout): is the camera or server up, and is this its address and port?",
                SourceOutcome.OPEN_TIMEOUT, self.uri)
        outcome, what = _network_open_failure(self.uri, exc)
        return SourceOpenError(f"{self.uri}: {what}", outcome, self.uri)

    def _timed_out(self, elapsed_s: float) -> bool:
        """A live open that took (about) the open timeout: PyAV's interrupt callback ended it."""
        return self.is_live and elapsed_s >= 0.9 * self._config.open_timeout_s

    def _file_open_error(self, exc: Exception) -> SourceOpenError:
        if isinstance(exc, FileNotFoundError):
            return SourceOpenError(f"{self.uri}: no such file; check the path", SourceOutcome.MISSING, self.uri)
        if _mp4_without_moov(Path(self.uri)):
            return SourceOpenError(f"{self.uri} is cut off: its index (moov box) is missing; the file is "
                                   "incomplete (re-download it, or repair it with untrunc)",
                                   SourceOutcome.TRUNCATED, self.uri)
        return SourceOpenError(f"{self.uri}: not a video FFmpeg can read ({_reason(exc)})", SourceOutcome.NOT_VIDEO,
                               self.uri)

    def _describe(self, container: av.container.InputContainer) -> SourceInfo:
        if not container.streams.video:
            kinds = ", ".join(stream.type for stream in container.streams) or "none"
            raise SourceOpenError(f"{self.uri} has no video track (tracks: {kinds}); pass a video",
                                  SourceOutcome.NO_VIDEO_TRACK, self.uri)
        stream = container.streams.video[0]
        self._stream = stream
        fps = plausible_fps(stream.average_rate or stream.guessed_rate, self._config.max_plausible_fps)
        self._corrector = TimestampCorrector(prefer_dts="avi" in container.format.name.split(","))
        duration = _duration_s(container, stream)
        self.is_live = is_live(self.uri, duration, opened=True)
        if self.is_live:
            duration = None
        else:
            self._expected_frames = int(stream.frames) if stream.frames and stream.frames > 0 else None
        self._clock = FrameClock(self._spacing_rate(fps, duration))
        context = stream.codec_context
        width, height = self._shown_size(container, int(context.width), int(context.height))
        return SourceInfo(uri=self.uri, kind=self.kind, is_live=self.is_live, width=width, height=height,
                          nominal_fps=fps, duration_s=duration, codec=str(context.name))

    def _spacing_rate(self, fps: float | None, duration: float | None) -> float | None:
        """The rate the clock spaces invented times at: a file's stated frames over its stated duration
        where it has both (its index says so even when its timestamps are the broken part: a stuck clock
        makes FFmpeg's average rate, computed from them, meaningless), else the header's rate."""
        frames = self._expected_frames
        if duration and frames and frames > 1:
            return plausible_fps(frames / duration, self._config.max_plausible_fps) or fps
        return fps

    def _shown_size(self, container: av.container.InputContainer, width: int, height: int) -> tuple[int, int]:
        """The picture size as players show it: a phone's 1920x1080 stream with a 90° display matrix is
        1080x1920.

        PyAV gives the display matrix on decoded frames only (``VideoFrame.rotation``), so a file's first
        frame is decoded here and kept for ``read()``. A live source is not read before ``open()``
        returns (its first frame may be seconds away, and a failure then is a read failure that
        reconnects): it says the coded size, and its frames are still turned upright.
        """
        if self.is_live:
            return width, height
        self._container, self._packets = container, container.demux(self._stream)
        try:
            first = self._next_decoded()
        except Exception:  # a packet that cannot be read, counted as read() counts one; it reads on after it
            self._decode_error()
            log.debug("%s: no first frame to read the display matrix from", self.uri, exc_info=True)
            return width, height
        if first is None:
            return width, height
        self._pending.appendleft(first)
        return _upright_size(int(first.width), int(first.height), self._quarter_turns(first))

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

    def seek(self, ts: float) -> None:
        """Files: the next ``read()`` starts at the keyframe at or before media time ``ts``.

        Frames after a seek are timed as the container says, from a fresh clock: where the analysis
        repaired or invented times (``damage.missing_pts``, ``repaired_pts``), or where the container
        cannot seek, the times differ from the first pass's, so a caller that needs a given frame checks
        the times it gets (stream/thumbnails.py does, and reads from the start instead).
        """
        container, stream = self._container, self._stream
        if container is None or stream is None:
            raise PipelineError(f"seek() on {self.uri} before open(): open the source first")
        if self.is_live:
            raise PipelineError(f"seek() on {self.uri}: a live source cannot seek")
        time_base = stream.time_base
        if not time_base:
            raise SourceReadError(f"{self.uri}: no time base to seek by", SourceOutcome.CORRUPT, self.uri)
        try:
            container.seek(max(0, int(ts / time_base)), stream=stream, backward=True, any_frame=False)
        except Exception as exc:  # FFmpeg cannot seek this file: say so as a read error
            raise SourceReadError(f"{self.uri}: cannot seek to {ts:.3f} s ({_reason(exc)})", SourceOutcome.CORRUPT,
                                  self.uri) from exc
        self._pending.clear()
        self._packets = container.demux(stream)
        self._exhausted = self._ended = False
        self._corrector = TimestampCorrector(prefer_dts=self._corrector.prefers_dts)
        self._clock = FrameClock(1.0 / self._clock.step)

    def _next_decoded(self) -> av.video.frame.VideoFrame | None:
        while not self._pending:
            # Once exhausted, stay so: a fresh demuxer at the end of a file would flush the decoder again.
            packet = None if self._exhausted else self._next_packet()
            if packet is None:
                self._exhausted = True
                return None
            if packet.is_corrupt:
                self._decode_error()  # the demuxer saw damage; the decoder may still conceal it
            try:
                self._pending.extend(packet.decode())
            except av.error.FFmpegError as exc:
                self._decode_error()  # skip the bad packet; the decoder resyncs at the next keyframe
                log.debug("%s: undecodable packet skipped: %s", self.uri, exc)
        return self._pending.popleft()

    def _next_packet(self) -> Any:
        consecutive_errors = 0
        while True:
            waited_from = time.monotonic()
            try:
                packet = next(self._packets)
            except StopIteration:
                return None
            except Exception as exc:
                if self.is_live:
                    raise self._live_read_error(exc) from exc
                if not isinstance(exc, (av.error.FFmpegError, OSError)):
                    raise
                self._decode_error()
                consecutive_errors += 1
                log.debug("%s: demuxing failed: %s", self.uri, exc)
                if consecutive_errors >= _MAX_CONSECUTIVE_DEMUX_ERRORS:
                    return None
                # A failed generator is finished; a new one resumes at the current file position.
                assert self._container is not None and self._stream is not None
                self._packets = self._container.demux(self._stream)
                continue
            if self.is_live and time.monotonic() - waited_from >= self._config.read_timeout_s:
                # PyAV's read timeout fired, but FFmpeg's parser first hands out the frame it held back
                # and only the next read fails, a whole read timeout later: the stall counts from here.
                raise self._stalled()
            return packet

    def _live_read_error(self, exc: Exception) -> SourceReadError:
        if isinstance(exc, (av.error.ExitError, TimeoutError)):  # PyAV's read timeout cut the read short
            return self._stalled()
        if isinstance(exc, EOFError):
            return SourceReadError(f"{self.uri}: {uri_host_port(self.uri)} closed the stream",
                                   SourceOutcome.CONNECTION_LOST, self.uri)
        if isinstance(exc, (OSError, av.error.FFmpegError)):
            return SourceReadError(f"{self.uri}: the connection to {uri_host_port(self.uri)} was lost "
                                   f"({_reason(exc)})", SourceOutcome.CONNECTION_LOST, self.uri)
        return SourceReadError(f"{self.uri}: cannot read on ({_reason(exc)})", SourceOutcome.CORRUPT, self.uri)

    def _stalled(self) -> SourceReadError:
        return SourceReadError(f"{self.uri}: no frame for {self._config.read_timeout_s:g} s (--read-timeout): "
                               f"{uri_host_port(self.uri)} stopped sending", SourceOutcome.READ_TIMEOUT, self.uri)

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
        turns = self._quarter_turns(decoded)
        image = np.ascontiguousarray(np.rot90(_reduced_rgb(decoded, self._config.max_frame_side), turns))
        shown = _upright_size(int(decoded.width), int(decoded.height), turns)
        captured_ns = time.monotonic_ns()
        wall = time.time_ns() // 1_000_000
        raw = self._corrector.correct(decoded.pts, decoded.dts)
        time_base = decoded.time_base or (self._stream.time_base if self._stream is not None else None)
        pts_s = float(raw * time_base) if raw is not None and time_base else None
        index = self._clock.count
        repaired, missing = self._clock.repaired, self._clock.missing
        pts = self._clock.next(pts_s)
        self._note_frame_damage(decoded, pts, repaired, missing)
        if self._clock.repaired and not repaired:
            log.info("%s: frame %d has the timestamp %.3f s of the frame before it (a stuck clock in the "
                     "container): frames are spaced at the frame rate until its times advance again",
                     self.stream_id, index, pts_s)
        log.debug("%s frame %d pts=%.4f %dx%d (shown %dx%d)", self.stream_id, index, pts, image.shape[1],
                  image.shape[0], *shown)
        reduced = shown != (image.shape[1], image.shape[0])
        return VideoFrame(self.stream_id, index, pts, captured_ns, wall, image, shown if reduced else None)

    def _note_frame_damage(self, decoded: av.video.frame.VideoFrame, pts: float, repaired: int, missing: int) -> None:
        """Count and place what was wrong with this frame (``repaired``, ``missing``: the clock's counts before it)."""
        if decoded.is_corrupt:
            self._corrupt_frames += 1
            self._damage_log.note(DamageKind.CORRUPT_FRAME, pts)
        if self._clock.missing > missing:
            self._damage_log.note(DamageKind.MISSING_PTS, pts)
        elif self._clock.repaired > repaired:
            self._damage_log.note(DamageKind.REPAIRED_PTS, pts)

    def _quarter_turns(self, decoded: av.video.frame.VideoFrame) -> int:
        """Counter-clockwise quarter turns that make ``decoded`` upright (its display matrix)."""
        degrees = int(decoded.rotation)
        turns = round(degrees / 90)
        if degrees != turns * 90 and not self._odd_rotation_noted:
            self._odd_rotation_noted = True
            log.warning("%s: the display matrix turns the picture by %d°, not a quarter turn; it is shown "
                        "turned by %d°", self.stream_id, degrees, turns * 90)
        return turns % 4

    def close(self) -> None:
        container, self._container = self._container, None
        self._packets = None
        self._pending.clear()
        if container is not None:
            try:
                container.close()
            except Exception:  # closing a broken stream must not hide why it broke
                log.debug("closing %s failed", self.uri, exc_info=True)
