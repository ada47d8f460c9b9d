"""Pretrained tags: an unresolvable hub fails at once, unless the weights were already downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from affectstream.engine.hub import hub_file_names, hub_unreachable, weights_in_cache
from tests.timeouts import scaled

REPO = Path(__file__).parent.parent
OPENAI_B32 = {"hf_hub": "timm/vit_base_patch32_clip_224.openai/", "quick_gelu": True}


def put_in_hub_cache(cache: Path, repo_id: str, name: str, data: bytes) -> Path:
    """A file laid out as huggingface_hub's cache keeps it (refs/main -> snapshots/<commit>/name)."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    path = folder / "snapshots" / "0123abcd" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


def test_the_file_names_open_clip_tries() -> None:
    assert hub_file_names("timm/vit_base_patch32_clip_224.openai/") == (
        "timm/vit_base_patch32_clip_224.openai", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
    assert hub_file_names("org/repo/weights.pth") == ("org/repo", ["weights.safetensors", "weights.pth"])


def test_weights_in_the_cache_are_found_safetensors_first(tmp_path: Path) -> None:
    assert weights_in_cache(OPENAI_B32, cache_dir=tmp_path) is None
    assert weights_in_cache({"url": "https://example.org/w.pt"}, cache_dir=tmp_path) is None
    repo_id = "timm/vit_base_patch32_clip_224.openai"
    pickled = put_in_hub_cache(tmp_path, repo_id, "open_clip_pytorch_model.bin", b"x")
    assert weights_in_cache(OPENAI_B32, cache_dir=tmp_path) == pickled
    safe = pickled.with_name("open_clip_model.safetensors")
    safe.write_bytes(b"y")
    assert weights_in_cache(OPENAI_B32, cache_dir=tmp_path) == safe


def test_an_unresolvable_hub_is_known_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    reason = hub_unreachable("https://hub.invalid")  # .invalid never resolves (RFC 2606)
    assert reason is not None and "hub.invalid does not resolve" in reason
    assert hub_unreachable("http://127.0.0.1:9") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert hub_unreachable("https://hub.invalid") is None, "behind a proxy, only the proxy can tell"


CACHED_SCRIPT = """
import json, sys, torch, open_clip
from safetensors.torch import save_file
from affectstream.engine.models import ModelSpec, build_clip
spec = ModelSpec.from_preset("clip-vit-b32")
torch.manual_seed(3)
weights = open_clip.create_model("ViT-B-32", force_quick_gelu=True).state_dict()
save_file({k: v.contiguous() for k, v in weights.items()}, sys.argv[1])
model = build_clip(spec)
same = all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
print(json.dumps({"same": same, "preprocess": open_clip.get_model_preprocess_cfg(model)}))
"""


@pytest.mark.slow
def test_a_tag_already_downloaded_loads_with_the_hub_out_of_reach(tmp_path: Path) -> None:
    """ViT-B-32 'openai' with (random) weights in the hub cache and a hub that does not resolve: the
    early "does not resolve" failure must not stop a model that needs no download."""
    hub_cache = tmp_path / "hub"
    target = put_in_hub_cache(hub_cache, "timm/vit_base_patch32_clip_224.openai", "open_clip_model.safetensors", b"")
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    env.update(HF_HUB_CACHE=str(hub_cache), HF_ENDPOINT="https://hub.invalid", XDG_CACHE_HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", CACHED_SCRIPT, str(target)], check=False, env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=scaled(180))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["same"], "the cached file's weights were loaded"
    assert result["preprocess"]["interpolation"] == "bicubic"
    assert result["preprocess"]["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_no_clip_in_cache_looks_at_repo_names_only(tmp_path: Path) -> None:
    from affectstream.engine.hub import no_clip_in_cache

    assert no_clip_in_cache(tmp_path / "absent")
    (tmp_path / "models--someone--bert").mkdir(parents=True)
    assert no_clip_in_cache(tmp_path)
    (tmp_path / "models--timm--vit_base_patch32_clip_224.openai").mkdir()
    assert not no_clip_in_cache(tmp_path)  # maybe cached: open_clip must look
