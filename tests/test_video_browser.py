"""Each stream's video in the dashboard, and the browser's camera as a stream, in headless Chromium
(issue 13, "Done when"):

- a running file stream's video plays over WebRTC (the decoded frame count grows for 10 s) and the
  overlay's box sits where the estimate of the displayed frame puts the face (checked on a screenshot,
  by the box color, against the box the page says it drew and against the estimate a second websocket
  client of the run received);
- with WebRTC blocked in the page (no RTCPeerConnection) the page falls back on MJPEG by itself, and
  ``?video=mjpeg`` chooses it;
- the capture page's camera (Chromium's fake camera, fed from a .y4m made from Megamind.avi) reaches
  the pipeline: estimates with faces for that stream within 10 s; closing the page gives stream_ended;
  the page explains a refusal (no --allow-browser-sources, a name in use, a bad name, a denied camera).

Screenshots are saved (tmp_path, and $AFFECTSTREAM_TEST_ARTIFACTS when set).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._browser import CHROMIUM, CHROMIUM_ARGS, save_screenshot
from tests.test_dashboard_browser import serving
from tests.timeouts import scaled

MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")
MEGAMIND_SECONDS = 11.26
BOX_COLOR = (255, 0, 255)  # stream/web/common.js BOX_COLOR: used nowhere else on the page
REFUSED = re.compile(r"Failed to load resource: the server responded with a status of (403|409)")
CAMERA_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
               "--disable-features=WebRtcHideLocalIpsWithMdns"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
    pytest.mark.skipif(not MEGAMIND.exists(), reason="needs Debian's opencv-doc (Megamind.avi)"),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg"),
]


# -- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_camera(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 s of Megamind.avi, 640 px wide, as the raw .y4m Chromium's fake camera plays (in a loop)."""
    path = tmp_path_factory.mktemp("camera") / "megamind.y4m"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(MEGAMIND), "-t", "10", "-vf", "scale=640:-2",
                    "-pix_fmt", "yuv420p", str(path)], check=True, timeout=120)
    return path


@pytest.fixture(scope="module")
def browser(fake_camera: Path) -> Iterator[Any]:
    pytest.importorskip("aiortc", reason="the video routes need aiortc (pip install affectstream[webrtc])")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, *CAMERA_ARGS, f"--use-file-for-fake-video-capture={fake_camera}"])
        yield browser
        browser.close()


@pytest.fixture()
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser context (its own localStorage); every page opened in it must log no error."""
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.on("page", lambda page: watch_errors(page, errors))
    yield context
    context.close()
    assert not errors, errors


def watch_errors(page: Any, errors: list[str]) -> None:
    # A refused offer is logged by Chromium itself ("Failed to load resource: ... status of 403"): the
    # network, not the page; the tests that provoke one check what the page says instead.
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and not REFUSED.search(m.text) else None)
    page.on("pageerror", lambda e: errors.append(str(e)))


@pytest.fixture()
def page(context: Any) -> Any:
    return context.new_page()


@pytest.fixture(scope="class")
def megamind_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`affectstream run` on Megamind.avi looped for about two minutes (real time); yields its port."""
    loops = max(10, math.ceil(scaled(150) / MEGAMIND_SECONDS))
    looped = tmp_path_factory.mktemp("megamind") / "megamind-looped.avi"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i", str(MEGAMIND), "-an",
                    "-c:v", "copy", str(looped)], check=True, timeout=120)
    with serving(f"talk={looped}", "--rate", "4") as port:
        yield port


