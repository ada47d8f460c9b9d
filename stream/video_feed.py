"""Each stream's video for browsers: VP8 for WebRTC viewers, JPEG for MJPEG viewers (issue 13).

Data flow, per stream::

    pipeline pump thread                     server's asyncio loop (+ one encode thread per stream)
    ───────────────────                      ─────────────────────────────────────────────────────
    VideoHub.offer(frame)                    VP8 task (runs while ≥ 1 VP8 viewer)   ─► packet slot ─► viewers
      └ StreamVideo.offer: FramePacer ─► frame slot                                   (newest only,  (own cursor
        (media time, ≤ max_fps)         (newest only)                                  one encode)    each)
                                                      JPEG task (runs while ≥ 1 MJPEG viewer) ─► jpeg slot ─► viewers

Rules this shape keeps:

- The pipeline thread only paces (pure arithmetic on media time) and stores a reference to the frame in
  a ``LatestSlot``: no copy (a ``VideoFrame`` is immutable and owns its image), no resize, no encode, no
  wait on anybody. It wakes the loop (``call_soon_threadsafe``) only when an encoder task is waiting,
  at most once per pending wake.
- Every buffer between the pipeline and a viewer is a latest-value slot: the frame slot, and one
  output slot per kind. Memory per stream is one frame plus one VP8 packet plus one JPEG, whatever the
  number of viewers and however slow they are. A viewer is a cursor (the last version and packet
  index it took), nothing else, so one that stalls or vanishes holds nothing and delays nobody.
- One encode per stream and kind, whatever the number of viewers; none when nobody watches: an
  encoder task starts with the first viewer of its kind and ends ``encoder_idle_s`` after the last one
  left (the VP8 context is then released). Encodes (resize with INTER_AREA to ``scaled_size``, VP8 or
  JPEG) run on a single-thread executor of their stream, so they stay ordered and the loop stays free.
- VP8 needs every frame since the last keyframe. Keyframes come every ``keyframe_interval_s`` of media
  time, and on request (``request_keyframe``: a viewer joined or fell behind), at most one per
  ``min_keyframe_gap_s`` of wall time. A VP8 viewer that missed a packet (it was slow: the slot moved
  on twice) never gets a P-frame that refers to one it lacks: it skips to the next keyframe and asks
  for one. JPEGs are independent: a slow MJPEG viewer simply gets the newest.
- Time: an ``EncodedVideo`` carries its frame's media time (``ts``, seconds) and the same in a 90 kHz
  clock (``pts``), which ``to_av_packet`` hands to aiortc as the RTP timestamp.

Threads: ``VideoHub.offer``/``StreamVideo.offer``, ``end`` and ``request_keyframe`` may be called from
any thread. ``watch``, viewers' ``next`` and the encoder tasks belong to the loop the hub is bound to
(``VideoHub.bind``, or the running loop at the first ``watch``).
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import enum
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from affectstream.errors import ConfigError
from affectstream.stream.frames import VideoFrame

if TYPE_CHECKING:
    import av
    from av.video.codeccontext import VideoCodecContext

log = logging.getLogger(__name__)

T = TypeVar("T")
CLOCK_RATE = 90_000  # RTP's video clock: EncodedVideo.pts ticks per second
TIME_BASE = Fraction(1, CLOCK_RATE)
PACER_TOLERANCE = 0.25  # of the output interval: how early (jitter) a frame may be and still be taken


class VideoKind(str, enum.Enum):
    """What a viewer receives: VP8 packets (WebRTC) or JPEG pictures (MJPEG)."""

    VP8 = "vp8"
    JPEG = "jpeg"


# -- settings and pure rules -------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoSettings:
    """How browsers get a stream's video; invalid values raise ConfigError at construction."""

    max_lines: int = 720  # output height at most this (never enlarged; even)
    max_fps: float = 15.0  # of media time
    keyframe_interval_s: float = 2.0  # of media time between periodic keyframes
    bitrate: int = 1_500_000  # VP8 constant bitrate, bits/s
    jpeg_quality: int = 80
    min_keyframe_gap_s: float = 0.5  # wall time: requested keyframes at most ~2/s
    encoder_idle_s: float = 2.0  # an encoder task with no viewers ends after this long

    def __post_init__(self) -> None:
        _check_int("max_lines", self.max_lines, 16, 4320, "output lines (height), e.g. 720")
        _check_number("max_fps", self.max_fps, 0.1, 120.0, "frames per second of media time, e.g. 15")
        _check_number("keyframe_interval_s", self.keyframe_interval_s, 0.1, 600.0, "seconds, e.g. 2")
        _check_int("bitrate", self.bitrate, 50_000, 50_000_000, "bits per second, e.g. 1500000")
        _check_int("jpeg_quality", self.jpeg_quality, 1, 100, "JPEG quality, e.g. 80")
        _check_number("min_keyframe_gap_s", self.min_keyframe_gap_s, 0.0, 60.0, "seconds, e.g. 0.5")
        _check_number("encoder_idle_s", self.encoder_idle_s, 0.0, 3600.0, "seconds, e.g. 2")


