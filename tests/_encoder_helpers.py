"""Frames for the encoder tests: crops of real photos from Debian's opencv-doc, else synthetic ones."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

PHOTO_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
PHOTOS = ("baboon.jpg", "fruits.jpg", "HappyFish.jpg")

# (height, width): landscape, portrait, HD, smaller than the model's 224 on one or both sides,
# odd sizes whose center crop offsets round, and exactly the model's size.
FRAME_SIZES = ((480, 640), (640, 480), (1080, 1920), (100, 150), (57, 300), (223, 225), (224, 224))


def _photo(index: int) -> np.ndarray | None:
    name = PHOTOS[index % len(PHOTOS)]
    image = cv2.imread(str(PHOTO_DIR / name), cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _synthetic(index: int, height: int, width: int) -> np.ndarray:
    """Smooth colour blobs plus noise: edges and texture, like a photo, but generated."""
    rng = np.random.default_rng(index)
    coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    noisy = smooth + rng.integers(-20, 21, (height, width, 3), dtype=np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def frame(index: int, height: int, width: int) -> np.ndarray:
    """A ``height x width`` uint8 RGB frame; different ``index`` gives different content."""
    photo = _photo(index)
    if photo is None:
        return _synthetic(index, height, width)
    return np.ascontiguousarray(cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA))


def frames_of_sizes(sizes: tuple[tuple[int, int], ...] = FRAME_SIZES) -> list[np.ndarray]:
    return [frame(index, height, width) for index, (height, width) in enumerate(sizes)]
