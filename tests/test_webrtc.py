"""WebRTC and MJPEG video from the real server to real aiortc peers and HTTP clients (stream/webrtc.py,
stream/video_routes.py): media time survives aiortc's random RTP origin, one encode serves every
viewer, and a bad or stalled peer harms nobody else."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from affectstream.stream.frames import VideoFrame
from affectstream.stream.server import ServerConfig, StreamServer
from affectstream.stream.video_feed import VideoSettings
from affectstream.stream.video_routes import VideoService
from affectstream.stream.webrtc import read_stamp, rtp_origin
from tests._server_helpers import make_hello
from tests.test_protocol_schemas import assert_valid
from tests.timeouts import scaled

aiortc = pytest.importorskip("aiortc", reason="aiortc is the video extra: pip install affectstream[video]")

MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")


def _pictures(count: int) -> list[np.ndarray]:
    if not MEGAMIND.exists():
        pytest.skip("needs opencv-doc's Megamind.avi (apt-get install opencv-doc)")
    capture = cv2.VideoCapture(str(MEGAMIND))
    pictures = []
    while len(pictures) < count:
        ok, bgr = capture.read()
        if not ok:
            break
        pictures.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return pictures


class _Feeder:
    """Plays real frames into the service's hub at 25 fps of media time, as a pipeline pump would."""

    def __init__(self, service: VideoService, stream: str = "cam") -> None:
        self._service, self._stream = service, stream
        self._pictures = _pictures(50)
        self.sent: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> _Feeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        index = 0
        while not self._stop.wait(0.04):
            pts = 100.0 + index / 25  # not starting at 0: the media time must come through as it is
            image = self._pictures[index % len(self._pictures)]
            self._service.on_decoded(VideoFrame(self._stream, index, pts, time.monotonic_ns(), int(time.time() * 1000),
                                                image), False, True)
            self.sent.append(pts)
            index += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture()
def served() -> Iterator[tuple[StreamServer, VideoService, _Feeder]]:
    service = VideoService(VideoSettings(max_lines=360), max_peers=3)
    server = StreamServer(ServerConfig(port=0, token="s3cret"), make_hello)
    service.mount(server)
    server.start()
    feeder = _Feeder(service).start()
    deadline = time.monotonic() + scaled(10)
    while not feeder.sent and time.monotonic() < deadline:  # the stream exists once a frame came
        time.sleep(0.01)
    try:
        yield server, service, feeder
    finally:
        feeder.stop()
        server.stop()
        service.close()


def _post(server: StreamServer, path: str, body: Any, token: str | None = "s3cret") -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    query = f"?token={token}" if token else ""
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}{query}", data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=scaled(20)) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


class _Watcher:
    """A real aiortc peer that watches one stream: frames (their RTP timestamps) and clock messages."""

    def __init__(self, server: StreamServer, stream: str = "cam") -> None:
        self.server, self.stream = server, stream
        self.rtp_timestamps: list[int] = []
        self.sizes: list[tuple[int, int]] = []
        self.clocks: list[dict[str, Any]] = []
        self.status = 0
        self.pc: Any = None

    async def watch(self, frames: int, timeout: float) -> None:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        self.pc = pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="recvonly")
        channel = pc.createDataChannel("clock")
        channel.on("message", lambda text: self.clocks.append(json.loads(text)))
        got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pc.on("track", lambda track: got.done() or got.set_result(track))
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
        self.status, answer = await asyncio.to_thread(_post, self.server, f"/webrtc/{self.stream}", offer)
        if self.status != 200:
            await pc.close()
            return
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        track = await asyncio.wait_for(got, timeout)
        async with asyncio.timeout(timeout):
            while len(self.rtp_timestamps) < frames or not self.clocks:
                frame = await track.recv()
                self.rtp_timestamps.append(int(frame.pts))
                self.sizes.append((frame.width, frame.height))

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()


def test_the_stamp_and_the_rtp_origin_rules() -> None:
    assert rtp_origin(5, 10) == (1 << 32) - 5  # the origin wraps like RTP timestamps do
    assert rtp_origin(1000 + 9000, 9000) == 1000
    value = 1_764_000_123_456
    image = np.zeros((16, 400, 3), np.uint8)
    for bit in range(48):
        if value >> (47 - bit) & 1:
            image[0:8, bit * 8:(bit + 1) * 8] = 255
    assert read_stamp(image) == value
    image[2:6, 5 * 8 + 2:5 * 8 + 6] = 128  # a blurred square is no stamp, not a wrong time
    assert read_stamp(image) is None
    assert read_stamp(np.zeros((8, 100, 3), np.uint8)) is None


