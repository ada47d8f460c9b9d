"""Exporting a trained temporal model as a model bundle the runtime loads (DESIGN.md, "Model bundle").

The bundle holds the backbone the features came from, the zero-shot class text embeddings of the same
backbone (so that ``--head zero-shot`` and the zero-shot baseline work from the bundle alone), the
LSTM, and the training metrics in its manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from affectstream.engine.bundle import load_bundle, save_bundle
from affectstream.engine.lstm import TemporalLSTM
from affectstream.errors import BundleError

log = logging.getLogger(__name__)


def backbone_texts(backbone: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """Text embeddings of the prompt ensembles for the backbone described by a feature set's manifest."""
    from affectstream.engine.models import ModelSpec, build_clip
    from affectstream.engine.runtime import zero_shot_texts

    spec = ModelSpec.from_manifest(backbone)
    return zero_shot_texts(build_clip(spec, device=device), spec)


def export_bundle(
    out: Path, module: TemporalLSTM, backbone: dict[str, Any], metrics: dict[str, Any],
    texts: dict[str, Any] | None = None, device: str = "cpu",
) -> Path:
    """Write the bundle and read it back, so that a bundle the runtime cannot load is never left behind."""
    texts = texts if texts is not None else backbone_texts(backbone, device)
    path = save_bundle(out, backbone=backbone, temporal=module.eval(), metrics=metrics, **texts)
    bundle = load_bundle(path)
    if not bundle.has_temporal:
        raise BundleError(f"the bundle written to {path} lost its temporal model: report this as a bug")
    return Path(path)
