"""Annotated video out: `analyze FILE --annotate out.mp4` and `run --record DIR`.

Every frame a stream's pump reads (``Pipeline.on_decoded``: sampled or not) is written, drawn by the
one drawing rule of ``--show`` (``stream/overlay.py`` ``draw_overlay``) with the latest estimate of its
stream whose media time is at or before the frame's own: between two estimates the boxes, ids and bars
of the earlier one are held. The pairing is pure (``FramePairing``); a thread per stream draws and
encodes (PyAV: H.264 with libx264 where the installed FFmpeg has it, else MPEG-4 part 2).

Size: a video is written at the decoded frame's size (``VideoFrame.image``, at most
``--max-frame-side``, 1920 px by default), boxes mapped from source pixels onto it by
``VideoFrame.source_scale``; an odd width or height loses its last column or row (4:2:0 needs even
sizes). Time: each frame keeps its media time (its pts), so the video lasts as long as its input;
``--annotate`` keeps the stream's own clock (an estimate's ``ts`` is the video's time), a ``--record``
segment starts at 0 (its first frame's wall time is in its name, its media time in its title).

Memory is bounded per stream (``max_bytes`` of frames waiting for their estimate or for the encoder).
A file's pump waits when that is full (back-pressure, nothing lost); after ``stall_s`` without an
estimate the waiting frames are drawn with the estimate known so far (``forced``). A live stream's pump
never waits: the waiting frames are forced at once, and a frame that still finds no room (the encoder
is behind) is left out of the video (``dropped``). Both are counted in the report and logged.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from affectstream.stream.frames import VideoFrame
from affectstream.stream.messages import Estimate, Event, Record

if TYPE_CHECKING:
    from av.video.stream import VideoStream

log = logging.getLogger(__name__)

_SAME_TIME_S = 1e-5  # an estimate carries its frame's pts rounded to the microsecond
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # per stream: 42 frames of 1080p, 97 of 720p
DEFAULT_STALL_S = 10.0
DEFAULT_SEGMENT_S = 300.0
ANNOTATE_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")
_DEFAULT_RATE = Fraction(25)  # a video of a single frame: its length
_FRAGMENTED = "frag_keyframe+empty_moov+default_base_moof"  # a segment cut short by kill -9 still plays


def choose_codec(available: frozenset[str] | set[str] | None = None) -> str:
    """libx264 (H.264) where this FFmpeg can encode with it, else mpeg4 (MPEG-4 part 2, always built in)."""
    import av

    names = av.codecs_available if available is None else available
    if "libx264" in names:
        try:
            av.Codec("libx264", "w")
            return "libx264"
        except Exception:  # listed, but not an encoder in this build
            pass
    return "mpeg4"


class FramePairing:
    """Pairs every frame of one stream with the latest estimate whose media time is at or before its own.

    Pure: no threads, no clocks. Frames come in stream order, each saying whether it was sampled (it
    is handed to ``add`` before it is analysed); estimates come later, in media-time order, one per
    sampled frame that was analysed (one whose batch failed or was skipped has none). A frame waits
    until its estimate is known: the estimate of the latest sampled frame at or before it has come, or
    a later one has (so that one never will), or none can (no frame was sampled before it).
    """

    def __init__(self) -> None:
        self._waiting: collections.deque[tuple[VideoFrame, float | None]] = collections.deque()
        self._estimates: collections.deque[Estimate] = collections.deque()  # come, not yet applied
        self._current: Estimate | None = None
        self._last_sampled: float | None = None
        self.waiting_bytes = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def note(self, frame: VideoFrame, sampled: bool) -> None:
        """A frame that is not kept (left out of the video) still tells which estimate follows it."""
        if sampled:
            self._last_sampled = frame.pts

    def add(self, frame: VideoFrame, sampled: bool) -> None:
        self.note(frame, sampled)
        self._waiting.append((frame, self._last_sampled))
        self.waiting_bytes += frame.image.nbytes

    def add_estimate(self, estimate: Estimate) -> None:
        self._estimates.append(estimate)
        if not self._waiting:  # its frame went already (forced): it holds from the next frame on
            while self._estimates:
                self._current = self._estimates.popleft()

    def pop_ready(self) -> list[tuple[VideoFrame, Estimate | None]]:
        """The frames whose estimate is known, oldest first, each with it (None: none yet)."""
        ready = []
        while self._waiting:
            frame, anchor = self._waiting[0]
            self._apply_up_to(frame.pts)
            current = self._current
            known = (anchor is None or (current is not None and current.ts >= anchor - _SAME_TIME_S)
                     or bool(self._estimates))
            if not known:
                break
            ready.append(self._pop())
        return ready

    def force_oldest(self) -> tuple[VideoFrame, Estimate | None]:
        """The oldest waiting frame with what is known now (memory is full, or its estimate is late)."""
        self._apply_up_to(self._waiting[0][0].pts)
        return self._pop()

    def drain(self) -> list[tuple[VideoFrame, Estimate | None]]:
        """Every waiting frame (the stream ended: no estimate is still to come)."""
        ready = []
        while self._waiting:
            ready.append(self.force_oldest())
        return ready

    def _apply_up_to(self, pts: float) -> None:
        while self._estimates and self._estimates[0].ts <= pts + _SAME_TIME_S:
            self._current = self._estimates.popleft()

    def _pop(self) -> tuple[VideoFrame, Estimate | None]:
        frame, _ = self._waiting.popleft()
        self.waiting_bytes -= frame.image.nbytes
        return frame, self._current


def fit_even(canvas: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``canvas`` at ``size`` (width, height): cropped where it is a pixel larger (an odd size made
    even), resized where it differs more (a stream whose resolution changed mid-file)."""
    height, width = canvas.shape[:2]
    if (width, height) == size:
        return canvas
    if 0 <= width - size[0] <= 1 and 0 <= height - size[1] <= 1:
        return canvas[: size[1], : size[0]]
    import cv2

    return cv2.resize(canvas, size, interpolation=cv2.INTER_AREA)