class Listener:
    """A second websocket client of the run, in a thread: every message it receives, in order."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Listener:
        self._thread.start()
        assert self._ready.wait(scaled(10)), "the listener could not connect"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{self.port}/ws") as socket:
            self._ready.set()
            while not self._stop.is_set():
                try:
                    text = socket.recv(timeout=0.2)
                except TimeoutError:
                    continue
                self.messages.append(json.loads(text))

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], seconds: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + scaled(seconds)
        seen = 0
        while time.monotonic() < deadline:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            time.sleep(0.05)
        kinds = [(m.get("type"), m.get("stream"), m.get("kind")) for m in self.messages[-20:]]
        raise AssertionError(f"no {what} within {scaled(seconds):.0f} s; last messages: {kinds}")

    def estimate(self, stream: str, seq: int) -> dict[str, Any] | None:
        return next((m for m in self.messages if m.get("type") == "estimate" and m.get("stream") == stream
                     and m.get("seq") == seq), None)


# -- what the dashboard shows ---------------------------------------------------------------------------

VIDEO_STATE = """() => {
    const root = document.querySelector('.stream .video');
    if (!root) return null;
    const video = root.querySelector('video');
    const image = root.querySelector('img');
    const overlay = root.querySelector('canvas.overlay');
    return {
        state: root.dataset.state, transport: root.dataset.transport,
        badge: root.querySelector('.transport').textContent, title: root.querySelector('.transport').title,
        note: root.querySelector('.video-note').textContent,
        frames: video.getVideoPlaybackQuality().totalVideoFrames,
        videoSize: [video.videoWidth, video.videoHeight], imageSize: [image.naturalWidth, image.naturalHeight],
        canvasSize: [overlay.clientWidth, overlay.clientHeight],
        frameTs: overlay.dataset.frameTs, estimateTs: overlay.dataset.estimateTs,
        estimateSeq: overlay.dataset.estimateSeq, boxes: JSON.parse(overlay.dataset.boxes || '[]'),
    };
}"""


def video_state(page: Any) -> dict[str, Any]:
    return page.evaluate(VIDEO_STATE)


def wait_for_video(page: Any, predicate: Callable[[dict[str, Any]], bool], seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + scaled(seconds)
    while True:
        seen = video_state(page)
        if seen is not None and predicate(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"the video never showed what was expected; last seen: {seen}")
        page.wait_for_timeout(200)


def box_pixels(png: bytes) -> list[int] | None:
    """The bounding box [x, y, w, h] of the overlay's box color in a screenshot, or None."""
    import cv2
    import numpy as np

    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None, "a PNG screenshot"
    image = decoded.astype(np.int16)
    blue, green, red = image[..., 0], image[..., 1], image[..., 2]
    mask = (red >= BOX_COLOR[0] - 16) & (green <= BOX_COLOR[1] + 16) & (blue >= BOX_COLOR[2] - 16)
    ys, xs = np.nonzero(mask)
    if len(xs) < 20:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def contained(width: float, height: float, w: float, h: float) -> tuple[float, float, float]:
    """object-fit: contain of a (w, h) picture in a (width, height) box: (x offset, y offset, scale)."""
    scale = min(width / w, height / h)
    return (width - w * scale) / 2, (height - h * scale) / 2, scale


def source_width() -> int:
    import cv2

    capture = cv2.VideoCapture(str(MEGAMIND))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    finally:
        capture.release()


def image_fingerprint(page: Any) -> str:
    """The MJPEG <img>'s current picture, drawn into a canvas (same origin: readable), as a data URL."""
    return page.evaluate("""() => {
        const image = document.querySelector('.stream .video img');
        const canvas = document.createElement('canvas');
        canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
        canvas.getContext('2d').drawImage(image, 0, 0);
        return canvas.toDataURL('image/png');
    }""")


# -- the dashboard's video ------------------------------------------------------------------------------

