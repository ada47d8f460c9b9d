"""The face stage's model side (engine/face_engine.py): the crop policy, the detection schedule, one
detector and one classifier call per batch; driven by doubles (the real models: test_faces*.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from affectstream.engine.face_engine import CropPolicy, DetectionSchedule, FaceModel, resolve_detector
from affectstream.engine.faces import FaceBox
from affectstream.errors import ConfigError


class CountingDetector:
    name = "counting"
    device = "cpu"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceBox]]:
        self.calls.append(len(images))
        # The face's x is the frame's first pixel value: a reused box shows where it was detected.
        return [[FaceBox(float(image[0, 0, 0]), 10.0, 60.0, 60.0, 0.99)] for image in images]


class UniformClassifier:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def classify_ours(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        self.calls.append(len(crops))
        return np.full((len(crops), 7), 1 / 7, np.float32)


def frame(x: int) -> np.ndarray:
    image = np.zeros((120, 200, 3), np.uint8)
    image[0, 0, 0] = x
    return image


def test_schedule_detects_at_most_every_interval_per_stream() -> None:
    schedule = DetectionSchedule(0.1)
    plan = []
    for k in range(9):  # 24 fps
        ts = k / 24
        due = schedule.due("a", ts)
        plan.append(due)
        if due:
            schedule.remember("a", ts, [])
    assert plan == [True, False, False, True, False, False, True, False, False]
    assert schedule.due("b", 0.0)  # streams are apart
    assert schedule.due("a", 0.0)  # media time went back: detect again
    schedule.forget("a")
    assert schedule.due("a", 0.3)
    assert all(DetectionSchedule(0.1).due("c", ts) for ts in (0.0,))
    sampled = DetectionSchedule(0.1)
    for ts in (0.0, 0.25, 0.5):  # a few Hz: every frame
        assert sampled.due("c", ts)
        sampled.remember("c", ts, [])
    with pytest.raises(ConfigError):
        DetectionSchedule(-1)


def test_frames_between_detections_reuse_the_boxes_and_are_still_classified() -> None:
    detector, classifier = CountingDetector(), UniformClassifier()
    model = FaceModel(detector, classifier, "uniform", CropPolicy(min_size=32), schedule=DetectionSchedule(0.1))
    images = [frame(10 + k) for k in range(6)]
    keys = [("a", k / 24) for k in range(6)]
    out = model.analyse(images, keys)
    assert detector.calls == [2]  # frames 0 and 3 only, in one call
    assert classifier.calls == [6]  # every frame's face, in one call
    assert [o[0].box.x for o in out] == [10, 10, 10, 13, 13, 13]
    assert set(model.last_stage_ms) == {"detect", "classify"}
    assert [len(o) for o in model.analyse([frame(1), frame(2)])] == [1, 1]  # no keys: every frame detected
    assert detector.calls[-1] == 2


def test_crop_policy_keeps_the_largest_faces_big_enough() -> None:
    policy = CropPolicy(margin=0.0, min_size=32, max_faces=2)
    boxes = [FaceBox(0, 0, 20, 20, 1.0), FaceBox(0, 0, 40, 40, 0.9), FaceBox(50, 0, 80, 80, 0.8),
             FaceBox(0, 50, 60, 60, 0.95), FaceBox(float("nan"), 0, 50, 50, 0.9)]
    assert [b.w for b in policy.select(boxes)] == [80, 60]
    with pytest.raises(ConfigError):
        CropPolicy(margin=2.0)


def test_auto_detector_by_device() -> None:
    assert resolve_detector("auto", "cuda:0") == "mtcnn"
    assert resolve_detector("auto", "cpu") == "blazeface:back"
    assert resolve_detector("haar", "cpu") == "haar"


def test_schedule_plans_a_batch_in_order() -> None:
    schedule = DetectionSchedule(0.1)
    keys = [("a", 0.0), ("b", 0.0), ("a", 1 / 24), ("a", 2 / 24), ("a", 3 / 24), ("b", 0.2)]
    assert schedule.plan(keys) == [True, True, False, False, True, True]


def test_backend_and_precision_reach_the_classifier_where_they_apply() -> None:
    from affectstream.engine.runtime import EngineChoice, _classifier_choice

    assert _classifier_choice(EngineChoice(backend="onnx", precision="fp32")) == ("onnx", "fp32")
    assert _classifier_choice(EngineChoice(backend="torch", precision="fp16")) == ("torch", "fp16")
    # TensorRT and int8 are the CLIP encoder's: the classifier chooses for itself.
    assert _classifier_choice(EngineChoice(backend="tensorrt", precision="int8")) == ("auto", "auto")
