"""stream/video_feed.py: paced, one-encode-per-stream video for WebRTC (VP8) and MJPEG viewers."""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from affectstream.errors import ConfigError
from affectstream.stream.frames import VideoFrame
from affectstream.stream.video_feed import (
    EncodedVideo,
    FramePacer,
    KeyframePolicy,
    LatestSlot,
    StreamVideo,
    VideoHub,
    VideoKind,
    VideoSettings,
    scaled_size,
    to_av_packet,
)

MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")
SOURCE = (360, 264)  # (w, h) of the test frames: Megamind at half size
MAX_LINES = 144
OUT = scaled_size(*SOURCE, MAX_LINES)  # (196, 144)
STEP = 1 / 15  # media time between test frames: every one passes the pacer at 15 fps
WAIT = 5.0  # seconds any single await may take before the test fails


def _read_images(count: int) -> list[np.ndarray]:
    images: list[np.ndarray] = []
    if MEGAMIND.exists():
        capture = cv2.VideoCapture(str(MEGAMIND))
        while len(images) < count:
            ok, bgr = capture.read()
            if not ok:
                break
            images.append(cv2.cvtColor(cv2.resize(bgr, SOURCE, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
        capture.release()
    while len(images) < count:  # synthetic: a gradient with a moving square
        index = len(images)
        x = np.linspace(0, 255, SOURCE[0], dtype=np.float32)
        y = np.linspace(0, 255, SOURCE[1], dtype=np.float32)[:, None]
        image = np.stack([np.broadcast_to(x, (SOURCE[1], SOURCE[0])), np.broadcast_to(y, (SOURCE[1], SOURCE[0])),
                          np.full((SOURCE[1], SOURCE[0]), (index * 7) % 255, np.float32)], axis=2).astype(np.uint8)
        image[40:90, 10 + index * 4:60 + index * 4] = 255
        images.append(np.ascontiguousarray(image))
    return images


IMAGES = _read_images(60)


def frame(index: int, stream_id: str = "cam", pts: float | None = None,
          source_size: tuple[int, int] | None = None) -> VideoFrame:
    return VideoFrame(stream_id=stream_id, index=index, pts=index * STEP if pts is None else pts,
                      captured_ns=time.monotonic_ns(), wall_ms=int(time.time() * 1000),
                      image=IMAGES[index % len(IMAGES)], source_size=source_size)


def settings(**overrides: object) -> VideoSettings:
    values: dict[str, object] = {"max_lines": MAX_LINES, "encoder_idle_s": 0.3, "min_keyframe_gap_s": 0.0,
                                 "keyframe_interval_s": 100.0}
    values.update(overrides)
    return VideoSettings(**values)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def run(coroutine_function: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coroutine_function(), 30))  # type: ignore[arg-type]


def decode_vp8(packets: list[EncodedVideo]) -> list[np.ndarray]:
    """Each packet through aiortc's own VP8 path: pack (RTP payloads), depayload, Vp8Decoder."""
    from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
    from aiortc.jitterbuffer import JitterFrame

    packer, decoder, pictures = Vp8Encoder(), Vp8Decoder(), []
    for packet in packets:
        payloads, timestamp = packer.pack(to_av_packet(packet))
        assert payloads and timestamp == packet.pts
        data = b"".join(vp8_depayload(payload) for payload in payloads)
        for decoded in decoder.decode(JitterFrame(data, timestamp)):
            pictures.append(decoded.to_ndarray(format="rgb24"))
    return pictures


# -- settings and pure rules ---------------------------------------------------------------------------


def test_settings_defaults() -> None:
    defaults = VideoSettings()
    assert (defaults.max_lines, defaults.max_fps, defaults.keyframe_interval_s, defaults.bitrate,
            defaults.jpeg_quality) == (720, 15.0, 2.0, 1_500_000, 80)


@pytest.mark.parametrize("name, value", [
    ("max_lines", 0), ("max_lines", 8), ("max_lines", 720.5), ("max_lines", True), ("max_fps", 0),
    ("max_fps", -1.0), ("max_fps", "15"), ("keyframe_interval_s", 0.0), ("bitrate", 10),
    ("jpeg_quality", 0), ("jpeg_quality", 101), ("min_keyframe_gap_s", -1), ("encoder_idle_s", -0.5),
])
def test_settings_are_validated(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=name):
        VideoSettings(**{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("size, max_lines, expected", [
    ((1280, 720), 720, (1280, 720)),  # already fits
    ((1920, 1080), 720, (1280, 720)),
    ((3840, 2160), 720, (1280, 720)),
    ((640, 480), 720, (640, 480)),  # never enlarged
    ((721, 481), 720, (720, 480)),  # odd: the odd pixel goes
    ((1081, 1921), 720, (404, 720)),  # portrait: height is the limit; 405 made even
    ((1080, 1920), 720, (404, 720)),
    ((720, 528), 144, (196, 144)),
    ((3, 5), 720, (2, 4)),  # tiny
    ((1, 1), 720, (2, 2)),  # 4:2:0 needs 2x2 at least
    ((4000, 3), 720, (4000, 2)),
])
def test_scaled_size(size: tuple[int, int], max_lines: int, expected: tuple[int, int]) -> None:
    assert scaled_size(*size, max_lines) == expected


def test_scaled_size_keeps_aspect_and_rules() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        width, height, lines = rng.randint(2, 8000), rng.randint(2, 8000), rng.choice([144, 360, 480, 720, 1080])
        w, h = scaled_size(width, height, lines)
        assert w % 2 == 0 and h % 2 == 0
        assert h <= lines and w <= max(2, width) and h <= max(2, height)
        if height > lines and w > 20:
            assert abs(w / h - width / height) <= 2.5 / h * (width / height) + 2.5 / h


def test_pacer_halves_30fps_even_with_jitter() -> None:
    exact = FramePacer(15.0)
    assert sum(exact.offer(i / 30) for i in range(300)) == 150
    rng = random.Random(1)
    jittery = FramePacer(15.0)
    times = [i / 30 + rng.uniform(-0.004, 0.004) for i in range(300)]
    kept = [t for t in times if jittery.offer(t)]
    assert 148 <= len(kept) <= 151, len(kept)  # ~15 fps, not 10
    for start in np.arange(0.0, 9.0, 0.1):  # never more than max_fps in any second (+ the edge frame)
        assert sum(start <= t < start + 1 for t in kept) <= 16


@pytest.mark.parametrize("fps, low, high", [(60, 150, 151), (30, 150, 150), (15, 150, 150), (10, 100, 100),
                                            (24, 115, 151), (120, 150, 151)])
def test_pacer_rates(fps: int, low: int, high: int) -> None:
    pacer = FramePacer(15.0)
    assert low <= sum(pacer.offer(i / fps) for i in range(fps * 10)) <= high  # 10 s of media time


def test_pacer_restarts_when_pts_goes_backwards() -> None:
    pacer = FramePacer(15.0)
    assert pacer.offer(100.0)
    assert not pacer.offer(100.01)
    assert pacer.offer(0.0)  # a new stream: its first frame is taken at once
    assert not pacer.offer(0.02)
    assert pacer.offer(0.07)
    assert not pacer.offer(0.07)  # the same time again is not new


def test_pacer_does_not_burst_after_a_gap() -> None:
    pacer = FramePacer(15.0)
    assert pacer.offer(0.0)
    assert pacer.offer(5.0)  # after a pause
    assert not pacer.offer(5.0 + 1 / 30)  # no catching up on the missed slots


def test_keyframe_policy_interval_and_rate_limit() -> None:
    policy = KeyframePolicy(interval_s=2.0, min_gap_s=0.5)
    assert policy.wants(0.0, now=0.0)
    policy.encoded(0.0, now=0.0, keyframe=True)
    assert not policy.wants(1.0, now=0.1)
    policy.request()
    assert not policy.wants(1.1, now=0.2)  # too soon after the last keyframe
    assert policy.wants(1.2, now=0.6)
    policy.encoded(1.2, now=0.6, keyframe=True)
    assert not policy.requested and not policy.wants(2.0, now=0.7)
    assert policy.wants(3.2, now=0.8)  # interval of media time
    assert policy.wants(0.5, now=0.9)  # media time went backwards


# -- latest slot ---------------------------------------------------------------------------------------


def test_latest_slot_overwrites_counts_and_wakes_from_a_thread() -> None:
    async def main() -> None:
        slot: LatestSlot[int] = LatestSlot()
        assert slot.get() == (0, None)
        for value in range(5):
            slot.put(value)
        assert slot.overwritten == 4 and slot.get() == (5, 4)
        slot.put(5)
        assert slot.overwritten == 4  # 4 was read before 5 replaced it
        waiter = asyncio.ensure_future(slot.wait_newer(6))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        threading.Thread(target=slot.put, args=(99,)).start()
        assert await asyncio.wait_for(waiter, WAIT) == (7, 99)
        with pytest.raises(TimeoutError):
            await slot.wait_newer(7, timeout=0.05)

    run(main)


def test_latest_slot_schedules_one_wake_per_pending_wake() -> None:
    async def main() -> None:
        slot: LatestSlot[int] = LatestSlot()
        wakes = []
        send = slot._send_wake

        def counting(loop: asyncio.AbstractEventLoop | None) -> None:
            if loop is not None:
                wakes.append(1)
            send(loop)

        slot._send_wake = counting  # type: ignore[method-assign]
        for value in range(100):  # no waiter: no wake at all
            slot.put(value)
        assert not wakes
        waiter = asyncio.ensure_future(slot.wait_newer(slot.version))
        await asyncio.sleep(0.01)
        for value in range(100):  # the loop does not run in between: one wake covers them all
            slot.put(value)
        assert len(wakes) == 1
        assert (await asyncio.wait_for(waiter, WAIT))[1] == 99

    run(main)


def test_latest_slot_close_wakes_waiters() -> None:
    async def main() -> None:
        slot: LatestSlot[int] = LatestSlot()
        slot.put(1)
        waiters = [asyncio.ensure_future(slot.wait_newer(1)) for _ in range(3)]
        await asyncio.sleep(0.01)
        threading.Thread(target=slot.close).start()
        assert await asyncio.wait_for(asyncio.gather(*waiters), WAIT) == [None, None, None]
        assert slot.put(2) == 1 and await slot.wait_newer(0) is None

    run(main)


# -- VP8 ------------------------------------------------------------------------------------------------


def test_two_viewers_share_one_encode() -> None:
    async def main() -> None:
        hub = VideoHub(settings())
        hub.bind(asyncio.get_running_loop())
        video = hub.get("cam")
        assert video is not None
        first, second = video.watch_packets(), video.watch_packets()
        got: tuple[list[EncodedVideo], list[EncodedVideo]] = ([], [])
        for index in range(12):
            hub.offer(frame(index))
            a, b = await first.next(WAIT), await second.next(WAIT)
            assert a is not None and b is not None
            got[0].append(a)
            got[1].append(b)
        counters = hub.counters()
        assert counters.vp8_encoded == 12 and counters.streams["cam"].vp8_encoded == 12  # not 24
        assert counters.vp8_viewers == 2 and counters.frames_offered == 12
        assert got[0] == got[1] and all(a is b for a, b in zip(*got))  # the same records
        assert [p.index for p in got[0]] == list(range(12))
        assert got[0][0].keyframe and not any(p.keyframe for p in got[0][1:])
        assert all(p.size == OUT and p.source_size == SOURCE for p in got[0])
        assert [p.pts for p in got[0]] == [round(i * STEP * 90000) for i in range(12)]
        pictures = decode_vp8(got[0])
        assert len(pictures) == 12 and pictures[0].shape == (OUT[1], OUT[0], 3)
        # the decoded picture looks like the source (a valid bitstream, not just any bytes)
        expected = cv2.resize(IMAGES[11], OUT, interpolation=cv2.INTER_AREA).astype(np.float32)
        assert np.abs(pictures[11].astype(np.float32) - expected).mean() < 20
        first.close()
        second.close()
        hub.close()

    run(main)


def test_to_av_packet_is_what_aiortc_packs() -> None:
    async def main() -> None:
        video = StreamVideo("cam", settings())
        with video.watch_packets() as viewer:
            video.offer(frame(3, pts=12.5))
            packet = await viewer.next(WAIT)
        video.close()
        assert packet is not None and packet.keyframe
        av_packet = to_av_packet(packet)
        assert bytes(av_packet) == packet.data and av_packet.is_keyframe
        assert av_packet.pts == 1_125_000 and av_packet.time_base.denominator == 90000
        from aiortc.codecs.vpx import PACKET_MAX, Vp8Decoder, Vp8Encoder, vp8_depayload
        from aiortc.jitterbuffer import JitterFrame

        payloads, timestamp = Vp8Encoder().pack(av_packet)
        assert timestamp == 1_125_000 and len(payloads) >= 2  # several RTP packets of one frame
        assert all(len(payload) <= PACKET_MAX for payload in payloads)
        data = b"".join(vp8_depayload(payload) for payload in payloads)
        assert data == packet.data
        decoded = Vp8Decoder().decode(JitterFrame(data, timestamp))
        assert len(decoded) == 1 and (decoded[0].width, decoded[0].height) == OUT

    run(main)


def test_stalled_viewer_holds_nothing_and_delays_nobody() -> None:
    async def main() -> None:
        hub = VideoHub(settings())
        video = hub.get("cam")
        assert video is not None
        reader, stalled = video.watch_packets(), video.watch_packets()
        gc.collect()
        baseline = sum(isinstance(o, EncodedVideo) for o in gc.get_objects())
        live_counts = []
        for index in range(40):
            hub.offer(frame(index))
            packet = await reader.next(WAIT)  # never waits for the stalled one
            assert packet is not None and packet.index == index
            if index in (9, 39):
                gc.collect()
                live_counts.append(sum(isinstance(o, EncodedVideo) for o in gc.get_objects()))
        assert live_counts[1] <= live_counts[0] <= baseline + 2  # the newest packet (+ our local): no backlog
        counters = hub.counters().streams["cam"]
        assert counters.vp8_encoded == 40 and counters.vp8_viewers == 2 and stalled.delivered == 0
        reader.close()
        stalled.close()
        assert hub.counters().vp8_viewers == 0
        hub.close()

    run(main)


def test_slow_viewer_resumes_at_a_keyframe_never_after_a_gap() -> None:
    async def main() -> None:
        video = StreamVideo("cam", settings())
        fast, slow = video.watch_packets(), video.watch_packets()
        got_slow: list[EncodedVideo] = []
        index = 0

        async def step() -> EncodedVideo:
            nonlocal index
            video.offer(frame(index))
            index += 1
            packet = await fast.next(WAIT)
            assert packet is not None
            return packet

        await step()
        packet = await slow.next(WAIT)
        assert packet is not None and packet.keyframe
        got_slow.append(packet)
        for _ in range(3):
            await step()
            packet = await slow.next(WAIT)
            assert packet is not None
            got_slow.append(packet)
        for _ in range(5):  # slow stops reading: it misses 5 packets
            await step()
        resumed = asyncio.ensure_future(slow.next(WAIT))
        await asyncio.sleep(0.01)
        assert not resumed.done()  # the newest is a P-frame after a gap: not given
        fast_got = []
        while not resumed.done() and len(fast_got) < 5:  # slow waits while frames go on
            fast_got.append(await step())
            await asyncio.sleep(0.005)
        packet = await resumed
        assert packet is not None and packet.keyframe and packet.index > got_slow[-1].index + 1
        got_slow.append(packet)
        assert any(p.keyframe for p in fast_got)  # the keyframe slow asked for
        for _ in range(4):
            await step()
            packet = await slow.next(WAIT)
            assert packet is not None
            got_slow.append(packet)
        for before, after in zip(got_slow, got_slow[1:]):
            assert after.keyframe or after.index == before.index + 1
        counters = video.counters()
        assert counters.vp8_resyncs == 1 and counters.vp8_skipped >= 1
        assert len(decode_vp8(got_slow)) == len(got_slow)  # a decoder following slow never lacks a reference
        fast.close()
        slow.close()
        video.close()

    run(main)


def test_late_viewer_starts_at_the_next_frame_a_keyframe() -> None:
    async def main() -> None:
        video = StreamVideo("cam", settings())
        with video.watch_packets() as first:
            for index in range(5):
                video.offer(frame(index))
                assert await first.next(WAIT) is not None
            with video.watch_packets() as late:
                video.offer(frame(5))
                packet = await late.next(WAIT)
                assert packet is not None and packet.keyframe and packet.index == 5
                got = await first.next(WAIT)
                assert got is packet  # the first viewer gets that keyframe too: still one encode
            assert video.counters().vp8_encoded == 6
        video.close()

    run(main)


def test_request_keyframe_gives_a_keyframe_next_rate_limited() -> None:
    async def main() -> None:
        now = [0.0]
        video = StreamVideo("cam", settings(min_keyframe_gap_s=0.5), clock=lambda: now[0])
        with video.watch_packets() as viewer:
            keys = []
            for index in range(4):
                video.offer(frame(index))
                packet = await viewer.next(WAIT)
                assert packet is not None
                keys.append(packet.keyframe)
            assert keys == [True, False, False, False]
            now[0] = 1.0
            video.request_keyframe()
            video.offer(frame(4))
            packet = await viewer.next(WAIT)
            assert packet is not None and packet.keyframe
            video.request_keyframe()  # again at once: rate-limited
            now[0] = 1.2
            video.offer(frame(5))
            packet = await viewer.next(WAIT)
            assert packet is not None and not packet.keyframe
            now[0] = 1.6  # the request still holds, and is now due
            video.offer(frame(6))
            packet = await viewer.next(WAIT)
            assert packet is not None and packet.keyframe
            assert video.counters().keyframes == 3
        video.close()

    run(main)


def test_periodic_keyframes_by_media_time() -> None:
    async def main() -> None:
        video = StreamVideo("cam", settings(keyframe_interval_s=1.0))
        with video.watch_packets() as viewer:
            keys = []
            for index in range(32):  # 15 fps of media time: keyframes at 0, 1 and 2 s
                video.offer(frame(index))
                packet = await viewer.next(WAIT)
                assert packet is not None
                keys.append(packet.index if packet.keyframe else None)
        video.close()
        assert [k for k in keys if k is not None] == [0, 15, 30]

    run(main)


def test_no_viewer_no_encode_and_encoder_stops_when_idle() -> None:
    async def main() -> None:
        hub = VideoHub(settings(encoder_idle_s=0.2))
        hub.bind(asyncio.get_running_loop())
        for index in range(10):
            hub.offer(frame(index))
            await asyncio.sleep(0.002)
        counters = hub.counters().streams["cam"]
        assert counters.vp8_encoded == counters.jpeg_encoded == 0 and not counters.vp8_running
        video = hub.get("cam")
        assert video is not None and video._executor is None  # not even a thread
        with video.watch_packets() as viewer:
            packet = await viewer.next(WAIT)  # the newest frame is encoded at once
            assert packet is not None and packet.ts == pytest.approx(9 * STEP)
        assert hub.counters().vp8_encoded == 1
        for index in range(10, 20):  # the viewer left: these are not encoded
            hub.offer(frame(index))
            await asyncio.sleep(0.01)
        assert hub.counters().vp8_encoded == 1
        await until(lambda: not hub.counters().streams["cam"].vp8_running)
        with video.watch_packets() as viewer:  # a new viewer restarts the encoder, at a keyframe
            hub.offer(frame(20))
            packet = await viewer.next(WAIT)
            assert packet is not None and packet.keyframe and packet.index == 1
        hub.close()

    run(main)


def test_cancelled_viewer_task_is_unregistered() -> None:
    async def main() -> None:
        video = StreamVideo("cam", settings())

        async def watch() -> None:
            with video.watch_packets() as viewer:
                await viewer.next()

        async def consume() -> None:
            async for _packet in video.packets():
                pass

        tasks = [asyncio.ensure_future(watch()), asyncio.ensure_future(consume())]
        await asyncio.sleep(0.02)
        assert video.counters().vp8_viewers == 2
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert video.counters().vp8_viewers == 0
        video.close()

    run(main)


def test_offers_before_bind_are_kept_and_pipeline_thread_only_paces(monkeypatch: pytest.MonkeyPatch) -> None:
    import affectstream.stream.video_feed as video_feed

    work_threads: set[str] = set()
    resize = video_feed.picture_for

    def recording_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        work_threads.add(threading.current_thread().name)
        return resize(image, size)

    monkeypatch.setattr(video_feed, "picture_for", recording_resize)
    hub = VideoHub(settings())
    for index in range(5):  # the server's loop does not exist yet
        assert hub.offer(frame(index))
    video = hub.get("cam")
    assert video is not None and video.newest_frame() is not None

    async def main() -> None:
        hub.bind(asyncio.get_running_loop())
        assert video is not None
        with video.watch_packets() as viewer, video.watch_jpegs() as jpegs:
            packet = await viewer.next(WAIT)
            assert packet is not None and packet.ts == pytest.approx(4 * STEP) and packet.keyframe

            def pump() -> None:  # the pipeline's thread: 3 s of 30 fps, as fast as it can
                for index in range(5, 95):
                    hub.offer(frame(index, pts=4 * STEP + (index - 4) / 30))

            thread = threading.Thread(target=pump, name="pump")
            thread.start()
            received = 0
            while thread.is_alive() or received == 0:
                if await viewer.next(WAIT) is not None:
                    received += 1
            thread.join()
            assert await jpegs.next(WAIT) is not None
        counters = hub.counters().streams["cam"]
        assert counters.frames_offered == 95 and counters.frames_paced_out == 45  # 30 fps in, 15 taken
        assert 1 <= counters.vp8_encoded <= 1 + 45 and counters.jpeg_encoded >= 1
        assert work_threads and all(name.startswith("video-cam") for name in work_threads), work_threads
        hub.close()

    run(main)


def test_source_size_is_carried() -> None:
    async def main() -> None:
        video = StreamVideo("cam", settings())
        with video.watch_packets() as viewer:
            video.offer(frame(0, source_size=(1440, 1056)))
            packet = await viewer.next(WAIT)
        video.close()
        assert packet is not None and packet.source_size == (1440, 1056) and packet.size == OUT

    run(main)


# -- JPEG ---------------------------------------------------------------------------------------------


def test_jpeg_viewers_get_decodable_pictures_one_encode() -> None:
    async def main() -> None:
        hub = VideoHub(settings(jpeg_quality=70))
        video = hub.get("cam")
        assert video is not None
        first, slow = video.watch(VideoKind.JPEG), video.watch("jpeg")
        for index in range(6):
            hub.offer(frame(index))
            picture = await first.next(WAIT)
            assert picture is not None and picture.index == index and picture.size == OUT
            image = cv2.imdecode(np.frombuffer(picture.data, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and image.shape == (OUT[1], OUT[0], 3)
            expected = cv2.cvtColor(cv2.resize(IMAGES[index], OUT, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
            assert np.abs(image.astype(np.float32) - expected.astype(np.float32)).mean() < 12
        newest = await slow.next(WAIT)  # the slow one gets the newest, not the first
        assert newest is not None and newest.index == 5
        counters = hub.counters()
        assert counters.jpeg_encoded == 6 and counters.vp8_encoded == 0 and counters.jpeg_viewers == 2
        assert counters.streams["cam"].jpeg_skipped == 0  # its first picture skips nothing it was owed
        for index, encoded in ((6, 7), (7, 8)):
            hub.offer(frame(index))
            await until(lambda encoded=encoded: hub.counters().jpeg_encoded == encoded)
        newest = await slow.next(WAIT)
        assert newest is not None and newest.index == 7
        assert hub.counters().streams["cam"].jpeg_skipped == 1  # it was too slow for index 6
        first.close()
        slow.close()
        hub.close()

    run(main)


def test_vp8_and_jpeg_viewers_together() -> None:
    async def main() -> None:
        video = StreamVideo("cam", settings())
        packets, jpegs = video.watch_packets(), video.watch_jpegs()
        for index in range(4):
            video.offer(frame(index))
            packet, picture = await packets.next(WAIT), await jpegs.next(WAIT)
            assert packet is not None and picture is not None and packet.ts == picture.ts
        counters = video.counters()
        assert counters.vp8_encoded == 4 and counters.jpeg_encoded == 4
        packets.close()
        jpegs.close()
        video.close()

    run(main)


# -- end -----------------------------------------------------------------------------------------------


def test_end_wakes_waiting_viewers_and_stops_encoders() -> None:
    async def main() -> None:
        hub = VideoHub(settings())
        video = hub.get("cam")
        assert video is not None
        packets, jpegs = video.watch_packets(), video.watch_jpegs()
        hub.offer(frame(0))
        assert await packets.next(WAIT) is not None and await jpegs.next(WAIT) is not None
        waiting = [asyncio.ensure_future(packets.next()), asyncio.ensure_future(jpegs.next())]
        await asyncio.sleep(0.02)
        assert not any(task.done() for task in waiting)
        threading.Thread(target=hub.end, args=("cam",)).start()  # from the pipeline's thread
        assert await asyncio.wait_for(asyncio.gather(*waiting), WAIT) == [None, None]
        await until(lambda: not (video.counters().vp8_running or video.counters().jpeg_running))
        late = video.watch_packets()
        assert await late.next(WAIT) is None  # a viewer of an ended stream learns it at once
        assert not video.offer(frame(1)) and video.counters().ended
        for viewer in (packets, jpegs, late):
            viewer.close()
        assert hub.offer(frame(0, pts=0.0))  # the stream restarted: a fresh one
        assert hub.get("cam") is not video
        hub.close()

    run(main)