def _rate_of(gap_s: float) -> Fraction:
    """The nominal frame rate from the first interval between frames (2997/125 for 23.976 fps)."""
    if not gap_s > 0:
        return _DEFAULT_RATE
    return min(Fraction(240), max(Fraction(1), Fraction(1 / gap_s).limit_denominator(1001)))


class VideoFile:
    """One video file: BGR pictures with media times in, encoded with PyAV.

    It opens on the second picture (the first interval gives the nominal rate, which sets the last
    frame's length and the encoder's rate control) or at ``close`` for a single one. Media times are
    kept (minus ``origin_s``) at a 1/90000 s clock (1/60000 for mpeg4, whose limit is 65535); a time
    that does not advance is moved one step past the previous one.
    """

    def __init__(self, path: Path, codec: str, origin_s: float = 0.0, fragmented: bool = False,
                 title: str | None = None) -> None:
        self.path = path
        self.frames = 0
        self._codec = codec
        self._origin = origin_s
        self._fragmented = fragmented
        self._title = title
        self._time_base = Fraction(1, 60000) if codec == "mpeg4" else Fraction(1, 90000)
        self._held: tuple[np.ndarray, float] | None = None
        self._container: Any = None
        self._stream: Any = None
        self._size = (0, 0)
        self._last_ticks: int | None = None
        self._step = 1

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of the first picture given, even (None before one)."""
        if self._container is not None:
            return self._size
        if self._held is not None:
            height, width = self._held[0].shape[:2]
            return width - width % 2, height - height % 2
        return None

    def write(self, canvas_bgr: np.ndarray, pts_s: float) -> None:
        if self._container is None:
            if self._held is None:
                self._held = (canvas_bgr, pts_s)
                return
            held, held_pts = self._held
            self._open(held, _rate_of(pts_s - held_pts))
            self._held = None
            self._encode(held, held_pts)
        self._encode(canvas_bgr, pts_s)

    def close(self) -> None:
        if self._container is None and self._held is not None:
            held, held_pts = self._held
            self._open(held, _DEFAULT_RATE)
            self._held = None
            self._encode(held, held_pts)
        if self._container is None:
            return
        try:
            self._mux(self._stream.encode(None))
        finally:
            self._container.close()
            self._container = None

    def _open(self, first: np.ndarray, rate: Fraction) -> None:
        import av

        height, width = first.shape[:2]
        self._size = (max(2, width - width % 2), max(2, height - height % 2))
        options = {"movflags": _FRAGMENTED} if self._fragmented else {}
        container = av.open(str(self.path), "w", options=options)
        try:
            if self._title:
                container.metadata["title"] = self._title
            stream = cast("VideoStream", container.add_stream(self._codec, rate=rate))
            stream.width, stream.height = self._size
            stream.pix_fmt = "yuv420p"
            stream.time_base = self._time_base
            stream.codec_context.time_base = self._time_base
            encoder: dict[str, object] = {"g": str(max(1, round(2 * float(rate))))}  # a keyframe (and a fragment) every 2 s
            if self._codec == "libx264":
                encoder |= {"preset": "veryfast", "crf": "23"}
                if self._fragmented:  # without an edit list, B-frames would delay the first frame's time
                    encoder["bf"] = "0"
            else:
                stream.bit_rate = int(min(20e6, max(1e6, 0.2 * self._size[0] * self._size[1] * float(rate))))
            stream.options = encoder
        except Exception:
            container.close()
            raise
        self._container, self._stream = container, stream

    def _encode(self, canvas_bgr: np.ndarray, pts_s: float) -> None:
        import av

        ticks = round((pts_s - self._origin) / self._time_base)
        if self._last_ticks is not None:
            if ticks <= self._last_ticks:
                ticks = self._last_ticks + self._step
            else:
                self._step = ticks - self._last_ticks
        self._last_ticks = ticks
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(fit_even(canvas_bgr, self._size)), format="bgr24")
        picture.pts = ticks
        picture.time_base = self._time_base
        self._mux(self._stream.encode(picture))
        self.frames += 1

    def _mux(self, packets: Any) -> None:
        for packet in packets:
            # A sample lasts until the next one's time; the last one as long as the latest interval
            # (what the muxer reads from the packet), so that a variable-rate video keeps its length.
            packet.duration = max(1, round(self._step * self._time_base / packet.time_base))
            self._container.mux(packet)


@dataclass
class RecordingReport:
    """What the recorder wrote, for logs and tests."""

    files: list[Path] = field(default_factory=list)
    frames: int = 0  # written
    forced: int = 0  # written before their estimate came (drawn with the one known then)
    dropped: int = 0  # left out: a live stream's frames the encoder had no room for, or after a failure
    errors: list[str] = field(default_factory=list)


def safe_name(stream_id: str) -> str:
    """A stream id as part of a file name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", stream_id).strip(".") or "stream"


