"""`affectstream bench --quick` on tiny-random: the report has sections a-d with measured figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.timeouts import scaled

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")


@pytest.mark.slow
def test_bench_quick_writes_every_section(short_video: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "affectstream", "bench", "--quick", "--model", "tiny-random",
               "--video", str(short_video), "--variants", "torch-fp32,onnx-fp32", "--batches", "1,2",
               "--streams", "1,2", "--naive-streams", "1", "--seconds", "2", "--out", str(tmp_path / "b.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=scaled(240))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["machine"]["cpus"] and report["command"].startswith("affectstream bench")
    # a: both variants at both batch sizes, checked against torch fp32, with ratios.
    rows = report["encoders"]["rows"]
    assert {(row["variant"], row["batch"]) for row in rows} == {
        (v, b) for v in ("torch-fp32", "onnx-fp32") for b in (1, 2)}
    assert all(row["frames_per_s"] > 0 and row["p95_ms"] >= row["p50_ms"] for row in rows)
    assert report["parity"]["onnx-fp32"]["passed"]
    assert [r["variant"] for r in report["encoders"]["ratios"]] == ["onnx-fp32", "onnx-fp32"]
    # b: frame-to-event with every stage, percentiles in order.
    run = report["latency"]["run"]
    assert run["estimates"] > 0
    latency = run["frame_to_event_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert set(run["stages_ms"]) == {"decode", "queue", "preprocess", "encode", "head", "serialize", "send"}
    assert report["latency"]["bound_ms"] > report["latency"]["encoder_batch1_ms"]
    # c: stream counts tried in order, the answer among them.
    streams = report["streams"]
    assert [r["streams"] for r in streams["runs"]][0] == 1
    assert streams["max_streams"] in (0, 1, 2)
    # d: same work on both sides, a ratio.
    row = report["naive_vs_pipeline"]["rows"][0]
    assert row["same_work"] and row["naive"]["estimates"] > 0
    assert row["pipeline_speedup"] == pytest.approx(
        row["pipeline"]["estimates_per_s"] / row["naive"]["estimates_per_s"], rel=1e-2)
    pytest.importorskip("matplotlib", reason="plots need the plots extra")
    assert {p.name for p in tmp_path.glob("*.png")} == {
        "bench_encoders.png", "bench_latency.png", "bench_streams.png", "bench_naive_vs_pipeline.png"}
