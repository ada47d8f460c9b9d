"""The face stage on a CUDA GPU: detector and classifier batched there, fp16 where parity holds.
Skipped without a GPU (this project's CI has none; benchmarks/gpu_check.sh runs these where one is)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests._faces_helpers import MEGAMIND, is_black, model_dir, read_frames

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return [frame.rgb for frame in read_frames(MEGAMIND, every=9) if not is_black(frame)]


def test_mtcnn_fp16_on_cuda_finds_what_fp32_on_cpu_finds(frames: list[np.ndarray],
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    from affectstream.engine.face_mtcnn import MTCNNDetector
    from affectstream.engine.faces import iou_matrix

    folder = model_dir("mtcnn", tmp_path_factory)
    cpu = MTCNNDetector.from_dir(folder, device="cpu").detect(frames)
    gpu_detector = MTCNNDetector.from_dir(folder, device="cuda")
    assert gpu_detector.half  # fp16 is the CUDA default
    gpu = gpu_detector.detect(frames)  # all frames in one call
    for reference, found in zip(cpu, gpu):
        assert len(found) == len(reference)
        if reference:
            assert iou_matrix(reference, found).max(axis=1).min() >= 0.9


def test_classifier_fp16_on_cuda_matches_cpu(frames: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> None:
    from affectstream.engine.expression import ExpressionClassifier

    root = model_dir("fer-mini-xception", tmp_path_factory).parent
    crops = [frame[100:300, 200:400] for frame in frames]
    cpu = ExpressionClassifier.fer_mini_xception(backend="torch", device="cpu", root=root).classify(crops)
    gpu_model = ExpressionClassifier.fer_mini_xception(backend="torch", device="cuda", root=root)
    gpu = gpu_model.classify(crops)
    assert np.abs(gpu - cpu).max() <= 2e-3, gpu_model.precision


def test_face_model_on_cuda(frames: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> None:
    from affectstream.engine.face_engine import load_face_model

    model_dir("mtcnn", tmp_path_factory)
    model_dir("fer-mini-xception", tmp_path_factory)
    model = load_face_model(device="cuda")
    observations = model.analyse(frames)
    assert sum(1 for found in observations if found) >= 0.95 * len(frames)
    assert set(model.last_stage_ms) == {"detect", "classify"}
