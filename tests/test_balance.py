"""The 004 seed's balancing: plans, feature-space interpolation, and re-timed / mirrored / warped clips."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from affectstream.engine.labels import EMOTIONS
from affectstream.engine.runtime import Engine
from affectstream.training.balance import (
    ClipTransform,
    class_counts,
    class_of,
    clips,
    interpolate,
    mix,
    plan,
    resample,
    video_frame_reader,
)
from affectstream.training.featureset import SequenceFeatures
from tests._training_helpers import make_sequence, toy_featureset


def _one_hot(name: str) -> np.ndarray:
    return np.eye(6, dtype=np.float32)[EMOTIONS.index(name)]


def _imbalanced() -> list[SequenceFeatures]:
    counts = {"anger": 6, "happiness": 3, "fear": 1}
    return [make_sequence(f"{name}{i}/0", f"{name}{i}", 4 + i, labels=_one_hot(name), seed=i)
            for name, count in counts.items() for i in range(count)]


def test_class_of_uses_the_class_name_or_a_single_label() -> None:
    assert class_of(make_sequence("a/0", "a", 2, labels=_one_hot("fear"))) == "fear"
    assert class_of(make_sequence("a/0", "a", 2, labels=_one_hot("fear") + _one_hot("anger"))) is None
    assert class_of(make_sequence("a/0", "a", 2)) is None
    assert class_of(make_sequence("a/0", "a", 2, class_name="contempt")) is None  # not one of the six
    assert class_of(make_sequence("a/0", "a", 2, class_name="sadness")) == "sadness"


def test_plan_fills_each_present_class_up_to_the_largest() -> None:
    sequences = _imbalanced()
    assert plan(sequences) == {"happiness": 3, "fear": 5}
    assert plan(sequences, fill=0.5) == {"fear": 2}


def test_interpolation_adds_the_planned_samples_of_the_right_class() -> None:
    sequences = _imbalanced()
    made = interpolate(sequences, seed=3)
    after = class_counts(list(sequences) + made)
    assert after["anger"] == after["happiness"] == after["fear"] == 6
    for sample in made:
        assert class_of(sample) in ("happiness", "fear")
        np.testing.assert_allclose(np.linalg.norm(sample.features, axis=1), 1.0, rtol=1e-5)
    assert [s.key for s in interpolate(sequences, seed=3)] == [s.key for s in made]
    assert np.array_equal(interpolate(sequences, seed=3)[0].features, made[0].features)


def test_mix_resamples_onto_the_first_time_grid_and_blends_frame_labels() -> None:
    frames_a = np.zeros((4, 6), np.float32)
    frames_a[:, 0] = 1
    frames_b = np.zeros((7, 6), np.float32)
    first = make_sequence("a/0", "a", 4, labels=_one_hot("anger"), frame_labels=frames_a, sentiment=-1.0)
    second = make_sequence("b/0", "b", 7, labels=_one_hot("anger"), frame_labels=frames_b, sentiment=0.0, seed=4)
    mixed = mix(first, second, 0.25, "m")
    assert mixed.features.shape == first.features.shape and mixed.key == "m"
    assert mixed.frame_labels is not None and np.allclose(mixed.frame_labels[:, 0], 0.25)
    assert mixed.sentiment == pytest.approx(-0.25)
    assert np.array_equal(mixed.times, first.times)


def test_resample_keeps_the_ends_and_interpolates_linearly() -> None:
    values = np.array([[0.0], [1.0], [2.0]], np.float32)
    assert resample(values, 5)[:, 0].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert resample(values[:1], 3)[:, 0].tolist() == [0.0, 0.0, 0.0]


def test_clip_transform_mirrors_retimes_and_keeps_times_inside_the_segment() -> None:
    frame = np.zeros((8, 10, 3), np.uint8)
    frame[:, :3] = 255  # bright on the left
    assert np.array_equal(ClipTransform().apply(frame), frame)
    mirrored = ClipTransform(flip=True).apply(frame)
    assert mirrored[:, -3:].min() == 255 and mirrored[:, :3].max() == 0
    times = np.array([2.0, 2.5, 3.0, 3.5])
    assert ClipTransform(speed=0.8).times(times).tolist() == [2.0, 2.4, 2.8, 3.2]
    assert ClipTransform(speed=1.25).times(times).tolist() == [2.0, 2.625, 3.25, 3.5]
    sampled = ClipTransform.random(random.Random(0))
    assert 0.8 <= sampled.speed <= 1.25 and abs(sampled.angle_deg) <= 8


@pytest.fixture(scope="module")
def still_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from affectstream.training.synthetic import SyntheticConfig, generate_synthetic

    out = tmp_path_factory.mktemp("balance_videos")
    generate_synthetic(out, SyntheticConfig(n_videos=2, seconds=3.0, fps=10.0, size=(64, 64), segment_s=3.0))
    return out / "videos"


def test_clips_re_encode_transformed_frames_of_the_rare_class(still_videos: Path, tiny_engine: Engine) -> None:
    encoder = tiny_engine.encoder
    reader = video_frame_reader(still_videos)
    times = np.arange(6) * 0.5
    sequences = [
        SequenceFeatures(f"synth_000/{i}", "synth_000", times, encoder.encode(reader("synth_000", times)),
                         _one_hot("anger"), _one_hot("anger"), 0.0, None, None) for i in range(3)
    ] + [SequenceFeatures("synth_001/0", "synth_001", times, encoder.encode(reader("synth_001", times)),
                          _one_hot("fear"), _one_hot("fear"), 0.0, None, None)]
    made = clips(sequences, encoder, reader, seed=1)
    assert len(made) == 2 and all(class_of(s) == "fear" and s.video_id == "synth_001" for s in made)
    for sample in made:
        assert sample.features.shape == (6, encoder.embed_dim)
        np.testing.assert_allclose(np.linalg.norm(sample.features, axis=1), 1.0, rtol=1e-4)
        assert not np.allclose(sample.features, sequences[-1].features, atol=1e-4)  # new pixels, new features
        assert sample.times[0] == 0.0 and sample.times[-1] <= times[-1]


def test_a_missing_video_says_to_pass_the_video_directory(tmp_path: Path) -> None:
    from affectstream.errors import ConfigError

    with pytest.raises(ConfigError, match="--videos"):
        video_frame_reader(tmp_path)("nowhere", np.array([0.0]))


def test_toy_sets_are_unbalanced_as_asked() -> None:
    weights = np.array([1, 1, 1, 1, 1, 0.1])
    counts = class_counts(toy_featureset(n_videos=30, weights=weights).sequences)
    assert counts["surprise"] < min(counts[name] for name in EMOTIONS[:5])
