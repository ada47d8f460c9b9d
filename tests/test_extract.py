"""Feature extraction: local runs on every dataset format, resume after a failure, the CLI verbs."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from affectstream.cli import main
from affectstream.engine.encoder import TorchEncoder
from affectstream.engine.models import ModelSpec
from affectstream.errors import ConfigError
from affectstream.training.datasets import Dataset, ProblemKind
from affectstream.training.extract import ExtractConfig, plan_shards, run_extraction
from affectstream.training.extract_cli import DatasetLocation, class_weights
from affectstream.training.featureset import INDEX, SHARD_DIR, FeatureSet
from affectstream.training.sampling import SamplingConfig, sample_segments
from affectstream.training.synthetic import SyntheticConfig, generate_synthetic, read_ground_truth
from tests import media
from tests._dataset_fixtures import make_ckplus, make_mug, mturk_row, write_mturk_csv

RATE = SamplingConfig(rate_hz=2.0)
CONFIG = ExtractConfig(model="tiny-random", device="cpu", sampling=RATE, batch_size=8, shard_size=2)


class CountingEncoder:
    """The real tiny-random encoder, counting the frames it encodes; raises on call ``fail_on_call``."""

    def __init__(self, inner: TorchEncoder, fail_on_call: int | None = None) -> None:
        self.inner = inner
        self.name, self.embed_dim, self.image_size, self.device = "torch", inner.embed_dim, inner.image_size, "cpu"
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.frames = 0

    def encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("injected failure")
        self.frames += len(images)
        return self.inner.encode(images)

    @property
    def last_stage_ms(self) -> Mapping[str, float]:
        return self.inner.last_stage_ms


@pytest.fixture(scope="module")
def encoder() -> TorchEncoder:
    return TorchEncoder.from_spec(ModelSpec.from_preset("tiny-random"), device="cpu")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 videos of 4 s at 5 fps, 2 s segments: 6 segments, one video per shard of 2."""
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic(root, SyntheticConfig(n_videos=3, seconds=4.0, fps=5.0, size=(48, 48), segment_s=2.0))
    return root


