"""The torch encoder on tiny-random (CPU): shapes, unit norm, batch invariance, mixed frame sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from affectstream.engine.encoder import Precision, TorchEncoder, resolve_device, resolve_precision
from affectstream.engine.interfaces import ImageEncoder
from affectstream.engine.models import ModelSpec
from affectstream.errors import ConfigError
from tests._encoder_helpers import frame, frames_of_sizes


@pytest.fixture(scope="module")
def encoder() -> TorchEncoder:
    return TorchEncoder.from_spec(ModelSpec.from_preset("tiny-random"), device="cpu", precision="auto")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_implements_the_image_encoder_protocol(encoder: TorchEncoder) -> None:
    assert isinstance(encoder, ImageEncoder)
    assert (encoder.name, encoder.device, encoder.embed_dim, encoder.image_size) == ("torch", "cpu", 32, 224)
    assert encoder.precision is Precision.FP32


def test_features_are_float32_unit_rows(encoder: TorchEncoder) -> None:
    features = encoder.encode([frame(i, 480, 640) for i in range(4)])
    assert features.shape == (4, 32) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)


def test_different_frames_give_different_features(encoder: TorchEncoder) -> None:
    features = encoder.encode([frame(0, 240, 320), frame(1, 240, 320)])
    assert cosine(features[0], features[1]) < 0.999


def test_a_batch_equals_frames_one_by_one(encoder: TorchEncoder) -> None:
    images = [frame(i, 360, 480) for i in range(5)]
    batch = encoder.encode(images)
    singles = np.concatenate([encoder.encode([image]) for image in images])
    assert cosine(batch, singles).min() > 0.9999


def test_frames_of_different_sizes_in_one_batch(encoder: TorchEncoder) -> None:
    images = frames_of_sizes()
    batch = encoder.encode(images)
    singles = np.concatenate([encoder.encode([image]) for image in images])
    assert batch.shape == (len(images), 32)
    assert cosine(batch, singles).min() > 0.9999


def test_empty_batch(encoder: TorchEncoder) -> None:
    assert encoder.encode([]).shape == (0, 32)


def test_encode_tensor_takes_preprocessed_batches(encoder: TorchEncoder) -> None:
    images = [frame(3, 300, 400), frame(4, 300, 400)]
    features = encoder.encode_tensor(encoder.preprocessor(images))
    assert isinstance(features, torch.Tensor) and features.shape == (2, 32)
    np.testing.assert_allclose(features.numpy(), encoder.encode(images), atol=1e-6)


def test_the_same_frames_give_the_same_features_in_a_new_encoder(encoder: TorchEncoder) -> None:
    again = TorchEncoder.from_spec(ModelSpec.from_preset("tiny-random"), device="cpu")
    images = [frame(2, 200, 300)]
    np.testing.assert_array_equal(again.encode(images), encoder.encode(images))


def test_device_and_precision_choices() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="not one of"):
        resolve_device("tpu")
    assert resolve_precision("auto", "cpu") is Precision.FP32
    assert resolve_precision("auto", "cuda") is Precision.FP16
    with pytest.raises(ConfigError, match="CUDA"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="not one of"):
        resolve_precision("int4", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_cuda_without_a_gpu_says_to_use_the_cpu() -> None:
    with pytest.raises(ConfigError, match="--device cpu"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_agrees_with_cpu_fp32(encoder: TorchEncoder) -> None:
    gpu = TorchEncoder.from_spec(ModelSpec.from_preset("tiny-random"), device="cuda", precision="auto")
    assert gpu.precision is Precision.FP16
    images = frames_of_sizes()
    assert cosine(gpu.encode(images), encoder.encode(images)).min() > 0.999
