"""Dataset adapters: CMU-MOSEI, CK+ and MUG read into one record type, plus a leak-free split.

Every adapter returns a :class:`Dataset` of :class:`Segment` records whose labels are in the order of
``EMOTIONS`` (MOSEI's six). A record points at a video (``video_path`` with optional ``start_s`` /
``end_s``) or, for image-sequence sets (CK+, MUG), at its frames (``frame_paths``; ``video_path`` is
then ``None``). Adapters never read pixels: training reads media through ``affectstream.stream``.

Problems in the data (a labelled segment whose video is missing, an unlabeled CK+ sequence, a bad CSV
row) do not raise: they are skipped and listed in ``Dataset.problems`` so that a caller can report
them. A file that is not in the expected format at all raises ``ConfigError`` naming what is wrong.

Formats accepted
----------------
MOSEI labels: the Amazon Mechanical Turk batch CSV (or TSV), one row per annotator and segment, with
the columns ``Input.VIDEO_ID``, ``Input.CLIP``, ``Answer.<emotion>`` for the six emotions (intensity
0-3) and, optionally, ``Answer.sentiment`` (-3..3). Other columns (HITId, WorkerId, ...) are ignored.

MOSEI segment times, either of:

- a CSV/TSV with a header naming ``video_id``, ``clip`` (or ``segment``/``segment_id``/``clip_id``),
  ``start`` (or ``start_s``/``start_time``) and ``end`` (or ``end_s``/``end_time``), times in seconds;
- MOSEI's ``Transcript/Segmented/Combined`` text files (one file, or a directory of ``*.txt``) whose
  lines read ``<video_id>___<clip>___<start>___<end>___<text>``; the shorter
  ``<video_id>_<clip>___<start>___<end>`` is accepted too.
"""

from __future__ import annotations

import csv
import enum
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from affectstream.engine.labels import EMOTIONS, SENTIMENT_SCALE
from affectstream.errors import ConfigError

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".webm", ".mov")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
MOSEI_MAX_INTENSITY = 3.0

# CK+ Emotion/*.txt codes. Contempt and neutral are kept as class names; they have no MOSEI label.
CKPLUS_CODES: dict[int, str] = {
    0: "neutral", 1: "anger", 2: "contempt", 3: "disgust", 4: "fear", 5: "happiness", 6: "sadness", 7: "surprise",
}
CKPLUS_CLASSES: tuple[str, ...] = tuple(CKPLUS_CODES[code] for code in sorted(CKPLUS_CODES))
MUG_CLASSES: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
# Nominal capture rates: CK+ was digitised at 30 fps, MUG recorded at 19 fps.
CKPLUS_FPS = 30.0
MUG_FPS = 19.0


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


def _log_loaded(dataset: Dataset) -> Dataset:
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


# --------------------------------------------------------------------------------------------- MOSEI


@dataclass(frozen=True, slots=True)
class AnnotatorRating:
    """One row of a MOSEI Mechanical Turk batch: one annotator's answers for one segment."""

    video_id: str
    clip: str
    intensities: tuple[float, ...]  # 0-3 per emotion, EMOTIONS order
    sentiment: float | None  # -3..3
    worker_id: str = ""


@dataclass(frozen=True, slots=True)
class SegmentTime:
    video_id: str
    clip: str
    start_s: float
    end_s: float


LABEL_VIDEO_COLUMN = "Input.VIDEO_ID"
LABEL_CLIP_COLUMN = "Input.CLIP"
LABEL_SENTIMENT_COLUMN = "Answer.sentiment"
LABEL_EMOTION_COLUMNS: tuple[str, ...] = tuple(f"Answer.{name}" for name in EMOTIONS)


