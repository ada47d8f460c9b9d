"""File names inside a model bundle, and the one file hash every manifest and cache check uses.

Kept apart from engine/bundle.py so that modules that only need a name (the backend chooser, the
ONNX export) do not import the bundle loader and, through it, torch.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
TEXT_EMBEDDINGS = "text_embeddings.safetensors"
TEMPORAL = "temporal.safetensors"
VISUAL_ONNX = "visual.onnx"  # the exported image encoder (build-engine)
VISUAL_INT8_ONNX = "visual.int8.onnx"  # ... statically quantised, where its parity check passed
VISUAL_FP16_ONNX = "visual.fp16.onnx"  # ... in fp16, the TensorRT build's input
TEMPORAL_ONNX = "temporal.onnx"  # one LSTM step, for the ONNX Runtime head
ENGINES_DIR = "engines"  # TensorRT plans, engines/<key>.plan


def bidirectional_manifest(manifest: Any) -> bool:
    """The rule, from a bundle's manifest alone: its temporal head reads sequences both ways."""
    temporal = manifest.get("heads", {}).get("temporal") if isinstance(manifest, dict) else None
    return isinstance(temporal, dict) and bool(temporal.get("bidirectional"))


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None: what we write is strict JSON, which most
    parsers other than Python's refuse to read with NaN in it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes; remembered while the file keeps its size and mtime."""
    stat = path.stat()
    return _cached_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed on size and mtime too, so that a file replaced in place is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
