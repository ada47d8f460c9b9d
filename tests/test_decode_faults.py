"""Issue 11, the decode side: huge frames (6), rotated phone video (7), a stuck clock and a moov-less file (8).

Footage: tests/media.py's generated clips, and Megamind.avi (Debian's opencv-doc) where a real face
has to be found. FFmpeg's own command line is the reference for what a player shows.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affectstream.errors import ConfigError, ExitStatus
from affectstream.stream.frames import OverflowPolicy, VideoFrame, fit_within
from affectstream.stream.ring import DEFAULT_MAX_BYTES, RingBuffer
from affectstream.stream.sources import SourceConfig, SourceDamage, open_source
from tests import media
from tests._faces_helpers import MEGAMIND, model_dir, need
from tests._sources_helpers import outcome_of
from tests.test_cli import affectstream, read_jsonl

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (Debian package ffmpeg)")

REPO = Path(__file__).resolve().parents[1]


def read_all(path: Path, config: SourceConfig | None = None) -> tuple[tuple[int, int], list[VideoFrame], SourceDamage]:
    """(SourceInfo width, height), every frame, and the damage record of one read of ``path``."""
    source = open_source(str(path), "s", config or SourceConfig())
    info = source.open()
    try:
        frames = list(iter(source.read, None))
    finally:
        source.close()
    return (info.width, info.height), frames, source.damage


def ffmpeg_clip(path: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args, "-an", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", str(path)], check=True, timeout=120)
    return path


# -- 6: frames reduced as they are decoded; rings bounded in bytes ----------------------------------


def test_a_4k_frame_is_reduced_as_it_is_decoded_and_keeps_its_source_size(tmp_path: Path) -> None:
    clip = ffmpeg_clip(tmp_path / "4k.mp4", "-f", "lavfi", "-i", "testsrc2=size=3840x2160:rate=5", "-t", "1")
    size, frames, _ = read_all(clip)
    assert size == (3840, 2160)  # SourceInfo says what the source is, not what the models get
    assert len(frames) == 5
    assert {frame.image.shape for frame in frames} == {(1080, 1920, 3)}
    assert {frame.source_size for frame in frames} == {(3840, 2160)} and frames[0].source_scale == 2.0
    # The same picture, smaller (not a crop): what the full-size decode gives, averaged down.
    _, full, _ = read_all(clip, SourceConfig(max_frame_side=None))
    assert full[0].image.shape == (2160, 3840, 3) and full[0].source_size is None
    expected = cv2.resize(full[0].image, (1920, 1080), interpolation=cv2.INTER_AREA)
    assert np.abs(expected.astype(np.int16) - frames[0].image).mean() < 2.0


def test_a_frame_within_the_bound_is_the_decoded_frame_itself(tmp_path: Path) -> None:
    clip = media.make_video(tmp_path / "small.avi", seconds=1.0)
    _, reduced, _ = read_all(clip)
    _, full, _ = read_all(clip, SourceConfig(max_frame_side=None))
    assert all(a.source_size is None and np.array_equal(a.image, b.image) for a, b in zip(reduced, full))


@pytest.mark.parametrize(("size", "bound", "expected"), [
    ((7680, 4320), 1920, (1920, 1080)), ((2160, 3840), 1920, (1080, 1920)), ((1280, 720), 1920, (1280, 720)),
    ((1001, 3), 500, (500, 1)), ((7680, 4320), None, (7680, 4320))])
def test_fit_within_caps_the_long_side_and_keeps_the_aspect(size: tuple[int, int], bound: int | None,
                                                             expected: tuple[int, int]) -> None:
    assert fit_within(*size, bound) == expected


@pytest.mark.parametrize("side", [0, 63, 1.5, True, "1920"])
def test_a_bad_frame_bound_is_refused_naming_the_field(side: object) -> None:
    with pytest.raises(ConfigError, match="max_frame_side"):
        SourceConfig(max_frame_side=side)  # type: ignore[arg-type]


def _frame(index: int, nbytes: int) -> VideoFrame:
    # A broadcast view: the ring counts nbytes (what a real frame of that size holds) without the test
    # allocating it.
    return VideoFrame("s", index, index / 30, 0, 0, np.broadcast_to(np.zeros(1, np.uint8), (nbytes, 1, 1)))


def test_a_waiting_ring_is_full_at_its_byte_budget_before_its_frame_capacity() -> None:
    ring = RingBuffer(32, OverflowPolicy.WAIT, max_bytes=3_000)
    assert all(ring.put(_frame(i, 1_000), timeout=0.01) for i in range(3))
    assert not ring.put(_frame(3, 1_000), timeout=0.05), "a fourth frame would pass the byte budget"
    assert ring.buffered_bytes == 3_000 and len(ring) == 3
    first = ring.get(timeout=0.1)
    assert isinstance(first, VideoFrame) and first.index == 0
    assert ring.put(_frame(3, 1_000), timeout=0.05)
    assert ring.counters().overwritten == 0


def test_a_dropping_ring_drops_the_oldest_frames_to_stay_within_its_budget() -> None:
    ring = RingBuffer(32, OverflowPolicy.DROP_OLDEST, max_bytes=3_000)
    for i in range(10):
        assert ring.put(_frame(i, 1_000))
    counters = ring.counters()
    assert (counters.buffered, counters.overwritten, ring.buffered_bytes) == (3, 7, 3_000)
    assert [item.index for item in iter(lambda: ring.get(timeout=0.01), None)
            if isinstance(item, VideoFrame)] == [7, 8, 9]


def test_a_frame_larger_than_the_whole_budget_still_passes_an_empty_ring() -> None:
    ring = RingBuffer(4, OverflowPolicy.WAIT, max_bytes=1_000)
    assert ring.put(_frame(0, 5_000), timeout=0.05)
    assert not ring.put(_frame(1, 10), timeout=0.05)
    ring.get(timeout=0.1)
    assert ring.put(_frame(1, 10), timeout=0.05) and ring.buffered_bytes == 10


def test_the_default_file_ring_holds_a_few_4k_frames_not_32() -> None:
    ring = RingBuffer(32, OverflowPolicy.WAIT)
    frame_bytes = 3840 * 2160 * 3
    held = sum(1 for i in range(32) if ring.put(_frame(i, frame_bytes), timeout=0.001))
    assert held == DEFAULT_MAX_BYTES // frame_bytes == 5
    with pytest.raises(ConfigError, match="max_bytes"):
        RingBuffer(4, OverflowPolicy.WAIT, max_bytes=0)


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.one_of(st.integers(1, 2_500), st.none()), max_size=60),
       policy=st.sampled_from(list(OverflowPolicy)))
def test_ring_byte_budget_invariants(ops: list[int | None], policy: OverflowPolicy) -> None:
    """Puts of random sizes (None: a get): frames come out in order, the counters add up, and the ring
    is within its budget unless it holds one frame."""
    ring = RingBuffer(6, policy, max_bytes=4_000)
    index, out = 0, []
    for op in ops:
        if op is None:
            item = ring.get(timeout=0)
            if isinstance(item, VideoFrame):
                out.append(item.index)
        elif ring.put(_frame(index, op), timeout=0):
            index += 1
        counters = ring.counters()
        assert counters.written == counters.read + counters.overwritten + counters.buffered
        assert ring.buffered_bytes <= ring.max_bytes or counters.buffered == 1
        assert policy is OverflowPolicy.DROP_OLDEST or counters.overwritten == 0
    assert all(a < b for a, b in itertools.pairwise(out))


def _memory_bench() -> ModuleType:
    path = REPO / "benchmarks" / "memory_by_resolution.py"
    spec = importlib.util.spec_from_file_location("memory_by_resolution", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_memory_benchmark_measures_each_child_alone() -> None:
    """Peak RSS is the child's own (wait4), not the largest of all children nor the parent's."""
    bench = _memory_bench()
    big = bench.run_child([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"], 60)
    small = bench.run_child([sys.executable, "-c", "pass"], 60)
    assert big.status == 0 and small.status == 0
    assert 300 <= big.peak_rss_mb < 400, big
    assert small.peak_rss_mb < 60, small
    assert bench.parse_sizes("1280x720, 7680x4320") == [(1280, 720), (7680, 4320)]


@pytest.mark.slow
def test_face_boxes_of_a_reduced_frame_are_in_the_source_pixels(tmp_path: Path,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """Megamind at 3x (2160x1584, reduced to 1920 wide for the models): the wire boxes are 3x those of
    the original, in the pixels the user sees."""
    model_dir("blazeface", tmp_path_factory)
    model_dir("fer-mini-xception", tmp_path_factory)
    cut = ("-ss", "8.4", "-t", "2", "-i", str(need(MEGAMIND)))
    original = ffmpeg_clip(tmp_path / "x1.mp4", *cut)
    large = ffmpeg_clip(tmp_path / "x3.mp4", *cut, "-vf", "scale=2160:1584")
    boxes = {name: _face_boxes(clip) for name, clip in (("x1", original), ("x3", large))}
    common = sorted(set(boxes["x1"]) & set(boxes["x3"]))
    assert len(common) >= 3, boxes
    for ts in common:
        expected = [3 * v for v in boxes["x1"][ts]]
        assert _iou(boxes["x3"][ts], expected) > 0.8, (ts, boxes["x3"][ts], expected)


def test_show_draws_source_pixel_boxes_on_the_reduced_image() -> None:
    """--show draws on the frame's reduced image: a box in 1920x1080 source pixels lands at half."""
    from affectstream.engine.labels import EMOTIONS
    from affectstream.stream.messages import Estimate, EstimateState, FaceEstimate
    from affectstream.stream.overlay import OverlayWindow

    scores = dict.fromkeys(EMOTIONS, 0.1)
    face = FaceEstimate(id=1, box=(800.0, 400.0, 200.0, 200.0), score=0.9, frame_scores=scores, scores=scores,
                        dominant="anger", state=EstimateState.OK, sentiment=0.0)
    window = OverlayWindow(EMOTIONS)
    window.on_frame(VideoFrame("a", 0, 1.0, 0, 0, np.zeros((540, 960, 3), np.uint8), source_size=(1920, 1080)))
    window.on_record(Estimate(stream="a", seq=0, ts=1.0, wall=0, scores=scores, sentiment=0.0, dominant="anger",
                              faces=(face,)))
    canvas = window.render("a")
    assert canvas is not None and canvas.shape == (540, 960, 3)
    green = (80, 220, 80)
    assert tuple(canvas[300, 400]) == green and tuple(canvas[300, 500]) == green  # x 800..1000 at half: 400..500
    assert tuple(canvas[300, 800]) == (0, 0, 0), "not at the source's own coordinates"


