"""CK+ (sequence folders of images with emotion label files) and MUG (subject / emotion / take folders).

Each sequence is one single-label segment; its class may lie outside MOSEI's six (contempt, neutral).
"""

from __future__ import annotations

import logging
from pathlib import Path

from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError
from affectstream.training.datasets import (
    IMAGE_SUFFIXES,
    Dataset,
    DatasetProblem,
    ProblemKind,
    Segment,
    log_loaded,
)

logger = logging.getLogger(__name__)

# CK+ Emotion/*.txt codes. Contempt and neutral are kept as class names; they have no MOSEI label.
CKPLUS_CODES: dict[int, str] = {
    0: "neutral", 1: "anger", 2: "contempt", 3: "disgust", 4: "fear", 5: "happiness", 6: "sadness", 7: "surprise",
}
CKPLUS_CLASSES: tuple[str, ...] = tuple(CKPLUS_CODES[code] for code in sorted(CKPLUS_CODES))
MUG_CLASSES: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
# Nominal capture rates: CK+ was digitised at 30 fps, MUG recorded at 19 fps.
CKPLUS_FPS = 30.0
MUG_FPS = 19.0

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
    return log_loaded(Dataset(name=name, segments=tuple(segments), problems=tuple(problems)))


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
    return log_loaded(Dataset(name=name, segments=tuple(segments), problems=tuple(problems)))
