"""The grabber: one thread per source that keeps reading frames into that source's ring buffer.

Lifecycle events go into the same ring, behind the frames read before them, so the reader gets both
in the order they happened. When a source opens, its ``SourceInfo.is_live`` sets the ring's mode
(drop-oldest for live media, wait for media that ends) and whether a failure reconnects.

Lifecycle (every move checked with ``check_transition`` and reported as a ``SourceEvent``)::

    NOT_STARTED -> OPENING -> RUNNING ("stream_started") -> ENDED   (a file's end, or stop())
                      |          |
                      |          +-> RECONNECTING (live: read failed) -> OPENING -> RUNNING ...
                      +-> FAILED (a file that cannot be opened; a live source out of reconnect attempts)

A file ends with outcome ENDED, or TRUNCATED/CORRUPT when ``source.damage`` saw damage. A live source
that fails is replaced by a fresh one from ``source_factory`` after an exponential backoff (sleeps
are interruptible by ``stop()``). Whatever happens, the thread ends with a terminal event and closes
the ring, so the reader of the ring always learns that the stream is over.

The one exception to reconnecting: a grabber made with ``reconnects=False`` has no fresh source to
ask for (its factory hands back the one source it was given, e.g. a browser's camera pushed over
WebRTC, stream/push_source.py). Its source's end ends the stream (ENDED) and its first failure, at
open or read, fails it (FAILED, with that failure's outcome and message): no reconnect loop on a
source that cannot come back.

``stop()`` takes effect between frames, and wakes a backoff sleep at once. A source blocked inside
FFmpeg (an open or a read of a camera that stopped answering) cannot be cut short: PyAV ends those
calls only by its own timeouts. So a grabber still busy ``_STOP_GRACE_S`` after ``stop()`` ends the
stream from the stopping side (ENDED, STOPPED, the ring closed) and leaves the blocked call behind;
its thread closes the source when the call returns (within the open or read timeout) and reports
nothing more. Shutdown never waits for a camera's timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from affectstream.errors import SourceError, SourceOpenError, SourceOutcome
from affectstream.stream.frames import (
    SOURCE_TRANSITIONS,
    OverflowPolicy,
    SourceEvent,
    SourceState,
    VideoFrame,
    check_transition,
)
from affectstream.stream.messages import wall_ms
from affectstream.stream.sources import Source, SourceConfig, SourceInfo, is_on_demand

log = logging.getLogger(__name__)

_PUT_POLL_S = 0.1  # a writer blocked on a full WAIT ring rechecks stop() this often
# How long stop() lets the thread finish on its own (between frames: one frame interval at most) before
# it ends the stream without it; well inside the 2 s a shutdown may take.
_STOP_GRACE_S = 0.25
_STOP_RECHECK_S = 0.1


class FrameRing(Protocol):
    """What the grabber needs of ``stream.ring.RingBuffer``."""

    @property
    def policy(self) -> OverflowPolicy: ...

    @property
    def closed(self) -> bool: ...

    def set_mode(self, policy: OverflowPolicy, capacity: int) -> None: ...

    def put(self, frame: VideoFrame, timeout: float | None = None) -> bool: ...

    def put_event(self, event: SourceEvent) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RingModes:
    """How a stream's ring behaves once its source has said whether it is live."""

    live_capacity: int = 4  # a few frames: latency stays low, the oldest go when the pipeline is behind
    file_capacity: int = 32  # enough to keep the decoder ahead of the pipeline; nothing is lost

    def mode(self, live: bool) -> tuple[OverflowPolicy, int]:
        if live:
            return OverflowPolicy.DROP_OLDEST, self.live_capacity
        return OverflowPolicy.WAIT, self.file_capacity


# Failures that retrying cannot mend: a device node that is not there, an address the server says
# does not exist (404, 410) or refuses (401, 403), media that is not a video or has no video track.
_DEFINITIVE = frozenset({SourceOutcome.NO_SUCH_DEVICE, SourceOutcome.MISSING, SourceOutcome.DENIED,
                         SourceOutcome.NOT_VIDEO, SourceOutcome.NO_VIDEO_TRACK})