def _face_boxes(clip: Path) -> dict[float, list[float]]:
    """Per estimate's ts, the primary face's wire box, from the in-process pipeline with the face stage."""
    from affectstream.engine.face_engine import load_face_model
    from affectstream.engine.labels import EXPRESSION_LABELS
    from affectstream.stream.messages import Estimate
    from affectstream.stream.pipeline import Pipeline, PipelineConfig
    from affectstream.stream.sinks import MemorySink

    sink = MemorySink()
    config = PipelineConfig(rate_hz=2.0, pace_files=False, stats_interval_s=3600)
    with Pipeline([("file", str(clip))], None, None, sink, EXPRESSION_LABELS, config,
                  faces=load_face_model("blazeface:back")) as pipeline:
        assert pipeline.wait(120)
    return {m.ts: list(m.faces[0].box) for m in sink.messages if isinstance(m, Estimate) and m.faces}


def _iou(a: list[float], b: list[float]) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


# -- 7: rotation metadata ---------------------------------------------------------------------------


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_a_rotated_phone_video_is_read_as_players_show_it(tmp_path: Path, degrees: int) -> None:
    coded = ffmpeg_clip(tmp_path / "coded.mp4", "-f", "lavfi", "-i", "testsrc=size=320x180:rate=10", "-t", "1")
    clip = media.make_display_rotated(coded, tmp_path / f"rot{degrees}.mp4", degrees)
    assert media.ffprobe_rotation(clip) is not None, "the fixture must carry a display matrix"
    shown = (180, 320) if degrees in (90, 270) else (320, 180)
    size, frames, _ = read_all(clip)
    assert size == shown
    reference = media.ffmpeg_frames_rgb(clip, shown)  # FFmpeg's autorotation: what a player shows
    assert len(frames) == len(reference) == 10
    for frame, expected in zip(frames, reference):
        assert frame.image.shape == (shown[1], shown[0], 3)
        assert np.array_equal(frame.image, expected)


