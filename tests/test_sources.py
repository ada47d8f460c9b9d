"""Sources (PyAV files, classification, timestamps) and the grabber thread on real files."""

from __future__ import annotations

import dataclasses
import itertools
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from affectstream.errors import ConfigError, PipelineError, SourceOpenError, SourceOutcome
from affectstream.stream.frame_clock import FrameClock, TimestampCorrector
from affectstream.stream.frames import OverflowPolicy, SourceEvent, SourceState, VideoFrame
from affectstream.stream.grabber import Grabber, RingModes
from affectstream.stream.ring import RingBuffer
from affectstream.stream.sources import (
    Source,
    SourceConfig,
    SourceDamage,
    SourceInfo,
    SourceKind,
    SourceWrapper,
    classify_uri,
    open_source,
)
from affectstream.stream.webcam import WebcamSource
from tests import media
from tests._sources_helpers import EventRecorder, drain, drain_items, events_in, read_everything, run_bounded
from tests.timeouts import scaled

FAST = SourceConfig(open_timeout_s=5, read_timeout_s=5, reconnect_initial_s=0.05, reconnect_max_s=0.2)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sources")
    return {
        "plain": media.make_video(folder / "plain.avi", seconds=2.0, fps=10),
        "vfr": media.make_vfr_video(folder / "vfr.mkv", count=30),
        "resize": media.make_resolution_change_video(folder / "resize.ts"),
    }