def test_a_viewer_gets_the_stream_with_its_media_time_and_scaled(served: tuple[StreamServer, VideoService, _Feeder],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    server, service, feeder = served
    watcher = _Watcher(server)
    # aiortc's receiver rebases RTP timestamps to its first frame (a browser's rtpTimestamp is not):
    # keep the raw ones it sees, as the page reads them.
    from aiortc import rtcrtpreceiver

    raw: list[int] = []
    rebase = rtcrtpreceiver.TimestampMapper.map

    def keep_raw(mapper: Any, timestamp: int) -> int:
        raw.append(timestamp)
        return rebase(mapper, timestamp)

    monkeypatch.setattr(rtcrtpreceiver.TimestampMapper, "map", keep_raw)

    async def scenario() -> None:
        try:
            await watcher.watch(frames=20, timeout=scaled(20))
        finally:
            await watcher.close()

    asyncio.run(scenario())
    assert watcher.status == 200
    clock = watcher.clocks[-1]
    for message in watcher.clocks:
        assert_valid(message)  # stream/schemas/clock.json
    assert clock["source_size"] == [720, 528] and clock["clock_rate"] == 90000
    assert clock["video_size"] == [490, 360] and (490, 360) in watcher.sizes  # at most 360 lines, even sizes
    # Every frame's RTP timestamp minus the announced origin is the media time of a frame that was fed.
    sent = {round(pts * 90000) % (1 << 32) for pts in feeder.sent}
    assert len(raw) >= 20
    media = [(rtp - clock["rtp_origin"]) % (1 << 32) for rtp in raw]
    assert all(m in sent for m in media), "a frame's media time came through shifted"
    assert media == sorted(media)
    assert min(media) / 90000 >= 100.0


def test_viewers_share_one_encode_and_the_cap_and_errors_are_answered(
        served: tuple[StreamServer, VideoService, _Feeder]) -> None:
    server, service, feeder = served
    watchers = [_Watcher(server) for _ in range(3)]

    async def garbage_while_watching() -> list[int]:
        await asyncio.sleep(0.5)  # while the three negotiate and receive
        bodies: list[Any] = [{"sdp": "v=0\r\nnot sdp at all", "type": "offer"}, b"{not json", {"type": "answer"},
                             {"sdp": "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n" * 2000, "type": "offer"}]
        return [(await asyncio.to_thread(_post, server, "/webrtc/cam", body))[0] for body in bodies]

    async def scenario() -> tuple[tuple[int, dict[str, Any]], list[int]]:
        try:
            *_, garbage = await asyncio.gather(*(w.watch(frames=30, timeout=scaled(30)) for w in watchers),
                                               garbage_while_watching())
            over = await asyncio.to_thread(_post, server, "/webrtc/cam", {"sdp": "v=0\r\n", "type": "offer"})
            return over, garbage
        finally:
            for watcher in watchers:
                await watcher.close()

    over_cap, garbage = asyncio.run(scenario())
    assert [w.status for w in watchers] == [200, 200, 200], "bad offers meanwhile harmed nobody"
    assert all(len(w.rtp_timestamps) >= 30 for w in watchers)
    assert over_cap[0] == 503 and "cap of 3" in over_cap[1]["error"]
    assert all(status in (400, 413, 503) for status in garbage), garbage
    counters = service.hub.counters().streams["cam"]
    received = sum(len(w.rtp_timestamps) for w in watchers)
    assert counters.vp8_encoded < received / 2, "three viewers: one encode each frame, not three"

    assert _post(server, "/webrtc/cam", {"sdp": "v=0\r\nnot sdp at all", "type": "offer"})[0] == 400
    assert _post(server, "/webrtc/cam", b"{not json")[0] == 400
    assert _post(server, "/webrtc/nope", {"sdp": "v=0", "type": "offer"})[0] == 404
    assert _post(server, "/webrtc/cam", {"sdp": "v=0", "type": "offer"}, token=None)[0] == 401
    assert _post(server, "/capture/me", {"sdp": "v=0", "type": "offer"})[0] == 403  # not allowed in this run


def test_mjpeg_serves_the_newest_pictures_and_a_stalled_viewer_holds_nobody(
        served: tuple[StreamServer, VideoService, _Feeder]) -> None:
    server, service, feeder = served
    base = f"http://127.0.0.1:{server.port}/video/cam.mjpg?token=s3cret"
    stalled = urllib.request.urlopen(base, timeout=scaled(10))  # opened, never read
    try:
        with urllib.request.urlopen(base, timeout=scaled(10)) as response:
            assert response.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
            pictures, times = [], []
            while len(pictures) < 5:
                assert response.readline().strip() == b"--frame"
                headers = {}
                while (line := response.readline().strip()):
                    key, _, value = line.decode().partition(":")
                    headers[key.lower()] = value.strip()
                data = response.read(int(headers["content-length"]))
                response.readline()
                pictures.append(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
                times.append(float(headers["x-media-time"]))
    finally:
        stalled.close()
    assert all(p is not None and p.shape == (360, 490, 3) for p in pictures)
    assert times == sorted(times) and len(set(times)) == len(times)
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/video/nope.mjpg?token=s3cret", timeout=scaled(5))
    assert missing.value.code == 404


class _Camera:
    """A real aiortc peer that sends Megamind's frames as its camera, as the /capture page does."""

    def __init__(self, port: int, name: str) -> None:
        self.port, self.name = port, name
        self.pc: Any = None
        self.status = 0
        self.reply: dict[str, Any] = {}

    async def start(self) -> None:
        import av
        from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

        pictures = _pictures(60)

        class Frames(MediaStreamTrack):
            kind = "video"

            def __init__(self) -> None:
                super().__init__()
                self.count = 0

            async def recv(self) -> Any:
                await asyncio.sleep(1 / 15)
                frame = av.VideoFrame.from_ndarray(pictures[self.count % len(pictures)], format="rgb24")
                frame.pts, frame.time_base = self.count * 6000, __import__("fractions").Fraction(1, 90000)
                self.count += 1
                return frame

        self.pc = pc = RTCPeerConnection()
        pc.addTransceiver(Frames(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        server = type("S", (), {"port": self.port})()
        self.status, self.reply = await asyncio.to_thread(
            _post, server, f"/capture/{self.name}", {"sdp": pc.localDescription.sdp, "type": "offer"}, None)
        if self.status == 200:
            await pc.setRemoteDescription(RTCSessionDescription(self.reply["sdp"], self.reply["type"]))

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()


def test_a_browser_camera_becomes_a_stream_and_closing_it_ends_the_stream(tmp_path: Path) -> None:
    from websockets.asyncio.client import connect

    from tests._cli_process import CliProcess
    from tests._server_helpers import receive_until

    run = CliProcess(["run", "--allow-browser-sources", "--port", "0", "--quiet"], tmp_path)
    try:
        port = run.port()

        async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, int]:
            async with connect(f"ws://127.0.0.1:{port}/ws") as client:
                camera, rival = _Camera(port, "me"), _Camera(port, "me")
                await camera.start()
                assert camera.status == 200, camera.reply
                seen = await receive_until(client, lambda m: m["type"] == "estimate" and m["stream"] == "me"
                                           and m["faces"], scaled(30))
                await rival.start()  # the same name while it runs
                bad = _Camera(port, "no%20spaces")
                await bad.start()
                await rival.close()
                await camera.close()  # the tab closed
                ended = await receive_until(client, lambda m: m["type"] == "event" and m["stream"] == "me"
                                            and m["kind"] == "stream_ended", scaled(20))
                return seen, ended, rival.status, bad.status
        seen, ended, rival_status, bad_status = asyncio.run(scenario())
    finally:
        run.process.send_signal(__import__("signal").SIGINT)
        status = run.finish()
    started = [m for m in seen if m["type"] == "event" and m["kind"] == "stream_started" and m["stream"] == "me"]
    assert started, "the camera's stream started"
    face = seen[-1]["faces"][0]
    assert 150 < face["box"][0] + face["box"][2] / 2 < 600, "Megamind's face, in the camera's pixels"
    assert (rival_status, bad_status) == (409, 400)
    assert "closed the capture page" in json.dumps(ended[-1]), ended[-1]
    assert status == 0, run.stderr


def test_a_peer_that_never_connects_is_closed_and_its_viewer_released(
        served: tuple[StreamServer, VideoService, _Feeder]) -> None:
    from aiortc import RTCPeerConnection

    server, service, feeder = served
    service.peers.connect_timeout_s = 1.0

    async def post_and_vanish() -> int:
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        status, _ = await asyncio.to_thread(_post, server, "/webrtc/cam",
                                            {"sdp": pc.localDescription.sdp, "type": "offer"})
        await pc.close()  # never takes the answer: the page was closed right after posting
        return status

    assert asyncio.run(post_and_vanish()) == 200
    deadline = time.monotonic() + scaled(10)
    while (service.peers.count or service.hub.counters().vp8_viewers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service.peers.count == 0 and service.hub.counters().vp8_viewers == 0