def _definitive(failure: SourceError, never_up: bool) -> bool:
    """Whether ``failure`` ends the stream at once instead of reconnecting.

    Before the first connection, any definitive failure does. After it, only a web server's (http,
    https): its 404 or HTML page is an answer about that address, which stays. A camera or streaming
    server that rebooted may refuse its stream for a while until it is set up again, so a source of
    the streaming protocols that was up keeps reconnecting.
    """
    if failure.outcome not in _DEFINITIVE:
        return False
    return never_up or is_on_demand(failure.uri)


class _Stopped(Exception):
    """stop() was called, or the ring was closed by its reader."""


class Grabber:
    """Reads one source on its own thread; see the module docstring."""

    def __init__(
        self,
        stream_id: str,
        source_factory: Callable[[], Source],
        ring: FrameRing,
        on_event: Callable[[SourceEvent], None] | None,
        config: SourceConfig,
        stop_event: threading.Event | None = None,
        modes: RingModes | None = None,
        reconnects: bool = True,
    ) -> None:
        self.stream_id = stream_id
        self._reconnects = reconnects  # False: the factory cannot make a fresh source (see the module docstring)
        self._source_factory = source_factory
        self._ring = ring
        self._on_event = on_event  # an observer (tests, logging); the events themselves go into the ring
        self._modes = modes or RingModes()
        self._config = config
        self._stop = threading.Event()
        self._external_stop = stop_event
        self._state = SourceState.NOT_STARTED
        # Held across a move and its event, so that events leave in the order of the moves, and
        # reentrant, so that an observer may read ``state``. The thread and a stop() that ends the
        # stream without it (see the module docstring) both move.
        self._state_lock = threading.RLock()
        self._doing = "starting"  # what the thread is busy with, for the message of a stop that leaves it
        self._frames_read = 0
        self._frames_since_open = 0
        self._last_pts: float | None = None  # media time of the last frame put, shifted (see _shift)
        self._ever_ran = False  # a source of this stream has opened at least once
        self._pts_shift: tuple[float, float | None] | None = None  # (restart ts, first pts of this connection)
        self._thread: threading.Thread | None = None
        self._stop_timer: threading.Timer | None = None
        self._in_source = False  # the thread is inside open/read/close of its source (see _source_call)

    @property
    def state(self) -> SourceState:
        with self._state_lock:
            return self._state

    @property
    def frames_read(self) -> int:
        return self._frames_read

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"grabber of {self.stream_id} was already started")
        self._thread = threading.Thread(target=self._run, name=f"affectstream-grab-{self.stream_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish (ENDED, outcome STOPPED); returns at once. The terminal event is in
        the ring within ``_STOP_GRACE_S``, even while the source is blocked (see the module docstring)."""
        already = self._stop.is_set()
        self._stop.set()
        if self._thread is None and self.state is SourceState.NOT_STARTED:
            self._finish(SourceState.ENDED, SourceOutcome.STOPPED, "stopped before it started")
            self._ring.close()
        elif self._thread is not None and not already:
            self._arm_stop_timer(_STOP_GRACE_S)

    def _arm_stop_timer(self, delay: float) -> None:
        timer = threading.Timer(delay, self._leave_blocked)
        timer.daemon = True  # never keeps the process alive
        timer.name = f"affectstream-stop-{self.stream_id}"
        self._stop_timer = timer
        timer.start()

    def _leave_blocked(self) -> None:
        """stop()'s grace is over and the thread is still in the source: end the stream without it."""
        if self._thread is None or not self._thread.is_alive():
            return
        if not self._in_source:
            # Between source calls it sees the stop itself and ends with its own outcome; look again
            # shortly, in case what it does next is a close() that blocks.
            self._arm_stop_timer(_STOP_RECHECK_S)
            return
        log.info("%s: stopped while %s; the source is closed when its call returns", self.stream_id, self._doing)
        self._finish(SourceState.ENDED, SourceOutcome.STOPPED, f"stopped while {self._doing}")
        self._ring.close()

    @contextlib.contextmanager
    def _source_call(self) -> Iterator[None]:
        # Marks the calls that may block inside FFmpeg: only these are left behind by a stop.
        self._in_source = True
        try:
            yield
        finally:
            self._in_source = False

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True once it has finished (or was never started). After a stop() that
        left a blocked source behind, the thread may outlive the stream by the source's timeout."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    # -- the thread ------------------------------------------------------------------------------

    def _stopping(self) -> bool:
        return self._stop.is_set() or (self._external_stop is not None and self._external_stop.is_set())

    def _run(self) -> None:
        try:
            self._loop()
        except _Stopped:
            self._finish(SourceState.ENDED, SourceOutcome.STOPPED, "stopped")
        except Exception as exc:  # the thread must never die silently: the stream fails visibly
            log.exception("grabber of %s failed", self.stream_id)
            self._finish(SourceState.FAILED, None, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._ring.close()
            if self._stop_timer is not None:
                self._stop_timer.cancel()  # the thread made it on its own

    def _loop(self) -> None:
        attempt = 0  # failed connections in a row (live sources)
        while True:
            self._check_stop()
            self._move(SourceState.OPENING, attempt=attempt)
            self._doing = f"reopening (attempt {attempt})" if attempt else "opening"
            source = self._source_factory()
            try:
                failure = self._run_source(source)
            finally:
                with self._source_call():
                    source.close()
            if failure is None:
                return  # the file ended (terminal event already sent)
            if self._frames_since_open:
                attempt = 0  # it worked for a while: start the backoff afresh
            attempt += 1
            if self._gave_up(failure, attempt):
                return
            self._move(SourceState.RECONNECTING, outcome=failure.outcome, detail=str(failure), attempt=attempt)
            self._doing = "waiting to reconnect"
            delay = self._config.backoff_s(attempt)
            log.info("%s: reconnecting in %.1f s (attempt %d): %s", self.stream_id, delay, attempt, failure)
            self._sleep(delay)

    def _gave_up(self, failure: SourceError, attempt: int) -> bool:
        """Out of attempts: a source never up after ``open_retries``, or any after ``max_reconnect_attempts``;
        a camera device that does not exist at all fails at once; without reconnects, any failure does."""
        if not self._reconnects:
            self._finish(SourceState.FAILED, failure.outcome, str(failure))
            return True
        never_up = self._last_pts is None and not self._ever_ran
        if _definitive(failure, never_up):
            self._finish(SourceState.FAILED, failure.outcome, str(failure))
            return True
        retries = self._config.open_retries
        if never_up and retries is not None and attempt > retries:
            self._finish(SourceState.FAILED, failure.outcome,
                         f"never connected: gave up after {retries} retries (--open-retries); last error: {failure}")
            return True
        limit = self._config.max_reconnect_attempts
        if limit is not None and attempt > limit:
            self._finish(SourceState.FAILED, SourceOutcome.CONNECTION_LOST,
                         f"gave up after {limit} reconnect attempts; last error: {failure}")
            return True
        return False

    def _run_source(self, source: Source) -> SourceError | None:
        """Open and read ``source``; the error to reconnect on (live), or None when the stream is over."""
        self._frames_since_open = 0
        try:
            with self._source_call():
                info = source.open()
        except SourceOpenError as exc:
            if source.is_live:
                return exc
            self._finish(SourceState.FAILED, exc.outcome, str(exc))
            return None
        self._ever_ran = True
        self._ring.set_mode(*self._modes.mode(info.is_live))
        restart_ts = self._restart_ts(info)
        self._move(SourceState.RUNNING, detail=info.describe(), info=info, restart_ts=restart_ts)
        self._doing = "reading"
        try:
            self._read_all(source)
        except SourceError as exc:
            if source.is_live:
                return exc
            # A file that broke mid-way: what was read stands; the outcome says why it stopped.
            self._finish(SourceState.ENDED, exc.outcome, f"{exc} ({source.damage.describe()})",
                         source.damage.as_dict())
            return None
        if source.is_live and self._reconnects:
            return SourceError(f"{source.uri}: the stream ended", SourceOutcome.CONNECTION_LOST, source.uri)
        # Media that ends, or a live source that cannot be opened again: its end is the stream's.
        damage = source.damage
        self._finish(SourceState.ENDED, damage.outcome or SourceOutcome.ENDED, damage.describe(), damage.as_dict())
        return None

    def _read_all(self, source: Source) -> None:
        while True:
            self._check_stop()
            with self._source_call():
                frame = source.read()
            if frame is None:
                return
            if frame.index != self._frames_read:
                # A fresh source after a reconnect counts from 0; the stream's frames stay consecutive.
                frame = dataclasses.replace(frame, index=self._frames_read)
            frame = self._shift(frame)
            self._put(frame)
            self._last_pts = frame.pts
            self._frames_read += 1
            self._frames_since_open += 1

    def _put(self, frame: VideoFrame) -> None:
        if self._ring.policy is OverflowPolicy.DROP_OLDEST:
            if not self._ring.put(frame):
                raise _Stopped()
            return
        while not self._ring.put(frame, timeout=_PUT_POLL_S):
            self._check_stop()
            if self._ring.closed:
                raise _Stopped()

    def _restart_ts(self, info: SourceInfo) -> float | None:
        """After a reconnect: where the new connection's media time starts (None: first connection).

        A camera or server that restarts numbers its frames from 0 (or anything) again; shifting each
        connection to continue just after the last frame keeps one stream's ts increasing, and the
        RUNNING event says where the shift put it.
        """
        if self._last_pts is None:
            self._pts_shift = None
            return None
        interval = 1.0 / info.nominal_fps if info.nominal_fps else 0.001
        restart = round(self._last_pts + interval, 6)
        self._pts_shift = (restart, None)
        return restart

    def _shift(self, frame: VideoFrame) -> VideoFrame:
        if self._pts_shift is None:
            return frame
        restart, first = self._pts_shift
        if first is None:
            first = frame.pts
            self._pts_shift = (restart, first)
        return dataclasses.replace(frame, pts=round(restart + (frame.pts - first), 6))

    def _check_stop(self) -> None:
        if self._stopping():
            raise _Stopped()

    def _sleep(self, seconds: float) -> None:
        """Sleep, waking early (and raising _Stopped) when stopped."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            # Our own event wakes the wait at once; a caller's stop_event is polled.
            self._stop.wait(min(remaining, _PUT_POLL_S))
            self._check_stop()

    # -- state and events ------------------------------------------------------------------------

    def _over(self) -> bool:
        """The terminal event was sent (a state with no moves out)."""
        return not SOURCE_TRANSITIONS[self._state]

    def _move(self, state: SourceState, outcome: SourceOutcome | None = None, detail: str = "",
              attempt: int = 0, damage: dict[str, Any] | None = None, info: SourceInfo | None = None,
              restart_ts: float | None = None) -> None:
        with self._state_lock:
            if self._over():
                # stop() ended the stream while this thread was blocked in the source: nothing more
                # is reported, the thread only closes the source.
                raise _Stopped()
            check_transition(self._state, state)
            self._state = state
            log.debug("%s: %s %s", self.stream_id, state.value, detail)
            event = SourceEvent(self.stream_id, state, wall_ms(), outcome=outcome, detail=detail, attempt=attempt,
                                frames_read=self._frames_read, damage=damage, info=info, restart_ts=restart_ts)
            self._ring.put_event(event)
            if self._on_event is not None:
                self._on_event(event)

    def _finish(self, state: SourceState, outcome: SourceOutcome | None, detail: str,
                damage: dict[str, Any] | None = None) -> None:
        """The terminal event, sent once, by the thread or by a stop() that left it blocked (a second
        terminal move is ignored)."""
        with self._state_lock:
            if self._over():
                return
            if state is SourceState.FAILED:
                log.warning("%s failed (%s): %s", self.stream_id, outcome.value if outcome else "error", detail)
            else:
                log.info("%s ended (%s): %s", self.stream_id, outcome.value if outcome else "ended", detail)
            self._move(state, outcome=outcome, detail=detail, damage=damage)
