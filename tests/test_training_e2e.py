"""End to end through the real commands: synth → extract → train → evaluate → analyze --bundle."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from affectstream.engine.bundle import load_bundle
from tests.timeouts import scaled


def affectstream(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "affectstream", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=scaled(timeout))


def same(a: float | None, b: float | None) -> bool:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return abs(a - b) < 1e-5


@pytest.mark.slow
def test_synthetic_dataset_to_a_bundle_that_analyze_runs(tmp_path: Path) -> None:
    steps = [
        ("synth", "data", "--videos", "8", "--seconds", "8", "--size", "64x64", "--seed", "3"),
        ("extract", "data", "--format", "synthetic", "--out", "features", "--model", "tiny-random",
         "--device", "cpu", "--rate", "2", "--no-progress"),
        ("train", "features", "--out", "bundle", "--epochs", "3", "--target", "frames", "--balance", "interpolate",
         "--hidden", "16", "--no-progress"),
        ("evaluate", "features", "--bundle", "bundle", "--baselines", "--report", "report.md", "--no-progress"),
        ("analyze", "data/videos/synth_000.avi", "--bundle", "bundle", "--faces", "off", "--summary", "summary.json",
         "--rate", "2"),
    ]
    for step in steps:
        result = affectstream(*step, cwd=tmp_path)
        assert result.returncode == 0, f"{step[0]} failed:\n{result.stderr[-3000:]}"
        if step[0] == "train":
            assert "test: loss" in result.stdout and "bundle: bundle" in result.stdout

    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.has_temporal and bundle.temporal_config is not None
    assert bundle.temporal_config.input_dim == bundle.embed_dim and not bundle.temporal_config.bidirectional
    metrics = bundle.manifest["metrics"]
    assert metrics["balance"]["method"] == "interpolate" and metrics["train_config"]["target"] == "frames"
    record = tmp_path / "bundle" / "training"
    for name in ("checkpoint.safetensors", "checkpoint.json", "history.json", "history.png", "split.json",
                 "frame_classifier.safetensors"):
        assert (record / name).is_file(), name
    assert len(json.loads((record / "history.json").read_text())) == metrics["epochs_run"]

    report = json.loads((tmp_path / "report.json").read_text())[0]
    assert set(report["models"]) == {"lstm", "zero_shot", "frame_classifier"}
    assert report["side"] == "test" and report["segments"] == metrics["segments"]["test"]
    # the exported bundle (scaling folded into its weights) scores the test side as training did
    evaluated, trained = report["models"]["lstm"]["multilabel"], metrics["test"]
    for key in ("auc", "macro_auc", "precision", "recall", "binary_accuracy", "loss"):
        assert same(evaluated[key], trained[key]), key
    markdown = (tmp_path / "report.md").read_text()
    assert "000 seed, tables 9-10 format" in markdown and "not comparable" in markdown
    assert "0.8679" in markdown and "68.77 %" in markdown  # the seeds' figures beside ours

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["source"]["model"]["head"] == "lstm" and summary["frames"] == 16

    # The trained bundle through the ONNX engines (image encoder and the LSTM step) gives the same timeline.
    for step in (("build-engine", "bundle", "--backend", "onnx"),
                 ("analyze", "data/videos/synth_000.avi", "--bundle", "bundle", "--backend", "onnx",
                  "--faces", "off", "--summary", "summary_onnx.json", "--rate", "2")):
        result = affectstream(*step, cwd=tmp_path)
        assert result.returncode == 0, f"{step[0]} failed:\n{result.stderr[-3000:]}"
    assert "temporal.onnx" in load_bundle(tmp_path / "bundle").manifest["hashes"]
    onnx_summary = json.loads((tmp_path / "summary_onnx.json").read_text())
    assert onnx_summary["source"]["model"]["backend"] == "onnx"
    torch_rows, onnx_rows = summary["timeline"], onnx_summary["timeline"]
    assert len(torch_rows) == len(onnx_rows) == 16
    for torch_row, onnx_row in zip(torch_rows, onnx_rows, strict=True):
        assert torch_row["ts"] == onnx_row["ts"]
        for label, value in torch_row["scores"].items():
            assert abs(value - onnx_row["scores"][label]) < 1e-3, (torch_row, onnx_row)


def test_evaluate_compares_bundles_in_the_table_13_format(tmp_path: Path) -> None:
    """Two bundles trained with and without balancing, evaluated side by side (no video: toy features)."""
    import numpy as np

    from affectstream.training.fit import FitOptions, fit, write_run
    from affectstream.training.train import TrainConfig
    from tests._training_helpers import DIM, toy_featureset

    featureset = toy_featureset(n_videos=16, per_video=3, weights=np.array([1, 1, 1, 1, 1, 0.2]))
    featureset.save(tmp_path / "features")
    rng = np.random.default_rng(0)  # the toy backbone has no text tower: any unit text embeddings do
    texts = {"emotion_embeddings": rng.normal(size=(6, DIM)), "sentiment_embeddings": rng.normal(size=(3, DIM)),
             "logit_scale": 100.0, "prompts": {}}
    for method in ("none", "interpolate"):
        options = FitOptions(train=TrainConfig(epochs=2, hidden=8), balance=method)
        outcome = fit(featureset, options)
        assert (len(outcome.added) > 0) == (method == "interpolate")
        write_run(tmp_path / method, outcome, texts)
    result = affectstream("evaluate", "features", "--bundle", "none", "--bundle", "interpolate", "--baselines",
                          "--report", "report.md", "--no-progress", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    markdown = (tmp_path / "report.md").read_text()
    assert "table 13 format" in markdown and "balance interpolate" in markdown and "41.50 %" in markdown
    reports = json.loads((tmp_path / "report.json").read_text())
    assert [r["balance"] for r in reports] == ["none", "interpolate"]
    assert reports[0]["segments"] == reports[1]["segments"]  # same seed, same split, same test side
    toy_featureset(n_videos=16, per_video=3, seed=5).save(tmp_path / "other")  # same keys, other features
    refused = affectstream("evaluate", "other", "--bundle", "none", "--no-progress", cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and "fingerprints differ" in refused.stderr


def test_train_refuses_a_missing_feature_directory(tmp_path: Path) -> None:
    result = affectstream("train", "nowhere", "--out", "bundle", "--no-progress", cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "affectstream extract" in result.stderr