def load_mosei(
    labels_csv: Path | Sequence[Path],
    segments_file: Path | None,
    video_dir: Path,
    threshold: float = 0.0,
    name: str = "cmu-mosei",
    require_video: bool = True,
) -> Dataset:
    """Read MOSEI annotator rows, average them per segment and binarise (present if average > threshold).

    ``labels_csv`` may be several batch files (MOSEI ships several); their rows are pooled.
    ``segments_file`` gives start/end times (see the module doc); ``None`` means each labelled clip is a
    whole video. Videos are looked up as ``<video_dir>/<video_id>`` with a suffix from
    ``VIDEO_SUFFIXES``; segments without one are skipped (``MISSING_VIDEO``) unless ``require_video`` is
    false, in which case they keep the expected ``.mp4`` path.
    """
    label_files = [Path(labels_csv)] if isinstance(labels_csv, (str, Path)) else [Path(p) for p in labels_csv]
    problems: list[DatasetProblem] = []
    ratings: list[AnnotatorRating] = []
    for label_file in label_files:
        ratings.extend(read_mosei_ratings(label_file, problems))
    times = read_segment_times(Path(segments_file), problems) if segments_file is not None else None
    segments = _mosei_segments(ratings, times, Path(video_dir), threshold, name, require_video, problems)
    return _log_loaded(Dataset(name=name, segments=tuple(segments), problems=tuple(problems)))


def _mosei_segments(
    ratings: Sequence[AnnotatorRating],
    times: dict[tuple[str, str], SegmentTime] | None,
    video_dir: Path,
    threshold: float,
    name: str,
    require_video: bool,
    problems: list[DatasetProblem],
) -> list[Segment]:
    by_segment: dict[tuple[str, str], list[AnnotatorRating]] = defaultdict(list)
    for rating in ratings:
        by_segment[(rating.video_id, rating.clip)].append(rating)
    segments = []
    for video_id, clip in sorted(by_segment, key=_clip_order):
        segment_id = f"{video_id}_{clip}"
        time = times.get((video_id, clip)) if times is not None else None
        if times is not None and time is None:
            problems.append(DatasetProblem(ProblemKind.MISSING_TIMES, segment_id))
            continue
        video_path = find_video(video_dir, video_id)
        if video_path is None:
            problems.append(DatasetProblem(ProblemKind.MISSING_VIDEO, segment_id, str(video_dir / video_id)))
            if require_video:
                continue
            video_path = video_dir / f"{video_id}.mp4"
        scores, sentiment = average_ratings(by_segment[(video_id, clip)])
        segments.append(Segment(
            dataset=name, video_id=video_id, segment_id=segment_id, video_path=video_path,
            start_s=time.start_s if time else None, end_s=time.end_s if time else None,
            labels=binarise(scores, threshold), label_scores=scores, sentiment=sentiment,
        ))
    return segments


def _clip_order(key: tuple[str, str]) -> tuple[str, int, str]:
    video_id, clip = key
    return (video_id, int(clip) if clip.isdigit() else -1, clip)


def average_ratings(ratings: Sequence[AnnotatorRating]) -> tuple[tuple[float, ...], float | None]:
    """Mean intensity per emotion and mean sentiment scaled to [-1, 1] (``None`` if nobody rated it)."""
    scores = np.mean([rating.intensities for rating in ratings], axis=0)
    sentiments = [rating.sentiment for rating in ratings if rating.sentiment is not None]
    sentiment = float(np.clip(np.mean(sentiments) / SENTIMENT_SCALE, -1.0, 1.0)) if sentiments else None
    return tuple(float(s) for s in scores), sentiment


def binarise(scores: Sequence[float], threshold: float) -> tuple[float, ...]:
    """1.0 where a score is strictly above ``threshold`` (the seed: any annotator saw it at 0)."""
    return tuple(1.0 if score > threshold else 0.0 for score in scores)