def test_a_rotated_4k_frame_is_turned_and_reduced(tmp_path: Path) -> None:
    coded = ffmpeg_clip(tmp_path / "coded.mp4", "-f", "lavfi", "-i", "testsrc2=size=3840x2160:rate=5", "-t", "0.4")
    size, frames, _ = read_all(media.make_display_rotated(coded, tmp_path / "rot.mp4", 90))
    assert size == (2160, 3840)
    assert frames[0].image.shape == (1920, 1080, 3) and frames[0].source_size == (2160, 3840)


@pytest.mark.slow
def test_a_face_filmed_sideways_is_found_upright_with_boxes_in_the_shown_frame(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Megamind turned a quarter clockwise in its coded pixels, with the display matrix that turns it
    back (as a phone held upright records): the face stage sees it upright, and its boxes match
    those on the original clip, in the original's (the shown frame's) pixels."""
    model_dir("blazeface", tmp_path_factory)
    model_dir("fer-mini-xception", tmp_path_factory)
    cut = ("-ss", "8.4", "-t", "2", "-i", str(need(MEGAMIND)))
    original = ffmpeg_clip(tmp_path / "upright.mp4", *cut)
    sideways = ffmpeg_clip(tmp_path / "sideways.mp4", *cut, "-vf", "transpose=clock")
    phone = media.make_display_rotated(sideways, tmp_path / "phone.mp4", 90)
    assert media.ffmpeg_frames_rgb(phone, (720, 528)).shape[1:] == (528, 720, 3), "players show it upright"
    upright, rotated = _face_boxes(original), _face_boxes(phone)
    assert len(rotated) >= 3 and len(rotated) >= len(upright) - 1, (upright, rotated)
    for ts in sorted(set(upright) & set(rotated)):
        assert _iou(rotated[ts], upright[ts]) > 0.8, (ts, rotated[ts], upright[ts])


# -- 8: a stuck clock, and a file from which nothing was read ---------------------------------------


def _stuck_clock_mp4(tmp_path: Path) -> Path:
    """30 frames at 10 fps (3 s stated) whose every timestamp is 0.000 s."""
    good = ffmpeg_clip(tmp_path / "good.mp4", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-t", "3",
                       "-bf", "0")
    stuck = media.zero_stts(good, tmp_path / "stuck.mp4")
    assert set(media.ffprobe_pts(stuck)) == {0.0}, "the fixture: every frame at 0.000 s"
    return stuck


def test_timestamps_that_never_advance_are_respaced_and_reported(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    stuck = _stuck_clock_mp4(tmp_path)
    with caplog.at_level(logging.INFO, logger="affectstream.stream.pyav_source"):
        how, frames, damage = outcome_of(open_source(str(stuck), "s", SourceConfig()))
    assert how == "ok" and isinstance(damage, SourceDamage)
    pts = [frame.pts for frame in frames]
    assert len(pts) == 30 and pts[0] == 0.0
    steps = {round(b - a, 6) for a, b in itertools.pairwise(pts)}
    assert steps == {0.1}, "spaced as the file's index says: 30 frames in 3 s"
    assert damage.repaired_pts == 29 and damage.missing_pts == 0
    assert not damage.truncated and damage.outcome is None, damage.describe()
    assert "29 timestamps that did not advance respaced" in damage.describe()
    assert sum("stuck clock" in record.getMessage() for record in caplog.records) == 1, "said once, not per frame"


def test_a_clock_that_jumps_back_is_kept_and_a_good_clock_is_untouched() -> None:
    from affectstream.stream.frame_clock import FrameClock

    clock = FrameClock(10.0)
    assert [clock.next(t) for t in (5.0, 5.1, 0.0, 0.1)] == [5.0, 5.1, 0.0, 0.1]  # a restart, not a stall
    assert clock.repaired == 0
    stalled = FrameClock(10.0)
    times = [stalled.next(t) for t in (0.0, 0.1, 0.1, 0.1, 0.25, 0.6)]
    # Each repeat adds a step to what follows; the container's own spacing is kept after it.
    assert times == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.45, 0.8]) and stalled.repaired == 2


def test_one_duplicate_in_a_stream_with_a_wrong_stated_rate_shifts_by_one_step_without_drift() -> None:
    # Found in review: a 60 fps stream whose header gives no rate (25 fps assumed) with one repeated
    # timestamp was respaced at 25 fps for the rest of its life, 60 s of media becoming 144 s.
    from affectstream.stream.frame_clock import FrameClock

    clock = FrameClock(None)
    given = [i / 60 for i in range(3600)]
    given.insert(10, given[10])
    times = [clock.next(t) for t in given]
    assert clock.repaired == 1
    assert times[-1] == pytest.approx(given[-1] + 1 / 25)
    assert all(later > earlier for earlier, later in zip(times, times[1:]))


@pytest.mark.slow
def test_analyze_of_a_stuck_clock_mp4_reads_it_whole_and_ends_well(tmp_path: Path) -> None:
    """Megamind in an MP4 (271 frames, 11.3 s: the issue's file) whose stts deltas are 0: every frame is
    read at its respaced time, the run ends well (0), and the summary's damage says what was repaired."""
    encoded = ffmpeg_clip(tmp_path / "megamind.mp4", "-i", str(need(MEGAMIND)), "-bf", "0")
    stuck = media.zero_stts(encoded, tmp_path / "stuck.mp4")
    result = affectstream("analyze", str(stuck), "--model", "tiny-random", "--summary", "s.json", "--out", "m.jsonl",
                          "--no-progress", cwd=tmp_path, timeout=180)
    assert result.returncode == ExitStatus.OK, result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    damage = summary["damage"]
    assert damage["outcome"] == "ended" and not damage["truncated"], damage
    assert damage["frames"] == 271 and damage["repaired_pts"] == 270 and damage["last_pts"] > 11.0
    estimates = [m for m in read_jsonl(tmp_path / "m.jsonl") if m["type"] == "estimate"]
    assert len(estimates) >= 20, "2 Hz over 11 s, not one estimate at 0.000 s"
    assert "stuck clock" in result.stderr


@pytest.mark.slow
def test_analyze_of_a_moov_less_mp4_exits_nothing_was_read(tmp_path: Path) -> None:
    whole = ffmpeg_clip(tmp_path / "whole.mp4", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-t", "4")
    cut = media.make_truncated(whole, tmp_path / "cut.mp4", keep=0.5)  # the moov box is at the end
    result = affectstream("analyze", str(cut), "--model", "tiny-random", "--summary", "s.json", "--no-progress",
                          cwd=tmp_path, timeout=120)
    assert "moov box" in result.stderr
    assert result.returncode == ExitStatus.NOTHING, result.stderr
