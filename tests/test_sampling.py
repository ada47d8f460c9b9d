"""Frame sampling for training on real (tiny) videos and image folders, odd input included."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from affectstream.errors import ConfigError
from affectstream.training.datasets import EMOTIONS, Segment
from affectstream.training.image_sets import load_ckplus
from affectstream.training.sampling import (
    SamplingConfig,
    SkipReason,
    sample_image_sequence,
    sample_segments,
    sample_video_segments,
    thin,
)
from tests import media
from tests._dataset_fixtures import make_ckplus

LABELS = (0.0,) * len(EMOTIONS)


def _segment(key: str, video: Path | None, start: float | None, end: float | None) -> Segment:
    return Segment(dataset="test", video_id=video.stem if video else key, segment_id=key, video_path=video,
                   start_s=start, end_s=end, labels=LABELS, label_scores=LABELS)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 s at 10 fps (MJPG/AVI: frame i at i / 10 s)."""
    return media.make_video(tmp_path_factory.mktemp("v") / "clip.avi", seconds=5.0, fps=10)


def test_segments_of_one_video_are_sampled_on_a_grid_from_their_start(video: Path) -> None:
    segments = [_segment("a", video, 0.0, 2.0), _segment("b", video, 2.05, 5.0), _segment("c", video, 1.0, 3.0)]
    result = sample_video_segments(video, segments, SamplingConfig(rate_hz=1.0))
    assert not result.skipped
    times = {item.key: list(np.round(item.times, 3)) for item in result.sampled}
    # "b" starts between frames: its grid starts at the first frame at or after 2.05 s.
    assert times == {"a": [0.0, 1.0], "b": [2.1, 3.1, 4.1], "c": [1.0, 2.0]}
    first = result.sampled[0].frames[0]
    assert first.dtype == np.uint8 and first.shape == (120, 160, 3)


def test_seed_preset_takes_one_frame_every_four_seconds_and_rate_zero_takes_all(video: Path) -> None:
    whole = [_segment("w", video, None, None)]
    seed = sample_video_segments(video, whole, SamplingConfig.preset("seed"))
    assert list(np.round(seed.sampled[0].times, 3)) == [0.0, 4.0]
    every = sample_video_segments(video, whole, SamplingConfig.preset("all"))
    assert len(every.sampled[0].times) == 50


def test_max_frames_thins_evenly_keeping_first_and_last(video: Path) -> None:
    result = sample_video_segments(video, [_segment("w", video, 0.0, 5.0)], SamplingConfig(0.0, 5))
    assert list(np.round(result.sampled[0].times, 3)) == [0.0, 1.2, 2.4, 3.7, 4.9]
    assert list(thin(3, 5)) == [0, 1, 2] and list(thin(10, 2)) == [0, 9]


def test_frames_come_out_rgb(tmp_path: Path) -> None:
    path = tmp_path / "red.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (32, 32))
    for _ in range(3):
        writer.write(np.full((32, 32, 3), (0, 0, 255), np.uint8))  # BGR red
    writer.release()
    image = sample_video_segments(path, [_segment("r", path, None, None)], SamplingConfig(0.0)).sampled[0].frames[0]
    assert image[..., 0].mean() > 200 and image[..., 2].mean() < 50


@pytest.mark.parametrize(("make", "reason"), [
    (lambda d: d / "nothing.avi", SkipReason.MISSING),
    (lambda d: media.make_empty(d / "empty.mp4"), SkipReason.EMPTY),
    (lambda d: media.make_text_file(d / "notes.mp4"), SkipReason.NOT_VIDEO),
])
def test_unusable_videos_skip_all_their_segments_with_the_source_outcome(tmp_path: Path, make, reason) -> None:
    path = make(tmp_path)
    segments = [_segment("x0", path, 0.0, 1.0), _segment("x1", path, 1.0, 2.0)]
    result = sample_video_segments(path, segments, SamplingConfig(1.0))
    assert result.sampled == ()
    assert [(s.key, s.reason, s.whole_segment) for s in result.skipped] == [("x0", reason, True), ("x1", reason, True)]


def test_segment_past_the_end_is_skipped_and_the_others_kept(video: Path) -> None:
    result = sample_video_segments(video, [_segment("in", video, 4.0, 5.0), _segment("out", video, 7.0, 9.0)],
                                   SamplingConfig(1.0))
    assert [item.key for item in result.sampled] == ["in"]
    assert [(s.key, s.reason) for s in result.skipped] == [("out", SkipReason.NO_FRAMES_IN_SEGMENT)]


def test_truncated_video_keeps_frames_before_the_cut(tmp_path: Path) -> None:
    whole = media.make_video(tmp_path / "whole.avi", seconds=4.0, fps=10)
    half = media.make_truncated(whole, tmp_path / "half.avi")
    segments = [_segment("early", half, 0.0, 1.0), _segment("late", half, 3.5, 4.0)]
    result = sample_video_segments(half, segments, SamplingConfig(2.0))
    assert [item.key for item in result.sampled] == ["early"]
    assert {(s.key, s.reason, s.whole_segment) for s in result.skipped} == {
        ("early", SkipReason.TRUNCATED, False), ("late", SkipReason.TRUNCATED, True)}


def test_ckplus_sequences_are_sampled_at_their_nominal_rate(tmp_path: Path) -> None:
    dataset = load_ckplus(make_ckplus(tmp_path, {("S005", "001"): (9, 3.0)}))
    result = sample_image_sequence(dataset.segments[0], SamplingConfig(rate_hz=10.0))  # CK+ is 30 fps
    assert not result.skipped
    assert list(np.round(result.sampled[0].times, 4)) == [0.0, 0.1, 0.2]
    assert result.sampled[0].frames[0].shape == (20, 24, 3)


def test_unreadable_images_are_recorded_and_the_sequence_kept(tmp_path: Path) -> None:
    dataset = load_ckplus(make_ckplus(tmp_path, {("S005", "001"): (4, 3.0), ("S006", "001"): (2, 1.0)}))
    first = dataset.segments[0]
    assert first.frame_paths is not None
    first.frame_paths[1].write_bytes(b"not a png")
    for path in dataset.segments[1].frame_paths or ():
        path.write_bytes(b"")
    result = sample_segments(dataset.segments, SamplingConfig(rate_hz=0.0))
    assert [item.key for item in result.sampled] == ["S005_001"]
    assert len(result.sampled[0].frames) == 3
    reasons = [(s.key, s.reason, s.whole_segment) for s in result.skipped]
    assert reasons == [
        ("S005_001", SkipReason.UNREADABLE_IMAGE, False),
        ("S006_001", SkipReason.EMPTY, False), ("S006_001", SkipReason.EMPTY, False),
        ("S006_001", SkipReason.UNREADABLE_IMAGE, True),
    ]


def test_sample_segments_keeps_the_order_asked_for(video: Path, tmp_path: Path) -> None:
    other = media.make_video(tmp_path / "other.avi", seconds=1.0, fps=10)
    segments = [_segment("v1", video, 0.0, 1.0), _segment("o1", other, 0.0, 1.0), _segment("v2", video, 1.0, 2.0)]
    result = sample_segments(segments, SamplingConfig(1.0))
    assert [item.key for item in result.sampled] == ["v1", "o1", "v2"]


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ConfigError):
        SamplingConfig(rate_hz=-1.0)
    with pytest.raises(ConfigError):
        SamplingConfig(max_frames_per_segment=0)
    with pytest.raises(ConfigError, match="seed"):
        SamplingConfig.preset("fast")
