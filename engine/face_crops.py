"""CLIP on faces (the 000 seed's future work): the image encoder sees the face, not the whole frame.

``primary_crop`` is the one rule: the largest face the crop policy keeps, with its margin; the whole
frame where there is none (so that a sequence keeps one feature per sampled frame). The runtime
applies it to the boxes its face stage already found (stream/pipeline.py, ``--clip-input face``);
``FaceCropEncoder`` wraps an encoder with a detector of its own for feature extraction
(``affectstream extract --faces``), so that an LSTM trained on face features meets face features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from affectstream.engine.face_engine import CropPolicy
from affectstream.engine.faces import FaceBox, FaceDetector
from affectstream.engine.interfaces import ImageEncoder


def primary_crop(image: np.ndarray, boxes: Sequence[FaceBox], policy: CropPolicy) -> np.ndarray:
    """The largest kept face of ``image`` with its margin, or ``image`` itself when there is none."""
    kept = policy.select(boxes)
    return np.ascontiguousarray(policy.crop(image, kept[0])) if kept else image


class FaceCropEncoder:
    """An ``ImageEncoder`` that encodes each frame's primary face (see ``primary_crop``)."""

    def __init__(self, encoder: ImageEncoder, detector: FaceDetector, policy: CropPolicy | None = None) -> None:
        self.encoder = encoder
        self.detector = detector
        self.policy = policy or CropPolicy()
        self.name = f"{encoder.name}+faces"
        self.embed_dim = encoder.embed_dim
        self.image_size = encoder.image_size
        self.device = encoder.device
        self.faces_found = 0  # frames whose features are of a face (the rest: the whole frame)
        self.frames = 0

    @property
    def last_stage_ms(self) -> Mapping[str, float]:
        return self.encoder.last_stage_ms

    def encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        detected = self.detector.detect(images) if images else []
        crops = [primary_crop(image, boxes, self.policy) for image, boxes in zip(images, detected)]
        self.frames += len(crops)
        self.faces_found += sum(1 for crop, image in zip(crops, images) if crop is not image)
        return self.encoder.encode(crops)
