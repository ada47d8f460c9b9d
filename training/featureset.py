"""Feature sets on disk: what ``affectstream extract`` writes and training reads.

Layout of a feature directory::

    featureset.json              manifest: format version, dataset, rate, backbone, embed_dim, shards
    shards/shard-00000.safetensors   one shard: arrays of its segments, their metadata in the header
    index.csv                    one row per frame: video_id, key, shard, row, time

A shard file is self-contained (arrays plus a JSON description of its sequences in the safetensors
metadata), so a shard is either complete or absent: ``extract`` writes it under a temporary name and
renames it. No pickle anywhere.

Arrays of a shard (N frames over S sequences, rows in sequence order):

- ``features`` (N, D) float32, ``times`` (N,) float64, ``frame_labels`` (N, 6) float32 (zeros where a
  sequence has no per-frame truth; its ``has_frame_labels`` says which),
- ``labels`` and ``label_scores`` (S, 6) float32.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError

FORMAT_VERSION = 1
MANIFEST = "featureset.json"
INDEX = "index.csv"
SHARD_DIR = "shards"
_METADATA_KEY = "sequences"
N_LABELS = len(EMOTIONS)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


@dataclass(frozen=True)
class SequenceFeatures:
    """The sampled frames of one segment, encoded, with the segment's labels."""

    key: str  # the segment id, unique in the set
    video_id: str
    times: np.ndarray  # (T,) float64, media seconds of the sampled frames (T >= 1)
    features: np.ndarray  # (T, D) float32, unit rows (encoder output)
    labels: np.ndarray  # (6,) float32, binarised labels, EMOTIONS order
    label_scores: np.ndarray  # (6,) float32, the raw scores they came from
    sentiment: float | None
    class_name: str | None  # single-label datasets (CK+, MUG), else None
    frame_labels: np.ndarray | None  # (T, 6) float32 per-frame truth where known

    def __post_init__(self) -> None:
        n = len(self.times)
        if n < 1 or self.features.ndim != 2 or self.features.shape[0] != n:
            raise ConfigError(f"sequence {self.key}: needs T >= 1 frames with (T, D) features and (T,) times, "
                              f"got times {self.times.shape} and features {self.features.shape}")
        if self.labels.shape != (N_LABELS,) or self.label_scores.shape != (N_LABELS,):
            raise ConfigError(f"sequence {self.key}: labels and label_scores must have shape ({N_LABELS},)")
        if self.frame_labels is not None and self.frame_labels.shape != (n, N_LABELS):
            raise ConfigError(f"sequence {self.key}: frame_labels must have shape ({n}, {N_LABELS})")

    @property
    def n_frames(self) -> int:
        return len(self.times)


