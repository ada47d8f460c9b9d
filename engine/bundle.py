"""The model bundle: the directory that training (or ``bundle create``) writes and the runtime loads.

::

    manifest.json                 format_version, labels, backbone, heads, metrics, created, hashes
    text_embeddings.safetensors   "emotions" (6, D) and "sentiment" (3, D) class text embeddings
    temporal.safetensors          TemporalLSTM state_dict (absent: zero-shot only)
    visual.onnx, engines/         added later by build-engine; checked when the manifest lists them

Every file the manifest lists under ``hashes`` must be present with that sha256, so that a half
copied or edited bundle fails at load time with a message, not later with odd scores.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

from affectstream.engine.files import (
    MANIFEST,
    TEMPORAL,
    TEXT_EMBEDDINGS,
    VISUAL_ONNX,
    file_sha256,
    finite_json,
)
from affectstream.engine.heads import SENTIMENT_POLES, LstmHead, ZeroShotConfig, ZeroShotHead
from affectstream.engine.interfaces import HeadKind, TemporalHead
from affectstream.engine.labels import EMOTIONS
from affectstream.engine.lstm import TemporalConfig, TemporalLSTM
from affectstream.errors import BundleError, ConfigError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class ModelBundle:
    path: Path
    manifest: dict[str, Any]
    emotion_embeddings: np.ndarray  # (6, D) unit rows
    sentiment_embeddings: np.ndarray  # (3, D) unit rows
    logit_scale: float
    temporal_config: TemporalConfig | None
    temporal_state: dict[str, torch.Tensor] | None

    @property
    def embed_dim(self) -> int:
        return int(self.emotion_embeddings.shape[1])

    @property
    def has_temporal(self) -> bool:
        return self.temporal_config is not None and self.temporal_state is not None

    def temporal_module(self) -> TemporalLSTM:
        """A fresh ``TemporalLSTM`` with the bundle's weights (on CPU, in eval mode)."""
        if self.temporal_config is None or self.temporal_state is None:
            raise ConfigError(f"the bundle {self.path} has no temporal model: train one with "
                              f"`affectstream train`, or use --head zero-shot")
        module = TemporalLSTM(self.temporal_config)
        module.load_state_dict(self.temporal_state)
        return module.eval()

    def build_head(
        self, kind: str | HeadKind = "auto", zero_shot_config: ZeroShotConfig | None = None, device: str = "cpu"
    ) -> TemporalHead:
        try:
            chosen = HeadKind(kind)
        except ValueError:
            raise ConfigError(f"head {kind!r} is not one of {[k.value for k in HeadKind]}") from None
        if chosen is HeadKind.AUTO:
            chosen = HeadKind.LSTM if self.has_temporal else HeadKind.ZERO_SHOT
        if chosen is HeadKind.LSTM:
            return LstmHead(self.temporal_module(), device=device)
        return ZeroShotHead.from_bundle(self, zero_shot_config)


