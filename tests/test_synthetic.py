"""The synthetic expression generator: labels that need time, MOSEI-format output, determinism."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError
from affectstream.training.datasets import ProblemKind
from affectstream.training.mosei import SegmentTime, load_mosei
from affectstream.training.synthetic import (
    NEUTRAL,
    Episode,
    SyntheticConfig,
    VideoFormat,
    expression_tracks,
    face_parameters,
    frame_labels,
    generate_synthetic,
    read_ground_truth,
    segment_truth,
)
from affectstream.training.synthetic_face import Identity, Pose, render_face

SMALL = SyntheticConfig(n_videos=3, seconds=6.0, fps=10.0, size=(64, 64), segment_s=3.0, seed=7)


def _decoded_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(out, SMALL)
    return out


def test_output_loads_through_the_mosei_loader(generated: Path) -> None:
    dataset = generate_synthetic(generated.parent / "again", SMALL)
    assert dataset.name == "synthetic"
    assert len(dataset) == SMALL.n_videos * 2  # two 3 s clips per 6 s video
    assert not dataset.problems
    first = dataset.segments[0]
    assert first.video_path is not None and first.video_path.suffix == ".avi"
    assert (first.start_s, first.end_s) == (0.0, 3.0)
    header = (generated / "labels.csv").read_text(encoding="utf-8").splitlines()[0]
    assert "Input.VIDEO_ID" in header and "Answer.surprise" in header
    assert json.loads((generated / "config.json").read_text())["seed"] == 7


def test_videos_open_with_cv2(generated: Path) -> None:
    frames = _decoded_frames(generated / "videos" / "synth_000.avi")
    assert len(frames) == SMALL.n_frames
    assert frames[0].shape == (64, 64, 3)
    assert not np.array_equal(frames[0], frames[-1])  # the face moves and changes


def test_segment_labels_match_the_per_frame_truth(generated: Path) -> None:
    dataset = load_mosei(generated / "labels.csv", generated / "segments.csv", generated / "videos")
    for segment in dataset:
        truth = read_ground_truth(generated / "ground_truth" / f"{segment.video_id}.json")
        assert segment.start_s is not None and segment.end_s is not None
        clip = SegmentTime(segment.video_id, "", segment.start_s, segment.end_s)
        expected = segment_truth(truth.times, truth.labels, clip)
        assert segment.labels == tuple(float(v) for v in expected)


def test_same_seed_same_everything_other_seed_differs(generated: Path, tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "a", SMALL)
    for name in ("labels.csv", "segments.csv", "ground_truth/synth_001.json"):
        assert (tmp_path / "a" / name).read_bytes() == (generated / name).read_bytes(), name
    again = _decoded_frames(tmp_path / "a" / "videos" / "synth_001.avi")
    first = _decoded_frames(generated / "videos" / "synth_001.avi")
    assert all(np.array_equal(a, b) for a, b in zip(again, first, strict=True))

    other = dataclasses.replace(SMALL, seed=8)
    generate_synthetic(tmp_path / "b", other)
    truth = "ground_truth/synth_001.json"
    assert (tmp_path / "b" / truth).read_bytes() != (generated / truth).read_bytes()


def test_labels_need_the_expression_to_last() -> None:
    fps, min_duration = 10.0, 1.0
    intensity = np.zeros((40, len(EMOTIONS)), np.float32)
    intensity[5:14, 0] = 1.0  # anger held 9 frames (0.9 s): never counts
    intensity[20:35, 1] = 0.8  # happiness held 15 frames: counts from its 10th frame on
    labels = frame_labels(intensity, fps, min_duration, onset_level=0.5)
    assert labels[:, 0].sum() == 0
    assert labels[:29, 1].sum() == 0 and labels[29:35, 1].all() and labels[35:, 1].sum() == 0
    # The same picture (intensity row) is labelled 1 late in the hold, 0 at its start: context decides.
    assert np.array_equal(intensity[20], intensity[30]) and labels[20, 1] != labels[30, 1]


def test_flickers_reach_full_intensity_but_are_never_labelled(generated: Path) -> None:
    flicker_peaks = 0
    for path in sorted((generated / "ground_truth").glob("*.json")):
        truth = read_ground_truth(path)
        for episode in truth.episodes:
            inside = (truth.times >= episode.start_s) & (truth.times <= episode.end_s)
            columns = [EMOTIONS.index(name) for name in episode.emotions]
            if episode.flicker:
                assert truth.labels[np.ix_(inside, columns)].sum() == 0
                flicker_peaks += int((truth.intensity[np.ix_(inside, columns)] >= 0.5).any())
            elif episode.end_s < truth.times[-1]:  # a held episode (not cut by the video's end) counts
                assert truth.labels[np.ix_(inside, columns)].any(axis=0).all()
    assert flicker_peaks > 0, "the fixture should contain at least one visible flicker"


def test_class_weights_choose_the_emotions(tmp_path: Path) -> None:
    config = SyntheticConfig(n_videos=2, seconds=6.0, size=(48, 48), class_weights=(0, 1, 0, 0, 0, 0),
                             mix_probability=0.0, flicker_probability=0.0, seed=1)
    dataset = generate_synthetic(tmp_path, config)
    matrix = dataset.label_matrix()
    assert matrix[:, 1].sum() > 0
    assert matrix[:, [0, 2, 3, 4, 5]].sum() == 0
    assert dataset.count(ProblemKind.MISSING_VIDEO) == 0


def test_expression_tracks_rise_and_fall_smoothly() -> None:
    times = np.arange(0, 4, 0.05)
    intensity = expression_tracks([Episode(("sadness",), 1.0, 3.0, 0.9, False)], times)
    column = intensity[:, EMOTIONS.index("sadness")]
    assert column.max() == pytest.approx(0.9) and column[0] == 0 and column[-1] == 0
    assert np.abs(np.diff(column)).max() < 0.35  # no jumps: it ramps
    assert intensity[:, [0, 1, 2, 3, 5]].sum() == 0


def test_each_emotion_draws_a_different_face() -> None:
    identity = Identity((150, 170, 210), (90, 90, 90), 0.75, 0.32, (30, 30, 40))
    neutral = render_face(NEUTRAL, Pose(), identity, (64, 64)).astype(np.int16)
    faces = []
    for index in range(len(EMOTIONS)):
        intensity = np.zeros((1, len(EMOTIONS)), np.float32)
        intensity[0, index] = 1.0
        faces.append(render_face(face_parameters(intensity)[0], Pose(), identity, (64, 64)).astype(np.int16))
    for i, face in enumerate(faces):
        assert np.abs(face - neutral).mean() > 0.5, EMOTIONS[i]
        for j in range(i):
            assert np.abs(face - faces[j]).mean() > 0.5, (EMOTIONS[i], EMOTIONS[j])


def test_mp4_output(tmp_path: Path) -> None:
    config = SyntheticConfig(n_videos=1, seconds=2.0, size=(48, 48), video_format=VideoFormat.MP4_MP4V)
    dataset = generate_synthetic(tmp_path, config)
    assert dataset.segments[0].video_path == tmp_path / "videos" / "synth_000.mp4"
    assert len(_decoded_frames(tmp_path / "videos" / "synth_000.mp4")) == 20


@pytest.mark.parametrize("change", [
    {"n_videos": 0}, {"size": (16, 16)}, {"class_weights": (1, 1)}, {"class_weights": (0,) * 6},
    {"onset_level": 0.0}, {"min_duration_s": 0.0},
])
def test_bad_configs_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SyntheticConfig(**change)  # type: ignore[arg-type]
