"""Assembling what the runtime needs (an encoder and a head) from a model preset or a bundle."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectstream.engine.interfaces import ImageEncoder, TemporalHead
from affectstream.engine.labels import EMOTIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineChoice:
    """What the user asked for: a model preset (or weights file), or a bundle, and which head."""

    model: str | None = None  # None: the bundle's backbone, else the default preset
    bundle: Path | None = None
    head: str = "auto"  # auto | lstm | zero-shot
    device: str = "auto"
    dynamic_threshold: float | None = None


@dataclass(frozen=True)
class Engine:
    encoder: ImageEncoder
    head: TemporalHead
    labels: tuple[str, ...]
    model_info: dict[str, Any]


DEFAULT_MODEL = "clip-vit-b32"


def load_engine(choice: EngineChoice) -> Engine:
    """Build the encoder and head the user asked for; the bundle wins over ``--model`` for the backbone."""
    from affectstream.engine.bundle import load_bundle
    from affectstream.engine.encoder import TorchEncoder, resolve_device
    from affectstream.engine.heads import ZeroShotConfig
    from affectstream.engine.models import ModelSpec

    device = resolve_device(choice.device)
    zero_shot = ZeroShotConfig(dynamic_threshold=choice.dynamic_threshold)
    if choice.bundle is not None:
        bundle = load_bundle(choice.bundle)
        spec = ModelSpec.from_manifest(bundle.manifest["backbone"])
        encoder = TorchEncoder.from_spec(spec, device=device)
        head = bundle.build_head(choice.head, zero_shot_config=zero_shot, device=device)
        info = {"backbone": spec.name, "bundle": str(choice.bundle), "head": head.name}
        return Engine(encoder, head, tuple(bundle.manifest.get("labels", EMOTIONS)), info)
    if choice.head == "lstm":
        from affectstream.errors import ConfigError

        raise ConfigError("--head lstm needs a trained bundle: pass --bundle DIR (made by `affectstream train`)")
    spec = ModelSpec.from_preset(choice.model or DEFAULT_MODEL)
    bundle = zero_shot_bundle_in_memory(spec, device)
    encoder = TorchEncoder.from_spec(spec, device=device)
    head = bundle.build_head("zero-shot", zero_shot_config=zero_shot, device=device)
    return Engine(encoder, head, EMOTIONS, {"backbone": spec.name, "head": head.name})


def zero_shot_bundle_in_memory(spec: Any, device: str) -> Any:
    """Text embeddings of the prompt ensembles for ``spec``, as a bundle kept in a temporary directory."""
    import tempfile

    from affectstream.engine.bundle import load_bundle

    directory = Path(tempfile.mkdtemp(prefix="affectstream-bundle-")) / "bundle"
    create_zero_shot_bundle(spec, directory, device)
    return load_bundle(directory)


def create_zero_shot_bundle(spec: Any, out: Path, device: str = "cpu") -> Path:
    """Compute the class text embeddings once (full CLIP model, text tower) and save a bundle."""
    import open_clip

    from affectstream.engine.bundle import save_bundle
    from affectstream.engine.models import build_clip
    from affectstream.engine.prompts import emotion_prompts, sentiment_prompts
    from affectstream.engine.text import encode_prompt_ensembles, logit_scale

    model = build_clip(spec, device=device)
    tokenizer = open_clip.get_tokenizer(spec.arch)
    emotions = emotion_prompts()
    sentiments = sentiment_prompts()
    emotion_embeddings = encode_prompt_ensembles(model, tokenizer, emotions)
    sentiment_embeddings = encode_prompt_ensembles(model, tokenizer, sentiments)
    path = save_bundle(
        out,
        backbone=spec.to_manifest(),
        emotion_embeddings=emotion_embeddings,
        sentiment_embeddings=sentiment_embeddings,
        logit_scale=logit_scale(model),
        prompts={"emotions": emotions, "sentiment": sentiments},
    )
    log.info("zero-shot bundle for %s written to %s", spec.name, path)
    return Path(path)