# -- configuration and classification -------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("open_timeout_s", 0), ("read_timeout_s", -1), ("reconnect_factor", 0.5),
    ("max_reconnect_attempts", -1), ("max_reconnect_attempts", True), ("rtsp_transport", "carrier-pigeon"),
])
def test_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        SourceConfig(**{field: value})  # type: ignore[arg-type]


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    config = SourceConfig(reconnect_initial_s=0.5, reconnect_factor=2, reconnect_max_s=3)
    assert [config.backoff_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("uri, kind", [
    ("0", SourceKind.WEBCAM), ("/dev/video2", SourceKind.WEBCAM), ("rtsp://cam/1", SourceKind.URL),
    ("HTTPS://x/live.m3u8", SourceKind.URL), ("rtmp://x/app", SourceKind.URL), ("clip.mp4", SourceKind.FILE),
    ("/data/2024.avi", SourceKind.FILE), ("file:///tmp/a.mp4", SourceKind.FILE),
])
def test_uris_are_classified(uri: str, kind: SourceKind) -> None:
    assert classify_uri(uri) is kind
    source = open_source(uri, "s", FAST)
    assert source.is_live is (kind is not SourceKind.FILE)


def test_file_uri_scheme_is_read_as_a_path(videos: dict[str, Path]) -> None:
    _, frames, _ = read_everything(open_source(videos["plain"].as_uri(), "s", FAST))
    assert len(frames) == 20


def test_timestamp_corrector_switches_to_dts_when_pts_go_backwards() -> None:
    corrector = TimestampCorrector()
    # pts in decode order of a B-frame stream: 1 2 3 5 4 ... while dts count up.
    out = [corrector.correct(pts, dts) for pts, dts in [(1, 1), (2, 2), (3, 3), (5, 4), (4, 5), (6, 6)]]
    assert out[:4] == [1, 2, 3, 5] and out[4:] == [5, 6]
    assert [TimestampCorrector().correct(None, 7), TimestampCorrector().correct(3, None)] == [7, 3]


def test_frame_clock_invents_missing_times_from_the_frame_rate_and_counts_them() -> None:
    clock = FrameClock(nominal_fps=10)
    assert [clock.next(p) for p in (1.0, None, None, 2.0)] == pytest.approx([1.0, 1.1, 1.2, 2.0])
    assert clock.missing == 2 and clock.count == 4


def test_read_before_open_is_a_usage_error(videos: dict[str, Path]) -> None:
    with pytest.raises(PipelineError, match="open"):
        open_source(str(videos["plain"]), "s", FAST).read()


def test_missing_camera_is_no_such_device() -> None:
    for uri in ("/dev/video987", "987"):
        with pytest.raises(SourceOpenError) as caught:
            WebcamSource(uri, "cam", FAST).open()
        assert caught.value.outcome is SourceOutcome.NO_SUCH_DEVICE


def test_a_camera_that_does_not_exist_fails_at_once() -> None:
    """No reconnecting for a device node that is not there: one FAILED event, within a second."""
    ring = RingBuffer(4, OverflowPolicy.DROP_OLDEST)
    recorder = EventRecorder()
    grabber = Grabber("cam", lambda: WebcamSource("/dev/video987", "cam", FAST), ring, recorder, FAST)
    started = time.monotonic()
    grabber.start()
    assert grabber.join(scaled(5))
    assert time.monotonic() - started < scaled(2)
    assert recorder.states() == [SourceState.OPENING, SourceState.FAILED]
    assert recorder.events[-1].outcome is SourceOutcome.NO_SUCH_DEVICE


class NeverAnswers:
    """A live source whose every open fails (an RTSP host that is down)."""

    stream_id, uri, is_live = "cam", "rtsp://127.0.0.1:9/none", True
    damage = SourceDamage()

    def open(self) -> SourceInfo:
        raise SourceOpenError("rtsp://127.0.0.1:9/none: connection refused", SourceOutcome.CONNECTION_LOST, self.uri)

    def read(self) -> VideoFrame | None:
        return None

    def close(self) -> None:
        pass


class NotThere(NeverAnswers):
    """A live URL the server says does not exist (HTTP 404)."""

    def open(self) -> SourceInfo:
        raise SourceOpenError("https://host/missing.mp4: 404", SourceOutcome.MISSING, self.uri)


def test_a_url_that_does_not_exist_fails_at_once() -> None:
    recorder = EventRecorder()
    grabber = Grabber("cam", NotThere, RingBuffer(4, OverflowPolicy.DROP_OLDEST), recorder, FAST)
    grabber.start()
    assert grabber.join(scaled(5))
    assert recorder.states() == [SourceState.OPENING, SourceState.FAILED]
    assert recorder.events[-1].outcome is SourceOutcome.MISSING


def test_a_live_source_that_never_connects_gives_up_after_open_retries() -> None:
    config = SourceConfig(reconnect_initial_s=0.01, reconnect_max_s=0.01, open_retries=3)
    ring = RingBuffer(4, OverflowPolicy.DROP_OLDEST)
    recorder = EventRecorder()
    grabber = Grabber("cam", NeverAnswers, ring, recorder, config)
    grabber.start()
    assert grabber.join(scaled(10))
    states = recorder.states()
    assert states.count(SourceState.RECONNECTING) == 3 and states[-1] is SourceState.FAILED
    assert "never connected: gave up after 3 retries" in recorder.events[-1].detail
    forever = SourceConfig(reconnect_initial_s=0.01, reconnect_max_s=0.01, open_retries=None)
    stop = threading.Event()
    endless = Grabber("cam", NeverAnswers, RingBuffer(4, OverflowPolicy.DROP_OLDEST), EventRecorder(), forever,
                      stop_event=stop)
    endless.start()
    assert not endless.join(0.5)  # still retrying (open_retries=None: for ever)
    stop.set()
    assert endless.join(scaled(5))


# -- reading files ------------------------------------------------------------------------------------


def test_plain_file_gives_rgb_frames_with_container_times(videos: dict[str, Path]) -> None:
    info, frames, damage = run_bounded(lambda: read_everything(open_source(str(videos["plain"]), "cam1", FAST)), 20)
    assert (info.kind, info.is_live, info.width, info.height, info.nominal_fps) == (SourceKind.FILE, False, 160, 120,
                                                                                    10.0)
    assert info.duration_s == pytest.approx(2.0)
    assert [f.index for f in frames] == list(range(20))
    assert [f.pts for f in frames] == pytest.approx([i / 10 for i in range(20)])
    assert all(f.stream_id == "cam1" and f.image.shape == (120, 160, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(f.image.flags.c_contiguous for f in frames)
    # The background is drawn as BGR (60, 30, 30): in RGB the blue channel is the strongest.
    corner = frames[0].image[0, -1].astype(int)
    assert corner[2] > corner[0] + 15, f"not RGB: {corner}"
    # Frames differ (the square moves), and capture times do not go backwards.
    assert not np.array_equal(frames[0].image, frames[5].image)
    assert all(a.captured_ns <= b.captured_ns for a, b in itertools.pairwise(frames))
    assert damage.outcome is None and damage.frames == 20 and damage.missing_pts == 0


def test_variable_frame_rate_keeps_container_pts(videos: dict[str, Path]) -> None:
    _, frames, damage = run_bounded(lambda: read_everything(open_source(str(videos["vfr"]), "s", FAST)), 20)
    pts = [f.pts for f in frames]
    assert pts == pytest.approx(media.ffprobe_pts(videos["vfr"]), abs=1e-6)
    assert pts == pytest.approx(media.vfr_pts(30), abs=1e-6)
    gaps = np.diff(pts)
    assert gaps.max() > 3 * gaps.min(), "test video should be variable rate"
    assert damage.outcome is None


def test_resolution_change_mid_stream_gives_frames_of_the_new_size(videos: dict[str, Path]) -> None:
    _, frames, damage = run_bounded(lambda: read_everything(open_source(str(videos["resize"]), "s", FAST)), 20)
    sizes = [(f.width, f.height) for f in frames]
    switch = sizes.index((96, 64))
    assert switch > 0 and set(sizes[:switch]) == {(160, 120)} and set(sizes[switch:]) == {(96, 64)}
    assert [f.pts for f in frames] == pytest.approx(media.ffprobe_pts(videos["resize"]), abs=1e-6)
    assert damage.outcome is None


# -- the grabber on files ---------------------------------------------------------------------------


def _file_grabber(path: Path | str, ring: RingBuffer, recorder: EventRecorder | None,
                  config: SourceConfig = FAST, stop_event: threading.Event | None = None,
                  modes: RingModes | None = None) -> Grabber:
    return Grabber("s", lambda: open_source(str(path), "s", config), ring, recorder, config, stop_event=stop_event,
                   modes=modes)


class LiveLooking(SourceWrapper):
    """A file that says it is live when opened, as a camera would (no pacing, no end)."""

    @property
    def is_live(self) -> bool:
        return True

    def open(self) -> SourceInfo:
        return dataclasses.replace(self._inner.open(), is_live=True, duration_s=None)


class RestartingCamera:
    """A live source: each of its first ``connections`` connections delivers ``frames`` frames numbered
    from ``first_pts`` again, then drops; after those it cannot be reached."""

    stream_id, uri, is_live = "cam", "rtsp://camera.invalid/live", True

    def __init__(self, frames: int, connections: int, fps: float = 10.0, first_pts: float = 0.0) -> None:
        self._frames, self._connections, self._fps, self._first_pts = frames, connections, fps, first_pts
        self._read = 0
        self._opened = 0

    @property
    def damage(self) -> SourceDamage:
        return SourceDamage(frames=self._read)

    def open(self) -> SourceInfo:
        if self._opened == self._connections:
            raise SourceOpenError(f"{self.uri}: connection refused", SourceOutcome.CONNECTION_LOST, self.uri)
        self._opened += 1
        self._read = 0
        return SourceInfo(self.uri, SourceKind.URL, True, 8, 8, self._fps, None, "fake")

    def read(self) -> VideoFrame | None:
        if self._read == self._frames:
            return None  # the connection drops: a live source reconnects
        frame = VideoFrame(self.stream_id, self._read, round(self._first_pts + self._read / self._fps, 6),
                           time.monotonic_ns(), 0, np.zeros((8, 8, 3), np.uint8))
        self._read += 1
        return frame

    def close(self) -> None:
        pass


def test_grabber_lifecycle_on_a_file(videos: dict[str, Path]) -> None:
    ring = RingBuffer(64, OverflowPolicy.WAIT)
    recorder = EventRecorder()
    grabber = _file_grabber(videos["plain"], ring, recorder)
    assert grabber.state is SourceState.NOT_STARTED
    grabber.start()
    items = drain_items(ring, 20)
    frames = [item for item in items if isinstance(item, VideoFrame)]
    assert grabber.join(scaled(10))
    assert recorder.states() == [SourceState.OPENING, SourceState.RUNNING, SourceState.ENDED]
    ended = recorder.events[-1]
    assert ended.outcome is SourceOutcome.ENDED and ended.frames_read == 20 and "20 frames" in ended.detail
    assert "160x120" in recorder.events[1].detail
    assert grabber.state is SourceState.ENDED and ring.closed
    assert [f.index for f in frames] == list(range(20))
    # The same events went into the ring, in order with the frames: the end after the last frame.
    assert events_in(items) == recorder.events
    assert [type(item) for item in items] == [SourceEvent, SourceEvent] + [VideoFrame] * 20 + [SourceEvent]
    running = recorder.events[1]
    assert running.info is not None and running.info.is_live is False and running.restart_ts is None
    assert ended.terminal and not running.terminal


def test_events_reach_the_ring_without_an_observer(videos: dict[str, Path]) -> None:
    ring = RingBuffer(64, OverflowPolicy.WAIT)
    grabber = _file_grabber(videos["plain"], ring, None)
    grabber.start()
    items = drain_items(ring, 20)
    assert grabber.join(scaled(10))
    assert [e.state for e in events_in(items)] == [SourceState.OPENING, SourceState.RUNNING, SourceState.ENDED]
    assert isinstance(items[-1], SourceEvent) and items[-1].outcome is SourceOutcome.ENDED


def test_the_opened_source_sets_the_ring_mode(videos: dict[str, Path]) -> None:
    # A ring that started out live (as for an http URL before it opens) becomes a file's ring.
    ring = RingBuffer(3, OverflowPolicy.DROP_OLDEST)
    grabber = _file_grabber(videos["plain"], ring, EventRecorder(), modes=RingModes(live_capacity=3,
                                                                                    file_capacity=24))
    grabber.start()
    assert grabber.join(scaled(20))  # nobody reads; 20 frames fit in the file ring
    assert (ring.policy, ring.capacity) == (OverflowPolicy.WAIT, 24)
    assert [f.index for f in drain(ring, 5)] == list(range(20)) and ring.overwritten == 0


def test_wait_policy_loses_no_frames_with_a_slow_reader(tmp_path: Path) -> None:
    path = media.make_video(tmp_path / "long.avi", seconds=6.0, fps=10)
    ring = RingBuffer(2, OverflowPolicy.WAIT)
    recorder = EventRecorder()
    grabber = _file_grabber(path, ring, recorder, modes=RingModes(file_capacity=2))
    grabber.start()
    frames = drain(ring, 30, on_frame=lambda _: time.sleep(0.002))
    assert grabber.join(scaled(10))
    assert ring.capacity == 2
    assert [f.index for f in frames] == list(range(60))
    assert [f.pts for f in frames] == pytest.approx([i / 10 for i in range(60)])
    assert ring.overwritten == 0 and ring.written == 60
    assert recorder.events[-1].outcome is SourceOutcome.ENDED


def test_drop_oldest_keeps_the_newest_frames_and_counts_the_rest(videos: dict[str, Path]) -> None:
    # A live source gets a drop-oldest ring; this one gives 20 frames, then is lost for good.
    config = dataclasses.replace(FAST, max_reconnect_attempts=0)
    ring = RingBuffer(32, OverflowPolicy.WAIT)
    recorder = EventRecorder()
    grabber = Grabber("s", lambda: LiveLooking(open_source(str(videos["plain"]), "s", config)), ring, recorder,
                      config, modes=RingModes(live_capacity=3))
    grabber.start()
    assert grabber.join(scaled(20))  # nobody reads: the grabber must not block
    assert (ring.policy, ring.capacity) == (OverflowPolicy.DROP_OLDEST, 3)
    items = drain_items(ring, 5)
    frames = [item for item in items if isinstance(item, VideoFrame)]
    assert [f.index for f in frames] == [17, 18, 19]
    assert ring.overwritten == 17
    # The events were not dropped with the frames around them.
    assert events_in(items) == recorder.events
    assert recorder.states() == [SourceState.OPENING, SourceState.RUNNING, SourceState.FAILED]
    assert recorder.events[-1].outcome is SourceOutcome.CONNECTION_LOST


def test_media_time_continues_across_a_reconnect() -> None:
    """A camera that comes back numbers its frames from 0 again; the stream's ts keeps increasing."""
    config = SourceConfig(open_timeout_s=2, read_timeout_s=2, reconnect_initial_s=0.01, reconnect_max_s=0.01,
                          max_reconnect_attempts=2)
    camera = RestartingCamera(frames=5, connections=3, fps=10.0, first_pts=3.0)
    ring = RingBuffer(64, OverflowPolicy.WAIT)
    recorder = EventRecorder()
    grabber = Grabber("cam", lambda: camera, ring, recorder, config, modes=RingModes(live_capacity=64))
    grabber.start()
    items = drain_items(ring, 20)
    assert grabber.join(scaled(10))
    frames = [item for item in items if isinstance(item, VideoFrame)]
    # The first connection keeps its own clock; each later one continues one frame interval on.
    assert [f.pts for f in frames] == pytest.approx([3.0 + i / 10 for i in range(15)])
    assert [f.index for f in frames] == list(range(15))
    assert all(a.pts < b.pts for a, b in itertools.pairwise(frames))
    running = [e for e in events_in(items) if e.state is SourceState.RUNNING]
    assert [e.restart_ts for e in running] == [None, pytest.approx(3.5), pytest.approx(4.0)]
    # Each RUNNING event comes right before the first frame of its connection.
    for event in running[1:]:
        position = items.index(event)
        following = next(item for item in items[position:] if isinstance(item, VideoFrame))
        assert following.pts == pytest.approx(event.restart_ts)
    assert recorder.events[-1].outcome is SourceOutcome.CONNECTION_LOST


def test_grabber_stop_while_blocked_on_a_full_ring(tmp_path: Path) -> None:
    path = media.make_video(tmp_path / "long.avi", seconds=6.0, fps=10)
    ring = RingBuffer(1, OverflowPolicy.WAIT)
    recorder = EventRecorder()
    grabber = _file_grabber(path, ring, recorder)
    grabber.start()
    recorder.wait_for(lambda events: any(e.state is SourceState.RUNNING for e in events), 10, "RUNNING")
    grabber.stop()
    assert grabber.join(scaled(5))
    assert recorder.events[-1].state is SourceState.ENDED
    assert recorder.events[-1].outcome is SourceOutcome.STOPPED
    assert ring.closed


def test_external_stop_event_is_honoured(tmp_path: Path) -> None:
    path = media.make_video(tmp_path / "long.avi", seconds=6.0, fps=10)
    ring = RingBuffer(1, OverflowPolicy.WAIT)
    recorder = EventRecorder()
    stop = threading.Event()
    grabber = _file_grabber(path, ring, recorder, stop_event=stop)
    grabber.start()
    recorder.wait_for(lambda events: any(e.state is SourceState.RUNNING for e in events), 10, "RUNNING")
    stop.set()
    assert grabber.join(scaled(5))
    assert recorder.events[-1].outcome is SourceOutcome.STOPPED


def test_stop_before_start_ends_the_stream() -> None:
    ring = RingBuffer(1, OverflowPolicy.WAIT)
    recorder = EventRecorder()
    grabber = _file_grabber("/nonexistent.avi", ring, recorder)
    grabber.stop()
    assert grabber.join(0) and ring.closed
    assert recorder.states() == [SourceState.ENDED]


def test_missing_file_fails_with_its_outcome(tmp_path: Path) -> None:
    ring = RingBuffer(4, OverflowPolicy.WAIT)
    recorder = EventRecorder()
    grabber = _file_grabber(tmp_path / "absent.mp4", ring, recorder)
    grabber.start()
    assert grabber.join(scaled(10))
    assert recorder.states() == [SourceState.OPENING, SourceState.FAILED]
    assert recorder.events[-1].outcome is SourceOutcome.MISSING and "absent.mp4" in recorder.events[-1].detail
    assert ring.closed


def test_truncated_file_ends_with_truncated_after_its_frames(tmp_path: Path) -> None:
    whole = media.make_video(tmp_path / "whole.avi", seconds=4.0, fps=10)
    cut = media.make_truncated(whole, tmp_path / "cut.avi")
    ring = RingBuffer(64, OverflowPolicy.WAIT)
    recorder = EventRecorder()
    grabber = _file_grabber(cut, ring, recorder)
    grabber.start()
    frames = drain(ring, 20)
    assert grabber.join(scaled(10))
    assert 0 < len(frames) < 40
    assert recorder.events[-1].state is SourceState.ENDED
    assert recorder.events[-1].outcome is SourceOutcome.TRUNCATED


def test_a_factory_that_raises_fails_the_stream_visibly() -> None:
    def broken() -> Source:
        raise RuntimeError("factory bug")

    ring = RingBuffer(4, OverflowPolicy.WAIT)
    recorder = EventRecorder()
    grabber = Grabber("s", broken, ring, recorder, FAST)
    grabber.start()
    assert grabber.join(scaled(10))
    assert recorder.events[-1].state is SourceState.FAILED
    assert "factory bug" in recorder.events[-1].detail and ring.closed


# -- the grabber on a live source that refuses connections ------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_live_source_gives_up_after_max_reconnect_attempts() -> None:
    config = SourceConfig(open_timeout_s=2, read_timeout_s=2, reconnect_initial_s=0.05, reconnect_max_s=0.1,
                          max_reconnect_attempts=2)
    uri = f"rtsp://127.0.0.1:{_closed_port()}/none"
    ring = RingBuffer(4, OverflowPolicy.DROP_OLDEST)
    recorder = EventRecorder()
    grabber = Grabber("cam", lambda: open_source(uri, "cam", config), ring, recorder, config)
    grabber.start()
    assert grabber.join(scaled(20))
    assert recorder.states() == [SourceState.OPENING, SourceState.RECONNECTING, SourceState.OPENING,
                                 SourceState.RECONNECTING, SourceState.OPENING, SourceState.FAILED]
    assert [e.attempt for e in recorder.events if e.state is SourceState.RECONNECTING] == [1, 2]
    assert recorder.events[-1].outcome is SourceOutcome.CONNECTION_LOST
    assert ring.closed


def test_stop_interrupts_the_reconnect_backoff() -> None:
    config = SourceConfig(open_timeout_s=2, read_timeout_s=2, reconnect_initial_s=60, reconnect_max_s=60)
    uri = f"rtsp://127.0.0.1:{_closed_port()}/none"
    ring = RingBuffer(4, OverflowPolicy.DROP_OLDEST)
    recorder = EventRecorder()
    grabber = Grabber("cam", lambda: open_source(uri, "cam", config), ring, recorder, config)
    grabber.start()
    recorder.wait_for(lambda events: any(e.state is SourceState.RECONNECTING for e in events), 10, "RECONNECTING")
    grabber.stop()
    assert grabber.join(scaled(5))
    assert recorder.events[-1].state is SourceState.ENDED
    assert recorder.events[-1].outcome is SourceOutcome.STOPPED


def test_frames_are_video_frames(videos: dict[str, Path]) -> None:
    source = open_source(str(videos["plain"]), "s", FAST)
    source.open()
    try:
        frame = source.read()
        assert isinstance(frame, VideoFrame)
        assert abs(frame.wall_ms - time.time() * 1000) < scaled(10) * 1000
    finally:
        source.close()
