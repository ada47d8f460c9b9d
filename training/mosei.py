"""CMU-MOSEI as the 000 seed used it: per-annotator label rows averaged per segment and binarised.

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
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from affectstream.engine.labels import EMOTIONS, SENTIMENT_SCALE
from affectstream.errors import ConfigError
from affectstream.training.datasets import (
    VIDEO_SUFFIXES,
    Dataset,
    DatasetProblem,
    ProblemKind,
    Segment,
    log_loaded,
)

logger = logging.getLogger(__name__)

MOSEI_MAX_INTENSITY = 3.0

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
    return log_loaded(Dataset(name=name, segments=tuple(segments), problems=tuple(problems)))


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
