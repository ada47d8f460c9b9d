"""Presets, manifests, building open_clip models: tiny-random, local weights files, offline failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from affectstream.engine.models import ModelSpec, build_clip, presets
from affectstream.errors import BundleError, ConfigError, ModelError
from tests.timeouts import scaled

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_spec() -> ModelSpec:
    return ModelSpec.from_preset("tiny-random")


@pytest.fixture(scope="module")
def tiny_model(tiny_spec: ModelSpec) -> Any:
    return build_clip(tiny_spec)


@pytest.fixture(scope="module")
def tiny_weights(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's weights written as an open_clip safetensors file, like one from the hub."""
    path = tmp_path_factory.mktemp("weights") / "open_clip_model.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in tiny_model.state_dict().items()}, str(path))
    return path


def probe_images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    return torch.randn(3, 3, 224, 224, generator=generator)


def test_presets_include_the_default_and_tiny_random() -> None:
    assert {"clip-vit-b32", "tiny-random"} <= set(presets())


def test_default_preset_takes_its_preprocessing_from_open_clip() -> None:
    spec = ModelSpec.from_preset("clip-vit-b32")
    tag = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    assert (spec.arch, spec.pretrained, spec.weights_path) == ("ViT-B-32", "openai", None)
    assert spec.mean == pytest.approx(tag["mean"]) and spec.std == pytest.approx(tag["std"])
    assert (spec.interpolation, spec.resize_mode, spec.image_size) == ("bicubic", "shortest", 224)
    assert spec.embed_dim == 512
    assert spec.quick_gelu  # OpenAI's weights were trained with QuickGELU


def test_tiny_random_spec_matches_the_model_open_clip_builds(tiny_spec: ModelSpec, tiny_model: Any) -> None:
    built = open_clip.get_model_preprocess_cfg(tiny_model)
    assert tuple(built["size"]) == (tiny_spec.image_size, tiny_spec.image_size)
    assert tiny_spec.mean == pytest.approx(built["mean"]) and tiny_spec.std == pytest.approx(built["std"])
    assert tiny_model.visual.output_dim == tiny_spec.embed_dim
    assert not tiny_model.training


def test_unknown_model_lists_the_presets() -> None:
    with pytest.raises(ConfigError, match="clip-vit-b32.*tiny-random"):
        ModelSpec.from_preset("resnet-9000")


def test_missing_weights_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ModelSpec.from_preset(str(tmp_path / "absent.safetensors"))
    with pytest.raises(ConfigError, match="does not exist"):
        ModelSpec.from_preset(f"ViT-B-32:{tmp_path / 'absent.pt'}")


def test_tiny_random_is_identical_on_every_build_and_leaves_the_rng_alone(tiny_spec: ModelSpec) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = build_clip(tiny_spec).state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    second = build_clip(tiny_spec).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_local_weights_file_with_an_architecture(tiny_model: Any, tiny_weights: Path) -> None:
    spec = ModelSpec.from_preset(f"tiny-random:{tiny_weights}")
    assert (spec.arch, spec.weights_path, spec.pretrained) == ("tiny-random", tiny_weights, None)
    loaded = build_clip(spec)
    with torch.inference_mode():
        assert torch.allclose(loaded.encode_image(probe_images()), tiny_model.encode_image(probe_images()))


def test_a_file_that_holds_no_weights_is_a_model_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"these are not weights")
    spec = ModelSpec.from_preset(f"tiny-random:{junk}")
    with pytest.raises(ModelError, match="ARCH:/path"):
        build_clip(spec)


def test_manifest_round_trip_with_the_weights_hash(tiny_weights: Path) -> None:
    spec = ModelSpec.from_preset(f"tiny-random:{tiny_weights}")
    manifest = json.loads(json.dumps(spec.to_manifest()))
    assert len(manifest["weights_sha256"]) == 64
    assert ModelSpec.from_manifest(manifest) == spec
    preset = ModelSpec.from_preset("clip-vit-b32")
    assert ModelSpec.from_manifest(json.loads(json.dumps(preset.to_manifest()))) == preset


def test_manifest_rejects_a_changed_weights_file_and_missing_keys(tmp_path: Path, tiny_weights: Path) -> None:
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(tiny_weights.read_bytes())
    manifest = ModelSpec.from_preset(f"tiny-random:{copy}").to_manifest()
    copy.write_bytes(tiny_weights.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="differs"):
        ModelSpec.from_manifest(manifest)
    with pytest.raises(BundleError, match="embed_dim"):
        ModelSpec.from_manifest({key: value for key, value in manifest.items() if key != "embed_dim"})


OFFLINE_SCRIPT = """
import json, torch
from affectstream.engine.models import ModelSpec, build_clip
from affectstream.errors import WeightsUnavailableError
tiny = build_clip(ModelSpec.from_preset("tiny-random"))
checksum = float(sum(p.detach().double().sum() for p in tiny.parameters()))
try:
    build_clip(ModelSpec.from_preset("clip-vit-b32"))
    outcome = {"error": None}
except WeightsUnavailableError as error:
    outcome = {"error": type(error).__name__, "message": str(error)}
print(json.dumps({"tiny_checksum": checksum, **outcome}))
"""


@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A new interpreter with the hub in offline mode and an empty cache, as on a machine offline."""
    home = tmp_path_factory.mktemp("hf-home")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "XDG_CACHE_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT],
        check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=scaled(120),
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_default_preset_offline_says_how_to_pass_a_local_file(fresh_process: dict[str, Any]) -> None:
    assert fresh_process["error"] == "WeightsUnavailableError"
    message = fresh_process["message"]
    assert "--model ViT-B-32-quickgelu:/path/to/open_clip_model.safetensors" in message
    assert "huggingface.co/timm/vit_base_patch32_clip_224.openai" in message


def test_tiny_random_is_the_same_in_another_process(fresh_process: dict[str, Any], tiny_model: Any) -> None:
    checksum = float(sum(p.detach().double().sum() for p in tiny_model.parameters()))
    assert fresh_process["tiny_checksum"] == checksum
