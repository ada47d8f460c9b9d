"""TensorRT backend: the engine key and profile without TensorRT; builder and runtime where it exists."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from affectstream.engine.tensorrt_backend import BatchProfile, engine_key, key_prefix
from affectstream.errors import ConfigError, MissingExtraError

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = False
try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a core dependency
    pass


def test_engine_key_names_gpu_version_precision_and_profile() -> None:
    key = engine_key("NVIDIA H100 80GB HBM3", "10.3.0.26", "fp16", BatchProfile(1, 8, 32))
    assert key == "nvidia-h100-80gb-hbm3_trt10.3.0.26_fp16_b1-8-32"
    assert key.startswith(key_prefix("NVIDIA H100 80GB HBM3", "10.3.0.26", "fp16"))
    # Anything that makes an engine unusable elsewhere changes the key.
    others = {engine_key("NVIDIA L4", "10.3.0.26", "fp16", BatchProfile(1, 8, 32)),
              engine_key("NVIDIA H100 80GB HBM3", "10.4.0", "fp16", BatchProfile(1, 8, 32)),
              engine_key("NVIDIA H100 80GB HBM3", "10.3.0.26", "int8", BatchProfile(1, 8, 32)),
              engine_key("NVIDIA H100 80GB HBM3", "10.3.0.26", "fp16", BatchProfile(1, 4, 16))}
    assert key not in others and len(others) == 4
    assert "/" not in engine_key("weird/gpu name", "10.0", "fp32", BatchProfile())


def test_profile_parsing_and_checks() -> None:
    assert BatchProfile.parse("1,8,16") == BatchProfile(1, 8, 16)
    with pytest.raises(ConfigError, match="MIN,OPT,MAX"):
        BatchProfile.parse("8,16")
    with pytest.raises(ConfigError, match="MIN <= OPT <= MAX"):
        BatchProfile(4, 2, 8)
    with pytest.raises(ConfigError, match="precision"):
        engine_key("gpu", "10.0", "bf16", BatchProfile())


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed: the missing-extra message cannot be shown")
def test_missing_tensorrt_names_the_extra() -> None:
    from affectstream.engine.tensorrt_backend import require_tensorrt

    with pytest.raises(MissingExtraError, match=r"pip install affectstream\[tensorrt\]"):
        require_tensorrt()


@pytest.mark.skipif(not (HAS_TENSORRT and HAS_CUDA), reason="needs tensorrt (affectstream[tensorrt]) and a CUDA "
                    "GPU; neither is on the project's machines")
def test_build_and_run_a_strongly_typed_fp16_engine(tmp_path: Path) -> None:  # pragma: no cover - GPU only
    from affectstream.engine.build import BuildConfig, build_engine
    from affectstream.engine.models import ModelSpec
    from affectstream.engine.runtime import create_zero_shot_bundle

    bundle = create_zero_shot_bundle(ModelSpec.from_preset("tiny-random"), tmp_path / "b")
    report = build_engine(bundle, BuildConfig(backend="tensorrt", precision="fp16", device="cuda",
                                              profile=BatchProfile(1, 4, 8)))
    assert all(result["passed"] for result in report["parity"])
    assert any(name.startswith("engines/") and name.endswith(".plan") for name in report["files"])