def _check_int(name: str, value: object, low: int, high: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"video setting {name} must be an integer from {low} to {high} ({what}), got {value!r}")


def _check_number(name: str, value: object, low: float, high: float, what: str) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and low <= float(value) <= high
    if not ok:
        raise ConfigError(f"video setting {name} must be a number from {low:g} to {high:g} ({what}), got {value!r}")


def scaled_size(width: int, height: int, max_lines: int) -> tuple[int, int]:
    """The (width, height) browsers get: height at most ``max_lines`` (a portrait frame too: its
    height is what a tile shows), the aspect kept, never enlarged, both even (VP8's 4:2:0) and at least 2."""
    if width < 1 or height < 1:
        raise ValueError(f"a frame has no pixels: {width}x{height}")
    if height > max_lines:
        width, height = round(width * max_lines / height), max_lines
    return max(2, width - width % 2), max(2, height - height % 2)


class FramePacer:
    """Takes at most ``max_fps`` frames per second of media time. Pure.

    A schedule of slots ``1/max_fps`` apart: a frame is taken when its pts is no earlier than a quarter
    interval (``PACER_TOLERANCE``) before the next slot (and at least half an interval after the last
    frame taken), so that timestamp jitter does not turn 30 fps into 10; the schedule then moves on by
    one interval. Over any stretch no more than ``max_fps`` frames per second are taken (+1 at the
    edge). The first frame, one after a gap of more than a slot (no burst to catch up) and one whose
    pts went backwards (a new stream, a reconnect) are taken and restart the schedule from there.
    """

    def __init__(self, max_fps: float) -> None:
        self.interval = 1.0 / max_fps
        self._tolerance = PACER_TOLERANCE * self.interval
        self._last: float | None = None
        self._due = 0.0
        self.taken = 0
        self.skipped = 0

    def offer(self, pts: float) -> bool:
        last, due, interval = self._last, self._due, self.interval
        if last is None or pts < last or pts >= due + interval:  # the first, a new stream, after a gap
            self._due = pts + interval
        elif pts >= due - self._tolerance and pts - last >= interval / 2:
            self._due = due + interval
        else:
            self.skipped += 1
            return False
        self._last = pts
        self.taken += 1
        return True


class KeyframePolicy:
    """Decides which frame is encoded as a keyframe. Pure (wall time ``now`` is passed in).

    A keyframe: the first frame (of a new encoder context), one whose media time went backwards, one
    ``interval_s`` or more of media time after the last keyframe, and, when one was requested, the next
    frame at least ``min_gap_s`` of wall time after the last keyframe (requests are rate-limited).
    """

    def __init__(self, interval_s: float, min_gap_s: float) -> None:
        self.interval_s = interval_s
        self.min_gap_s = min_gap_s
        self.requested = False
        self._key_ts: float | None = None
        self._key_at: float | None = None

    def request(self) -> None:
        self.requested = True

    def reset(self) -> None:
        """A new encoder context: its first frame is a keyframe."""
        self._key_ts = None

    def wants(self, ts: float, now: float) -> bool:
        key_ts = self._key_ts
        if key_ts is None or ts < key_ts or ts - key_ts >= self.interval_s - 1e-6:
            return True
        return self.requested and (self._key_at is None or now - self._key_at >= self.min_gap_s)

    def encoded(self, ts: float, now: float, keyframe: bool) -> None:
        if keyframe:
            self._key_ts, self._key_at = ts, now
            self.requested = False


