"""The 004 seed's balancing: synthetic samples for the rare classes of the training side.

The seed generated new videos of the rare classes with a keypoint motion-transfer GAN. Two cheaper
ways to make new samples of a class are offered here:

- ``interpolate`` (feature space): two sequences of the same class, the second resampled onto the
  first one's time grid, mixed with a random weight (labels and frame labels mixed alike);
- ``clips`` (image level): a sequence of the class re-read from its video re-timed (played 0.8-1.25x),
  mirrored and slightly warped (rotation, scale, shift), then encoded by the same encoder.

Only sequences with one class count (a ``class_name`` among the six, or exactly one positive label);
each class is filled up towards the most common one. Augmented sequences go to the training side only.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from affectstream.engine.interfaces import ImageEncoder
from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError
from affectstream.training.featureset import SequenceFeatures


class BalanceMethod(str, enum.Enum):
    NONE = "none"
    INTERPOLATE = "interpolate"
    CLIPS = "clips"


def class_of(sequence: SequenceFeatures) -> str | None:
    """The sequence's single class among the six emotions, or None (none, several, or another class)."""
    if sequence.class_name is not None:
        return sequence.class_name if sequence.class_name in EMOTIONS else None
    positive = np.flatnonzero(np.asarray(sequence.labels) > 0.5)
    return EMOTIONS[int(positive[0])] if len(positive) == 1 else None


def class_counts(sequences: Sequence[SequenceFeatures]) -> dict[str, int]:
    counts = dict.fromkeys(EMOTIONS, 0)
    for sequence in sequences:
        name = class_of(sequence)
        if name is not None:
            counts[name] += 1
    return counts


def plan(sequences: Sequence[SequenceFeatures], fill: float = 1.0) -> dict[str, int]:
    """How many new samples each class needs to reach ``fill`` times the largest class's count."""
    counts = class_counts(sequences)
    goal = round(fill * max(counts.values(), default=0))
    return {name: max(0, goal - count) for name, count in counts.items() if count > 0 and goal > count}


def _members(sequences: Sequence[SequenceFeatures]) -> dict[str, list[SequenceFeatures]]:
    members: dict[str, list[SequenceFeatures]] = defaultdict(list)
    for sequence in sequences:
        name = class_of(sequence)
        if name is not None:
            members[name].append(sequence)
    return members


# ------------------------------------------------------------------------------------ feature space


def resample(values: np.ndarray, length: int) -> np.ndarray:
    """``(T, K)`` values linearly resampled over normalised time to ``(length, K)``."""
    values = np.asarray(values, np.float32)
    if len(values) == 1:
        return np.repeat(values, length, axis=0)
    source = np.linspace(0.0, 1.0, len(values))
    target = np.linspace(0.0, 1.0, length)
    return np.stack([np.interp(target, source, values[:, k]) for k in range(values.shape[1])], axis=1).astype(np.float32)


def mix(first: SequenceFeatures, second: SequenceFeatures, weight: float, key: str) -> SequenceFeatures:
    """``weight`` of ``first`` plus the rest of ``second`` resampled to ``first``'s length; unit rows."""
    n = first.n_frames
    features = weight * first.features + (1 - weight) * resample(second.features, n)
    features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    frame_labels = None
    if first.frame_labels is not None and second.frame_labels is not None:
        frame_labels = weight * first.frame_labels + (1 - weight) * resample(second.frame_labels, n)
    sentiment = None
    if first.sentiment is not None and second.sentiment is not None:
        sentiment = float(weight * first.sentiment + (1 - weight) * second.sentiment)
    return dataclasses.replace(
        first, key=key, features=features.astype(np.float32), sentiment=sentiment,
        frame_labels=None if frame_labels is None else frame_labels.astype(np.float32),
        labels=np.maximum(first.labels, second.labels), label_scores=(first.label_scores + second.label_scores) / 2,
    )


def interpolate(sequences: Sequence[SequenceFeatures], seed: int = 0, fill: float = 1.0) -> list[SequenceFeatures]:
    """New training sequences for the rare classes, by mixing pairs of the same class."""
    rng = random.Random(seed)
    members = _members(sequences)
    made = []
    for name, needed in plan(sequences, fill).items():
        pool = members[name]
        for index in range(needed):
            first, second = rng.choice(pool), rng.choice(pool)
            made.append(mix(first, second, rng.uniform(0.3, 0.7), f"{first.key}#interp{index}"))
    return made


