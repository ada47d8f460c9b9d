"""Extraction through Ray Data on a local Ray instance gives the same features as the local path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from affectstream.engine.encoder import TorchEncoder
from affectstream.engine.models import ModelSpec
from affectstream.training.extract import ExtractConfig, run_extraction
from affectstream.training.extract_cli import DatasetLocation
from affectstream.training.featureset import SHARD_DIR, FeatureSet
from affectstream.training.sampling import SamplingConfig
from affectstream.training.synthetic import SyntheticConfig, generate_synthetic

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install affectstream[ray])")

CONFIG = ExtractConfig(model="tiny-random", device="cpu", sampling=SamplingConfig(rate_hz=2.0), batch_size=8,
                       shard_size=2)


@pytest.fixture(scope="module")
def local_ray() -> object:
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_data_extraction_equals_local_and_resumes(local_ray: object, tmp_path: Path) -> None:
    root = tmp_path / "synth"
    generate_synthetic(root, SyntheticConfig(n_videos=3, seconds=4.0, fps=5.0, size=(48, 48), segment_s=2.0))
    dataset, labeler = DatasetLocation(root, "synthetic").open()
    encoder = TorchEncoder.from_spec(ModelSpec.from_preset("tiny-random"), device="cpu")
    run_extraction(dataset, tmp_path / "local", CONFIG, labeler, encoder=encoder, progress=False)

    # A finished shard from an earlier (local) run is reused by the Ray run, not recomputed.
    (tmp_path / "ray" / SHARD_DIR).mkdir(parents=True)
    run_extraction(dataset, tmp_path / "ray", CONFIG, labeler, encoder=encoder, progress=False)
    for name in ("shard-00001.safetensors", "shard-00002.safetensors"):
        (tmp_path / "ray" / SHARD_DIR / name).unlink()
    kept = (tmp_path / "ray" / SHARD_DIR / "shard-00000.safetensors").stat().st_mtime_ns

    summary = run_extraction(dataset, tmp_path / "ray", CONFIG, labeler, ray_address="local", progress=False)
    assert (summary.shards_written, summary.shards_reused, summary.ray) == (2, 1, "local")
    assert (tmp_path / "ray" / SHARD_DIR / "shard-00000.safetensors").stat().st_mtime_ns == kept

    local, remote = FeatureSet.load(tmp_path / "local"), FeatureSet.load(tmp_path / "ray")
    assert [s.key for s in remote.sequences] == [s.key for s in local.sequences] and len(local) == 6
    for a, b in zip(local.sequences, remote.sequences, strict=True):
        np.testing.assert_array_equal(a.times, b.times)
        np.testing.assert_allclose(a.features, b.features, rtol=0, atol=1e-6)
        assert a.frame_labels is not None and b.frame_labels is not None
        np.testing.assert_array_equal(a.frame_labels, b.frame_labels)
    assert remote.backbone == local.backbone