@dataclass(frozen=True)
class FeatureSet:
    """All encoded sequences of one dataset, with the encoder that made them."""

    sequences: tuple[SequenceFeatures, ...]
    backbone: dict[str, Any]  # ModelSpec.to_manifest() of the encoder
    dataset: str
    rate_hz: float

    def __post_init__(self) -> None:
        keys = [sequence.key for sequence in self.sequences]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"feature set {self.dataset}: segment keys are not unique")
        dims = {sequence.features.shape[1] for sequence in self.sequences}
        if len(dims) > 1:
            raise ConfigError(f"feature set {self.dataset}: sequences have different feature sizes {sorted(dims)}")

    @property
    def embed_dim(self) -> int:
        if self.sequences:
            return int(self.sequences[0].features.shape[1])
        return int(self.backbone.get("embed_dim", 0))

    @property
    def n_frames(self) -> int:
        return sum(sequence.n_frames for sequence in self.sequences)

    def __len__(self) -> int:
        return len(self.sequences)

    def by_key(self) -> dict[str, SequenceFeatures]:
        return {sequence.key: sequence for sequence in self.sequences}

    @classmethod
    def load(cls, directory: Path) -> FeatureSet:
        """Read a feature directory written by ``extract`` or ``save`` (all shards of its manifest)."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        sequences: list[SequenceFeatures] = []
        for name in manifest["shards"]:
            sequences.extend(read_shard(directory / SHARD_DIR / name))
        return cls(tuple(sequences), dict(manifest["backbone"]), str(manifest["dataset"]),
                   float(manifest["rate_hz"]))

    def save(self, directory: Path, shard_size: int = 256) -> None:
        """Write the same format as ``extract``: shards of ``shard_size`` sequences, index, manifest."""
        if shard_size < 1:
            raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
        directory = Path(directory)
        (directory / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        names = []
        for start in range(0, len(self.sequences), shard_size):
            name = shard_name(start // shard_size)
            write_shard(directory / SHARD_DIR / name, self.sequences[start:start + shard_size])
            names.append(name)
        write_index(directory, names)
        write_manifest(directory, self.dataset, self.rate_hz, self.backbone, self.embed_dim, names)


# ---------------------------------------------------------------------------------------- shards


def write_shard(path: Path, sequences: Sequence[SequenceFeatures], extra: dict[str, str] | None = None) -> Path:
    """Write one shard atomically: a temporary file renamed into place once complete.

    ``extra`` goes into the header beside the sequences (``extract`` records what it skipped there, so
    a reused shard still reports it).
    """
    arrays = shard_arrays(sequences)
    meta = [_sequence_meta(sequence) for sequence in sequences]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique across hosts too
    save_file(arrays, str(temporary), metadata={
        **(extra or {}), _METADATA_KEY: json.dumps(meta), "format": str(FORMAT_VERSION)})
    os.chmod(temporary, 0o644)  # safetensors creates 0600 files; a feature set is shared with other users/nodes
    os.replace(temporary, path)  # atomic on POSIX: a reader sees the old state or the whole shard
    return path


def shard_arrays(sequences: Sequence[SequenceFeatures]) -> dict[str, np.ndarray]:
    if not sequences:
        return {
            "features": np.zeros((0, 0), np.float32), "times": np.zeros(0, np.float64),
            "frame_labels": np.zeros((0, N_LABELS), np.float32),
            "labels": np.zeros((0, N_LABELS), np.float32), "label_scores": np.zeros((0, N_LABELS), np.float32),
        }
    return {
        "features": np.ascontiguousarray(np.concatenate([s.features for s in sequences]), np.float32),
        "times": np.ascontiguousarray(np.concatenate([s.times for s in sequences]), np.float64),
        "frame_labels": np.ascontiguousarray(np.concatenate([
            s.frame_labels if s.frame_labels is not None else np.zeros((s.n_frames, N_LABELS), np.float32)
            for s in sequences]), np.float32),
        "labels": np.stack([s.labels for s in sequences]).astype(np.float32),
        "label_scores": np.stack([s.label_scores for s in sequences]).astype(np.float32),
    }


def _sequence_meta(sequence: SequenceFeatures) -> dict[str, Any]:
    return {
        "key": sequence.key, "video_id": sequence.video_id, "n_frames": sequence.n_frames,
        "sentiment": sequence.sentiment, "class_name": sequence.class_name,
        "has_frame_labels": sequence.frame_labels is not None,
    }


def read_shard(path: Path) -> list[SequenceFeatures]:
    """The sequences of one shard file."""
    try:
        arrays = load_file(str(path))
        meta = json.loads(_shard_metadata(path)[_METADATA_KEY])
    except (OSError, SafetensorError, KeyError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable feature shard ({exc}); re-run `affectstream extract` "
                          "on the same output directory to rewrite it") from exc
    sequences = []
    row = 0
    for index, item in enumerate(meta):
        rows = slice(row, row + int(item["n_frames"]))
        row = rows.stop
        sentiment = item.get("sentiment")
        sequences.append(SequenceFeatures(
            key=str(item["key"]), video_id=str(item["video_id"]),
            times=arrays["times"][rows].copy(), features=arrays["features"][rows].copy(),
            labels=arrays["labels"][index].copy(), label_scores=arrays["label_scores"][index].copy(),
            sentiment=None if sentiment is None else float(sentiment), class_name=item.get("class_name"),
            frame_labels=arrays["frame_labels"][rows].copy() if item.get("has_frame_labels") else None,
        ))
    return sequences


def read_shard_metadata(path: Path) -> dict[str, str]:
    """The header of a shard (its sequences as JSON under "sequences", plus what the writer added)."""
    return _shard_metadata(path)


def _shard_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return dict(handle.metadata() or {})


def shard_is_complete(path: Path) -> bool:
    """A shard counts as done when its file exists and its header parses (renames make it all-or-nothing)."""
    if not path.is_file():
        return False
    try:
        return _METADATA_KEY in _shard_metadata(path)
    except (OSError, SafetensorError, ValueError):
        return False


# ------------------------------------------------------------------------------- index, manifest


def write_index(directory: Path, shard_names: Iterable[str]) -> Path:
    """``index.csv``: one row per frame (video_id, key, shard, row, time) across all shards."""
    path = Path(directory) / INDEX
    temporary = path.with_name(f".{INDEX}.tmp")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "key", "shard", "row", "time"])
        for name in shard_names:
            row = 0
            for sequence in read_shard(Path(directory) / SHARD_DIR / name):
                for t in sequence.times:
                    writer.writerow([sequence.video_id, sequence.key, name, row, f"{float(t):.6f}"])
                    row += 1
    os.replace(temporary, path)
    return path


def write_manifest(
    directory: Path, dataset: str, rate_hz: float, backbone: dict[str, Any], embed_dim: int,
    shard_names: Sequence[str], extra: dict[str, Any] | None = None,
) -> Path:
    document = {
        "format": "affectstream-features", "version": FORMAT_VERSION, "dataset": dataset,
        "rate_hz": float(rate_hz), "backbone": backbone, "embed_dim": embed_dim,
        "labels": list(EMOTIONS), "shards": list(shard_names), **(extra or {}),
    }
    path = Path(directory) / MANIFEST
    temporary = path.with_name(f".{MANIFEST}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{directory} holds no {MANIFEST}: make one with `affectstream extract DATASET_DIR "
                          f"--out {directory}` (or finish an interrupted run by repeating it)")
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if document.get("format") != "affectstream-features" or int(document.get("version", 0)) > FORMAT_VERSION:
        raise ConfigError(f"{path} is not an affectstream feature manifest of version <= {FORMAT_VERSION}")
    return document
