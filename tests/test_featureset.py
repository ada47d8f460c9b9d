"""The feature set file format: save/load round trips, shards, index, and damaged input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from affectstream.errors import ConfigError
from affectstream.training.featureset import (
    INDEX,
    MANIFEST,
    SHARD_DIR,
    FeatureSet,
    SequenceFeatures,
    read_shard,
    shard_is_complete,
    write_shard,
)

BACKBONE = {"name": "tiny-random", "embed_dim": 8}


def _sequence(key: str, n: int, seed: int, frame_labels: bool = False, class_name: str | None = None) -> SequenceFeatures:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 8)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = (rng.random(6) > 0.5).astype(np.float32)
    return SequenceFeatures(
        key=key, video_id=key.split("_")[0], times=np.arange(n) * 4.0 + 0.5, features=features, labels=labels,
        label_scores=labels * 2.5, sentiment=None if class_name else float(rng.uniform(-1, 1)), class_name=class_name,
        frame_labels=(rng.random((n, 6)) > 0.5).astype(np.float32) if frame_labels else None,
    )


def _assert_same(a: SequenceFeatures, b: SequenceFeatures) -> None:
    assert a.key == b.key and a.video_id == b.video_id
    assert a.sentiment == b.sentiment and a.class_name == b.class_name
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.label_scores, b.label_scores)
    if a.frame_labels is None:
        assert b.frame_labels is None
    else:
        assert b.frame_labels is not None
        np.testing.assert_array_equal(a.frame_labels, b.frame_labels)
    assert b.times.dtype == np.float64 and b.features.dtype == np.float32 and b.labels.dtype == np.float32


def test_round_trip_over_several_shards(tmp_path: Path) -> None:
    sequences = (
        _sequence("vidA_0", 3, 1, frame_labels=True), _sequence("vidA_1", 1, 2), _sequence("vidB_0", 5, 3),
        _sequence("S005_001", 2, 4, class_name="contempt"), _sequence("vidC_0", 4, 5, frame_labels=True),
    )
    original = FeatureSet(sequences, BACKBONE, "synthetic", 0.25)
    original.save(tmp_path, shard_size=2)

    assert sorted(p.name for p in (tmp_path / SHARD_DIR).iterdir()) == [
        "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    loaded = FeatureSet.load(tmp_path)
    assert loaded.dataset == "synthetic" and loaded.rate_hz == 0.25 and loaded.backbone == BACKBONE
    assert loaded.embed_dim == 8 and loaded.n_frames == 15 and len(loaded) == 5
    for a, b in zip(sequences, loaded.sequences, strict=True):
        _assert_same(a, b)


def test_index_lists_every_frame_with_its_shard_row_and_time(tmp_path: Path) -> None:
    sequences = (_sequence("vidA_0", 3, 1), _sequence("vidA_1", 2, 2), _sequence("vidB_0", 1, 3))
    FeatureSet(sequences, BACKBONE, "mosei", 0.25).save(tmp_path, shard_size=2)
    with (tmp_path / INDEX).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["key"], r["shard"], int(r["row"])) for r in rows] == [
        ("vidA_0", "shard-00000.safetensors", 0), ("vidA_0", "shard-00000.safetensors", 1),
        ("vidA_0", "shard-00000.safetensors", 2), ("vidA_1", "shard-00000.safetensors", 3),
        ("vidA_1", "shard-00000.safetensors", 4), ("vidB_0", "shard-00001.safetensors", 0),
    ]
    assert [float(r["time"]) for r in rows[:3]] == [0.5, 4.5, 8.5]
    assert rows[-1]["video_id"] == "vidB"


def test_duplicate_keys_and_bad_shapes_are_refused() -> None:
    with pytest.raises(ConfigError, match="unique"):
        FeatureSet((_sequence("a_0", 2, 1), _sequence("a_0", 2, 2)), BACKBONE, "x", 1.0)
    good = _sequence("a_0", 2, 1)
    with pytest.raises(ConfigError, match="T >= 1"):
        SequenceFeatures("a_0", "a", np.zeros(0), np.zeros((0, 8), np.float32), good.labels, good.label_scores,
                         None, None, None)
    with pytest.raises(ConfigError, match="frame_labels"):
        SequenceFeatures("a_0", "a", good.times, good.features, good.labels, good.label_scores, None, None,
                         np.zeros((5, 6), np.float32))


def test_missing_manifest_and_truncated_shard_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="affectstream extract"):
        FeatureSet.load(tmp_path)
    path = write_shard(tmp_path / "s.safetensors", [_sequence("a_0", 2, 1)])
    assert shard_is_complete(path)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    path.write_bytes(path.read_bytes()[:20])
    assert not shard_is_complete(path)
    with pytest.raises(ConfigError, match="not a readable feature shard"):
        read_shard(path)


def test_manifest_names_the_shards_it_loads(tmp_path: Path) -> None:
    FeatureSet((_sequence("a_0", 2, 1), _sequence("b_0", 2, 2)), BACKBONE, "x", 2.0).save(tmp_path, shard_size=1)
    # A stray shard not named in the manifest (e.g. left by another run) is not loaded.
    write_shard(tmp_path / SHARD_DIR / "shard-00009.safetensors", [_sequence("c_0", 1, 3)])
    assert [s.key for s in FeatureSet.load(tmp_path).sequences] == ["a_0", "b_0"]
    assert (tmp_path / MANIFEST).is_file()
