"""Model presets and building open_clip models from them.

A preset (``engine/configs/presets.json``) names an open_clip architecture and where its weights come
from: a pretrained tag that open_clip fetches on first use, a local weights file, or nothing (random
weights, seeded, for tests). Architectures of our own, like ``tiny-random``, are open_clip config files
in ``engine/configs/`` and are registered with open_clip before use.

The preprocessing settings (size, mean, std, interpolation, resize mode) travel with the weights: they
are read from open_clip's config for the architecture and pretrained tag, exactly as open_clip's own
``create_model_and_transforms`` would choose them, and are stored in a bundle's manifest.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectstream.engine.files import file_sha256
from affectstream.engine.hub import hub_unreachable, weights_in_cache
from affectstream.errors import BundleError, ConfigError, ModelError, WeightsUnavailableError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).with_name("configs")
DEFAULT_PRESET = "clip-vit-b32"
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
MANIFEST_KEYS = ("name", "arch", "image_size", "mean", "std", "interpolation", "resize_mode", "embed_dim")


@functools.cache
def presets() -> dict[str, dict[str, Any]]:
    """The preset table, by name."""
    with open(CONFIG_DIR / "presets.json", encoding="utf-8") as file:
        table: dict[str, dict[str, Any]] = json.load(file)
    return table


@functools.cache
def _register_configs() -> None:
    """Make our architecture configs (e.g. ``tiny-random``) known to open_clip, once per process."""
    import open_clip

    # open_clip registers every JSON file of the folder that looks like a model config (it has
    # embed_dim, vision_cfg and text_cfg); presets.json does not, so it is skipped.
    open_clip.add_model_config(CONFIG_DIR)


def known_architectures() -> list[str]:
    import open_clip

    _register_configs()
    return list(open_clip.list_models())


@dataclass(frozen=True)
class ModelSpec:
    """Which image-text model to build and how its input images must be preprocessed."""

    name: str  # preset name, or "ARCH:/path" for a weights file
    arch: str  # open_clip architecture name
    pretrained: str | None  # open_clip pretrained tag, fetched on first use
    weights_path: Path | None  # a local weights file instead of a tag
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # "bicubic" or "bilinear"
    resize_mode: str  # "shortest", "longest" or "squash"
    embed_dim: int
    quick_gelu: bool = False  # OpenAI's weights were trained with QuickGELU
    seed: int | None = None  # random initialisation (no weights at all)

    @property
    def is_random(self) -> bool:
        return self.pretrained is None and self.weights_path is None

    @classmethod
    def from_preset(cls, name_or_path: str) -> ModelSpec:
        """A preset name, a weights file (the default preset's architecture) or ``ARCH:/path/file``."""
        table = presets()
        if name_or_path in table:
            entry = table[name_or_path]
            return _spec(name_or_path, entry["arch"], entry.get("pretrained"), None, entry.get("seed"))
        arch, _, path_text = name_or_path.partition(":")
        if path_text and arch in known_architectures():
            return _spec(name_or_path, arch, None, _existing_weights(path_text), None)
        if Path(name_or_path).suffix in WEIGHTS_SUFFIXES or Path(name_or_path).is_file():
            # A bare file holds weights for the default preset's backbone (OpenAI's ViT-B-32), so it
            # keeps that preset's preprocessing and activation, only the source of weights changes.
            default = table[DEFAULT_PRESET]
            weights = _existing_weights(name_or_path)
            return _spec(
                name_or_path, default["arch"], None, weights, None, settings_tag=default["pretrained"]
            )
        raise ConfigError(
            f"unknown model {name_or_path!r}: use a preset ({', '.join(sorted(table))}), a weights file "
            f"for {table[DEFAULT_PRESET]['arch']} (/path/to/open_clip_model.safetensors) or "
            "ARCH:/path/to/weights for another open_clip architecture"
        )

    def to_manifest(self) -> dict[str, Any]:
        """JSON-ready description; a weights file is identified by its sha256 as well as its path."""
        manifest: dict[str, Any] = {
            "name": self.name,
            "arch": self.arch,
            "pretrained": self.pretrained,
            "weights_path": str(self.weights_path) if self.weights_path else None,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            "embed_dim": self.embed_dim,
            "quick_gelu": self.quick_gelu,
            "seed": self.seed,
        }
        if self.weights_path is not None:
            manifest["weights_sha256"] = file_sha256(self.weights_path)
        return manifest

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_manifest`; a weights file that is present must still have the same hash."""
        missing = [key for key in MANIFEST_KEYS if key not in manifest]
        if missing:
            raise BundleError(f"the manifest's backbone lacks {missing}: rebuild the bundle")
        weights = Path(manifest["weights_path"]) if manifest.get("weights_path") else None
        expected_hash = manifest.get("weights_sha256")
        changed = weights is not None and weights.is_file() and file_sha256(weights) != expected_hash
        if expected_hash and changed:
            raise BundleError(
                f"weights file {weights} differs from the one the bundle was made with (sha256 "
                f"{expected_hash[:12]}…): restore that file or rebuild the bundle"
            )
        return cls(
            name=manifest["name"],
            arch=manifest["arch"],
            pretrained=manifest.get("pretrained"),
            weights_path=weights,
            image_size=int(manifest["image_size"]),
            mean=_triple(manifest["mean"]),
            std=_triple(manifest["std"]),
            interpolation=manifest["interpolation"],
            resize_mode=manifest["resize_mode"],
            embed_dim=int(manifest["embed_dim"]),
            quick_gelu=bool(manifest.get("quick_gelu", False)),
            seed=manifest.get("seed"),
        )


def _spec(
    name: str,
    arch: str,
    pretrained: str | None,
    weights: Path | None,
    seed: int | None,
    settings_tag: str | None = None,
) -> ModelSpec:
    """Build a spec with open_clip's preprocessing for ``arch`` and the tag whose settings apply."""
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    _register_configs()
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ConfigError(f"open_clip has no architecture {arch!r}: pick one of open_clip.list_models()")
    tag = pretrained or settings_tag
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if tag and not tag_cfg:
        raise ConfigError(f"open_clip knows no pretrained tag {tag!r} for {arch}")
    # The same merge open_clip's create_model does: defaults, then the tag's settings, then the
    # size of the vision tower.
    preprocess = merge_preprocess_dict(PreprocessCfg(), tag_cfg)
    return ModelSpec(
        name=name,
        arch=arch,
        pretrained=pretrained,
        weights_path=weights,
        image_size=_square_size(model_cfg["vision_cfg"]["image_size"], arch),
        mean=_triple(preprocess["mean"]),
        std=_triple(preprocess["std"]),
        interpolation=preprocess["interpolation"],
        resize_mode=preprocess["resize_mode"],
        embed_dim=int(model_cfg["embed_dim"]),
        quick_gelu=bool(model_cfg.get("quick_gelu", False) or tag_cfg.get("quick_gelu", False)),
        seed=seed,
    )


def _square_size(size: int | list[int] | tuple[int, ...], arch: str) -> int:
    if isinstance(size, int):
        return size
    if len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    raise ConfigError(f"{arch} takes non-square images {size}; affectstream supports square inputs only")


def _triple(values: Any) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    first, second, third = (float(value) for value in values)
    return (first, second, third)


def _existing_weights(path_text: str) -> Path:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist: check the path given to --model")
    return path.resolve()


def _first_line(error: Exception) -> str:
    """What went wrong, in one line: torch's unpickling errors run to a page of advice."""
    import pickle

    if isinstance(error, pickle.UnpicklingError):
        return "it is not a PyTorch weights file: it cannot be unpickled"
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    return f"{type(error).__name__}: {first[:160]}"


def clip_weights_reachable(spec: ModelSpec) -> str | None:
    """None when ``spec``'s weights can be had now (random, a file, cached, or a hub that resolves);
    otherwise why not, at once (no download is tried)."""
    if spec.pretrained is None:
        return None if spec.weights_path is None or spec.weights_path.is_file() else f"{spec.weights_path} is missing"
    import open_clip

    if weights_in_cache(open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)) is not None:
        return None
    unreachable = hub_unreachable()
    return None if unreachable is None else f"{spec.name}'s weights are not cached and {unreachable}"


@functools.cache
def _warn_random_once(name: str) -> None:
    log.warning("model %r has random weights: its features and scores are meaningless (tests only)", name)


def build_clip(spec: ModelSpec, device: str = "cpu") -> Any:
    """The full open_clip model for ``spec`` (both towers), in eval mode on ``device``."""
    import open_clip
    import torch

    _register_configs()
    if spec.is_random:
        _warn_random_once(spec.name)
        # A fixed seed makes the random model identical in every process; fork_rng leaves the
        # caller's random state untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed or 0)
            model = open_clip.create_model(spec.arch, force_quick_gelu=spec.quick_gelu)
    elif spec.weights_path is not None:
        model = _create_from_file(spec, spec.weights_path)
    else:
        model = _create_from_tag(spec)
    _check_preprocessing(spec, open_clip.get_model_preprocess_cfg(model))
    return model.to(device).eval()


def _create_from_tag(spec: ModelSpec) -> Any:
    import open_clip

    # Not yet downloaded and the hub's name does not resolve: say so now, not after huggingface_hub's
    # ~50 s of retries. A downloaded copy is left to huggingface_hub, which falls back to it at once.
    tag = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained or "")
    if tag.get("hf_hub") and weights_in_cache(tag) is None and (unreachable := hub_unreachable()) is not None:
        raise _weights_unavailable(spec, unreachable)
    try:
        return open_clip.create_model(spec.arch, pretrained=spec.pretrained, force_quick_gelu=spec.quick_gelu)
    except (RuntimeError, OSError, ValueError) as error:
        # open_clip wraps every download failure (no network, HF offline mode, no such file on the
        # hub) in a RuntimeError.
        raise _weights_unavailable(spec, str(error)) from error


def _weights_unavailable(spec: ModelSpec, reason: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"cannot fetch the {spec.arch} weights {spec.pretrained!r} (offline, or the hub is out of "
        f"reach: {reason}). Download them where the hub is reachable{_where_to_download(spec)} and "
        f"pass the local file: `--model {_file_arch(spec)}:/path/to/open_clip_model.safetensors`"
    )


def _where_to_download(spec: ModelSpec) -> str:
    import open_clip

    hub_path = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained or "").get("hf_hub", "")
    return f" (https://huggingface.co/{hub_path.rstrip('/')})" if hub_path else ""


def _file_arch(spec: ModelSpec) -> str:
    """The architecture to name with a weights file: OpenAI's weights need the QuickGELU variant."""
    variant = f"{spec.arch}-quickgelu"
    return variant if spec.quick_gelu and variant in known_architectures() else spec.arch


def _create_from_file(spec: ModelSpec, weights: Path) -> Any:
    import open_clip

    if not weights.is_file():
        raise WeightsUnavailableError(
            f"weights file {weights} is missing: put it back or pass another with --model"
        )
    try:
        return open_clip.create_model(
            spec.arch, pretrained=str(weights), force_quick_gelu=spec.quick_gelu
        )
    except Exception as error:
        # A user's file can fail in many ways (safetensors header, pickle, zip, key mismatch), each
        # with its own exception type; all mean the same to the caller.
        raise ModelError(
            f"cannot load {weights} into open_clip {spec.arch} ({_first_line(error)}): is it a weights "
            "file for that architecture? Name the architecture with --model ARCH:/path"
        ) from error


def _check_preprocessing(spec: ModelSpec, built: dict[str, Any]) -> None:
    """The model open_clip built must expect the preprocessing the spec (and its manifest) promise."""
    size = built.get("size")
    size = _square_size(size, spec.arch) if size is not None else spec.image_size
    expected = (spec.image_size, spec.mean, spec.std, spec.interpolation, spec.resize_mode)
    actual = (
        size,
        _triple(built.get("mean", spec.mean)),
        _triple(built.get("std", spec.std)),
        built.get("interpolation", spec.interpolation),
        built.get("resize_mode", spec.resize_mode),
    )
    if not all(_close(want, got) for want, got in zip(expected, actual)):
        log.warning("open_clip preprocesses %s as %s, the spec says %s", spec.name, actual, expected)


def _close(want: Any, got: Any) -> bool:
    if isinstance(want, tuple):
        return all(abs(a - b) < 1e-6 for a, b in zip(want, got))
    return bool(want == got)
