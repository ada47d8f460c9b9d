"""torch.compile backend on CPU (inductor): parity with torch eager, padding to static buckets."""

from __future__ import annotations

import numpy as np
import pytest

from affectstream.engine.compiled import CompileConfig, CompiledTorchEncoder
from affectstream.engine.encoder import TorchEncoder
from affectstream.engine.models import ModelSpec, build_clip
from affectstream.engine.parity import FLOAT_BOUND, compare, parity_frames
from affectstream.errors import ConfigError


def test_compile_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="increasing"):
        CompileConfig(buckets=(4, 2))
    with pytest.raises(ConfigError, match="positive"):
        CompileConfig(buckets=(0, 2))
    assert CompileConfig().mode_for("cuda") == "reduce-overhead"  # CUDA graphs
    assert CompileConfig().mode_for("cpu") is None


@pytest.mark.slow
def test_compiled_encoder_matches_eager_in_every_bucket() -> None:
    # Inductor compiles C++ kernels on the CPU: about a minute the first time, cached afterwards.
    spec = ModelSpec.from_preset("tiny-random")
    encoder = CompiledTorchEncoder.from_model(build_clip(spec), spec, "cpu", "fp32", CompileConfig(buckets=(1, 4)))
    reference = TorchEncoder.from_model(build_clip(spec), spec, "cpu", "fp32")
    frames = parity_frames(7, seed=2)  # 7 rows: one full bucket of 4, then 3 padded to 4
    expected = reference.encode(frames)
    got = encoder.encode(frames)
    assert got.shape == expected.shape
    assert compare("compile", expected, got, FLOAT_BOUND).passed
    np.testing.assert_allclose(encoder.encode(frames[:1])[0], got[0], atol=1e-5)
