"""Tiny test videos, generated on demand (shared by every test module).

Frames change visibly over time (a bright square moves, the frame number is drawn) so that tests can
tell frames apart. Everything is small (a few dozen 160x120 frames) so that generating is quick.
Encoders: cv2.VideoWriter (MJPG in AVI) for the plain video, PyAV where exact timestamps matter,
ffmpeg (subprocess) for audio; the odd files are made by editing bytes of a good one.
"""

from __future__ import annotations

import fractions
import shutil
import struct
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import cast

import cv2
import numpy as np

Size = tuple[int, int]  # (width, height)


def draw_frame(index: int, size: Size = (160, 120), pattern: str = "moving") -> np.ndarray:
    """One BGR frame: a bright square that moves with ``index`` and the frame number."""
    width, height = size
    image = np.zeros((height, width, 3), np.uint8)
    if pattern == "other":
        image[:] = (40, 90, 20)
        colour = (0, 200, 255)
    else:
        image[:] = (60, 30, 30)
        colour = (255, 255, 255)
    side = max(4, min(width, height) // 4)
    x = (index * 7) % max(1, width - side)
    y = (index * 3) % max(1, height - side)
    cv2.rectangle(image, (x, y), (x + side, y + side), colour, thickness=-1)
    cv2.putText(image, str(index), (2, height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 0), 1)
    return image


def draw_face(index: int, size: Size = (160, 120)) -> np.ndarray:
    """A cartoon face whose mouth and brows change over time (smile, then frown, then surprise)."""
    width, height = size
    image = np.full((height, width, 3), 200, np.uint8)
    centre = (width // 2, height // 2)
    axes = (width // 4, height * 2 // 5)
    cv2.ellipse(image, centre, axes, 0, 0, 360, (150, 190, 230), -1)
    eye_y = centre[1] - axes[1] // 4
    for dx in (-axes[0] // 2, axes[0] // 2):
        cv2.circle(image, (centre[0] + dx, eye_y), 4, (40, 40, 40), -1)
    phase = (index // 10) % 3
    brow_tilt = (-4, 5, -8)[phase]
    for dx, sign in ((-axes[0] // 2, 1), (axes[0] // 2, -1)):
        x = centre[0] + dx
        cv2.line(image, (x - 8, eye_y - 10 + sign * brow_tilt // 2), (x + 8, eye_y - 10 - sign * brow_tilt // 2),
                 (30, 30, 30), 2)
    mouth_centre = (centre[0], centre[1] + axes[1] // 2)
    if phase == 0:  # smile
        cv2.ellipse(image, mouth_centre, (18, 8), 0, 0, 180, (40, 40, 160), 2)
    elif phase == 1:  # frown
        cv2.ellipse(image, (mouth_centre[0], mouth_centre[1] + 8), (18, 8), 0, 180, 360, (40, 40, 160), 2)
    else:  # open mouth
        cv2.ellipse(image, mouth_centre, (8, 12), 0, 0, 360, (40, 40, 120), -1)
    return image


def make_video(path: Path | str, seconds: float = 2.0, fps: float = 10, size: Size = (160, 120),
               pattern: str = "moving") -> Path:
    """A constant-rate MJPG/AVI (or whatever cv2 picks for the suffix) video; returns ``path``."""
    path = Path(path)
    count = max(1, round(seconds * fps))
    _write_cv2(path, fps, size, (draw_frame(i, size, pattern) for i in range(count)))
    return path


def make_face_video(path: Path | str, seconds: float = 3.0, fps: float = 10, size: Size = (160, 120)) -> Path:
    path = Path(path)
    count = max(1, round(seconds * fps))
    _write_cv2(path, fps, size, (draw_face(i, size) for i in range(count)))
    return path


def _write_cv2(path: Path, fps: float, size: Size, frames: Iterable[np.ndarray]) -> None:
    fourcc = cv2.VideoWriter.fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {path}")
    try:
        for image in frames:
            writer.write(image)
    finally:
        writer.release()


def encode_with_pts(path: Path | str, pts_s: Sequence[float], size: Size = (160, 120), codec: str = "libx264",
                    time_base: fractions.Fraction = fractions.Fraction(1, 1000)) -> Path:
    """A video whose frames carry exactly the given presentation times (seconds), via PyAV."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = cast("av.VideoStream", container.add_stream(codec, rate=25))
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if codec == "libx264":
            stream.options = {"bf": "0", "preset": "ultrafast"}  # no B-frames: decode order = pts order
        for index, pts in enumerate(pts_s):
            frame = av.VideoFrame.from_ndarray(draw_frame(index, size), format="bgr24")
            frame.pts = round(pts / time_base)
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def vfr_pts(count: int = 30) -> list[float]:
    """Unevenly spaced presentation times: gaps of 40, 40, 120, 40, 250 ms, ... (ms-exact)."""
    gaps_ms = (40, 40, 120, 40, 250, 60)
    pts, now_ms = [], 0
    for index in range(count):
        pts.append(now_ms / 1000)
        now_ms += gaps_ms[index % len(gaps_ms)]
    return pts


def make_vfr_video(path: Path | str, count: int = 30, size: Size = (160, 120)) -> Path:
    """Variable frame rate Matroska (ms time base): pts from ``vfr_pts(count)``."""
    return encode_with_pts(path, vfr_pts(count), size)


def make_resolution_change_video(path: Path | str, first: Size = (160, 120), second: Size = (96, 64),
                                 frames_each: int = 10, fps: int = 10) -> Path:
    """MPEG-TS whose picture size changes mid-stream.

    One muxer stream, two encoders: the second encoder's packets (with their own sequence header)
    are muxed into the same stream, as a broadcast encoder switching resolution would.
    """
    import av

    path = Path(path)
    time_base = fractions.Fraction(1, fps)
    with av.open(str(path), "w") as container:
        stream = cast("av.VideoStream", container.add_stream("mpeg2video", rate=fps))
        stream.width, stream.height = first
        stream.pix_fmt = "yuv420p"
        for part, size in enumerate((first, second)):
            encoder = cast("av.VideoCodecContext", av.CodecContext.create("mpeg2video", "w"))
            encoder.width, encoder.height = size
            encoder.pix_fmt = "yuv420p"
            encoder.time_base = time_base
            encoder.framerate = fractions.Fraction(fps, 1)
            encoder.options = {"bf": "0", "g": "5"}
            frames: list[av.VideoFrame | None] = []
            for i in range(frames_each):
                index = part * frames_each + i
                frame = av.VideoFrame.from_ndarray(draw_frame(index, size), format="bgr24")
                frame.pts = index  # one clock across both parts
                frame.time_base = time_base
                frames.append(frame)
            for frame_or_flush in [*frames, None]:
                for packet in encoder.encode(frame_or_flush):
                    packet.stream = stream
                    packet.time_base = time_base
                    container.mux(packet)
    return path


def make_audio_only(path: Path | str, seconds: float = 1.0) -> Path:
    """An AAC tone in an MP4 container: a media file without a video track."""
    path = Path(path)
    _ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac", str(path))
    return path


def make_raw_h264(path: Path | str, seconds: float = 2.0, fps: float = 10) -> Path:
    """A bare H.264 bitstream (no container): its frames carry no timestamps at all."""
    path = Path(path)
    _ffmpeg("-f", "lavfi", "-i", f"testsrc=size=160x120:rate={fps}", "-t", str(seconds), "-c:v", "libx264",
            "-f", "h264", str(path))
    return path


def make_truncated(path_in: Path | str, path_out: Path | str, keep: float = 0.5) -> Path:
    """The first ``keep`` share of the bytes of ``path_in``, as if a download stopped half way."""
    data = Path(path_in).read_bytes()
    path_out = Path(path_out)
    path_out.write_bytes(data[: int(len(data) * keep)])
    return path_out


def make_empty(path: Path | str) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_random_bytes(path: Path | str, size: int = 64 * 1024, seed: int = 7) -> Path:
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def make_text_file(path: Path | str) -> Path:
    path = Path(path)
    path.write_text("this is not a video, just some text named like one\n" * 50)
    return path


def make_avi_with_header_fps(path: Path | str, rate: int, scale: int = 1, seconds: float = 2.0, fps: float = 10,
                             size: Size = (160, 120)) -> Path:
    """An MJPG AVI whose headers claim ``rate/scale`` fps (0 or absurd), content written at ``fps``."""
    path = Path(path)
    make_video(path, seconds=seconds, fps=fps, size=size)
    data = bytearray(path.read_bytes())
    # avih: dwMicroSecPerFrame is the first field after the chunk header.
    avih = data.find(b"avih")
    us_per_frame = 0 if rate == 0 else round(1e6 * scale / rate)
    struct.pack_into("<I", data, avih + 8, us_per_frame)
    # strh (video): fccType, fccHandler, flags, priority+language, initialFrames, then dwScale, dwRate.
    strh = data.find(b"strh")
    struct.pack_into("<II", data, strh + 8 + 20, scale, rate)
    path.write_bytes(bytes(data))
    return path


def make_zero_fps_header(path: Path | str, **kwargs: float) -> Path:
    return make_avi_with_header_fps(path, rate=0, scale=1, **kwargs)  # type: ignore[arg-type]


def make_absurd_fps_header(path: Path | str, **kwargs: float) -> Path:
    return make_avi_with_header_fps(path, rate=1000, scale=1, **kwargs)  # type: ignore[arg-type]


def ffprobe_pts(path: Path | str, entry: str = "pts_time") -> list[float | None]:
    """Times (s) of the video frames of ``path`` as ffprobe reports them; None where it has none.

    ``entry`` is ``pts_time`` or ``best_effort_timestamp_time`` (what FFmpeg falls back to).
    """
    output = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", f"frame={entry}",
         "-of", "csv=p=0", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    values = [line.strip().rstrip(",") for line in output.splitlines() if line.strip()]
    return [None if value == "N/A" else float(value) for value in values]


def _ffmpeg(*args: str) -> None:
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg is not installed (Debian: apt-get install ffmpeg)")
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True, timeout=60,
                   capture_output=True)


def make_display_rotated(path_in: Path | str, path_out: Path | str, degrees: int) -> Path:
    """``path_in``'s stream copied into an MP4 whose display matrix turns it by ``degrees``, as a phone
    writes it (ffmpeg 5.1 turns the ``rotate`` tag into the matrix; ``ffprobe_rotation`` reads it back).
    Players show it turned ``degrees`` counter-clockwise (what FFmpeg's own autorotation does)."""
    path_out = Path(path_out)
    _ffmpeg("-i", str(path_in), "-map", "0:v:0", "-c", "copy", "-metadata:s:v:0", f"rotate={degrees}", str(path_out))
    return path_out


def ffprobe_rotation(path: Path | str) -> float | None:
    """The display matrix rotation ffprobe reports for the first video stream (None: it has none)."""
    output = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream_side_data=rotation",
         "-of", "csv=p=0", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()
    return float(output) if output else None


def ffmpeg_frames_rgb(path: Path | str, size: Size) -> np.ndarray:
    """Every frame as FFmpeg's command line decodes it (autorotated, as players show it): N x H x W x 3."""
    width, height = size
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True, timeout=60).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def zero_stts(path_in: Path | str, path_out: Path | str) -> Path:
    """A copy of an MP4 whose sample table says every frame lasts 0 (each stts delta set to 0): every
    frame's timestamp is then 0.000 s, as some broken muxers and screen recorders write. Give it an
    ffmpeg-written file (one stts entry for all frames); FFmpeg reads a zeroed table of several
    entries differently (it spaces the frames by what the last entry said)."""
    data = bytearray(Path(path_in).read_bytes())
    boxes = _mp4_boxes(data, 0, len(data), b"stts")
    if not boxes:
        raise ValueError(f"{path_in} has no stts box: not an MP4 with a sample table")
    for box in boxes:
        # stts: size, "stts", version+flags, entry count, then (sample count, sample delta) pairs.
        entries = struct.unpack_from(">I", data, box + 12)[0]
        for entry in range(entries):
            struct.pack_into(">I", data, box + 16 + 8 * entry + 4, 0)
    path_out = Path(path_out)
    path_out.write_bytes(bytes(data))
    return path_out


_MP4_CONTAINERS = (b"moov", b"trak", b"mdia", b"minf", b"stbl")


def _mp4_boxes(data: bytearray, start: int, end: int, kind: bytes) -> list[int]:
    """Offsets of every ``kind`` box inside the sample tables (walked box by box, never searched for in
    the media data, where the same four bytes may occur by chance)."""
    found, offset = [], start
    while offset + 8 <= end:
        size, name = struct.unpack_from(">I", data, offset)[0], bytes(data[offset + 4:offset + 8])
        if size < 8:
            break
        if name == kind:
            found.append(offset)
        elif name in _MP4_CONTAINERS:
            found += _mp4_boxes(data, offset + 8, offset + size, kind)
        offset += size
    return found


def overwrite_middle(path_in: Path, path_out: Path, start: float = 0.3, end: float = 0.6) -> Path:
    """Random bytes (fixed seed) over a stretch in the middle of a file: corrupt packets."""
    data = bytearray(path_in.read_bytes())
    a, b = int(len(data) * start), int(len(data) * end)
    data[a:b] = np.random.default_rng(3).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    path_out.write_bytes(bytes(data))
    return path_out
