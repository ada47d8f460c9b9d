"""A real RTSP camera (GStreamer's RTSP server) that goes away and comes back.

The grabber must see frames, report RECONNECTING while the server is down, and resume on its own
once the server is back on the same port, without being restarted.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from affectstream.errors import SourceOpenError, SourceOutcome
from affectstream.stream.frames import OverflowPolicy, SourceEvent, SourceState, VideoFrame
from affectstream.stream.grabber import Grabber
from affectstream.stream.ring import RingBuffer
from affectstream.stream.sources import SourceConfig, open_source
from tests._sources_helpers import EventRecorder
from tests.timeouts import scaled

pytestmark = pytest.mark.rtsp

SYSTEM_PYTHON = Path("/usr/bin/python3")
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")


def _gstreamer_missing() -> str | None:
    """Why the RTSP server cannot run here, or None when it can."""
    if not SYSTEM_PYTHON.exists():
        return "Debian's /usr/bin/python3 is not there"
    try:
        check = subprocess.run([str(SYSTEM_PYTHON), str(SERVER_SCRIPT), "--check"], check=False,
                               capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run the RTSP server script: {exc}"
    if check.returncode != 0:
        return ("GStreamer's RTSP server is not usable (apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 "
                f"gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly): {check.stdout.strip()} {check.stderr[-300:]}")
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RtspServer:
    """The helper script as a subprocess, started and killed by the test."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"rtsp://127.0.0.1:{port}/test"
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        process = subprocess.Popen([str(SYSTEM_PYTHON), str(SERVER_SCRIPT), "--port", str(self.port)],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._process = process
        first_line: list[str] = []
        reader = threading.Thread(target=lambda: first_line.append(process.stdout.readline() if process.stdout
                                                                   else ""), daemon=True)
        reader.start()
        reader.join(scaled(20))
        if not first_line or not first_line[0].startswith("READY"):
            self.kill()
            pytest.fail(f"RTSP server did not start: {first_line}")

    def pause(self) -> None:
        """Freeze the server: its connections stay open but no data flows (a hung camera)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)  # a stopped process cannot be reaped otherwise
            self._process.kill()
            self._process.wait(scaled(10))
            self._process = None


def running_rtsp_server() -> Iterator[RtspServer]:
    """A started GStreamer RTSP server on a free port, killed afterwards (skips without GStreamer)."""
    reason = _gstreamer_missing()
    if reason:
        pytest.skip(reason)
    server = RtspServer(_free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


rtsp_server = pytest.fixture(running_rtsp_server, name="rtsp_server")


class FrameCollector:
    """Drains the ring on its own thread, as the pipeline's pump would: the frames, and everything the
    ring gave (frames and lifecycle events) in the order it gave it."""

    def __init__(self, ring: RingBuffer) -> None:
        self.frames: list[VideoFrame] = []
        self.items: list[VideoFrame | SourceEvent] = []
        self._ring = ring
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._ring.drained:
            item = self._ring.get(timeout=0.05)
            if item is not None:
                self.items.append(item)
                if isinstance(item, VideoFrame):
                    self.frames.append(item)

    def wait_for_count(self, count: int, seconds: float) -> None:
        deadline = time.monotonic() + scaled(seconds)
        while len(self.frames) < count:
            assert time.monotonic() < deadline, f"only {len(self.frames)} of {count} frames in {scaled(seconds)} s"
            time.sleep(0.02)

    def join(self, seconds: float) -> None:
        self._thread.join(scaled(seconds))


def start_grabber(server: RtspServer, config: SourceConfig) -> tuple[Grabber, RingBuffer, EventRecorder,
                                                                  FrameCollector]:
    """A running grabber on the camera, as the pipeline would have, with its events and frames recorded."""
    ring = RingBuffer(16, OverflowPolicy.DROP_OLDEST)
    recorder = EventRecorder()
    grabber = Grabber("cam", lambda: open_source(server.url, "cam", config), ring, recorder, config)
    collector = FrameCollector(ring)
    grabber.start()
    return grabber, ring, recorder, collector


def test_grabber_reconnects_when_the_camera_comes_back(rtsp_server: RtspServer) -> None:
    config = SourceConfig(open_timeout_s=3, read_timeout_s=2, reconnect_initial_s=0.2, reconnect_max_s=1.0,
                          live_probe_s=0.5)
    grabber, ring, recorder, collector = start_grabber(rtsp_server, config)
    try:
        recorder.wait_for(lambda events: any(e.state is SourceState.RUNNING for e in events), 30, "stream_started")
        collector.wait_for_count(10, 30)
        assert collector.frames[0].image.shape == (120, 160, 3)

        rtsp_server.kill()
        recorder.wait_for(lambda events: any(e.state is SourceState.RECONNECTING for e in events), 30,
                          "RECONNECTING after the server died")
        reconnecting = next(e for e in recorder.events if e.state is SourceState.RECONNECTING)
        assert reconnecting.attempt == 1
        assert reconnecting.outcome in (SourceOutcome.CONNECTION_LOST, SourceOutcome.READ_TIMEOUT)
        # While the server is down every attempt fails and the attempt number grows.
        recorder.wait_for(lambda events: sum(e.state is SourceState.RECONNECTING for e in events) >= 2, 30,
                          "a second reconnect attempt")
        frames_before = grabber.frames_read

        rtsp_server.start()
        recorder.wait_for(lambda events: sum(e.state is SourceState.RUNNING for e in events) >= 2, 60,
                          "stream_started again after the server came back")
        collector.wait_for_count(frames_before + 10, 30)
        assert grabber.state is SourceState.RUNNING
    finally:
        grabber.stop()
        assert grabber.join(scaled(20))
        collector.join(10)

    states = recorder.states()
    assert states[0] is SourceState.OPENING and states[1] is SourceState.RUNNING
    assert recorder.events[-1].state is SourceState.ENDED
    assert recorder.events[-1].outcome is SourceOutcome.STOPPED
    attempts = [e.attempt for e in recorder.events if e.state is SourceState.RECONNECTING]
    assert attempts == list(range(1, len(attempts) + 1))
    # One stream: frame numbers run on across the reconnect, and so does media time (the camera's
    # new connection starts its clock again; the grabber shifts it to continue after the last frame).
    assert [f.index for f in collector.frames] == sorted({f.index for f in collector.frames})
    assert all(a.pts <= b.pts for a, b in zip(collector.frames, collector.frames[1:]))
    assert ring.closed
    running = [e for e in recorder.events if e.state is SourceState.RUNNING]
    assert running[0].restart_ts is None
    for event in running[1:]:
        # The ring gave each RUNNING event after the frames of the connection before it and before
        # the new connection's first frame, which is given the restart time.
        position = collector.items.index(event)
        before = [item for item in collector.items[:position] if isinstance(item, VideoFrame)]
        after = [item for item in collector.items[position:] if isinstance(item, VideoFrame)]
        assert event.restart_ts is not None and before and event.restart_ts > before[-1].pts
        if after:
            assert after[0].pts == pytest.approx(event.restart_ts)
    assert [e for e in collector.items if isinstance(e, SourceEvent)] == recorder.events


def test_a_frozen_camera_is_a_read_timeout_then_resumes(rtsp_server: RtspServer) -> None:
    config = SourceConfig(open_timeout_s=3, read_timeout_s=1, reconnect_initial_s=0.2, reconnect_max_s=0.5,
                          live_probe_s=0.5)
    grabber, ring, recorder, collector = start_grabber(rtsp_server, config)
    try:
        collector.wait_for_count(10, 30)
        rtsp_server.pause()
        recorder.wait_for(lambda events: any(e.state is SourceState.RECONNECTING for e in events), 30,
                          "RECONNECTING while the camera is frozen")
        reconnecting = next(e for e in recorder.events if e.state is SourceState.RECONNECTING)
        assert reconnecting.outcome is SourceOutcome.READ_TIMEOUT
        rtsp_server.resume()
        recorder.wait_for(lambda events: sum(e.state is SourceState.RUNNING for e in events) >= 2, 60,
                          "stream_started again once the camera thawed")
        count = len(collector.frames)
        collector.wait_for_count(count + 5, 30)
    finally:
        grabber.stop()
        assert grabber.join(scaled(20))
        collector.join(10)
    assert recorder.events[-1].outcome is SourceOutcome.STOPPED


def test_server_that_never_answers_rtsp_times_out_on_open() -> None:
    """A TCP port that accepts but never speaks RTSP must not hang open()."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        config = SourceConfig(open_timeout_s=1, read_timeout_s=1)
        source = open_source(f"rtsp://127.0.0.1:{port}/x", "cam", config)
        started = time.monotonic()
        with pytest.raises(SourceOpenError) as caught, contextlib.closing(source):
            source.open()
        assert time.monotonic() - started < scaled(15)
        assert caught.value.outcome is SourceOutcome.OPEN_TIMEOUT


def _read_messages(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def _wait_for_messages(path: Path, predicate: Callable[[list[dict[str, object]]], bool], seconds: float,
                       what: str) -> list[dict[str, object]]:
    deadline = time.monotonic() + scaled(seconds)
    while time.monotonic() < deadline:
        messages = _read_messages(path)
        if predicate(messages):
            return messages
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {scaled(seconds)} s; last messages: {_read_messages(path)[-3:]}")


def _kinds(messages: list[dict[str, object]]) -> list[object]:
    return [m.get("kind", m["type"]) for m in messages if m["type"] != "stats"]


def test_affectstream_run_survives_a_camera_restart(rtsp_server: RtspServer, tmp_path: Path) -> None:
    """The whole program on a real RTSP camera that is killed and restarted: the events say so and the
    estimates resume, with no restart of affectstream."""
    out = tmp_path / "m.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "affectstream", "run", f"door={rtsp_server.url}", "--model", "tiny-random",
         "--no-serve", "--quiet", "--out", str(out), "--read-timeout", "2", "--rate", "4"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_messages(out, lambda ms: _kinds(ms).count("estimate") >= 4, 60, "estimates")
        rtsp_server.kill()
        _wait_for_messages(out, lambda ms: "stream_reconnecting" in _kinds(ms), 30, "stream_reconnecting")
        rtsp_server.start()

        def resumed(messages: list[dict[str, object]]) -> bool:
            kinds = _kinds(messages)
            if kinds.count("stream_started") < 2:
                return False
            return kinds[_last_index(kinds, "stream_started"):].count("estimate") >= 4

        _wait_for_messages(out, resumed, 60, "estimates after the camera came back")
        assert process.poll() is None, "affectstream kept running through the outage"
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=scaled(30))
    assert process.returncode == 0, stderr[-2000:]
    messages = _read_messages(out)
    kinds = _kinds(messages)
    assert kinds[0] == "stream_started" and "stream_ended" in kinds
    assert "estimate" not in kinds[kinds.index("stream_ended"):], "the final summaries follow, no estimates"
    first_reconnect = kinds.index("stream_reconnecting")
    assert "estimate" not in kinds[first_reconnect:_last_index(kinds, "stream_started")]
    seqs = [m["seq"] for m in messages]
    assert seqs == list(range(len(seqs))), "one stream, one unbroken sequence across the reconnect"
    estimates = [m for m in messages if m["type"] == "estimate"]
    assert all(isinstance(m["ts"], float) for m in estimates)
    # Media time never goes back across the reconnect: the second connection continues the clock.
    assert all(a["ts"] < b["ts"] for a, b in zip(estimates, estimates[1:]))  # type: ignore[operator]
    started = [m for m in messages if m.get("kind") == "stream_started"]
    assert "restart_ts" not in started[0]
    assert all(isinstance(m.get("restart_ts"), float) for m in started[1:])


def _last_index(items: list[object], value: object) -> int:
    return len(items) - 1 - items[::-1].index(value)