def find_video(video_dir: Path, video_id: str) -> Path | None:
    for suffix in VIDEO_SUFFIXES:
        candidate = video_dir / f"{video_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_mosei_ratings(path: Path, problems: list[DatasetProblem]) -> list[AnnotatorRating]:
    """The annotator rows of one Mechanical Turk batch file; unparseable rows become ``BAD_ROW``."""
    with _open_text(path) as handle:
        reader = csv.DictReader(handle, delimiter=_delimiter(handle))
        columns = _column_lookup(reader.fieldnames or [])
        required = (LABEL_VIDEO_COLUMN, LABEL_CLIP_COLUMN, *LABEL_EMOTION_COLUMNS)
        missing = [column for column in required if column.lower() not in columns]
        if missing:
            raise ConfigError(
                f"{path} is not a MOSEI label file: columns {missing} are missing "
                f"(expected the Mechanical Turk batch format with {', '.join(required)})"
            )
        ratings = []
        for line, row in enumerate(reader, start=2):
            try:
                ratings.append(_rating_from_row(row, columns))
            except (ValueError, TypeError) as exc:
                problems.append(DatasetProblem(ProblemKind.BAD_ROW, f"{path.name}:{line}", str(exc)))
    return ratings


def _rating_from_row(row: dict[str, str | None], columns: dict[str, str]) -> AnnotatorRating:
    def cell(column: str) -> str:
        value = row.get(columns.get(column.lower(), ""), None)
        return (value or "").strip()

    video_id = cell(LABEL_VIDEO_COLUMN)
    if not video_id:
        raise ValueError("empty video id")
    intensities = tuple(float(cell(column)) for column in LABEL_EMOTION_COLUMNS)
    sentiment_text = cell(LABEL_SENTIMENT_COLUMN)
    return AnnotatorRating(
        video_id=video_id,
        clip=normalise_clip(cell(LABEL_CLIP_COLUMN)),
        intensities=intensities,
        sentiment=float(sentiment_text) if sentiment_text else None,
        worker_id=cell("WorkerId"),
    )


def normalise_clip(clip: str) -> str:
    """"5", "05" and "5.0" name the same clip."""
    clip = clip.strip()
    if not clip:
        raise ValueError("empty clip")
    try:
        number = float(clip)
    except ValueError:
        return clip
    return str(int(number)) if number.is_integer() else clip


def read_segment_times(path: Path, problems: list[DatasetProblem]) -> dict[tuple[str, str], SegmentTime]:
    """(video_id, clip) -> start/end from a CSV/TSV or MOSEI transcript file(s); see the module doc."""
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ConfigError(f"{path} holds no *.txt transcript files: pass a segment time file instead")
        return {key: time for file in files for key, time in _read_transcript_times(file, problems).items()}
    with _open_text(path) as handle:
        first_line = handle.readline()
    if "___" in first_line:
        return _read_transcript_times(path, problems)
    return _read_csv_times(path, problems)


_TIME_COLUMNS: dict[str, tuple[str, ...]] = {
    "video_id": ("video_id", "video", "input.video_id"),
    "clip": ("clip", "segment", "segment_id", "clip_id", "input.clip"),
    "start": ("start", "start_s", "start_time"),
    "end": ("end", "end_s", "end_time"),
}


def _read_csv_times(path: Path, problems: list[DatasetProblem]) -> dict[tuple[str, str], SegmentTime]:
    with _open_text(path) as handle:
        reader = csv.DictReader(handle, delimiter=_delimiter(handle))
        lookup = _column_lookup(reader.fieldnames or [])
        chosen: dict[str, str] = {}
        for role, aliases in _TIME_COLUMNS.items():
            found = next((lookup[alias] for alias in aliases if alias in lookup), None)
            if found is None:
                raise ConfigError(
                    f"{path}: no '{role}' column (accepted names: {', '.join(aliases)}); a segment time file "
                    "needs video_id, clip, start, end"
                )
            chosen[role] = found
        times = {}
        for line, row in enumerate(reader, start=2):
            try:
                time = _segment_time(row[chosen["video_id"]], row[chosen["clip"]], row[chosen["start"]],
                                     row[chosen["end"]])
            except (ValueError, TypeError, AttributeError) as exc:
                problems.append(DatasetProblem(ProblemKind.BAD_ROW, f"{path.name}:{line}", str(exc)))
                continue
            times[(time.video_id, time.clip)] = time
    return times


