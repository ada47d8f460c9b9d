"""Tiny datasets in their real on-disk formats (MOSEI CSVs and videos, CK+ and MUG image folders)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

# A Mechanical Turk batch has many bookkeeping columns around the answers; the loader must ignore them.
MTURK_HEADER = (
    "HITId,AssignmentId,WorkerId,Input.VIDEO_ID,Input.CLIP,Answer.anger,Answer.happiness,Answer.disgust,"
    "Answer.fear,Answer.sadness,Answer.surprise,Answer.sentiment,Answer.gender,Answer.video_load"
)


def mturk_row(
    video_id: str, clip: str, emotions: Sequence[float | str], sentiment: float | str, worker: str = "W1"
) -> str:
    """One annotator's row; ``emotions`` in MOSEI column order (anger, happiness, disgust, fear, sadness, surprise)."""
    answers = ",".join(str(value) for value in emotions)
    return f"3XHIT{video_id},3ASG{worker},{worker},{video_id},{clip},{answers},{sentiment},0,0"


def write_mturk_csv(path: Path, rows: Iterable[str], header: str = MTURK_HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def write_image(path: Path, value: int, size: tuple[int, int] = (24, 20)) -> Path:
    """A small grey image with a value-dependent square, written with cv2 (PNG or JPEG by suffix)."""
    width, height = size
    image = np.full((height, width, 3), value % 256, np.uint8)
    cv2.rectangle(image, (2, 2), (2 + value % 10, 8), (255, 255, 255), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), f"cv2 could not write {path}"
    return path


def write_video(path: Path, frames: int = 5, fps: float = 10.0, size: tuple[int, int] = (32, 24)) -> Path:
    """A real (tiny) MJPG/AVI or mp4v/MP4 video, depending on the suffix."""
    fourcc = cv2.VideoWriter.fourcc(*("mp4v" if path.suffix == ".mp4" else "MJPG"))
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), fourcc, fps, size)
    assert writer.isOpened(), f"cv2 cannot write {path}"
    for index in range(frames):
        writer.write(np.full((size[1], size[0], 3), 20 * index % 256, np.uint8))
    writer.release()
    return path


def make_ckplus(root: Path, sequences: Mapping[tuple[str, str], tuple[int, float | None]]) -> Path:
    """CK+ layout: ``{(subject, sequence): (n_frames, emotion code or None)}``; None = no Emotion file.

    As in CK+, the emotion file is named after the sequence's last (peak) frame and holds the code in
    scientific notation.
    """
    for (subject, sequence), (n_frames, code) in sequences.items():
        folder = root / "cohn-kanade-images" / subject / sequence
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(1, n_frames + 1):
            write_image(folder / f"{subject}_{sequence}_{index:08d}.png", index * 20)
        if code is not None:
            label_dir = root / "Emotion" / subject / sequence
            label_dir.mkdir(parents=True, exist_ok=True)
            (label_dir / f"{subject}_{sequence}_{n_frames:08d}_emotion.txt").write_text(
                f"   {code:.7e}\n", encoding="utf-8"
            )
    return root


def make_mug(root: Path, takes: Mapping[tuple[str, str, str], int]) -> Path:
    """MUG layout: ``{(subject, emotion, take): n_frames}`` -> ``root/subject/emotion/take/img_0001.jpg``."""
    for (subject, emotion, take), n_frames in takes.items():
        folder = root / subject / emotion / take
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(1, n_frames + 1):
            write_image(folder / f"img_{index:04d}.jpg", index * 30)
    return root
