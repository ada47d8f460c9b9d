"""CLIP on faces: the primary-crop rule, the encoder wrapper used by `extract --faces`, the runtime's
`--clip-input face`, and the bundle that remembers which input its LSTM was trained on."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from affectstream.engine.face_crops import FaceCropEncoder, primary_crop
from affectstream.engine.face_engine import CropPolicy
from affectstream.engine.faces import FaceBox
from tests._faces_helpers import MEGAMIND, model_dir


class RecordingEncoder:
    """Unit features; remembers the shapes of the images it was given."""

    name = "recording"
    embed_dim = 8
    image_size = 32
    device = "cpu"
    last_stage_ms: dict[str, float] = {}

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        self.shapes += [image.shape for image in images]
        features = np.ones((len(images), self.embed_dim), np.float32)
        return features / np.linalg.norm(features, axis=1, keepdims=True)


class FixedDetector:
    name = "fixed"
    device = "cpu"

    def __init__(self, boxes: list[list[FaceBox]]) -> None:
        self.boxes = boxes

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceBox]]:
        return self.boxes[: len(images)]


def test_primary_crop_is_the_largest_kept_face_or_the_frame() -> None:
    image = np.zeros((200, 300, 3), np.uint8)
    policy = CropPolicy(margin=0.0, min_size=32)
    small, big, tiny = FaceBox(10, 10, 40, 40, 0.9), FaceBox(100, 50, 80, 100, 0.8), FaceBox(0, 0, 10, 10, 1.0)
    assert primary_crop(image, [small, big, tiny], policy).shape == (100, 80, 3)
    assert primary_crop(image, [tiny], policy) is image  # under min_size: the whole frame
    assert primary_crop(image, [], policy) is image
    near_edge = FaceBox(280, 180, 60, 60, 0.9)
    assert primary_crop(image, [near_edge], CropPolicy(margin=0.1)).shape[:2] == (26, 26)  # limited to the frame


def test_face_crop_encoder_encodes_faces_and_counts_them() -> None:
    inner = RecordingEncoder()
    boxes = [[FaceBox(10, 10, 64, 64, 0.99)], []]
    encoder = FaceCropEncoder(inner, FixedDetector(boxes), CropPolicy(margin=0.0))
    features = encoder.encode([np.zeros((120, 160, 3), np.uint8)] * 2)
    assert features.shape == (2, 8)
    assert inner.shapes == [(64, 64, 3), (120, 160, 3)]
    assert (encoder.faces_found, encoder.frames) == (1, 2)


@pytest.mark.slow
def test_the_runtime_gives_clip_the_face_crop(tiny_engine, tmp_path_factory: pytest.TempPathFactory) -> None:  # type: ignore[no-untyped-def]
    from affectstream.engine.face_engine import load_face_model
    from affectstream.engine.labels import EXPRESSION_LABELS
    from affectstream.stream.messages import Estimate
    from affectstream.stream.pipeline import Pipeline, PipelineConfig
    from affectstream.stream.sinks import MemorySink

    model_dir("mtcnn", tmp_path_factory)
    model_dir("fer-mini-xception", tmp_path_factory)

    class Shapes(RecordingEncoder):
        embed_dim = tiny_engine.encoder.embed_dim

        def encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
            self.shapes += [image.shape for image in images]
            return tiny_engine.encoder.encode(images)

    recorder = Shapes()
    sink = MemorySink()
    config = PipelineConfig(rate_hz=2.0, pace_files=False, clip_input="face", stats_interval_s=3600)
    pipeline = Pipeline([("file", str(MEGAMIND))], recorder, tiny_engine.head, sink, EXPRESSION_LABELS, config,
                        faces=load_face_model())
    with pipeline:
        assert pipeline.wait(120)
    estimates = [m for m in sink.messages if isinstance(m, Estimate)]
    assert len(recorder.shapes) == len(estimates) > 10
    face_sized = [shape for shape in recorder.shapes if shape[:2] != (528, 720)]
    assert len(face_sized) >= 0.9 * len(recorder.shapes)  # Megamind.avi: a face in all but the black frame
    assert all(shape[0] * shape[1] < 0.5 * 528 * 720 for shape in face_sized), face_sized  # a face, not a frame
    assert all(e.faces is not None for e in estimates)


@pytest.mark.slow
def test_extract_faces_marks_the_features_and_the_bundle(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from affectstream.cli import main

    model_dir("mtcnn", tmp_path_factory)
    data, out = tmp_path / "data", tmp_path / "features"
    assert main(["synth", str(data), "--videos", "2", "--seconds", "3", "--fps", "5", "--size", "64x64",
                 "--segment-seconds", "1.5"]) == 0
    assert main(["extract", str(data), "--format", "synthetic", "--out", str(out), "--model", "tiny-random",
                 "--device", "cpu", "--rate", "2", "--faces", "--no-progress"]) == 0
    manifest = json.loads((out / "featureset.json").read_text())
    assert manifest["backbone"]["input"] == "face"
    # The same dataset without --faces is another extraction: not reused.
    assert main(["extract", str(data), "--format", "synthetic", "--out", str(out), "--model", "tiny-random",
                 "--device", "cpu", "--rate", "2", "--no-progress"]) == 2