def _read_transcript_times(path: Path, problems: list[DatasetProblem]) -> dict[tuple[str, str], SegmentTime]:
    times = {}
    with _open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                time = _parse_transcript_line(line.strip())
            except (ValueError, IndexError) as exc:
                problems.append(DatasetProblem(ProblemKind.BAD_ROW, f"{path.name}:{line_number}", str(exc)))
                continue
            times[(time.video_id, time.clip)] = time
    return times


def _parse_transcript_line(line: str) -> SegmentTime:
    fields = line.split("___")
    if len(fields) >= 4 and _is_number(fields[2]) and _is_number(fields[3]):
        return _segment_time(fields[0], fields[1], fields[2], fields[3])
    # Short form: <video_id>_<clip>___<start>___<end>; video ids may themselves contain "_".
    video_id, _, clip = fields[0].rpartition("_")
    return _segment_time(video_id, clip, fields[1], fields[2])


def _segment_time(video_id: str | None, clip: str | None, start: str | None, end: str | None) -> SegmentTime:
    if not video_id or clip is None or start is None or end is None:
        raise ValueError("missing video id, clip, start or end")
    start_s, end_s = float(start), float(end)
    if not 0 <= start_s < end_s:
        raise ValueError(f"start {start_s} must be >= 0 and before end {end_s}")
    return SegmentTime(video_id.strip(), normalise_clip(clip), start_s, end_s)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _open_text(path: Path) -> TextIO:
    if not path.is_file():
        raise ConfigError(f"{path} does not exist or is not a file: check the dataset path")
    return path.open(newline="", encoding="utf-8-sig")  # utf-8-sig: Excel-saved CSVs start with a BOM


def _delimiter(handle: TextIO) -> str:
    header = handle.readline()
    handle.seek(0)
    return "\t" if header.count("\t") > header.count(",") else ","


def _column_lookup(fieldnames: Sequence[str]) -> dict[str, str]:
    """Lower-cased, stripped column name -> the name as written in the file."""
    return {name.strip().lower(): name for name in fieldnames if name}


def write_mosei_labels(path: Path, ratings: Iterable[AnnotatorRating]) -> Path:
    """Write annotator rows in the Mechanical Turk batch format that ``load_mosei`` reads."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["WorkerId", LABEL_VIDEO_COLUMN, LABEL_CLIP_COLUMN, *LABEL_EMOTION_COLUMNS,
                         LABEL_SENTIMENT_COLUMN])
        for rating in ratings:
            sentiment = "" if rating.sentiment is None else _format_number(rating.sentiment)
            writer.writerow([rating.worker_id, rating.video_id, rating.clip,
                             *(_format_number(v) for v in rating.intensities), sentiment])
    return Path(path)


def write_segment_times(path: Path, times: Iterable[SegmentTime]) -> Path:
    """Write the ``video_id,clip,start,end`` CSV that ``load_mosei`` reads."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "clip", "start", "end"])
        for time in times:
            writer.writerow([time.video_id, time.clip, f"{time.start_s:.3f}", f"{time.end_s:.3f}"])
    return Path(path)


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"


# --------------------------------------------------------------------------------- single-label sets


def _one_hot(class_name: str) -> tuple[float, ...]:
    return tuple(1.0 if emotion == class_name else 0.0 for emotion in EMOTIONS)


def _images_in(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))


def _sequence_segment(
    dataset: str, subject: str, sequence_id: str, frames: tuple[Path, ...], class_name: str, fps: float,
) -> Segment:
    labels = _one_hot(class_name)
    return Segment(
        dataset=dataset, video_id=sequence_id, segment_id=sequence_id, video_path=None, start_s=None,
        end_s=None, labels=labels, label_scores=labels, frame_paths=frames, class_name=class_name,
        subject=subject, frame_rate=fps,
    )


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory: pass the root of the {what} dataset")
    return path


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir())