def save_bundle(
    path: str | Path,
    backbone: dict[str, Any],
    emotion_embeddings: np.ndarray,
    sentiment_embeddings: np.ndarray,
    logit_scale: float,
    prompts: dict[str, Any],
    temporal: TemporalLSTM | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle to ``path`` atomically (a temporary sibling, then a rename); return ``path``.

    An existing bundle at ``path`` is replaced (its visual.onnx and engines go with it: rebuild them).
    """
    path = Path(path)
    emotions, sentiments = check_embeddings(emotion_embeddings, sentiment_embeddings, backbone)
    if temporal is not None and temporal.config.input_dim != emotions.shape[1]:
        raise BundleError(f"the temporal model takes {temporal.config.input_dim}-d features but the "
                          f"embeddings are {emotions.shape[1]}-d: train it on this backbone's features")
    heads: dict[str, Any] = {"zero_shot": {"prompts": prompts, "logit_scale": float(logit_scale)}}
    if temporal is not None:
        heads["temporal"] = temporal.config.to_dict()
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "labels": list(EMOTIONS),
        "backbone": backbone,
        "heads": heads,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if metrics is not None:
        manifest["metrics"] = metrics
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        save_numpy({"emotions": emotions, "sentiment": sentiments}, str(staging / TEXT_EMBEDDINGS))
        if temporal is not None:
            state = {key: value.detach().cpu().contiguous() for key, value in temporal.state_dict().items()}
            save_torch(state, str(staging / TEMPORAL))
        manifest["hashes"] = {name: file_sha256(staging / name) for name in sorted(os.listdir(staging))}
        write_manifest(staging, manifest)
        replace_directory(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("bundle written to %s (%s)", path, "with temporal model" if temporal else "zero-shot only")
    return path


def check_embeddings(
    emotion_embeddings: np.ndarray, sentiment_embeddings: np.ndarray, backbone: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    emotions = np.ascontiguousarray(emotion_embeddings, dtype=np.float32)
    sentiments = np.ascontiguousarray(sentiment_embeddings, dtype=np.float32)
    if emotions.ndim != 2 or emotions.shape[0] != len(EMOTIONS):
        raise BundleError(f"emotion embeddings must be ({len(EMOTIONS)}, D), got {emotions.shape}")
    if sentiments.ndim != 2 or sentiments.shape[0] != SENTIMENT_POLES:
        raise BundleError(f"sentiment embeddings must be ({SENTIMENT_POLES}, D), got {sentiments.shape}")
    if sentiments.shape[1] != emotions.shape[1]:
        raise BundleError(f"emotion ({emotions.shape[1]}-d) and sentiment ({sentiments.shape[1]}-d) "
                          f"embeddings differ in width: encode both with the same model")
    expected = backbone.get("embed_dim")
    if expected is not None and expected != emotions.shape[1]:
        raise BundleError(f"the backbone's embed_dim is {expected} but the text embeddings are "
                          f"{emotions.shape[1]}-d: they come from another model; recreate the bundle "
                          f"with `affectstream bundle create`")
    if not (np.isfinite(emotions).all() and np.isfinite(sentiments).all()):
        raise BundleError("text embeddings contain NaN or infinity: recompute them")
    return emotions, sentiments


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    try:
        text = json.dumps(finite_json(manifest), indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise BundleError(f"the manifest must be plain JSON (check backbone, prompts, metrics): {error}") from None
    temporary = directory / f".{MANIFEST}.tmp"
    temporary.write_text(text + "\n", encoding="utf-8")
    os.replace(temporary, directory / MANIFEST)


def replace_directory(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``; an existing target must be a bundle (or empty) to be replaced."""
    if not target.exists():
        os.rename(staging, target)
        return
    if not target.is_dir() or (any(target.iterdir()) and not (target / MANIFEST).is_file()):
        raise BundleError(f"{target} exists and is not a model bundle; refusing to overwrite it: "
                          f"choose a new or empty directory")
    retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, retired)
    os.rename(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def register_file(bundle_path: str | Path, relative: str) -> None:
    """Record a file added to a bundle later (``visual.onnx``, ``engines/<key>.plan``) in its hashes."""
    bundle_path = Path(bundle_path)
    manifest = read_manifest(bundle_path)
    target = inside(bundle_path, relative)
    if not target.is_file():
        raise BundleError(f"cannot register {relative}: no such file in {bundle_path}")
    manifest.setdefault("hashes", {})[relative] = file_sha256(target)
    write_manifest(bundle_path, manifest)


def inside(bundle_path: Path, relative: str) -> Path:
    target = (bundle_path / relative).resolve()
    if not target.is_relative_to(bundle_path.resolve()):
        raise BundleError(f"the manifest names {relative!r}, outside the bundle: the manifest is damaged")
    return target


def read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise BundleError(f"no model bundle at {path}: create one with `affectstream bundle create {path} "
                          "--model MODEL` or train one with `affectstream train FEATURES --out "
                          f"{path}`")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} has no {MANIFEST}, so it is not a model bundle (or an incomplete copy): "
                          f"copy the whole directory or recreate it with `affectstream bundle create`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise BundleError(f"{manifest_path} is not valid JSON ({error}): recreate the bundle") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} must hold a JSON object: recreate the bundle")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path} has bundle format_version {version!r}; this affectstream reads version "
                          f"{FORMAT_VERSION}: use the matching affectstream, or recreate the bundle")
    return manifest