# ------------------------------------------------------------------------------------- image level


@dataclass(frozen=True)
class ClipTransform:
    """One image-level change of a clip: playback speed, mirror, and an affine warp."""

    speed: float = 1.0  # 1.25 plays faster: the same number of steps spans more media time
    flip: bool = False
    angle_deg: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)  # fraction of width, height

    @classmethod
    def random(cls, rng: random.Random, speeds: tuple[float, float] = (0.8, 1.25)) -> ClipTransform:
        return cls(speed=rng.uniform(*speeds), flip=rng.random() < 0.5, angle_deg=rng.uniform(-8, 8),
                   scale=rng.uniform(0.93, 1.07), shift=(rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)))

    def times(self, times: np.ndarray) -> np.ndarray:
        """Re-timed sample times: same start, steps ``speed`` times as long, kept inside the segment."""
        times = np.asarray(times, np.float64)
        return np.minimum(times[0] + (times - times[0]) * self.speed, times[-1])

    def apply(self, frame: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        if self.flip:
            frame = frame[:, ::-1]
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), self.angle_deg, self.scale)
        matrix[:, 2] += (self.shift[0] * width, self.shift[1] * height)
        return cv2.warpAffine(np.ascontiguousarray(frame), matrix, (width, height), borderMode=cv2.BORDER_REFLECT)


FrameReader = Callable[[str, np.ndarray], list[np.ndarray]]  # (video_id, times) -> RGB frames


def video_frame_reader(videos_dir: Path) -> FrameReader:
    """Reads the frames nearest to the given times from ``<videos_dir>/<video_id>.*`` (RGB)."""
    from affectstream.training.mosei import find_video

    def read(video_id: str, times: np.ndarray) -> list[np.ndarray]:
        path = find_video(Path(videos_dir), video_id)
        if path is None:
            raise ConfigError(f"--balance clips: no video for {video_id!r} in {videos_dir}; pass the dataset's "
                              f"video directory with --videos")
        capture = cv2.VideoCapture(str(path))
        try:
            fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
            wanted = [round(float(t) * fps) for t in times]
            frames: dict[int, np.ndarray] = {}
            index, last = 0, None
            while index <= max(wanted):
                ok, frame = capture.read()
                if not ok:
                    break
                last = frame
                if index in wanted:
                    frames[index] = frame
                index += 1
        finally:
            capture.release()
        if last is None:
            raise ConfigError(f"--balance clips: cannot read {path}")
        # times past the end of the video repeat its last frame
        return [cv2.cvtColor(frames.get(i, last), cv2.COLOR_BGR2RGB) for i in wanted]

    return read


def clips(
    sequences: Sequence[SequenceFeatures], encoder: ImageEncoder, read_frames: FrameReader, seed: int = 0,
    fill: float = 1.0, on_sample: Callable[[], None] | None = None, speeds: tuple[float, float] = (0.8, 1.25),
) -> list[SequenceFeatures]:
    """New training sequences for the rare classes: re-timed, mirrored, warped clips, re-encoded.

    ``speeds`` bounds the re-timing; (1, 1) keeps the clip's own pace, which matters where labels are
    defined by how long an expression lasts (a 1.25x clip shows a 1 s expression for 0.8 s).
    """
    rng = random.Random(seed)
    members = _members(sequences)
    made = []
    for name, needed in plan(sequences, fill).items():
        for index in range(needed):
            source = rng.choice(members[name])
            transform = ClipTransform.random(rng, speeds)
            times = transform.times(source.times)
            frames = [transform.apply(frame) for frame in read_frames(source.video_id, times)]
            frame_labels = None
            if source.frame_labels is not None:  # the label of the source step nearest in media time
                nearest = np.abs(source.times[None, :] - times[:, None]).argmin(axis=1)
                frame_labels = source.frame_labels[nearest]
            made.append(dataclasses.replace(
                source, key=f"{source.key}#clip{index}", times=times, features=encoder.encode(frames),
                frame_labels=frame_labels))
            if on_sample is not None:
                on_sample()
    return made
