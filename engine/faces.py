"""Face detection: one protocol, several detectors, one factory.

Every detector takes uint8 RGB frames of any size and returns, per frame, the faces it found as
:class:`FaceBox` records in that frame's own pixels. Detectors that can run several frames in one
network call (MTCNN, BlazeFace) do so; the OpenCV ones loop.

=============  ==============================================  ==========================================
name           implementation                                   weights
=============  ==============================================  ==========================================
``mtcnn``      :mod:`affectstream.engine.face_mtcnn` (torch)    facenet-pytorch's P/R/O-Net state dicts
``blazeface``  :mod:`affectstream.engine.face_blaze` (torch)    MediaPipe's ``.tflite`` files, read by us
``:M``         BlazeFace model ``front`` (default), ``back``,  (short range 128 px, 256 px, full range
               ``full``                                         192 px)
``haar``       :class:`HaarDetector` (cv2.CascadeClassifier)    the cascade opencv-python-headless ships
``yunet:F``    :class:`YuNetDetector` (cv2.FaceDetectorYN)      the ONNX file ``F`` the user passes
=============  ==============================================  ==========================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from affectstream.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

Point = tuple[float, float]

# The five landmarks that MTCNN, BlazeFace and YuNet all give, in this order (the subject's left and
# right as seen in the image: "left eye" is the eye with the smaller x in an unmirrored frame).
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

DETECTOR_NAMES = ("mtcnn", "blazeface[:front|back|full]", "haar", "yunet:<model.onnx>")
HAAR_CASCADE_FILE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True, slots=True)
class FaceBox:
    """One detected face: an axis-aligned box in source pixels, a score in [0, 1], maybe landmarks."""

    x: float
    y: float
    w: float
    h: float
    score: float
    landmarks: tuple[Point, ...] | None = None  # five (x, y) points, LANDMARK_NAMES order

    @property
    def x2(self) -> float:
        return self.x + self.w

    @property
    def y2(self) -> float:
        return self.y + self.h

    @property
    def center(self) -> Point:
        return (self.x + self.w / 2, self.y + self.h / 2)

    @property
    def area(self) -> float:
        return max(0.0, self.w) * max(0.0, self.h)

    def iou(self, other: FaceBox) -> float:
        """Intersection over union of the two boxes (0 when either is empty)."""
        iw = min(self.x2, other.x2) - max(self.x, other.x)
        ih = min(self.y2, other.y2) - max(self.y, other.y)
        if iw <= 0 or ih <= 0:
            return 0.0
        inter = iw * ih
        return inter / (self.area + other.area - inter)

    def as_list(self) -> list[float]:
        """``[x, y, w, h]``, as the wire protocol's ``box``."""
        return [self.x, self.y, self.w, self.h]

    def scaled(self, factor: float) -> FaceBox:
        """The same box on a frame ``factor`` times as large (landmarks too; the score stays)."""
        if factor == 1.0:
            return self
        landmarks = None if self.landmarks is None else tuple((x * factor, y * factor) for x, y in self.landmarks)
        return FaceBox(self.x * factor, self.y * factor, self.w * factor, self.h * factor, self.score, landmarks)


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in a batch of uint8 RGB frames (each ``HxWx3``, sizes may differ)."""

    name: str
    device: str

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceBox]]:
        """One list per input frame, each sorted by descending score."""
        ...


def check_frames(images: Sequence[np.ndarray]) -> None:
    """Reject what no detector can read, with a message that says which frame and why."""
    for index, image in enumerate(images):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ConfigError(
                f"frame {index}: face detectors take uint8 RGB HxWx3 frames, got {image.dtype} {image.shape}"
            )


def clip_box(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> tuple[float, ...]:
    """The box limited to the frame, as ``(x, y, w, h)``: crops taken from it never leave the frame."""
    cx1, cy1 = min(max(x1, 0.0), float(width)), min(max(y1, 0.0), float(height))
    cx2, cy2 = min(max(x2, 0.0), float(width)), min(max(y2, 0.0), float(height))
    return (cx1, cy1, cx2 - cx1, cy2 - cy1)


def by_score(boxes: list[FaceBox]) -> list[FaceBox]:
    return sorted(boxes, key=lambda box: box.score, reverse=True)


# --- OpenCV Haar cascade --------------------------------------------------------------------------


def _cv2() -> Any:
    import cv2

    return cv2


class HaarDetector:
    """Viola-Jones frontal-face cascade (cv2.CascadeClassifier). CPU only, one frame at a time.

    A cascade gives no probability; the score is ``n / (n + 1)`` for a detection backed by ``n``
    overlapping windows, so it grows with the evidence and every accepted face (``n >= min_neighbors``)
    clears a tracker's usual high-score threshold.
    """

    name = "haar"
    device = "cpu"

    def __init__(self, cascade_file: Path | str, *, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_face_size: int = 30) -> None:
        cv2 = _cv2()
        path = Path(cascade_file)
        if not path.is_file():
            raise ModelError(f"Haar cascade not found: {path}")
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise ModelError(f"not a Haar cascade OpenCV can read: {path}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_size = min_face_size

    @classmethod
    def from_dir(cls, path: Path | str, **options: Any) -> HaarDetector:
        return cls(Path(path) / HAAR_CASCADE_FILE, **options)

    @classmethod
    def from_cv2(cls, **options: Any) -> HaarDetector:
        """The cascade that opencv-python(-headless) 4.x ships in ``cv2.data``."""
        data = getattr(_cv2(), "data", None)
        if data is None:
            raise ModelError("this OpenCV build ships no cascades (opencv-python 5.x): use HaarDetector.from_cache()")
        return cls.from_dir(data.haarcascades, **options)

    @classmethod
    def from_cache(cls, **options: Any) -> HaarDetector:
        from affectstream.engine.model_files import path_of

        return cls.from_dir(path_of("haar-frontalface"), **options)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceBox]]:
        check_frames(images)
        return [self._detect_one(image) for image in images]

    def _detect_one(self, image: np.ndarray) -> list[FaceBox]:
        cv2 = _cv2()
        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        rects, neighbours = self._cascade.detectMultiScale2(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_face_size, self.min_face_size),
        )
        boxes = [
            FaceBox(float(x), float(y), float(w), float(h), float(n) / (float(n) + 1.0))
            for (x, y, w, h), n in zip(np.asarray(rects).reshape(-1, 4), np.asarray(neighbours).reshape(-1))
        ]
        return by_score(boxes)


# --- OpenCV YuNet ---------------------------------------------------------------------------------


class YuNetDetector:
    """YuNet (cv2.FaceDetectorYN) from an ONNX file the user passes; one frame at a time on the CPU."""

    name = "yunet"
    device = "cpu"

    def __init__(self, model_file: Path | str, *, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 top_k: int = 5000) -> None:
        cv2 = _cv2()
        path = Path(model_file)
        if not path.is_file():
            raise ModelError(f"YuNet model not found: {path} (pass the face_detection_yunet .onnx file)")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise ModelError(f"OpenCV {cv2.__version__} has no FaceDetectorYN (needs 4.5.4 or later)")
        self._detector = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, top_k)
        self._size: tuple[int, int] = (320, 320)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceBox]]:
        check_frames(images)
        return [self._detect_one(image) for image in images]

    def _detect_one(self, image: np.ndarray) -> list[FaceBox]:
        cv2 = _cv2()
        height, width = image.shape[:2]
        if self._size != (width, height):  # the network is rebuilt for each new input size
            self._detector.setInputSize((width, height))
            self._size = (width, height)
        _, faces = self._detector.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if faces is None:
            return []
        # Each row: x, y, w, h, five (x, y) landmarks (eyes, nose, mouth corners), score.
        boxes = []
        for row in np.asarray(faces, dtype=np.float64):
            points = tuple((float(row[4 + 2 * i]), float(row[5 + 2 * i])) for i in range(5))
            x, y, w, h = clip_box(row[0], row[1], row[0] + row[2], row[1] + row[3], width, height)
            boxes.append(FaceBox(x, y, w, h, float(row[14]), points))
        return by_score(boxes)


# --- factory --------------------------------------------------------------------------------------


def make_detector(name: str = "mtcnn", device: str = "cpu") -> FaceDetector:
    """A detector by name: ``mtcnn`` (default), ``blazeface`` (also ``blazeface:full``, ``blazeface:back``),
    ``haar``, ``yunet:/path/model.onnx``.

    MTCNN and BlazeFace load their weights from the model cache (``affectstream models fetch``);
    Haar uses OpenCV's own cascade when the installed OpenCV has one, else the cache.
    """
    kind, _, argument = name.partition(":")
    kind = kind.strip().lower()
    if kind == "mtcnn":
        from affectstream.engine.face_mtcnn import MTCNNDetector

        return MTCNNDetector.from_cache(device=device)
    if kind == "blazeface":
        from affectstream.engine.face_blaze import BlazeFaceDetector

        return BlazeFaceDetector.from_cache(argument.strip().lower() or "front", device=device)
    if device != "cpu" and kind in ("haar", "yunet"):
        log.info("the %s face detector runs on the CPU (device %r ignored)", kind, device)
    if kind == "haar":
        try:
            return HaarDetector.from_cv2()
        except ModelError:
            return HaarDetector.from_cache()
    if kind == "yunet":
        if not argument:
            raise ConfigError("the yunet face detector needs its ONNX file: 'yunet:/path/to/model.onnx'")
        return YuNetDetector(argument)
    raise ConfigError(f"unknown face detector {name!r}: choose one of {', '.join(DETECTOR_NAMES)}")


def box_iou_xyxy(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """IoU of ``(N, 4)`` against ``(M, 4)`` corner boxes."""
    ix = np.minimum(first[:, None, 2], second[None, :, 2]) - np.maximum(first[:, None, 0], second[None, :, 0])
    iy = np.minimum(first[:, None, 3], second[None, :, 3]) - np.maximum(first[:, None, 1], second[None, :, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    area_a = np.clip(first[:, 2] - first[:, 0], 0, None) * np.clip(first[:, 3] - first[:, 1], 0, None)
    area_b = np.clip(second[:, 2] - second[:, 0], 0, None) * np.clip(second[:, 3] - second[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def is_finite_box(box: FaceBox) -> bool:
    return all(math.isfinite(v) for v in (box.x, box.y, box.w, box.h, box.score))