def verify_hashes(path: Path, manifest: dict[str, Any]) -> None:
    hashes = manifest.get("hashes")
    if not isinstance(hashes, dict) or TEXT_EMBEDDINGS not in hashes:
        raise BundleError(f"{path / MANIFEST} lists no hash for {TEXT_EMBEDDINGS}: recreate the bundle")
    for relative, expected in sorted(hashes.items()):
        target = inside(path, relative)
        if not target.is_file():
            raise BundleError(f"{path} lacks {relative}, which its manifest lists: copy the whole bundle "
                              f"directory again, or recreate it")
        if file_sha256(target) != expected:
            raise BundleError(f"{target} does not match the sha256 in the manifest (damaged or edited "
                              f"after the bundle was written): copy it again, or recreate the bundle")
    unlisted = [name for name in (VISUAL_ONNX, TEMPORAL) if (path / name).exists() and name not in hashes]
    if unlisted:
        log.warning("bundle %s holds %s without hashes in its manifest; %s", path, unlisted,
                    "the temporal model is ignored" if TEMPORAL in unlisted else "not verified")


def load_bundle(path: str | Path) -> ModelBundle:
    """Read and verify a bundle: manifest, hashes of listed files, embeddings, temporal weights."""
    path = Path(path)
    manifest = read_manifest(path)
    labels = manifest.get("labels")
    if labels != list(EMOTIONS):
        raise BundleError(f"{path} is labelled {labels!r}, not {list(EMOTIONS)}: it was made for another "
                          f"label set; recreate it")
    verify_hashes(path, manifest)
    backbone = manifest.get("backbone")
    if not isinstance(backbone, dict):
        raise BundleError(f"{path / MANIFEST} has no backbone description: recreate the bundle")
    try:
        tensors = load_numpy(str(path / TEXT_EMBEDDINGS))
        emotions, sentiments = check_embeddings(tensors["emotions"], tensors["sentiment"], backbone)
    except (SafetensorError, KeyError) as error:
        raise BundleError(f"{path / TEXT_EMBEDDINGS} is unreadable or lacks 'emotions'/'sentiment' ({error}): "
                          f"recreate the bundle") from None
    zero_shot = manifest.get("heads", {}).get("zero_shot", {})
    logit_scale = float(zero_shot.get("logit_scale", 100.0))
    config, state = load_temporal(path, manifest, emotions.shape[1])
    return ModelBundle(path, manifest, emotions, sentiments, logit_scale, config, state)


def load_temporal(
    path: Path, manifest: dict[str, Any], embed_dim: int
) -> tuple[TemporalConfig | None, dict[str, torch.Tensor] | None]:
    settings = manifest.get("heads", {}).get("temporal")
    if settings is None:
        return None, None
    if TEMPORAL not in manifest.get("hashes", {}):
        raise BundleError(f"{path / MANIFEST} describes a temporal model but lists no {TEMPORAL}: "
                          f"copy the whole bundle again, or retrain")
    try:
        config = TemporalConfig.from_dict(settings)
    except (ConfigError, TypeError) as error:
        raise BundleError(f"the bundle's temporal settings are invalid ({error}): retrain or recreate it") from None
    if config.input_dim != embed_dim:
        raise BundleError(f"the temporal model takes {config.input_dim}-d features but the backbone gives "
                          f"{embed_dim}-d: it was trained on another backbone; retrain it")
    try:
        state = load_torch(str(path / TEMPORAL))
        TemporalLSTM(config).load_state_dict(state)  # fails now, not at the first frame
    except (SafetensorError, RuntimeError) as error:
        raise BundleError(f"{path / TEMPORAL} does not fit its manifest's settings ({error}): retrain") from None
    return config, state
