"""Model bundles: round trips, verification of hashes and shapes, heads built from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from affectstream.engine.bundle import (
    MANIFEST,
    TEMPORAL,
    TEXT_EMBEDDINGS,
    VISUAL_ONNX,
    load_bundle,
    register_file,
    save_bundle,
)
from affectstream.engine.heads import LstmHead, ZeroShotConfig, ZeroShotHead
from affectstream.engine.labels import EMOTIONS
from affectstream.engine.lstm import TemporalConfig, TemporalLSTM
from affectstream.engine.prompts import emotion_prompts, sentiment_prompts
from affectstream.errors import BundleError, ConfigError

DIM = 32
BACKBONE = {"name": "tiny-test", "arch": "test", "embed_dim": DIM}


def unit(rng: np.random.Generator, rows: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write(path: Path, temporal: TemporalLSTM | None = None, **overrides: Any) -> Path:
    rng = np.random.default_rng(0)
    arguments: dict[str, Any] = {
        "backbone": BACKBONE,
        "emotion_embeddings": unit(rng, 6),
        "sentiment_embeddings": unit(rng, 3),
        "logit_scale": 42.0,
        "prompts": {"emotions": emotion_prompts(), "sentiment": sentiment_prompts()},
        "temporal": temporal,
    }
    arguments.update(overrides)
    return save_bundle(path, **arguments)


def lstm() -> TemporalLSTM:
    torch.manual_seed(5)
    return TemporalLSTM(TemporalConfig(input_dim=DIM, hidden=8)).eval()


def edit_manifest(path: Path, **changes: Any) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(changes)
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_zero_shot_round_trip(tmp_path: Path) -> None:
    path = write(tmp_path / "bundle", metrics={"auc": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging directory left behind
    assert sorted(p.name for p in path.iterdir()) == [MANIFEST, TEXT_EMBEDDINGS]
    bundle = load_bundle(path)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(bundle.emotion_embeddings, unit(rng, 6))
    np.testing.assert_array_equal(bundle.sentiment_embeddings, unit(rng, 3))
    assert bundle.logit_scale == 42.0 and bundle.embed_dim == DIM
    assert bundle.temporal_config is None and bundle.temporal_state is None
    manifest = bundle.manifest
    assert manifest["format_version"] == 1 and manifest["labels"] == list(EMOTIONS)
    assert manifest["backbone"] == BACKBONE and manifest["metrics"] == {"auc": 0.5}
    assert manifest["heads"]["zero_shot"]["prompts"]["emotions"]["anger"][0] == "angry person"
    assert "temporal" not in manifest["heads"] and "T" in manifest["created"]
    assert set(manifest["hashes"]) == {TEXT_EMBEDDINGS}
    head = bundle.build_head()
    assert isinstance(head, ZeroShotHead) and head.logit_scale == 42.0
    out = head.step(["a"], unit(rng, 1))
    assert out.scores.shape == (1, 6)


def test_temporal_round_trip_gives_the_same_outputs(tmp_path: Path) -> None:
    module = lstm()
    bundle = load_bundle(write(tmp_path / "bundle", temporal=module))
    assert bundle.temporal_config == module.config
    assert bundle.manifest["heads"]["temporal"] == module.config.to_dict()
    assert set(bundle.manifest["hashes"]) == {TEXT_EMBEDDINGS, TEMPORAL}
    head = bundle.build_head("auto")
    assert isinstance(head, LstmHead)
    features = unit(np.random.default_rng(3), 4)
    with torch.no_grad():
        expected, expected_sentiment, _ = module.step(torch.from_numpy(features))
    out = head.step(["a", "b", "c", "d"], features)
    np.testing.assert_allclose(out.scores, expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(out.sentiment, expected_sentiment.numpy(), atol=1e-6)
    zero_shot = bundle.build_head("zero-shot", zero_shot_config=ZeroShotConfig(dynamic_threshold=0.5))
    assert isinstance(zero_shot, ZeroShotHead) and zero_shot.config.dynamic_threshold == 0.5


def test_head_choice_is_checked(tmp_path: Path) -> None:
    bundle = load_bundle(write(tmp_path / "bundle"))
    with pytest.raises(ConfigError, match="zero-shot"):
        bundle.build_head("lstm")
    with pytest.raises(ConfigError, match="transformer"):
        bundle.build_head("transformer")


def test_saving_again_replaces_a_bundle_but_never_another_directory(tmp_path: Path) -> None:
    path = write(tmp_path / "bundle", temporal=lstm())
    write(path)
    assert not (path / TEMPORAL).exists()
    assert load_bundle(path).temporal_config is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="refusing"):
        write(precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "home"]


def test_corrupted_file_fails_its_hash(tmp_path: Path) -> None:
    path = write(tmp_path / "bundle", temporal=lstm())
    data = bytearray((path / TEMPORAL).read_bytes())
    data[-1] ^= 0xFF
    (path / TEMPORAL).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{TEMPORAL} does not match the sha256"):
        load_bundle(path)


@pytest.mark.parametrize("name", [TEXT_EMBEDDINGS, TEMPORAL])
def test_missing_file_is_named(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "bundle", temporal=lstm())
    (path / name).unlink()
    with pytest.raises(BundleError, match=f"lacks {name}"):
        load_bundle(path)


def test_missing_manifest_or_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(tmp_path / "nowhere")
    path = write(tmp_path / "bundle")
    (path / MANIFEST).unlink()
    with pytest.raises(BundleError, match="manifest.json"):
        load_bundle(path)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(path)


def test_unknown_format_version(tmp_path: Path) -> None:
    path = write(tmp_path / "bundle")
    edit_manifest(path, format_version=2)
    with pytest.raises(BundleError, match="format_version 2"):
        load_bundle(path)


def test_embed_dim_mismatch(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="embed_dim is 64"):
        write(tmp_path / "refused", backbone={**BACKBONE, "embed_dim": 64})
    assert not (tmp_path / "refused").exists()
    path = write(tmp_path / "bundle")
    edit_manifest(path, backbone={**BACKBONE, "embed_dim": 64})
    with pytest.raises(BundleError, match="another model"):
        load_bundle(path)
    with pytest.raises(BundleError, match="train it on this backbone"):
        write(tmp_path / "other", temporal=TemporalLSTM(TemporalConfig(input_dim=DIM * 2, hidden=4)))


def test_wrong_labels_or_shapes(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="emotion embeddings"):
        write(tmp_path / "a", emotion_embeddings=np.zeros((7, DIM), dtype=np.float32))
    with pytest.raises(BundleError, match="sentiment embeddings"):
        write(tmp_path / "b", sentiment_embeddings=np.zeros((2, DIM), dtype=np.float32))
    path = write(tmp_path / "bundle")
    edit_manifest(path, labels=["joy", "anger"])
    with pytest.raises(BundleError, match="label"):
        load_bundle(path)


def test_temporal_weights_must_fit_their_settings(tmp_path: Path) -> None:
    path = write(tmp_path / "bundle", temporal=lstm())
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["heads"]["temporal"]["hidden"] = 16
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not fit"):
        load_bundle(path)


def test_files_added_later_are_verified_once_registered(tmp_path: Path) -> None:
    path = write(tmp_path / "bundle")
    (path / VISUAL_ONNX).write_bytes(b"onnx bytes")
    (path / "engines").mkdir()
    (path / "engines" / "gpu-trt10-fp16-b8.plan").write_bytes(b"plan")
    load_bundle(path)  # unregistered extras are tolerated
    register_file(path, VISUAL_ONNX)
    register_file(path, "engines/gpu-trt10-fp16-b8.plan")
    assert set(load_bundle(path).manifest["hashes"]) >= {VISUAL_ONNX, "engines/gpu-trt10-fp16-b8.plan"}
    (path / VISUAL_ONNX).write_bytes(b"other bytes")
    with pytest.raises(BundleError, match=VISUAL_ONNX):
        load_bundle(path)
    with pytest.raises(BundleError, match="no such file"):
        register_file(path, "engines/missing.plan")


def test_hash_entries_cannot_point_outside_the_bundle(tmp_path: Path) -> None:
    path = write(tmp_path / "bundle")
    (tmp_path / "secret").write_text("x")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["hashes"]["../secret"] = "0" * 64
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(path)


def test_metrics_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="plain JSON"):
        write(tmp_path / "bundle", metrics={"curve": object()})
    assert list(tmp_path.iterdir()) == []


def test_tiny_random_engine_serves_zero_shot_from_a_real_bundle(tiny_engine: Any) -> None:
    """The runtime builds its default head through a bundle made with the real CLIP text tower."""
    head = tiny_engine.head
    assert isinstance(head, ZeroShotHead)
    frames = [np.full((64, 64, 3), value, dtype=np.uint8) for value in (0, 128, 255)]
    out = head.step(["a", "b", "c"], tiny_engine.encoder.encode(frames))
    assert out.scores.shape == (3, 6)
    np.testing.assert_allclose(out.scores.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(np.abs(out.sentiment) <= 1.0)


def test_a_manifest_is_strict_json(tmp_path: Path) -> None:
    from affectstream.engine.bundle import write_manifest

    write_manifest(tmp_path, {"metrics": {"auc": float("nan"), "loss": float("inf"), "ok": 0.5}, "n": [1.0, float("-inf")]})
    text = (tmp_path / "manifest.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"metrics": {"auc": None, "loss": None, "ok": 0.5}, "n": [1.0, None]}