def segment_name(stream_id: str, wall_ms: int) -> str:
    """``STREAM-YYYYmmddTHHMMSSZ.mp4``: the stream and the wall time (UTC) of the segment's first frame."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall_ms / 1000))
    return f"{safe_name(stream_id)}-{stamp}.mp4"


class _StreamRecorder:
    """One stream: its pairing, the frames ready to be drawn, and the thread that draws and encodes."""

    def __init__(self, recorder: AnnotatedRecorder, stream_id: str) -> None:
        self._recorder = recorder
        self.stream_id = stream_id
        self._cond = threading.Condition()
        self._pairing = FramePairing()
        self._ready: collections.deque[tuple[VideoFrame, Estimate | None]] = collections.deque()
        self._bytes = 0  # frames held here: waiting for an estimate, or ready for the encoder
        self._finished = False
        self._failed = False
        self._file: VideoFile | None = None
        self.frames = self.forced = self.dropped = 0
        self.files: list[Path] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name=f"affectstream-record-{stream_id}", daemon=True)
        self._thread.start()

    # -- producers (pump and emitter threads) ----------------------------------------------------

    def offer(self, frame: VideoFrame, sampled: bool, live: bool) -> None:
        size = frame.image.nbytes
        limit = self._recorder.max_bytes
        with self._cond:
            if self._finished or self._failed:
                self._pairing.note(frame, sampled)
                if self._failed and not self._finished:
                    self.dropped += 1
                return
            if self._bytes and self._bytes + size > limit:
                if live or self._recorder.hurried:
                    # Stale boxes rather than a gap: at most half the memory waits for estimates.
                    self._force_while(lambda: self._pairing.waiting_bytes + size > limit // 2)
                else:
                    self._wait_for_room(size, limit)
                if self._bytes and self._bytes + size > limit and (live or self._recorder.hurried):
                    self._pairing.note(frame, sampled)  # the encoder is behind: this one is left out
                    self.dropped += 1
                    return
            self._pairing.add(frame, sampled)
            self._bytes += size
            self._ready.extend(self._pairing.pop_ready())
            self._cond.notify_all()

    def _wait_for_room(self, size: int, limit: int) -> None:
        """A file's pump waits for the estimates and the encoder; after ``stall_s`` without room, what
        waits for an estimate is forced, and it goes on waiting for the encoder (which always moves)."""
        stall_at = time.monotonic() + self._recorder.stall_s
        while (self._bytes and self._bytes + size > limit and not self._finished and not self._failed
               and not self._recorder.hurried):
            left = stall_at - time.monotonic()
            if left <= 0:
                if len(self._pairing):
                    log.warning("%s: no estimate for %.0f s with the recording's memory full; drawing the "
                                "waiting frames with the last estimate known", self.stream_id,
                                self._recorder.stall_s)
                    self._force_while(lambda: len(self._pairing) > 0)
                stall_at = time.monotonic() + self._recorder.stall_s
                continue
            self._cond.wait(min(left, 0.5))

    def _force_while(self, condition: Callable[[], bool]) -> None:
        """The oldest waiting frames go to the encoder with the estimate known now, while ``condition``."""
        while len(self._pairing) and condition():
            self._ready.append(self._pairing.force_oldest())
            self.forced += 1
        self._ready.extend(self._pairing.pop_ready())
        self._cond.notify_all()

    def on_estimate(self, estimate: Estimate) -> None:
        with self._cond:
            self._pairing.add_estimate(estimate)
            self._ready.extend(self._pairing.pop_ready())
            self._cond.notify_all()

    def finish(self) -> None:
        """No more estimates will come: every waiting frame is written, then the file is closed."""
        with self._cond:
            if not self._finished:
                self._ready.extend(self._pairing.drain())
                self._finished = True
            self._cond.notify_all()

    def join(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._ready and not self._finished:
                    self._cond.wait(0.5)
                if not self._ready:
                    break
                frame, estimate = self._ready[0]
            if not self._failed:
                try:
                    self._write(frame, estimate)
                    self.frames += 1
                except Exception as error:  # a full disk, an encoder error: this stream stops recording
                    self._fail(error)
            with self._cond:
                self._ready.popleft()
                self._bytes -= frame.image.nbytes
                if self._failed:
                    self.dropped += 1
                self._cond.notify_all()
        try:
            self._close_file()
        except Exception as error:
            self._fail(error)

    def _fail(self, error: Exception) -> None:
        where = self._file.path if self._file is not None else self._recorder.describe(self.stream_id)
        message = f"writing {where} failed: {error}"
        log.error("%s: %s; the stream's recording stops here (the analysis goes on)", self.stream_id, message)
        self.errors.append(message)
        self._failed = True
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # already broken: what was written is kept as it is
                log.debug("closing %s after a failure", self._file.path, exc_info=True)
            self._file = None

    def _write(self, frame: VideoFrame, estimate: Estimate | None) -> None:
        from affectstream.stream.overlay import draw_overlay

        canvas = draw_overlay(frame.image, self._recorder.labels, estimate, frame.source_scale, min_width=0)
        if self._file is not None and self._recorder.new_segment(self._file, frame, canvas):
            self._close_file()
        if self._file is None:
            self._file = self._recorder.open_file(self.stream_id, frame)
            self.files.append(self._file.path)
        self._file.write(canvas, frame.pts)

    def _close_file(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()
            log.info("%s: wrote %s (%d frames)", self.stream_id, file.path, file.frames)


class AnnotatedRecorder:
    """The annotated video of every stream of a pipeline: ``pipeline.on_decoded = recorder.on_decoded``
    and its records to ``recorder.on_record``; ``close()`` after ``pipeline.stop()``.

    ``to_file``: one stream into one file (`analyze --annotate`); ``to_directory``: every stream into
    segments of ``segment_s`` seconds of media time, ``STREAM-YYYYmmddTHHMMSSZ.mp4`` (`run --record`).
    """

    def __init__(self, labels: tuple[str, ...], *, path: Path | None = None, directory: Path | None = None,
                 segment_s: float = DEFAULT_SEGMENT_S, codec: str | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, stall_s: float = DEFAULT_STALL_S) -> None:
        if (path is None) == (directory is None):
            raise ValueError("give a path (one file) or a directory (segments), not both")
        self.labels = labels
        self.max_bytes = max_bytes
        self.stall_s = stall_s
        self.codec = codec or choose_codec()
        self.hurried = False
        self._path = path
        self._directory = directory
        self._segment_s = segment_s
        self._lock = threading.Lock()
        self._streams: dict[str, _StreamRecorder] = {}
        self._ignored: set[str] = set()
        self._segment_start: dict[str, float] = {}

    @classmethod
    def to_file(cls, path: Path, labels: tuple[str, ...], **kwargs: Any) -> AnnotatedRecorder:
        return cls(labels, path=path, **kwargs)

    @classmethod
    def to_directory(cls, directory: Path, labels: tuple[str, ...], segment_s: float = DEFAULT_SEGMENT_S,
                     **kwargs: Any) -> AnnotatedRecorder:
        return cls(labels, directory=directory, segment_s=segment_s, **kwargs)

    # -- pipeline taps ----------------------------------------------------------------------------

    def on_decoded(self, frame: VideoFrame, sampled: bool, live: bool) -> None:
        """Every frame a pump reads (``Pipeline.on_decoded``); never raises into the pump."""
        try:
            stream = self._stream(frame.stream_id)
            if stream is not None:
                stream.offer(frame, sampled, live)
        except Exception:
            log.exception("recording a frame of %s failed", frame.stream_id)

    def on_record(self, record: Record) -> None:
        """The pipeline's records (``Pipeline.on_record``): estimates, and the end of each stream."""
        try:
            if isinstance(record, Estimate):
                stream = self._stream(record.stream)
                if stream is not None:
                    stream.on_estimate(record)
            elif isinstance(record, Event) and record.terminal:
                with self._lock:
                    stream = self._streams.get(record.stream)
                if stream is not None:
                    stream.finish()
        except Exception:
            log.exception("recording a record of %s failed", record.stream_id)

    def hurry(self) -> None:
        """A second Ctrl-C or SIGTERM: no pump waits for the recording any more."""
        self.hurried = True

    def close(self, timeout: float | None = 60.0) -> RecordingReport:
        """Write what is left and close every file (each playable); the report of what was written."""
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.finish()
        deadline = None if timeout is None else time.monotonic() + timeout
        report = RecordingReport()
        for stream in streams:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not stream.join(left):
                message = f"{stream.stream_id}: the recording did not finish within {timeout:g} s"
                log.error("%s; its last file may not play", message)
                report.errors.append(message)
            report.files += stream.files
            report.frames += stream.frames
            report.forced += stream.forced
            report.dropped += stream.dropped
            report.errors += stream.errors
        if report.forced:
            log.warning("recording: %d frame(s) were drawn before their estimate came (with the one before)",
                        report.forced)
        if report.dropped:
            log.warning("recording: %d frame(s) were left out (the encoder was behind a live stream, or "
                        "writing failed)", report.dropped)
        return report

    # -- files ----------------------------------------------------------------------------------------

    def describe(self, stream_id: str) -> str:
        return str(self._path) if self._path is not None else f"{self._directory}/{safe_name(stream_id)}-*.mp4"

    def new_segment(self, file: VideoFile, frame: VideoFrame, canvas: np.ndarray) -> bool:
        """Segments only: the next file starts after ``segment_s`` of media time, or at a new size."""
        if self._directory is None:
            return False
        height, width = canvas.shape[:2]
        size = file.size
        return (frame.pts - self._segment_start[frame.stream_id] >= self._segment_s
                or (size is not None and size != (width - width % 2, height - height % 2)))

    def open_file(self, stream_id: str, frame: VideoFrame) -> VideoFile:
        if self._path is not None:
            if self._path.exists():
                log.info("replacing %s", self._path)
            # The stream's own clock, so that an estimate's ts is the video's time (a negative start is moved to 0).
            return VideoFile(self._path, self.codec, origin_s=min(0.0, frame.pts))
        assert self._directory is not None
        self._segment_start[stream_id] = frame.pts
        path = self._directory / segment_name(stream_id, frame.wall_ms)
        for n in range(1, 1000):
            if not path.exists():
                break
            path = self._directory / f"{path.name.removesuffix('.mp4').rsplit('~', 1)[0]}~{n}.mp4"
        return VideoFile(path, self.codec, origin_s=frame.pts, fragmented=True,
                         title=f"affectstream {stream_id} from media time {frame.pts:.3f} s")

    def _stream(self, stream_id: str) -> _StreamRecorder | None:
        with self._lock:
            stream = self._streams.get(stream_id)
            if stream is None:
                if self._path is not None and self._streams:
                    if stream_id not in self._ignored:
                        self._ignored.add(stream_id)
                        log.warning("%s takes one stream: %s is not recorded", self._path, stream_id)
                    return None
                stream = self._streams[stream_id] = _StreamRecorder(self, stream_id)
            return stream