@pytest.fixture(scope="module")
def reference(synthetic: Path, encoder: TorchEncoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted local extraction of the synthetic set."""
    dataset, labeler = DatasetLocation(synthetic, "synthetic").open()
    out = tmp_path_factory.mktemp("reference")
    run_extraction(dataset, out, CONFIG, labeler, encoder=encoder, progress=False)
    return out


def assert_same_features(a: FeatureSet, b: FeatureSet) -> None:
    assert [s.key for s in a.sequences] == [s.key for s in b.sequences]
    for x, y in zip(a.sequences, b.sequences, strict=True):
        np.testing.assert_array_equal(x.times, y.times)
        np.testing.assert_allclose(x.features, y.features, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(x.labels, y.labels)
        assert (x.frame_labels is None) == (y.frame_labels is None)


def test_synthetic_features_are_the_encoded_sampled_frames(synthetic: Path, reference: Path,
                                                           encoder: TorchEncoder) -> None:
    features = FeatureSet.load(reference)
    dataset, _ = DatasetLocation(synthetic, "synthetic").open()
    assert features.dataset == "synthetic" and features.rate_hz == 2.0 and len(features) == len(dataset) == 6
    assert features.backbone == ModelSpec.from_preset("tiny-random").to_manifest()
    sampled = {item.key: item for item in sample_segments(dataset.segments, RATE).sampled}
    segments = {segment.segment_id: segment for segment in dataset.segments}
    for sequence in features.sequences:
        segment, item = segments[sequence.key], sampled[sequence.key]
        np.testing.assert_array_equal(sequence.times, item.times)
        assert segment.start_s is not None and segment.end_s is not None
        assert segment.start_s <= sequence.times.min() and sequence.times.max() < segment.end_s
        np.testing.assert_allclose(sequence.features, encoder.encode(list(item.frames)), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(sequence.features, axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(sequence.labels, np.asarray(segment.labels, np.float32))
        # Per-frame truth: the ground truth at the same (exact, here) frame times.
        truth = read_ground_truth(synthetic / "ground_truth" / f"{sequence.video_id}.json")
        rows = [int(np.argmin(np.abs(truth.times - t))) for t in sequence.times]
        assert sequence.frame_labels is not None
        np.testing.assert_array_equal(sequence.frame_labels, truth.labels[rows].astype(np.float32))
    with (reference / INDEX).open(newline="", encoding="utf-8") as handle:
        assert sum(1 for _ in csv.DictReader(handle)) == features.n_frames


def test_plan_keeps_a_videos_segments_together_in_order(synthetic: Path) -> None:
    dataset, _ = DatasetLocation(synthetic, "synthetic").open()
    reversed_order = Dataset(dataset.name, tuple(reversed(dataset.segments)))
    jobs = plan_shards(reversed_order.segments, 2)
    assert [[s.segment_id for s in job.segments] for job in jobs] == [
        ["synth_000_0", "synth_000_1"], ["synth_001_0", "synth_001_1"], ["synth_002_0", "synth_002_1"]]
    assert [job.name for job in jobs] == ["shard-00000.safetensors", "shard-00001.safetensors",
                                          "shard-00002.safetensors"]


def test_failure_mid_run_resumes_without_recomputing_finished_shards(
        synthetic: Path, reference: Path, encoder: TorchEncoder, tmp_path: Path) -> None:
    dataset, labeler = DatasetLocation(synthetic, "synthetic").open()
    # One encoder call per shard here (one video, <= 8 frames): the third call fails mid-run.
    failing = CountingEncoder(encoder, fail_on_call=3)
    with pytest.raises(RuntimeError, match="injected"):
        run_extraction(dataset, tmp_path, CONFIG, labeler, encoder=failing, progress=False)
    shards = tmp_path / SHARD_DIR
    assert sorted(p.name for p in shards.iterdir()) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert not (tmp_path / "featureset.json").exists()
    before = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}

    resumed = CountingEncoder(encoder)
    summary = run_extraction(dataset, tmp_path, CONFIG, labeler, encoder=resumed, progress=False)
    assert (summary.shards_reused, summary.shards_written) == (2, 1)
    last = FeatureSet.load(reference).by_key()
    assert resumed.frames == summary.frames_encoded == sum(last[k].n_frames for k in ("synth_002_0", "synth_002_1"))
    assert {p.name: p.stat().st_mtime_ns for p in shards.iterdir() if p.name in before} == before
    assert_same_features(FeatureSet.load(tmp_path), FeatureSet.load(reference))

    again = CountingEncoder(encoder)
    summary = run_extraction(dataset, tmp_path, CONFIG, labeler, encoder=again, progress=False)
    assert (summary.shards_reused, summary.shards_written, again.frames) == (3, 0, 0)
    assert summary.frames == FeatureSet.load(reference).n_frames


def test_other_settings_on_the_same_output_are_refused_unless_overwritten(
        synthetic: Path, encoder: TorchEncoder, tmp_path: Path) -> None:
    dataset, labeler = DatasetLocation(synthetic, "synthetic").open()
    run_extraction(dataset, tmp_path, CONFIG, labeler, encoder=encoder, progress=False)
    other = ExtractConfig(model="tiny-random", device="cpu", sampling=SamplingConfig.preset("seed"), shard_size=2)
    with pytest.raises(ConfigError, match="rate_hz"):
        run_extraction(dataset, tmp_path, other, labeler, encoder=encoder, progress=False)
    failing = CountingEncoder(encoder, fail_on_call=2)
    with pytest.raises(RuntimeError, match="injected"):
        run_extraction(dataset, tmp_path, other, labeler, encoder=failing, overwrite=True, progress=False)
    with pytest.raises(ConfigError, match="affectstream extract"):
        FeatureSet.load(tmp_path)  # the old manifest is gone: a half-replaced set cannot be read as finished
    summary = run_extraction(dataset, tmp_path, other, labeler, encoder=encoder, progress=False)
    assert (summary.shards_written, summary.shards_reused) == (2, 1)
    assert FeatureSet.load(tmp_path).rate_hz == 0.25


def _skipped(out: Path) -> list[tuple[str, str, str]]:
    with (out / "skipped.csv").open(newline="", encoding="utf-8") as handle:
        return [(row["stage"], row["item"], row["reason"]) for row in csv.DictReader(handle)]


def test_mosei_fixture_with_missing_and_damaged_videos(tmp_path: Path, encoder: TorchEncoder) -> None:
    root = tmp_path / "mosei"
    (root / "videos").mkdir(parents=True)
    media.make_video(root / "videos" / "vidA.avi", seconds=3.0, fps=10)
    media.make_truncated(media.make_video(tmp_path / "whole.avi", seconds=4.0, fps=10), root / "videos" / "vidB.avi")
    write_mturk_csv(root / "labels.csv", [
        mturk_row("vidA", "0", [0, 2, 0, 0, 0, 0], 2, "A"), mturk_row("vidA", "0", [0, 1, 0, 0, 0, 0], 1, "B"),
        mturk_row("vidA", "1", [1, 0, 0, 0, 0, 0], -1, "A"),
        mturk_row("vidB", "0", [0, 0, 0, 0, 3, 0], -3, "A"), mturk_row("vidB", "1", [0, 0, 0, 0, 0, 2], 0, "A"),
        mturk_row("gone", "0", [1, 0, 0, 0, 0, 0], 0, "A"),
    ])
    (root / "segments.csv").write_text("video_id,clip,start,end\nvidA,0,0,1.5\nvidA,1,1.5,3\nvidB,0,0,1\n"
                                       "vidB,1,3.5,4\ngone,0,0,1\n", encoding="utf-8")
    dataset, labeler = DatasetLocation(root, "mosei").open()
    assert dataset.count(ProblemKind.MISSING_VIDEO) == 1
    summary = run_extraction(dataset, tmp_path / "out", CONFIG, labeler, encoder=encoder, progress=False)
    features = FeatureSet.load(tmp_path / "out").by_key()
    assert sorted(features) == ["vidA_0", "vidA_1", "vidB_0"]
    assert features["vidA_0"].sentiment == pytest.approx(0.5) and features["vidA_0"].frame_labels is None
    np.testing.assert_array_equal(features["vidA_0"].label_scores, [0, 1.5, 0, 0, 0, 0])
    assert summary.skipped_by_reason == {"missing_video": 1, "truncated": 2}
    assert summary.segments_skipped == 1
    assert sorted(_skipped(tmp_path / "out")) == [
        ("dataset", "gone_0", "missing_video"), ("sampling", "vidB_0", "truncated"),
        ("sampling", "vidB_1", "truncated")]


def test_ckplus_and_mug_fixtures(tmp_path: Path, encoder: TorchEncoder) -> None:
    ck = make_ckplus(tmp_path / "ck", {("S005", "001"): (6, 3.0), ("S010", "002"): (4, 2.0), ("S011", "001"): (3, None)})
    dataset, labeler = DatasetLocation(ck, "ckplus").open()
    run_extraction(dataset, tmp_path / "ck_out", CONFIG, labeler, encoder=encoder, progress=False)
    features = FeatureSet.load(tmp_path / "ck_out").by_key()
    assert {key: s.class_name for key, s in features.items()} == {"S005_001": "disgust", "S010_002": "contempt"}
    assert features["S005_001"].n_frames == 1  # 6 frames at 30 fps span 0.17 s: one frame at 2 Hz
    assert ("dataset", "S011_001", "unlabeled") in _skipped(tmp_path / "ck_out")

    mug = make_mug(tmp_path / "mug", {("001", "happiness", "take0"): 40, ("002", "fear", "take1"): 20})
    dataset, labeler = DatasetLocation(mug, "mug").open()
    run_extraction(dataset, tmp_path / "mug_out", CONFIG, labeler, encoder=encoder, progress=False)
    features = FeatureSet.load(tmp_path / "mug_out").by_key()
    # MUG is 19 fps: 40 frames span 2.05 s, so 2 Hz gives frames 0, 10 (0.53 s), 19 (1.0 s), 29 (1.53 s), 38.
    np.testing.assert_allclose(features["001_happiness_take0"].times, np.array([0, 10, 19, 29, 38]) / 19.0)
    assert features["002_fear_take1"].labels.tolist() == [0, 0, 0, 1, 0, 0]


def test_cli_synth_then_extract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, out = tmp_path / "data", tmp_path / "features"
    assert main(["synth", str(data), "--videos", "2", "--seconds", "3", "--fps", "5", "--size", "40x40",
                 "--segment-seconds", "1.5", "--imbalance", "fear=0,disgust=0"]) == 0
    config = json.loads((data / "config.json").read_text(encoding="utf-8"))
    assert config["class_weights"] == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0] and config["size"] == [40, 40]
    argv = ["extract", str(data), "--format", "synthetic", "--out", str(out), "--model", "tiny-random",
            "--device", "cpu", "--seed-rate", "--shard-size", "3", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out  # the result on stdout, logs on stderr
    assert "segments: 4 of 4 planned" in printed and "2 written, 0 reused" in printed
    features = FeatureSet.load(out)
    assert features.rate_hz == 0.25 and all(s.n_frames == 1 for s in features.sequences)
    assert main(argv) == 0
    assert "0 written, 2 reused" in capsys.readouterr().out


def test_cli_errors(tmp_path: Path) -> None:
    assert main(["extract", str(tmp_path / "none"), "--format", "mug", "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(ConfigError, match="unknown emotion"):
        class_weights("joy=2")


_KILL_AFTER_TWO_SHARDS = """
import os, signal, sys
import affectstream.training.extract as extract
from affectstream.cli import main
original, calls = extract.run_shard, []
def run_shard(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:  # a hard kill: no exception handling, no finally blocks, like kill -9 or an OOM kill
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
extract.run_shard = run_shard
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_killed_process_resumes_from_its_finished_shards(synthetic: Path, reference: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess

    from tests.timeouts import scaled

    out = tmp_path / "features"
    argv = ["extract", str(synthetic), "--format", "synthetic", "--out", str(out), "--model", "tiny-random",
            "--device", "cpu", "--rate", "2", "--batch", "8", "--shard-size", "2", "--no-progress"]
    killed = subprocess.run([sys.executable, "-c", _KILL_AFTER_TWO_SHARDS, *argv], capture_output=True,
                            timeout=scaled(120), cwd=Path(__file__).parents[1])
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    shards = out / SHARD_DIR
    before = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    assert sorted(before) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert not (out / "featureset.json").exists()

    assert main(argv) == 0
    assert "1 written, 2 reused" in capsys.readouterr().out
    assert {name: (shards / name).stat().st_mtime_ns for name in before} == before
    assert_same_features(FeatureSet.load(out), FeatureSet.load(reference))


def test_ray_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from affectstream.errors import MissingExtraError
    from affectstream.training.ray_extract import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what Python does for a package that is not installed
    with pytest.raises(MissingExtraError, match=r"affectstream\[ray\]"):
        import_ray()


@pytest.mark.slow
def test_onnx_backend_gives_the_torch_features(synthetic: Path, reference: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    dataset, labeler = DatasetLocation(synthetic, "synthetic").open()
    config = ExtractConfig(model="tiny-random", device="cpu", sampling=RATE, batch_size=8, shard_size=2,
                           backend="onnx")
    run_extraction(dataset, tmp_path, config, labeler, progress=False)
    assert json.loads((tmp_path / "featureset.json").read_text(encoding="utf-8"))["encoder"]["backend"] == "onnx"
    assert_same_features(FeatureSet.load(tmp_path), FeatureSet.load(reference))
