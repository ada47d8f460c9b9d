"""Dataset adapters: CMU-MOSEI, CK+ and MUG read into one record type, plus a leak-free split.

Every adapter returns a :class:`Dataset` of :class:`Segment` records whose labels are in the order of
``EMOTIONS`` (MOSEI's six). A record points at a video (``video_path`` with optional ``start_s`` /
``end_s``) or, for image-sequence sets (CK+, MUG), at its frames (``frame_paths``; ``video_path`` is
then ``None``). Adapters never read pixels: training reads media through ``affectstream.stream``.

Problems in the data (a labelled segment whose video is missing, an unlabeled CK+ sequence, a bad CSV
row) do not raise: they are skipped and listed in ``Dataset.problems`` so that a caller can report
them. A file that is not in the expected format at all raises ``ConfigError`` naming what is wrong.

The adapters: training/mosei.py (CMU-MOSEI) and training/image_sets.py (CK+, MUG).
"""

from __future__ import annotations

import enum
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".webm", ".mov")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True, slots=True)
class Segment:
    """One labelled stretch of video (or one image sequence).

    ``labels`` are 0/1 in ``EMOTIONS`` order (the training target); ``label_scores`` are the raw values
    they came from (MOSEI: average annotator intensity 0-3; single-label sets: the one-hot itself).
    ``sentiment`` is in [-1, 1] where the dataset has one. ``class_name`` is the single class of a
    single-label dataset (it may lie outside the six, e.g. "contempt" or "neutral").
    """

    dataset: str
    video_id: str
    segment_id: str
    video_path: Path | None
    start_s: float | None
    end_s: float | None
    labels: tuple[float, ...]
    label_scores: tuple[float, ...]
    sentiment: float | None = None
    frame_paths: tuple[Path, ...] | None = None
    class_name: str | None = None
    subject: str | None = None  # the person, where known: splits by subject avoid identity leaks
    frame_rate: float | None = None  # nominal fps of an image sequence

    @property
    def is_image_sequence(self) -> bool:
        return self.frame_paths is not None

    @property
    def duration_s(self) -> float | None:
        if self.start_s is None or self.end_s is None:
            return None
        return self.end_s - self.start_s


class ProblemKind(str, enum.Enum):
    """Why an item of a dataset was skipped."""

    MISSING_VIDEO = "missing_video"  # labelled, but no video file on disk
    MISSING_TIMES = "missing_times"  # labelled, but the segment file has no start/end for it
    UNLABELED = "unlabeled"  # a sequence without a label (CK+ without an Emotion file)
    NO_FRAMES = "no_frames"  # a sequence folder without images
    UNKNOWN_CLASS = "unknown_class"  # a label outside the dataset's known classes
    BAD_ROW = "bad_row"  # a line of a label or time file that cannot be parsed


@dataclass(frozen=True, slots=True)
class DatasetProblem:
    kind: ProblemKind
    item: str  # what was skipped: a segment id, a folder, "file:line"
    detail: str = ""


@dataclass(frozen=True)
class Dataset:
    """The segments of one dataset, its label names and what was skipped while loading it."""

    name: str
    segments: tuple[Segment, ...]
    label_names: tuple[str, ...] = EMOTIONS
    problems: tuple[DatasetProblem, ...] = field(default=(), repr=False)

    def __len__(self) -> int:
        return len(self.segments)

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def count(self, kind: ProblemKind) -> int:
        return sum(1 for problem in self.problems if problem.kind is kind)

    def label_matrix(self) -> np.ndarray:
        """``(N, 6)`` float32 array of the binarised labels."""
        return np.array([segment.labels for segment in self.segments], np.float32).reshape(-1, len(EMOTIONS))

    def class_counts(self) -> dict[str, int]:
        """Segments per class name (single-label sets) or positives per emotion (multi-label sets)."""
        if any(segment.class_name for segment in self.segments):
            counts: dict[str, int] = defaultdict(int)
            for segment in self.segments:
                counts[segment.class_name or "?"] += 1
            return dict(counts)
        positives = self.label_matrix().sum(axis=0)
        return {name: int(positives[i]) for i, name in enumerate(EMOTIONS)}


def log_loaded(dataset: Dataset) -> Dataset:
    logger.info("%s: %d segments loaded, %d items skipped", dataset.name, len(dataset), len(dataset.problems))
    for kind in ProblemKind:
        if (skipped := dataset.count(kind)) > 0:
            logger.warning("%s: %d skipped (%s)", dataset.name, skipped, kind.value)
    return dataset


# --------------------------------------------------------------------------------------------- split


class GroupBy(str, enum.Enum):
    """What must not appear on two sides of a split."""

    VIDEO = "video"
    SUBJECT = "subject"  # falls back to the video where the subject is unknown


def split_by_video(
    segments: Iterable[Segment],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    group_by: GroupBy = GroupBy.VIDEO,
) -> tuple[list[Segment], list[Segment], list[Segment]]:
    """Split into (train, val, test) so that no video (or subject) lands on two sides.

    Whole groups are shuffled with ``seed`` and dealt out in order until each side holds about its
    fraction of the segments; with few groups a side can come out empty.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    groups: dict[str, list[Segment]] = defaultdict(list)
    for segment in segments:
        groups[_group_key(segment, group_by)].append(segment)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    total = sum(len(members) for members in groups.values())
    boundaries = (fractions[0] * total, (fractions[0] + fractions[1]) * total)
    sides: tuple[list[Segment], list[Segment], list[Segment]] = ([], [], [])
    placed = 0
    for key in keys:
        # A group goes to the side its middle falls in, so big groups do not all drift to one side.
        middle = placed + len(groups[key]) / 2
        side = 0 if middle < boundaries[0] else 1 if middle < boundaries[1] else 2
        sides[side].extend(groups[key])
        placed += len(groups[key])
    return sides


def _group_key(segment: Segment, group_by: GroupBy) -> str:
    if group_by is GroupBy.SUBJECT and segment.subject:
        return f"subject:{segment.subject}"
    return f"video:{segment.video_id}"
