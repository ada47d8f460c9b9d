"""Batched preprocessing against open_clip's own (PIL) transform, on real photos of many sizes."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from affectstream.engine.encoder import TorchEncoder
from affectstream.engine.models import ModelSpec
from affectstream.engine.preprocess import Preprocessor, resized_size
from tests._encoder_helpers import FRAME_SIZES, frame, frames_of_sizes

MEAN = open_clip.OPENAI_DATASET_MEAN
STD = open_clip.OPENAI_DATASET_STD
# PIL resizes in fixed point, torch in float: a pixel may round the other way. Bounds: max one uint8
# level (1/255/std ≈ 0.015 normalised units), mean 0.001 normalised units (measured: ≈ 0.0002).
MAX_LEVELS = 1.0 + 1e-4
MEAN_NORMALISED = 0.001


def open_clip_reference(images: list[np.ndarray], resize_mode: str, interpolation: str) -> torch.Tensor:
    transform = open_clip.image_transform(
        224, is_train=False, mean=MEAN, std=STD, resize_mode=resize_mode, interpolation=interpolation
    )
    return torch.stack([transform(Image.fromarray(image)) for image in images])


def in_levels(difference: torch.Tensor) -> torch.Tensor:
    return difference * torch.tensor(STD).view(1, 3, 1, 1) * 255.0


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_matches_open_clip_transform(resize_mode: str, interpolation: str) -> None:
    images = frames_of_sizes()
    ours = Preprocessor(224, MEAN, STD, interpolation, resize_mode)(images)
    reference = open_clip_reference(images, resize_mode, interpolation)
    assert ours.shape == reference.shape == (len(images), 3, 224, 224)
    difference = (ours - reference).abs()
    for index, size in enumerate(FRAME_SIZES):
        worst = in_levels(difference[index : index + 1]).max().item()
        assert worst <= MAX_LEVELS, f"{size}: {worst:.2f} levels"
        assert difference[index].mean().item() < MEAN_NORMALISED, size


def test_equal_sizes_grouped_give_the_same_as_one_by_one() -> None:
    preprocess = Preprocessor(224, MEAN, STD)
    images = [frame(i, 480, 640) for i in range(3)] + [frame(7, 120, 90), frame(8, 480, 640)]
    batch = preprocess(images)
    singles = torch.cat([preprocess([image]) for image in images])
    assert torch.equal(batch, singles)


def test_order_is_kept_when_sizes_interleave() -> None:
    preprocess = Preprocessor(224, MEAN, STD)
    images = [frame(0, 480, 640), frame(1, 100, 150), frame(2, 480, 640), frame(3, 100, 150)]
    batch = preprocess(images)
    for index, image in enumerate(images):
        assert torch.equal(batch[index], preprocess([image])[0])


def test_shortest_side_arithmetic_matches_torchvision() -> None:
    assert resized_size(480, 640, 224, "shortest") == (224, 298)
    assert resized_size(640, 480, 224, "shortest") == (298, 224)
    assert resized_size(57, 300, 224, "shortest") == (224, 1178)
    assert resized_size(480, 640, 224, "squash") == (224, 224)
    assert resized_size(480, 640, 224, "longest") == (168, 224)


def test_rejects_frames_that_are_not_uint8_rgb() -> None:
    preprocess = Preprocessor(224, MEAN, STD)
    with pytest.raises(ValueError, match="uint8"):
        preprocess([np.zeros((10, 10, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match="HxWx3"):
        preprocess([np.zeros((10, 10), dtype=np.uint8)])


def test_encoder_features_agree_between_the_two_preprocessings() -> None:
    encoder = TorchEncoder.from_spec(ModelSpec.from_preset("tiny-random"), device="cpu")
    images = frames_of_sizes()
    with torch.inference_mode():
        ours = encoder.encode_tensor(encoder.preprocessor(images))
        reference = encoder.encode_tensor(open_clip_reference(images, "shortest", "bicubic"))
    cosine = (ours * reference).sum(dim=-1)
    assert cosine.min().item() >= 0.9999, cosine
