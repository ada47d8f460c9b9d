"""Source faults reported when the docs say, in words that say what happened (issue 11, items 9 and 10).

Real peers only: GStreamer's RTSP server (frozen with SIGSTOP for a stalled camera), TCP servers that
accept and never answer, a local HTTP server with answers that no retry can change, and a host name
that cannot resolve (``.invalid`` is reserved for that, RFC 2606).

Before: a frozen camera was reported after twice the read timeout (FFmpeg's parser hands out the
frame it held back when the first read times out, and only the next read fails); stop() waited for
a blocked open or read to time out (8.7 s on SIGTERM while reopening); 401/403/410 were retried like
an outage, and a web server's 404 or HTML page after the stream had run was retried for ever; the
messages said "Input/output error", "Immediate exit requested" or "Invalid data found".
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from affectstream.errors import SourceError, SourceOpenError, SourceOutcome
from affectstream.stream.frames import OverflowPolicy, SourceEvent, SourceState
from affectstream.stream.grabber import Grabber
from affectstream.stream.netloc import uri_host_port, url_host
from affectstream.stream.ring import RingBuffer
from affectstream.stream.sources import SourceConfig, open_source
from tests._sources_helpers import EventRecorder
from tests.test_rtsp import FrameCollector, RtspServer, _free_port, running_rtsp_server
from tests.timeouts import scaled

# What a message must never show the user: FFmpeg's and Python's internals instead of what happened.
_INTERNALS = ("Errno", "OSError", "ExitError", "InvalidDataError", "Immediate exit requested",
              "Invalid data found", "Input/output error")


def _assert_plain(message: str) -> None:
    leaked = [word for word in _INTERNALS if word in message]
    assert not leaked, f"{leaked} in {message!r}"


camera = pytest.fixture(running_rtsp_server, name="camera")  # the same server, named for what it plays here


@contextlib.contextmanager
def silent_server(host: str = "127.0.0.1") -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung camera); yields the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family)
    try:
        listener.bind((host, 0))
    except OSError as exc:
        listener.close()
        pytest.skip(f"cannot listen on {host}: {exc}")
    listener.listen(8)
    accepted: list[socket.socket] = []  # kept open: a closed socket would be an answer

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()
        for connection in accepted:
            connection.close()


def _grabber(uri: str, config: SourceConfig) -> tuple[Grabber, EventRecorder, FrameCollector]:
    ring = RingBuffer(16, OverflowPolicy.DROP_OLDEST)
    recorder = EventRecorder()
    grabber = Grabber("cam", lambda: open_source(uri, "cam", config), ring, recorder, config)
    collector = FrameCollector(ring)
    grabber.start()
    return grabber, recorder, collector


def _open_error(uri: str, config: SourceConfig) -> SourceError:
    source = open_source(uri, "cam", config)
    with pytest.raises(SourceOpenError) as caught, contextlib.closing(source):
        source.open()
    return caught.value


def _terminal(events: list[SourceEvent]) -> bool:
    return bool(events) and events[-1].terminal


# -- item 9: when faults are reported, and how fast a stop is -------------------------------------


@pytest.mark.rtsp
def test_a_frozen_camera_is_reported_after_the_read_timeout_not_twice_it(camera: RtspServer) -> None:
    read_timeout = 3.0
    config = SourceConfig(open_timeout_s=5, read_timeout_s=read_timeout, reconnect_initial_s=5, reconnect_max_s=5,
                          live_probe_s=0.5)
    grabber, recorder, collector = _grabber(camera.url, config)
    try:
        collector.wait_for_count(5, 30)
        camera.pause()
        frozen_ms = time.time() * 1000
        recorder.wait_for(lambda events: any(e.state is SourceState.RECONNECTING for e in events), 30,
                          "RECONNECTING once the camera froze")
    finally:
        grabber.stop()
    reconnecting = next(e for e in recorder.events if e.state is SourceState.RECONNECTING)
    reported_after = (reconnecting.wall_ms - frozen_ms) / 1000
    # Not scaled: the figure under test is the timeout itself. Before, it was 2 x 3 s; the slack of
    # half a timeout is for a loaded machine.
    assert read_timeout - 0.2 <= reported_after < 1.5 * read_timeout, reported_after
    assert reconnecting.outcome is SourceOutcome.READ_TIMEOUT
    assert f"no frame for {read_timeout:g} s" in reconnecting.detail
    assert f"127.0.0.1:{camera.port} stopped sending" in reconnecting.detail
    _assert_plain(reconnecting.detail)


@contextlib.contextmanager
def _blocked(state: str, request: pytest.FixtureRequest) -> Iterator[tuple[Grabber, EventRecorder]]:
    """A running grabber caught in ``state``; yields it with its events."""
    if state == "opening":  # the first open, to a port that accepts and never answers
        with silent_server() as port:
            grabber, recorder, _ = _grabber(f"rtsp://127.0.0.1:{port}/x", SourceConfig(open_timeout_s=20))
            recorder.wait_for(lambda events: bool(events), 10, "OPENING")
            time.sleep(0.5)  # FFmpeg is inside avformat_open_input by now
            yield grabber, recorder
        return
    camera: RtspServer = request.getfixturevalue("camera")
    config = SourceConfig(open_timeout_s=20, read_timeout_s=20 if state == "stalled" else 1,
                          reconnect_initial_s=30 if state == "backoff" else 0.2, reconnect_max_s=30,
                          live_probe_s=0.5)
    grabber, recorder, collector = _grabber(camera.url, config)
    collector.wait_for_count(5, 30)
    if state == "stalled":  # blocked in a read that waits 20 s for a frame
        camera.pause()
        time.sleep(1.0)
    elif state == "reopening":  # the camera froze, the read timed out, the reopen waits 20 s for an answer
        camera.pause()
        recorder.wait_for(lambda events: any(e.state is SourceState.OPENING and e.attempt for e in events), 30,
                          "OPENING again")
        time.sleep(0.5)
    elif state == "backoff":  # the camera went away; sleeping 30 s before the next attempt
        camera.kill()
        recorder.wait_for(lambda events: any(e.state is SourceState.RECONNECTING for e in events), 30,
                          "RECONNECTING")
    yield grabber, recorder
    camera.kill()  # the peer goes away, so that a call left blocked returns


@pytest.mark.parametrize("state", ["opening", *(pytest.param(state, marks=pytest.mark.rtsp)
                                                for state in ("reading", "stalled", "reopening", "backoff"))])
def test_stop_ends_the_stream_promptly_in_every_state(state: str, request: pytest.FixtureRequest) -> None:
    with _blocked(state, request) as (grabber, recorder):
        stopped = time.monotonic()
        grabber.stop()
        recorder.wait_for(_terminal, 15, "the terminal event")
        took = time.monotonic() - stopped
        count = len(recorder.events)
    # Before: a blocked open or read ran to its timeout (20 s here) first.
    assert took < scaled(1.0), f"{state}: the stream ended {took:.2f} s after stop()"
    final = recorder.events[-1]
    assert final.state is SourceState.ENDED and final.outcome is SourceOutcome.STOPPED
    # The peer is gone now, so a call left blocked returns; its thread closes the source and says nothing.
    assert grabber.join(scaled(25))
    assert len(recorder.events) == count


@pytest.mark.rtsp
@pytest.mark.slow
def test_sigterm_while_reopening_a_frozen_camera_exits_at_once(camera: RtspServer, tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "affectstream", "run", f"door={camera.url}", "--model", "tiny-random", "--no-serve",
         "--quiet", "--out", str(out), "--read-timeout", "1", "--open-timeout", "20", "--rate", "4"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_kind(out, "estimate", 90)
        camera.pause()
        _wait_for_kind(out, "stream_reconnecting", 30)
        time.sleep(1.5)  # the backoff (0.5 s) is over: the reopen is waiting for the frozen camera
        signalled_ms = time.time() * 1000
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=scaled(30))
        exited_after = time.time() - signalled_ms / 1000
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-2000:]  # a live run stopped on request, after frames: fine
    assert "Traceback" not in stderr and "terminate called" not in stderr, stderr[-2000:]
    endings = [m for m in _messages(out) if m.get("kind") == "stream_ended"]
    assert endings, "no stream_ended: the process gave up waiting for the blocked reopen"  # as before
    ended = endings[0]
    assert ended["outcome"] == "stopped"
    # Before: 8.7 s and more (the reopen ran to its timeout). The stream ends within the grace of a
    # stop, and the process exits once all is written, skipping the interpreter's slow teardown.
    assert (ended["wall"] - signalled_ms) / 1000 < scaled(1.0), ended
    assert exited_after < scaled(2.0), exited_after


def _messages(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _wait_for_kind(path: Path, kind: str, seconds: float) -> None:
    deadline = time.monotonic() + scaled(seconds)
    while not any(m.get("kind", m["type"]) == kind for m in _messages(path)):
        assert time.monotonic() < deadline, f"no {kind} within {scaled(seconds)} s: {_messages(path)[-3:]}"
        time.sleep(0.1)


# -- item 10: messages that say what happened and what to do --------------------------------------


@pytest.mark.parametrize("uri", ["rtsp://nonexistent.invalid:8554/cam", "http://nonexistent.invalid/live.ts"])
def test_a_host_that_does_not_resolve_says_so(uri: str) -> None:
    error = _open_error(uri, SourceConfig(open_timeout_s=5))
    assert "cannot resolve host nonexistent.invalid" in str(error), error
    assert "is the server up" not in str(error)
    _assert_plain(str(error))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_an_open_timeout_names_who_did_not_answer(host: str) -> None:
    with silent_server(host) as port:
        error = _open_error(f"rtsp://{url_host(host)}:{port}/cam", SourceConfig(open_timeout_s=1))
    assert error.outcome is SourceOutcome.OPEN_TIMEOUT
    assert f"no answer from {url_host(host)}:{port} within 1 s" in str(error), error
    _assert_plain(str(error))


def test_a_refused_connection_names_the_ipv6_host_in_brackets() -> None:
    port = _free_port()
    error = _open_error(f"rtsp://[::1]:{port}/cam", SourceConfig())
    if "refused" not in str(error):
        pytest.skip(f"no IPv6 loopback here: {error}")
    assert f"[::1]:{port} refused the connection" in str(error)
    _assert_plain(str(error))


def test_host_port_puts_ipv6_hosts_in_brackets_and_names_the_default_port() -> None:
    assert uri_host_port("rtsp://user:secret@[fe80::1]:8554/live") == "[fe80::1]:8554"
    assert uri_host_port("rtsp://[::1]/live") == "[::1]:554"
    assert uri_host_port("https://cams.example/a.m3u8") == "cams.example:443"
    assert uri_host_port("srt://10.0.0.2:9000") == "10.0.0.2:9000"
    assert url_host("::1") == "[::1]" and url_host("[::1]") == "[::1]" and url_host("cam.local") == "cam.local"


class _Answers(http.server.BaseHTTPRequestHandler):
    """/401, /403, /404, /410: that status; /page.html: a web page; /live.ts: an MPEG-TS stream with no
    length (live to FFmpeg) the first time, then what ``server.afterwards`` says."""

    protocol_version = "HTTP/1.0"  # the body ends when the connection closes: no length, no duration

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 the base class's name
        server: Any = self.server
        path = self.path.strip("/")
        if path == "live.ts":
            server.live_requests += 1
            if server.live_requests == 1:
                return self._answer(200, "video/mp2t", server.clip, sized=False)
            path = server.afterwards
        if path.isdigit():
            return self._answer(int(path), "text/plain", b"no")
        return self._answer(200, "text/html", b"<!doctype html><html><body><video src=live.ts></video></body></html>")

    def _answer(self, status: int, kind: str, body: bytes, sized: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        if sized:  # as web servers send pages; the live stream has no length
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def web(tmp_path: Path) -> Iterator[Any]:
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg (Debian package ffmpeg)")
    clip = tmp_path / "clip.ts"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
                    "-t", "2", "-c:v", "libx264", "-g", "5", "-pix_fmt", "yuv420p", "-f", "mpegts", str(clip)],
                   check=True, timeout=60)
    server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Answers))
    server.clip, server.live_requests, server.afterwards = clip.read_bytes(), 0, "404"
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


_QUICK_RETRIES = SourceConfig(open_timeout_s=5, read_timeout_s=2, reconnect_initial_s=0.05, reconnect_max_s=0.1)


@pytest.mark.parametrize(("path", "outcome", "says"), [
    ("401", SourceOutcome.DENIED, "401 Unauthorized"),
    ("403", SourceOutcome.DENIED, "403 Forbidden"),
    ("404", SourceOutcome.MISSING, "404 Not Found"),
    ("410", SourceOutcome.MISSING, "HTTP 4xx"),
    ("page.html", SourceOutcome.NOT_VIDEO, "not a video"),
])
def test_a_definitive_http_answer_fails_at_once(web: Any, path: str, outcome: SourceOutcome, says: str) -> None:
    grabber, recorder, _ = _grabber(f"{web.base}/{path}", _QUICK_RETRIES)
    try:
        recorder.wait_for(_terminal, 5, "the terminal event")
    finally:
        grabber.stop()
    # Before: 401, 403 and 410 were retried (--open-retries) as connection_lost.
    assert recorder.states() == [SourceState.OPENING, SourceState.FAILED]
    final = recorder.events[-1]
    assert final.outcome is outcome
    assert says in final.detail
    _assert_plain(final.detail)


@pytest.mark.parametrize(("afterwards", "outcome"), [("404", SourceOutcome.MISSING),
                                                      ("page.html", SourceOutcome.NOT_VIDEO)])
def test_a_web_stream_that_turns_into_a_404_or_a_page_is_not_retried_for_ever(
        web: Any, afterwards: str, outcome: SourceOutcome) -> None:
    web.afterwards = afterwards
    grabber, recorder, collector = _grabber(f"{web.base}/live.ts", _QUICK_RETRIES)
    try:
        # Before: reconnecting every 0.1 s for ever, never a terminal event.
        recorder.wait_for(_terminal, 10, "the terminal event")
    finally:
        grabber.stop()
    assert collector.frames, "the stream ran first"
    assert recorder.states() == [SourceState.OPENING, SourceState.RUNNING, SourceState.RECONNECTING,
                                 SourceState.OPENING, SourceState.FAILED]
    assert recorder.events[-1].outcome is outcome
    assert web.live_requests == 2


def test_a_server_error_is_still_retried(web: Any) -> None:
    grabber, recorder, _ = _grabber(f"{web.base}/503", _QUICK_RETRIES)
    try:
        recorder.wait_for(lambda events: sum(e.state is SourceState.RECONNECTING for e in events) >= 2, 10,
                          "two reconnect attempts")
    finally:
        grabber.stop()
    reconnecting = next(e for e in recorder.events if e.state is SourceState.RECONNECTING)
    assert reconnecting.outcome is SourceOutcome.CONNECTION_LOST
    _assert_plain(reconnecting.detail)

