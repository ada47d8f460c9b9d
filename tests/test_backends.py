"""Backend choice (pure), build-engine through the CLI, and `analyze --backend onnx` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from affectstream.engine.backends import Backend, BackendFacts, choose_backend
from affectstream.engine.compiled import bucket_for, chunks
from affectstream.engine.runtime import EngineChoice, load_engine
from affectstream.errors import ConfigError, MissingExtraError
from tests.timeouts import scaled

CPU = BackendFacts(on_cuda=False, onnxruntime=True)
CPU_BUNDLE = BackendFacts(on_cuda=False, onnxruntime=True, visual_onnx=True)
CPU_INT8 = BackendFacts(on_cuda=False, onnxruntime=True, visual_onnx=True, int8_onnx=True)
GPU = BackendFacts(on_cuda=True, onnxruntime=True)
GPU_TRT = BackendFacts(on_cuda=True, onnxruntime=True, tensorrt=True, visual_onnx=True, trt_engine=True)


@pytest.mark.parametrize(("facts", "precision", "backend", "chosen"), [
    (CPU, "auto", Backend.TORCH, "fp32"),  # nothing built: no export at run time
    (CPU, "bf16", Backend.TORCH, "bf16"),
    (CPU_BUNDLE, "auto", Backend.ONNX, "fp32"),
    (CPU_INT8, "auto", Backend.ONNX, "int8"),
    (CPU_INT8, "fp32", Backend.ONNX, "fp32"),  # an explicit precision wins over the int8 graph
    (GPU, "auto", Backend.COMPILE, "fp16"),
    (GPU_TRT, "auto", Backend.TENSORRT, "fp16"),
])
def test_auto_picks_the_fastest_ready_backend(facts: BackendFacts, precision: str, backend: Backend,
                                              chosen: str) -> None:
    choice = choose_backend("auto", precision, facts)
    assert (choice.backend, choice.precision) == (backend, chosen)
    assert choice.reason


def test_explicit_backends_are_checked() -> None:
    assert choose_backend("onnx", "auto", CPU_INT8).precision == "int8"
    assert choose_backend("onnx", "auto", CPU_BUNDLE).precision == "fp32"
    with pytest.raises(MissingExtraError, match=r"affectstream\[onnx\]"):
        choose_backend("onnx", "fp32", BackendFacts(on_cuda=False))
    with pytest.raises(MissingExtraError, match=r"affectstream\[tensorrt\]"):
        choose_backend("tensorrt", "fp16", GPU)
    with pytest.raises(ConfigError, match="CUDA"):
        choose_backend("tensorrt", "fp16", CPU)
    with pytest.raises(ConfigError, match="never built at run time"):
        choose_backend("tensorrt", "fp16", BackendFacts(on_cuda=True, tensorrt=True))
    with pytest.raises(ConfigError, match="build-engine"):
        choose_backend("onnx", "int8", CPU_BUNDLE)
    with pytest.raises(ConfigError, match="runs fp32/fp16/bf16"):
        choose_backend("torch", "int8", CPU)
    with pytest.raises(ConfigError, match="CUDA"):
        choose_backend("torch", "fp16", CPU)
    with pytest.raises(ConfigError, match="not one of"):
        choose_backend("tflite", "auto", CPU)


def test_compile_buckets_pad_to_the_next_size() -> None:
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError):
        bucket_for(9, (1, 2, 4, 8))
    assert chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]


def test_onnx_backend_without_a_bundle_exports_at_start() -> None:
    engine = load_engine(EngineChoice(model="tiny-random", device="cpu", backend="onnx"))
    assert engine.encoder.name == "onnxruntime"
    assert engine.model_info["backend"] == "onnx"


def affectstream(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "affectstream", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=scaled(timeout))


@pytest.fixture(scope="module")
def built_bundle(tmp_path_factory: pytest.TempPathFactory, short_video: Path) -> Path:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    work = tmp_path_factory.mktemp("bundle")
    created = affectstream("bundle", "create", "tiny", "--model", "tiny-random", "--device", "cpu", cwd=work)
    assert created.returncode == 0, created.stderr
    built = affectstream("build-engine", "tiny", "--backend", "onnx", "--precision", "int8",
                         "--calibration", str(short_video), "--calibration-frames", "16", cwd=work)
    assert built.returncode == 0, built.stderr
    report = json.loads(built.stdout)
    assert {result["what"] for result in report["parity"]} == {"onnxruntime fp32", "onnxruntime int8"}
    assert all(result["passed"] for result in report["parity"])
    return work / "tiny"


def test_build_engine_writes_checked_graphs_into_the_bundle(built_bundle: Path) -> None:
    manifest = json.loads((built_bundle / "manifest.json").read_text())
    for name in ("visual.onnx", "visual.int8.onnx"):
        assert (built_bundle / name).is_file()
        assert name in manifest["hashes"]
    assert manifest["engines"]["onnx"]["parity"]["passed"]
    assert manifest["engines"]["onnx-int8"]["parity"]["bound"]["mean"] >= 0.99
    assert manifest["engines"]["onnx-int8"]["calibration_frames"] == 16


@pytest.mark.parametrize(("backend", "precision", "expected"),
                         [("onnx", "auto", "int8"), ("onnx", "fp32", "fp32"), ("auto", "auto", "int8")])
def test_analyze_with_the_onnx_backend(built_bundle: Path, short_video: Path, tmp_path: Path, backend: str,
                                       precision: str, expected: str) -> None:
    # auto on CPU takes the bundle's int8 graph that build-engine made and checked.
    result = affectstream("analyze", str(short_video), "--bundle", str(built_bundle), "--backend", backend,
                          "--precision", precision, "--device", "cpu", "--rate", "4", "--summary", "s.json",
                          cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["frames"] == 16
    assert summary["source"]["model"]["backend"] == "onnx"
    assert summary["source"]["model"]["precision"] == expected


def test_build_engine_refuses_what_it_cannot_build(built_bundle: Path, tmp_path: Path) -> None:
    result = affectstream("build-engine", str(built_bundle), "--backend", "onnx", "--precision", "fp16", cwd=tmp_path)
    assert result.returncode == 2
    assert "builds fp32/int8" in result.stderr
    missing = affectstream("build-engine", str(tmp_path / "nowhere"), "--backend", "onnx", cwd=tmp_path)
    assert missing.returncode != 0 and "no model bundle" in missing.stderr


def test_bf16_on_cpu_stays_within_the_float_bound() -> None:
    from affectstream.engine.parity import FLOAT_BOUND, compare, parity_frames

    reference = load_engine(EngineChoice(model="tiny-random", device="cpu", backend="torch", precision="fp32"))
    bf16 = load_engine(EngineChoice(model="tiny-random", device="cpu", backend="torch", precision="bf16"))
    assert bf16.model_info["precision"] == "bf16"
    frames = parity_frames(6, seed=4)
    result = compare("bf16", reference.encoder.encode(frames), bf16.encoder.encode(frames), FLOAT_BOUND)
    assert result.passed, result
    assert result.mean_cosine < 1.0 - 1e-9  # it really ran in bf16