# -- latest-value slot ---------------------------------------------------------------------------------


class LatestSlot(Generic[T]):
    """The newest value, with a version that counts puts. ``put`` from any thread never blocks (a short
    lock) and overwrites; ``wait_newer`` serves asyncio consumers on the one loop it is bound to."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._lock = threading.Lock()
        self._loop = loop
        self._value: T | None = None
        self._version = 0
        self._taken = True  # nothing unread yet
        self._closed = False
        self._waiters: list[asyncio.Future[None]] = []
        self._wake_pending = False
        self.overwritten = 0  # values replaced before anybody got them

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._loop is not None and self._loop is not loop:
                raise RuntimeError("this slot is bound to another event loop")
            self._loop = loop

    @property
    def version(self) -> int:
        return self._version

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, value: T) -> int:
        """Store ``value`` (ignored once closed); returns the slot's version."""
        with self._lock:
            if self._closed:
                return self._version
            if not self._taken:
                self.overwritten += 1
            self._value, self._taken = value, False
            self._version += 1
            version = self._version
            loop = self._wake_loop()
        self._send_wake(loop)
        return version

    def get(self) -> tuple[int, T | None]:
        """(version, value): (0, None) before the first put."""
        with self._lock:
            self._taken = True
            return self._version, self._value

    def close(self) -> None:
        """No more values: waiters (and later calls of ``wait_newer``) get None."""
        with self._lock:
            self._closed = True
            loop = self._wake_loop()
        self._send_wake(loop)

    async def wait_newer(self, version: int, timeout: float | None = None) -> tuple[int, T] | None:
        """(version, value) as soon as the slot's version is above ``version``; None once closed.
        Raises TimeoutError after ``timeout`` seconds (None: no limit)."""
        loop = asyncio.get_running_loop()
        self.bind(loop)
        async with asyncio.timeout(timeout):
            while True:
                with self._lock:
                    if self._closed:
                        return None
                    if self._version > version and self._value is not None:
                        self._taken = True
                        return self._version, self._value
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    with self._lock:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)

    def _wake_loop(self) -> asyncio.AbstractEventLoop | None:
        # under the lock: the loop to wake, when someone waits and no wake is on its way already
        if not self._waiters or self._wake_pending or self._loop is None:
            return None
        self._wake_pending = True
        return self._loop

    def _send_wake(self, loop: asyncio.AbstractEventLoop | None) -> None:
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: nobody can be waiting any more
            with self._lock:
                self._wake_pending = False

    def _wake(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
            self._wake_pending = False
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


# -- encoded records -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncodedVideo:
    """One VP8 frame of one stream, as every WebRTC viewer of it gets it."""

    data: bytes  # the VP8 frame (one libvpx packet)
    keyframe: bool
    ts: float  # media time of the frame, seconds (its VideoFrame.pts)
    pts: int  # the same in a 90 kHz clock: round(ts * 90000), the RTP timestamp
    index: int  # 0, 1, 2, ... per stream: consecutive packets have consecutive indexes
    source_size: tuple[int, int]  # (w, h) of the pixels estimates' boxes are in
    size: tuple[int, int]  # (w, h) of the encoded picture
    wall_ms: int = 0  # when the pipeline held the frame (VideoFrame.wall_ms): the video's delay behind its source


@dataclass(frozen=True, slots=True)
class EncodedJpeg:
    """One JPEG picture of one stream, as every MJPEG viewer of it gets it."""

    data: bytes
    ts: float
    index: int
    source_size: tuple[int, int]
    size: tuple[int, int]


def to_av_packet(encoded: EncodedVideo) -> av.Packet:
    """An av.Packet aiortc's VP8 sender can pack (``Vp8Encoder.pack``): pts in 1/90000 s."""
    import av

    packet = av.Packet(encoded.data)
    packet.pts = encoded.pts
    packet.time_base = TIME_BASE
    packet.is_keyframe = encoded.keyframe
    return packet


def source_size_of(frame: VideoFrame) -> tuple[int, int]:
    return frame.source_size or (frame.width, frame.height)


# -- encoding (the stream's encode thread) -------------------------------------------------------------


def picture_for(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` at ``size`` (w, h), contiguous: cropped by the odd pixel, otherwise INTER_AREA."""
    from affectstream.stream.recording import fit_even

    return np.ascontiguousarray(fit_even(image, size))


def encode_jpeg(picture_rgb: np.ndarray, quality: int) -> bytes:
    import cv2

    bgr = cv2.cvtColor(picture_rgb, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return data.tobytes()


def _vpx_threads(pixels: int) -> int:
    # as aiortc's Vp8Encoder: threads pay off from above VGA only
    cpus = os.cpu_count() or 1
    if pixels > 1280 * 960 and cpus >= 6:
        return 3
    return 2 if pixels > 640 * 480 and cpus >= 3 else 1


class Vp8Codec:
    """A libvpx VP8 encoder with WebRTC's realtime settings (as aiortc's own ``Vp8Encoder``), keyframes
    only when asked for (or on a new context). Used from one thread at a time."""

    def __init__(self, bitrate: int) -> None:
        self.bitrate = bitrate
        self._context: VideoCodecContext | None = None
        self._last_pts = -1

    def encode(self, picture_rgb: np.ndarray, pts: int, keyframe: bool) -> tuple[bytes, bool]:
        """(VP8 frame, is a keyframe) for an RGB picture with even sides; pts in 1/90000 s."""
        import av

        height, width = picture_rgb.shape[:2]
        context = self._context
        if context is None or (context.width, context.height) != (width, height) or pts <= self._last_pts:
            context = self._context = self._open(width, height)
        self._last_pts = pts
        frame = av.VideoFrame.from_ndarray(picture_rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = pts, TIME_BASE
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        packets = context.encode(frame)
        return b"".join(bytes(packet) for packet in packets), any(packet.is_keyframe for packet in packets)

    def reset(self) -> None:
        self._context = None
        self._last_pts = -1

    def _open(self, width: int, height: int) -> VideoCodecContext:
        import av

        context = av.CodecContext.create("libvpx", "w")
        context.width, context.height = width, height
        context.pix_fmt = "yuv420p"
        context.time_base = TIME_BASE
        context.bit_rate = self.bitrate
        context.gop_size = 100_000  # no keyframes of its own: we force them
        context.qmin, context.qmax = 2, 56
        rate = str(self.bitrate)
        context.options = {
            "bufsize": rate, "minrate": rate, "maxrate": rate,  # min = max = bit_rate: CBR
            "deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0",
            "noise-sensitivity": "4", "overshoot-pct": "15", "undershoot-pct": "100",
            "partitions": "0", "static-thresh": "1",
        }
        context.thread_count = _vpx_threads(width * height)
        return context


class _Pictures:
    """The resized picture of the newest frame, shared by the VP8 and JPEG encodes of a stream (both run
    on its one encode thread)."""

    def __init__(self) -> None:
        self._key: tuple[int, tuple[int, int]] | None = None
        self._picture: np.ndarray | None = None

    def get(self, version: int, frame: VideoFrame, size: tuple[int, int]) -> np.ndarray:
        if self._key != (version, size) or self._picture is None:
            self._picture, self._key = picture_for(frame.image, size), (version, size)
        return self._picture


# -- viewers ---------------------------------------------------------------------------------------------


class _Channel(Generic[T]):
    """One kind of output of one stream (loop thread): its viewers, encoder task and output slot."""

    def __init__(self, kind: VideoKind) -> None:
        self.kind = kind
        self.slot: LatestSlot[T] = LatestSlot()
        self.viewers = 0
        self.task: asyncio.Task[None] | None = None
        self.fresh_from = 0  # output slot version when the running task started: older output is stale
        self.encoded = 0
        self.bytes = 0
        self.skipped = 0  # packets viewers saw and did not get (VP8: waiting for a keyframe; JPEG: missed)
        self.resyncs = 0  # VP8: times a viewer fell behind and had to wait for a keyframe
        self.errors = 0


class Viewer(abc.ABC, Generic[T]):
    """One viewer's cursor on one stream's output. ``close()`` (or leaving ``with``) unregisters it;
    closing twice is harmless. ``next()`` returns None once the stream ended or the viewer closed."""

    def __init__(self, video: StreamVideo, channel: _Channel[T]) -> None:
        self._video = video
        self._channel = channel
        self._version = channel.fresh_from
        self._index: int | None = None  # index of the last output delivered
        self.closed = False
        self.delivered = 0

    @property
    def kind(self) -> VideoKind:
        return self._channel.kind

    @property
    def stream_id(self) -> str:
        return self._video.stream_id

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._channel.viewers -= 1

    def __enter__(self) -> Viewer[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> Viewer[T]:
        return self

    async def __anext__(self) -> T:
        item = await self.next()
        if item is None:
            raise StopAsyncIteration
        return item

    async def next(self, timeout: float | None = None) -> T | None:
        """The next output for this viewer (see the subclass); TimeoutError after ``timeout`` s."""
        if self.closed:
            return None
        async with asyncio.timeout(timeout):
            while True:
                got = await self._channel.slot.wait_newer(self._version)
                if got is None or self.closed:
                    return None
                self._version, item = got
                if self._accept(item):
                    self.delivered += 1
                    return item

    @abc.abstractmethod
    def _accept(self, item: T) -> bool:
        """Whether this viewer takes ``item`` (its kind's rule: VP8 keeps decodable chains, JPEG any)."""


class PacketViewer(Viewer[EncodedVideo]):
    """A WebRTC viewer: VP8 packets in order; after a gap (it missed one), nothing until a keyframe."""

    def __init__(self, video: StreamVideo, channel: _Channel[EncodedVideo]) -> None:
        super().__init__(video, channel)
        self.synced = False  # the decoder behind this viewer has every packet since a keyframe

    def _accept(self, item: EncodedVideo) -> bool:
        follows = self._index is not None and item.index == self._index + 1
        if item.keyframe or (self.synced and follows):
            self.synced, self._index = True, item.index
            return True
        if self.synced:
            self._channel.resyncs += 1
        self.synced = False
        self._channel.skipped += 1
        self._video.request_keyframe()
        return False


class JpegViewer(Viewer[EncodedJpeg]):
    """An MJPEG viewer: the newest JPEG each time (those it was too slow for are skipped)."""

    def _accept(self, item: EncodedJpeg) -> bool:
        if self._index is not None:
            self._channel.skipped += max(0, item.index - self._index - 1)
        self._index = item.index
        return True


# -- one stream ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamVideoCounters:
    stream_id: str
    frames_offered: int  # every frame the pipeline offered
    frames_paced_out: int  # left out by the pacer (over max_fps)
    frames_overwritten: int  # taken by the pacer, replaced before an encoder used it
    vp8_encoded: int
    jpeg_encoded: int
    vp8_bytes: int
    jpeg_bytes: int
    keyframes: int
    vp8_viewers: int
    jpeg_viewers: int
    vp8_skipped: int  # packets VP8 viewers passed over waiting for a keyframe (they fell behind or joined)
    vp8_resyncs: int  # times a VP8 viewer fell behind
    jpeg_skipped: int  # JPEGs MJPEG viewers were too slow to get
    vp8_running: bool  # an encoder task is running
    jpeg_running: bool
    encode_errors: int
    ended: bool


class StreamVideo:
    """One stream's video for browsers. ``offer`` from the pipeline's thread; the rest on the loop."""

    def __init__(self, stream_id: str, settings: VideoSettings | None = None,
                 loop: asyncio.AbstractEventLoop | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream_id = stream_id
        self.settings = settings or VideoSettings()
        self._clock = clock
        self._loop = loop
        self._pacer = FramePacer(self.settings.max_fps)
        self._pacer_lock = threading.Lock()
        self._frames: LatestSlot[VideoFrame] = LatestSlot(loop)
        self._vp8: _Channel[EncodedVideo] = _Channel(VideoKind.VP8)
        self._jpeg: _Channel[EncodedJpeg] = _Channel(VideoKind.JPEG)
        self._keyframes = KeyframePolicy(self.settings.keyframe_interval_s, self.settings.min_keyframe_gap_s)
        self._keyframe_count = 0
        self._offered = 0
        self._ended = False
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        # used on the encode thread only
        self._codec = Vp8Codec(self.settings.bitrate)
        self._pictures = _Pictures()
        if loop is not None:
            self.bind(loop)

    # -- any thread --------------------------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop viewers and encoder tasks run on (the server's)."""
        self._loop = loop
        for slot in (self._frames, self._vp8.slot, self._jpeg.slot):
            slot.bind(loop)

    def offer(self, frame: VideoFrame) -> bool:
        """A decoded frame of this stream (pipeline thread, never waits): kept when the pacer takes
        it, as the newest frame; True when it was kept."""
        with self._pacer_lock:
            self._offered += 1
            if self._ended or not self._pacer.offer(frame.pts):
                return False
        self._frames.put(frame)
        return True

    def request_keyframe(self) -> None:
        """The next VP8 frame should be a keyframe (rate-limited to ``min_keyframe_gap_s``)."""
        self._keyframes.request()

    def end(self) -> None:
        """The stream ended: viewers' ``next`` returns None, encoder tasks stop, the thread goes."""
        with self._pacer_lock:
            self._ended = True
        for slot in (self._frames, self._vp8.slot, self._jpeg.slot):
            slot.close()
        self._shutdown(wait=False)

    @property
    def ended(self) -> bool:
        return self._ended

    def newest_frame(self) -> VideoFrame | None:
        return self._frames.get()[1] if self._frames.version else None

    def counters(self) -> StreamVideoCounters:
        vp8, jpeg = self._vp8, self._jpeg
        return StreamVideoCounters(
            stream_id=self.stream_id, frames_offered=self._offered, frames_paced_out=self._pacer.skipped,
            frames_overwritten=self._frames.overwritten, vp8_encoded=vp8.encoded, jpeg_encoded=jpeg.encoded,
            vp8_bytes=vp8.bytes, jpeg_bytes=jpeg.bytes, keyframes=self._keyframe_count,
            vp8_viewers=vp8.viewers, jpeg_viewers=jpeg.viewers, vp8_skipped=vp8.skipped,
            vp8_resyncs=vp8.resyncs, jpeg_skipped=jpeg.skipped,
            vp8_running=vp8.task is not None, jpeg_running=jpeg.task is not None,
            encode_errors=vp8.errors + jpeg.errors, ended=self._ended)

    def close(self) -> None:
        self.end()
        self._shutdown(wait=True)

    # -- event loop ----------------------------------------------------------------------------------

    def watch_packets(self) -> PacketViewer:
        """A new WebRTC viewer (call on the loop): VP8 packets starting at a keyframe."""
        viewer = PacketViewer(self, self._start(self._vp8, self._run_vp8))
        self.request_keyframe()
        return viewer

    def watch_jpegs(self) -> JpegViewer:
        """A new MJPEG viewer (call on the loop): the newest JPEG each time it asks."""
        return JpegViewer(self, self._start(self._jpeg, self._run_jpeg))

    def watch(self, kind: VideoKind | str) -> PacketViewer | JpegViewer:
        return self.watch_packets() if VideoKind(kind) is VideoKind.VP8 else self.watch_jpegs()

    async def packets(self) -> AsyncIterator[EncodedVideo]:
        """Every VP8 packet for one viewer until the stream ends. The viewer is unregistered when the
        generator is closed: prefer ``watch_packets`` (or ``contextlib.aclosing``)."""
        with self.watch_packets() as viewer:
            async for packet in viewer:
                yield packet

    async def jpegs(self) -> AsyncIterator[EncodedJpeg]:
        """The newest JPEG each time, for one MJPEG viewer, until the stream ends (see ``packets``)."""
        with self.watch_jpegs() as viewer:
            async for picture in viewer:
                yield picture

    def _start(self, channel: _Channel[Any], run: Callable[[], Any]) -> _Channel[Any]:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self.bind(loop)
        elif self._loop is not loop:
            raise RuntimeError(f"stream {self.stream_id!r}'s video is bound to another event loop")
        channel.viewers += 1
        if channel.task is None and not self._ended:
            channel.fresh_from = channel.slot.version
            channel.task = loop.create_task(run(), name=f"video-{channel.kind.value}-{self.stream_id}")
        return channel

    async def _run_vp8(self) -> None:
        try:
            await self._encode_while_watched(self._vp8, self._encode_vp8)
        finally:
            self._keyframes.reset()
            self._submit_nowait(self._codec.reset)  # after any encode still running: ordered

    async def _run_jpeg(self) -> None:
        await self._encode_while_watched(self._jpeg, self._encode_jpeg)

    async def _encode_while_watched(self, channel: _Channel[Any],
                                    encode: Callable[[int, VideoFrame], Any]) -> None:
        """Encode the newest frame while anyone watches; end ``encoder_idle_s`` after the last left."""
        version, idle_since = 0, None
        try:
            while True:
                if channel.viewers > 0:
                    idle_since, timeout = None, self.settings.encoder_idle_s or 1.0
                else:
                    idle_since = self._clock() if idle_since is None else idle_since
                    timeout = self.settings.encoder_idle_s - (self._clock() - idle_since)
                    if timeout <= 0:
                        return
                try:
                    got = await self._frames.wait_newer(version, timeout)
                except TimeoutError:
                    continue
                if got is None:
                    return  # the stream ended
                version, frame = got
                if channel.viewers > 0 and not await encode(version, frame):
                    return
        finally:
            channel.task = None

    async def _encode_vp8(self, version: int, frame: VideoFrame) -> bool:
        channel = self._vp8
        keyframe = self._keyframes.wants(frame.pts, self._clock())
        size = scaled_size(frame.width, frame.height, self.settings.max_lines)
        pts = round(frame.pts * CLOCK_RATE)
        result = await self._in_thread(channel, self._vp8_job, version, frame, size, pts, keyframe)
        if result is None:
            return not self._ended
        data, is_key = result
        if not data:
            return True
        self._keyframes.encoded(frame.pts, self._clock(), is_key)
        self._keyframe_count += is_key
        channel.slot.put(EncodedVideo(data, is_key, frame.pts, pts, channel.encoded, source_size_of(frame), size,
                                      frame.wall_ms))
        channel.encoded += 1
        channel.bytes += len(data)
        return True

    async def _encode_jpeg(self, version: int, frame: VideoFrame) -> bool:
        channel = self._jpeg
        size = scaled_size(frame.width, frame.height, self.settings.max_lines)
        data = await self._in_thread(channel, self._jpeg_job, version, frame, size)
        if data is None:
            return not self._ended
        channel.slot.put(EncodedJpeg(data, frame.pts, channel.encoded, source_size_of(frame), size))
        channel.encoded += 1
        channel.bytes += len(data)
        return True

    def _vp8_job(self, version: int, frame: VideoFrame, size: tuple[int, int], pts: int,
                 keyframe: bool) -> tuple[bytes, bool]:
        return self._codec.encode(self._pictures.get(version, frame, size), pts, keyframe)

    def _jpeg_job(self, version: int, frame: VideoFrame, size: tuple[int, int]) -> bytes:
        return encode_jpeg(self._pictures.get(version, frame, size), self.settings.jpeg_quality)

    async def _in_thread(self, channel: _Channel[Any], job: Callable[..., T], *args: Any) -> T | None:
        """``job(*args)`` on the stream's encode thread; None when it failed (logged, counted) or the
        stream ended."""
        executor = self._executor_for_jobs()
        if executor is None:
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, job, *args)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._ended and task is not None and not task.cancelling():
                return None  # end() cancelled the queued job, not somebody this task
            raise
        except Exception:
            if self._ended:  # the executor was shut down under us
                return None
            channel.errors += 1
            if channel.errors in (1, 10, 100) or channel.errors % 1000 == 0:
                log.exception("stream %s: %s encode failed (%d so far)", self.stream_id, channel.kind.value,
                              channel.errors)
            if channel is self._vp8:
                self._submit_nowait(self._codec.reset)
            return None

    def _executor_for_jobs(self) -> concurrent.futures.ThreadPoolExecutor | None:
        with self._executor_lock:
            if self._ended:
                return None
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix=f"video-{self.stream_id}")
            return self._executor

    def _submit_nowait(self, job: Callable[[], object]) -> None:
        with self._executor_lock:
            if self._executor is None:
                job()  # nothing ever ran there
                return
            try:
                self._executor.submit(job)
            except RuntimeError:
                pass  # shut down: the thread and its state are gone anyway

    def _shutdown(self, wait: bool) -> None:
        with self._executor_lock:
            executor = self._executor
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=True)


# -- all streams ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoHubCounters:
    frames_offered: int
    vp8_encoded: int
    jpeg_encoded: int
    frames_overwritten: int
    vp8_viewers: int
    jpeg_viewers: int
    streams: dict[str, StreamVideoCounters]


class VideoHub:
    """Every stream's ``StreamVideo``, by stream id. ``offer`` is the pipeline's on_decoded tap."""

    def __init__(self, settings: VideoSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or VideoSettings()
        self._clock = clock
        self._lock = threading.Lock()
        self._streams: dict[str, StreamVideo] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The server's loop, once it runs; frames offered before are kept (the newest per stream)."""
        with self._lock:
            self._loop = loop
            streams = list(self._streams.values())
        for video in streams:
            video.bind(loop)

    def offer(self, frame: VideoFrame) -> bool:
        """Any thread, never waits: the frame goes to its stream (created on its first frame; a new one
        when the stream had ended). True when it was kept (the pacer took it)."""
        video = self._streams.get(frame.stream_id)
        if video is None or video.ended:
            video = self._fresh(frame.stream_id)
            if video is None:
                return False
        return video.offer(frame)

    def get(self, stream_id: str, create: bool = True) -> StreamVideo | None:
        """The stream's video (a viewer may come before its first frame: created unless ``create`` is
        False, then None for an unknown id)."""
        video = self._streams.get(stream_id)
        if video is None and create:
            video = self._fresh(stream_id)
        return video

    def stream_ids(self) -> list[str]:
        return list(self._streams)

    def end(self, stream_id: str) -> None:
        """The stream ended: its viewers' ``next`` returns None and its encoders stop."""
        video = self._streams.get(stream_id)
        if video is not None:
            video.end()

    def counters(self) -> VideoHubCounters:
        streams = {stream_id: video.counters() for stream_id, video in list(self._streams.items())}
        values = streams.values()
        return VideoHubCounters(
            frames_offered=sum(c.frames_offered for c in values), vp8_encoded=sum(c.vp8_encoded for c in values),
            jpeg_encoded=sum(c.jpeg_encoded for c in values),
            frames_overwritten=sum(c.frames_overwritten for c in values),
            vp8_viewers=sum(c.vp8_viewers for c in values), jpeg_viewers=sum(c.jpeg_viewers for c in values),
            streams=streams)

    def close(self) -> None:
        """Ends every stream and waits for their encode threads (an encode in flight finishes)."""
        with self._lock:
            self._closed = True
            streams = list(self._streams.values())
        for video in streams:
            video.close()

    def _fresh(self, stream_id: str) -> StreamVideo | None:
        with self._lock:
            if self._closed:
                return None
            video = self._streams.get(stream_id)
            if video is None or video.ended:
                video = StreamVideo(stream_id, self.settings, self._loop, self._clock)
                self._streams[stream_id] = video
            return video
