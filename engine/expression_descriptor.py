"""The JSON descriptor of an expression model (``ExpressionDescriptor``) and the preprocessing it describes.

Every model is described by one: input size, colour order, layout, scaling, whether it outputs
probabilities or logits, its labels and how each maps to ours (``EXPRESSION_LABELS``). The converted
mini-Xception is written with such a descriptor (``convert_fer_model``), so a user's ONNX model and
ours run through the same code (engine/expression.py). Parsing checks every field: each failure is a
ConfigError naming the descriptor and the field.

Crops are uint8 RGB of any size; ``preprocess`` follows the model's own (for fer, ``fer/fer.py`` of
fer 25.10.3: grey, bilinear resize to 64x64, x / 255, then (x - 0.5) * 2).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from affectstream.engine.interfaces import EventThresholds
from affectstream.engine.labels import EXPRESSION_LABELS
from affectstream.errors import ConfigError

DESCRIPTOR_NAME = "descriptor.json"
DESCRIPTOR_VERSION = 1
COLOURS = ("grey", "rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")
OUTPUTS = ("probabilities", "logits")
RESIZES = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST,
           "cubic": cv2.INTER_CUBIC}


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: pixel values (0..255) times ``scale``, then (x - mean) / std per channel."""

    height: int
    width: int
    colour: str = "grey"  # grey | rgb | bgr
    layout: str = "nchw"  # nchw | nhwc
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: str = "linear"  # cv2 interpolation: linear | area | nearest | cubic

    @property
    def channels(self) -> int:
        return 1 if self.colour == "grey" else 3

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's shape in the model's layout."""
        if self.layout == "nchw":
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)


@dataclass(frozen=True)
class TorchFiles:
    """The torch form of a converted Keras model (written by the converter; optional)."""

    architecture: Path
    weights: Path


@dataclass(frozen=True)
class ExpressionDescriptor:
    """A model and how to feed it. ``mapping[i]`` is our label for ``labels[i]`` (None: dropped)."""

    path: Path
    name: str
    input: InputSpec
    output: str  # probabilities | logits
    labels: tuple[str, ...]
    mapping: tuple[str | None, ...]
    onnx: Path | None = None
    torch: TorchFiles | None = None
    source: str = ""
    notes: str = ""
    events: EventThresholds | None = None  # onset/offset thresholds that fit this model's scores

    @classmethod
    def load(cls, path: str | Path) -> ExpressionDescriptor:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"cannot read expression descriptor {path}: {error.strerror or error}") from None
        except ValueError as error:
            raise ConfigError(f"expression descriptor {path} is not valid JSON: {error}") from None
        return _parse_descriptor(raw, path)

    def to_json(self) -> dict[str, Any]:
        base = self.path.parent
        data: dict[str, Any] = {"version": DESCRIPTOR_VERSION, "name": self.name}
        if self.onnx is not None:
            data["onnx"] = _relative(self.onnx, base)
        if self.torch is not None:
            data["torch"] = {"architecture": _relative(self.torch.architecture, base),
                             "weights": _relative(self.torch.weights, base)}
        spec = self.input
        data["input"] = {"height": spec.height, "width": spec.width, "colour": spec.colour, "layout": spec.layout,
                         "scale": spec.scale, "mean": list(spec.mean), "std": list(spec.std), "resize": spec.resize}
        data.update(output=self.output, labels=list(self.labels),
                    mapping=dict(zip(self.labels, self.mapping)), source=self.source, notes=self.notes)
        if self.events is not None:
            data["events"] = {"onset": self.events.onset, "offset": self.events.offset}
        return data

    def save(self) -> Path:
        self.path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return self.path


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


class _Fields:
    """Typed reads from one JSON object, each failure a ConfigError naming the descriptor and field."""

    def __init__(self, raw: Any, where: str, prefix: str = "") -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: {prefix or 'the descriptor'} must be a JSON object")
        self.raw, self.where, self.prefix = raw, where, prefix

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where}: '{self.prefix}{key}' {message}")

    def check_keys(self, allowed: Sequence[str]) -> None:
        unknown = sorted(set(self.raw) - set(allowed))
        if unknown:
            raise ConfigError(f"{self.where}: unknown field(s) {', '.join(self.prefix + k for k in unknown)} "
                              f"(known: {', '.join(allowed)})")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.raw:
            if default is ...:
                raise self.fail(key, "is required")
            return default
        value = self.raw[key]
        # bool is an int in Python; a size or scale of `true` is a mistake, not 1.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(key, f"must be {_kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise self.fail(key, f"must be {_kind_name(kind)}, got {value!r}")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str | None = None) -> str:
        value = self.get(key, str, default if default is not None else ...)
        value = "grey" if value == "gray" else value
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    def numbers(self, key: str, count: int, default: tuple[float, ...]) -> tuple[float, ...]:
        value = self.get(key, (list, int, float), list(default))
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise self.fail(key, f"must be a number or a list of numbers, got {value!r}")
        if len(values) == 1:
            values = values * count
        if len(values) != count:
            raise self.fail(key, f"needs 1 or {count} values (one per channel), got {len(values)}")
        return tuple(float(v) for v in values)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


DESCRIPTOR_KEYS = ("version", "name", "onnx", "torch", "input", "output", "labels", "mapping", "source", "notes",
                   "events")
INPUT_KEYS = ("height", "width", "colour", "layout", "scale", "mean", "std", "resize")


def _parse_descriptor(raw: Any, path: Path) -> ExpressionDescriptor:
    where = f"expression descriptor {path}"
    top = _Fields(raw, where)
    top.check_keys(DESCRIPTOR_KEYS)
    if top.get("version", int) != DESCRIPTOR_VERSION:
        raise top.fail("version", f"must be {DESCRIPTOR_VERSION}, got {raw['version']!r}")
    spec = _parse_input(_Fields(top.get("input", dict), where, "input."))
    labels, mapping = _parse_labels(top, where)
    onnx = _model_file(top, "onnx", path.parent) if "onnx" in raw else None
    torch_files = _parse_torch(_Fields(top.get("torch", dict), where, "torch."), path.parent) if "torch" in raw else None
    if onnx is None and torch_files is None:
        raise ConfigError(f"{where}: names no model: give 'onnx' (the ONNX file, relative to the descriptor)")
    if torch_files is not None and spec.layout != "nchw":
        raise ConfigError(f"{where}: 'torch' models take nchw input, but 'input.layout' is {spec.layout!r}")
    return ExpressionDescriptor(path=path, name=top.get("name", str, path.parent.name), input=spec,
                                output=top.choice("output", OUTPUTS), labels=labels, mapping=mapping,
                                onnx=onnx, torch=torch_files, source=top.get("source", str, ""),
                                notes=top.get("notes", str, ""), events=_parse_events(top, where) if "events" in raw else None)


def _parse_events(top: _Fields, where: str) -> EventThresholds:
    fields = _Fields(top.get("events", dict), where, "events.")
    fields.check_keys(("onset", "offset"))
    onset, offset = fields.get("onset", (int, float)), fields.get("offset", (int, float))
    try:
        return EventThresholds(float(onset), float(offset))
    except ValueError as error:
        raise fields.fail("onset", str(error)) from None


def _parse_input(fields: _Fields) -> InputSpec:
    fields.check_keys(INPUT_KEYS)
    sizes = {}
    for key in ("height", "width"):
        sizes[key] = fields.get(key, int)
        if sizes[key] < 1:
            raise fields.fail(key, f"must be >= 1, got {sizes[key]}")
    colour = fields.choice("colour", COLOURS)
    channels = 1 if colour == "grey" else 3
    scale = float(fields.get("scale", (int, float), 1.0 / 255.0))
    if scale <= 0:
        raise fields.fail("scale", f"must be > 0, got {scale}")
    std = fields.numbers("std", channels, (1.0,))
    if any(value == 0 for value in std):
        raise fields.fail("std", "must not be 0")
    return InputSpec(height=sizes["height"], width=sizes["width"], colour=colour,
                     layout=fields.choice("layout", LAYOUTS, "nchw"), scale=scale,
                     mean=fields.numbers("mean", channels, (0.0,)), std=std,
                     resize=fields.choice("resize", tuple(RESIZES), "linear"))


def _parse_labels(top: _Fields, where: str) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    labels = top.get("labels", list)
    if not labels or not all(isinstance(label, str) and label for label in labels):
        raise top.fail("labels", "must be a non-empty list of label names (the model's output order)")
    if len(set(labels)) != len(labels):
        raise top.fail("labels", f"has duplicates: {labels}")
    mapping = top.get("mapping", dict)
    unknown = [key for key in mapping if key not in labels]
    if unknown:
        raise top.fail("mapping", f"names labels the model does not have: {', '.join(unknown)}")
    missing = [label for label in labels if label not in mapping]
    if missing:
        raise top.fail("mapping", f"must map every label (null drops one); missing: {', '.join(missing)}")
    ours = []
    for label in labels:
        target = mapping[label]
        if target is not None and target not in EXPRESSION_LABELS:
            raise top.fail("mapping", f"maps {label!r} to {target!r}, which is not one of ours "
                                      f"({', '.join(EXPRESSION_LABELS)}) or null")
        ours.append(target)
    if all(target is None for target in ours):
        raise top.fail("mapping", "maps no label to one of ours: nothing would be left")
    return tuple(labels), tuple(ours)


def _model_file(fields: _Fields, key: str, base: Path) -> Path:
    value = fields.get(key, str)
    path = (base / value) if not Path(value).is_absolute() else Path(value)
    if not path.is_file():
        raise fields.fail(key, f"names {path}, which does not exist")
    return path


def _parse_torch(fields: _Fields, base: Path) -> TorchFiles:
    fields.check_keys(("architecture", "weights"))
    return TorchFiles(_model_file(fields, "architecture", base), _model_file(fields, "weights", base))


# --- preprocessing ---


def preprocess(crops: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """uint8 RGB crops ``(H, W, 3)`` of any size → one float32 batch in the model's layout."""
    batch = np.empty((len(crops), spec.height, spec.width, spec.channels), dtype=np.float32)
    for index, crop in enumerate(crops):
        batch[index] = _prepare(crop, spec, index).reshape(spec.height, spec.width, spec.channels)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    batch = (batch * np.float32(spec.scale) - mean) / std
    if spec.layout == "nchw":
        batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    return batch


def _prepare(crop: np.ndarray, spec: InputSpec, index: int) -> np.ndarray:
    if not isinstance(crop, np.ndarray) or crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        what = f"{crop.dtype} {crop.shape}" if isinstance(crop, np.ndarray) else type(crop).__name__
        raise ValueError(f"face crop {index} must be a uint8 RGB array (H, W, 3), got {what}")
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise ValueError(f"face crop {index} is empty: {crop.shape}")
    # Colour first, then resize, both in uint8, as fer does (it converts the frame before cropping).
    if spec.colour == "grey":
        image = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    elif spec.colour == "bgr":
        image = np.ascontiguousarray(crop[:, :, ::-1])
    else:
        image = crop
    return cv2.resize(image, (spec.width, spec.height), interpolation=RESIZES[spec.resize])