# ----------------------------------------------------------------------------------------------- CK+


def load_ckplus(root: Path, name: str = "ck+") -> Dataset:
    """CK+: ``cohn-kanade-images/S005/001/*.png`` sequences, labels in ``Emotion/S005/001/*_emotion.txt``.

    ``root`` is the folder holding both (``cohn-kanade-images`` and ``Emotion``). Sequences without an
    emotion file are unlabeled in CK+ (only 327 of 593 are labelled): skipped as ``UNLABELED``.
    """
    root = Path(root)
    images_root = _require_dir(root / "cohn-kanade-images", "CK+ ('cohn-kanade-images' inside it)")
    emotion_root = root / "Emotion"
    problems: list[DatasetProblem] = []
    segments = []
    for subject_dir in _subdirs(images_root):
        for sequence_dir in _subdirs(subject_dir):
            sequence_id = f"{subject_dir.name}_{sequence_dir.name}"
            frames = _images_in(sequence_dir)
            if not frames:
                problems.append(DatasetProblem(ProblemKind.NO_FRAMES, sequence_id, str(sequence_dir)))
                continue
            class_name = _ckplus_class(emotion_root / subject_dir.name / sequence_dir.name, sequence_id, problems)
            if class_name is not None:
                segments.append(_sequence_segment(name, subject_dir.name, sequence_id, frames, class_name,
                                                  CKPLUS_FPS))
    return _log_loaded(Dataset(name=name, segments=tuple(segments), problems=tuple(problems)))


def _ckplus_class(label_dir: Path, sequence_id: str, problems: list[DatasetProblem]) -> str | None:
    files = sorted(label_dir.glob("*_emotion.txt")) if label_dir.is_dir() else []
    if not files:
        problems.append(DatasetProblem(ProblemKind.UNLABELED, sequence_id))
        return None
    text = files[-1].read_text(encoding="utf-8", errors="replace").strip()
    try:
        code = float(text)
    except ValueError:
        problems.append(DatasetProblem(ProblemKind.BAD_ROW, str(files[-1]), f"not a number: {text[:40]!r}"))
        return None
    if not code.is_integer() or int(code) not in CKPLUS_CODES:
        problems.append(DatasetProblem(ProblemKind.UNKNOWN_CLASS, sequence_id, f"emotion code {text}"))
        return None
    return CKPLUS_CODES[int(code)]


# ----------------------------------------------------------------------------------------------- MUG


def load_mug(root: Path, name: str = "mug") -> Dataset:
    """MUG: ``<root>/<subject>/<emotion>/<take>/img_0001.jpg``; emotions as in ``MUG_CLASSES``.

    Every take is one segment of its folder's emotion. Unknown emotion folders are skipped as
    ``UNKNOWN_CLASS``, takes without images as ``NO_FRAMES``.
    """
    root = _require_dir(Path(root), "MUG")
    problems: list[DatasetProblem] = []
    segments = []
    for subject_dir in _subdirs(root):
        for emotion_dir in _subdirs(subject_dir):
            class_name = emotion_dir.name.lower()
            if class_name not in MUG_CLASSES:
                problems.append(DatasetProblem(ProblemKind.UNKNOWN_CLASS, str(emotion_dir.relative_to(root))))
                continue
            for take_dir in _subdirs(emotion_dir):
                sequence_id = f"{subject_dir.name}_{class_name}_{take_dir.name}"
                frames = _images_in(take_dir)
                if not frames:
                    problems.append(DatasetProblem(ProblemKind.NO_FRAMES, sequence_id, str(take_dir)))
                    continue
                segments.append(_sequence_segment(name, subject_dir.name, sequence_id, frames, class_name, MUG_FPS))
    return _log_loaded(Dataset(name=name, segments=tuple(segments), problems=tuple(problems)))