class TestDashboardVideo:
    """One run of Megamind.avi (looped) serves these tests."""

    def test_webrtc_video_plays_and_the_box_is_on_the_face_of_its_frame(
            self, page: Any, megamind_run: int, tmp_path: Path) -> None:
        with Listener(megamind_run) as listener:
            page.goto(f"http://127.0.0.1:{megamind_run}/")
            first = wait_for_video(page, lambda s: s["state"] == "playing", 20)
            assert first["transport"] == "webrtc" and first["badge"] == "WebRTC", first
            # The decoded frame count grows over 10 s, in every 2 s of them.
            counts = [first["frames"]]
            for _ in range(5):
                page.wait_for_timeout(2000)
                counts.append(video_state(page)["frames"])
            assert all(later > earlier for earlier, later in zip(counts, counts[1:])), counts
            assert counts[-1] - counts[0] >= 10 * 2, f"at least 2 frames a second were shown: {counts}"

            checked = 0
            misses: list[str] = []
            width = source_width()
            deadline = time.monotonic() + scaled(40)
            while checked < 3 and time.monotonic() < deadline:
                page.evaluate("() => document.querySelector('.stream video').play()")
                page.wait_for_timeout(700)
                # Paused, the picture and its overlay hold still for the screenshot (a screenshot takes
                # longer than the 250 ms between two estimates).
                page.evaluate("() => document.querySelector('.stream video').pause()")
                page.wait_for_timeout(100)
                before = video_state(page)
                shot = page.locator(".stream canvas.overlay").screenshot()
                after = video_state(page)
                if before["frameTs"] != after["frameTs"] or len(before["boxes"]) != 1:
                    continue  # a frame still came between the reads, or not exactly one face
                frame_ts, estimate_ts = float(before["frameTs"]), float(before["estimateTs"])
                assert estimate_ts <= frame_ts + 1e-6, "never the estimate of a newer frame"
                assert frame_ts - estimate_ts <= 2.0, "never an estimate over 2 s older than the frame"
                estimate = listener.estimate("talk", int(before["estimateSeq"]))
                assert estimate is not None, "the listener got the estimate the page drew"
                assert estimate["ts"] == pytest.approx(estimate_ts, abs=1e-6)
                found = box_pixels(shot)
                if found is None:
                    misses.append(f"no box pixels for {before}")
                    continue
                drawn = before["boxes"][0]
                assert all(abs(a - b) <= 2 for a, b in zip(found, drawn)), (found, drawn)
                x0, y0, scale = contained(*before["canvasSize"], *before["videoSize"])
                scale *= before["videoSize"][0] / width  # boxes are in the source's pixels
                bx, by, bw, bh = estimate["faces"][0]["box"]
                expected = [x0 + bx * scale, y0 + by * scale, bw * scale, bh * scale]
                assert all(abs(a - b) <= 10 for a, b in zip(found, expected)), (found, expected, before)
                checked += 1
                save_screenshot(page, tmp_path, f"dashboard-webrtc-{checked}.png")
            assert checked == 3, f"three screenshots checked; misses: {misses}"

    @pytest.mark.parametrize("how", ["blocked", "chosen"])
    def test_mjpeg_when_webrtc_is_blocked_or_chosen(self, page: Any, megamind_run: int, tmp_path: Path,
                                                    how: str) -> None:
        if how == "blocked":
            # What a browser without WebRTC (or a policy that removes it) looks like to the page.
            page.add_init_script("delete window.RTCPeerConnection; delete window.webkitRTCPeerConnection;")
            page.goto(f"http://127.0.0.1:{megamind_run}/")
        else:
            page.goto(f"http://127.0.0.1:{megamind_run}/?video=mjpeg")
        seen = wait_for_video(page, lambda s: s["state"] == "playing" and s["imageSize"][0] > 0, 20)
        assert seen["transport"] == "mjpeg" and seen["badge"] == "MJPEG", seen
        assert "newest estimate" in seen["title"]
        if how == "blocked":
            assert "no WebRTC" in seen["title"], seen["title"]
        assert seen["imageSize"][1] <= 720, "at most 720 lines"
        pictures = {image_fingerprint(page)}
        for _ in range(10):
            page.wait_for_timeout(500)
            pictures.add(image_fingerprint(page))
        assert len(pictures) >= 3, "the picture changes over time"
        with_boxes = wait_for_video(page, lambda s: len(s["boxes"]) >= 1, 10)
        found = box_pixels(page.locator(".stream canvas.overlay").screenshot())
        assert found is not None, with_boxes
        save_screenshot(page, tmp_path, f"dashboard-mjpeg-{how}.png")
        if how == "chosen":
            # The overlay's toggles: boxes off takes them away at once, and the choice outlives a reload.
            toggle = page.locator('#toggles input[data-toggle="boxes"]')
            toggle.uncheck()
            assert video_state(page)["boxes"] == []
            assert box_pixels(page.locator(".stream canvas.overlay").screenshot()) is None
            page.reload()
            wait_for_video(page, lambda s: s["state"] == "playing" and s["imageSize"][0] > 0, 20)
            assert not toggle.is_checked(), "kept in localStorage"
            toggle.check()
            wait_for_video(page, lambda s: len(s["boxes"]) >= 1, 10)

    def test_the_capture_page_explains_refusals(self, context: Any, megamind_run: int) -> None:
        base = f"http://127.0.0.1:{megamind_run}/capture"
        page = context.new_page()
        # This run was started without --allow-browser-sources: the server refuses (403) and says why.
        page.goto(f"{base}?name=cam")
        page.click("#start")
        text = wait_for_error(page)
        assert "--allow-browser-sources" in text, text
        assert page.locator("#start").is_enabled(), "it can be tried again"
        # A bad name is refused before anything is sent.
        page.fill("#name", "my camera!")
        page.click("#start")
        assert "letters, digits" in wait_for_error(page)
        # A denied camera.
        denied = context.new_page()
        denied.add_init_script("""navigator.mediaDevices.getUserMedia = () =>
            Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));""")
        denied.goto(f"{base}?name=cam")
        denied.click("#start")
        assert "denied" in wait_for_error(denied)


def wait_for_error(page: Any) -> str:
    page.wait_for_function("() => document.getElementById('message').dataset.kind === 'error'",
                           timeout=scaled(15) * 1000)
    text = page.locator("#message").text_content()
    page.evaluate("() => { document.getElementById('message').dataset.kind = 'info'; }")  # for the next wait
    return text


# -- the browser's camera as a stream -------------------------------------------------------------------

@pytest.fixture()
def capture_run() -> Iterator[int]:
    with serving("--allow-browser-sources", "--rate", "4") as port:
        yield port


def test_the_capture_page_camera_becomes_a_stream_and_closing_the_page_ends_it(
        context: Any, capture_run: int, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{capture_run}"
    with Listener(capture_run) as listener:
        page = context.new_page()
        page.goto(f"{base}/capture?name=webcam")
        assert page.locator("#name").input_value() == "webcam", "the name comes from ?name="
        page.click("#start")
        started = time.monotonic()
        listener.wait_for(lambda m: m.get("type") == "event" and m.get("stream") == "webcam"
                          and m.get("kind") == "stream_started", 10, "stream_started of webcam")
        estimate = listener.wait_for(lambda m: m.get("type") == "estimate" and m.get("stream") == "webcam"
                                     and bool(m.get("faces")), 10, "an estimate with a face of webcam")
        elapsed = time.monotonic() - started
        assert elapsed <= scaled(10), elapsed
        assert estimate["faces"][0]["box"][2] > 20
        # The page draws its own stream's estimates over its preview.
        page.wait_for_function("() => JSON.parse(document.querySelector('#preview canvas.overlay').dataset.boxes"
                               " || '[]').length > 0", timeout=scaled(10) * 1000)
        assert box_pixels(page.locator("#preview canvas.overlay").screenshot()) is not None
        save_screenshot(page, tmp_path, "capture.png")
        # The dashboard lists the new stream.
        dashboard = context.new_page()
        dashboard.goto(f"{base}/?video=off")
        dashboard.wait_for_selector('.stream[data-stream="webcam"]', timeout=scaled(10) * 1000)
        dashboard.close()
        # A second page cannot take the name (409), and says so.
        other = context.new_page()
        other.goto(f"{base}/capture?name=webcam")
        other.click("#start")
        assert "already in use" in wait_for_error(other)
        other.close()
        # Closing the tab ends the stream.
        page.close(run_before_unload=True)
        ended = listener.wait_for(lambda m: m.get("type") == "event" and m.get("stream") == "webcam"
                                  and m.get("kind") in ("stream_ended", "stream_error"), 10, "the end of webcam")
        assert ended["kind"] == "stream_ended", ended
