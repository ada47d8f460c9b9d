"""Pictures of given moments of a file, for the HTML report: the frame and the face crop, as small JPEGs.

After the analysis the file is read again with the same reader (stream/pyav_source.py, where odd media
are handled once), so a moment's frame is the very frame that was analysed: each moment's media time
is looked for exactly (to a millisecond). Where the analysis's clock needed no repair, the reader seeks
to the keyframe before each moment and decodes forward (an hour's report costs seconds, not a second
decode of the hour); where it did, or where the times found after a seek do not match, it reads from
the start instead, which gives the analysis's times by construction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from affectstream.errors import AffectstreamError
from affectstream.stream.frames import VideoFrame
from affectstream.stream.pyav_source import PyAVSource
from affectstream.stream.sources import SourceConfig

log = logging.getLogger(__name__)

SAME_FRAME_S = 1e-3  # a frame within this of a moment's time is that moment's frame
FRAME_WIDTH = 320  # px, the frame's thumbnail
FACE_SIDE = 112  # px, the face crop's long side
FACE_MARGIN = 0.25  # of the box's size, added around a face crop
JPEG_QUALITY = 80
_BOX_COLOUR = (80, 220, 80)  # BGR, as the overlay draws a face that is ok


@dataclass(frozen=True)
class Shot:
    """One moment to picture: its media time and, with faces, the primary face's box (source pixels)."""

    ts: float
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Thumbnail:
    ts: float  # the moment's time
    frame_jpeg: bytes  # the frame, FRAME_WIDTH wide, the face's box drawn
    face_jpeg: bytes | None  # the face, FACE_SIDE on its long side (None without a box)


def thumbnails(uri: str, shots: Iterable[Shot], config: SourceConfig, can_seek: bool = True) -> dict[float, Thumbnail]:
    """The thumbnail of each shot found in ``uri``, by its ``ts`` (a shot whose frame is not found is
    left out, and logged); ``can_seek``: the analysis's clock needed no repair."""
    wanted = sorted({shot.ts: shot for shot in shots}.values(), key=lambda shot: shot.ts)
    if not wanted:
        return {}
    try:
        frames = _find(uri, wanted, config, can_seek)
    except AffectstreamError as error:
        log.warning("no thumbnails for the report: %s", error)
        return {}
    found = {shot.ts: _picture(frames[shot.ts], shot) for shot in wanted if shot.ts in frames}
    if len(found) < len(wanted):
        log.warning("%s: %d of %d moments not found again for the report's thumbnails", uri,
                    len(wanted) - len(found), len(wanted))
    return found


def _find(uri: str, wanted: list[Shot], config: SourceConfig, can_seek: bool) -> dict[float, VideoFrame]:
    found: dict[float, VideoFrame] = {}
    source = PyAVSource(uri, "thumbnails", config)
    try:
        source.open()
        if can_seek:
            for shot in wanted:
                frame = _after_seek(source, shot.ts)
                if frame is None:
                    log.info("%s: the frame at %.3f s is not where a seek leads; reading from the start", uri, shot.ts)
                    break
                found[shot.ts] = frame
        left = [shot for shot in wanted if shot.ts not in found]
        if left:
            source.close()
            source = PyAVSource(uri, "thumbnails", config)
            source.open()
            found.update(_in_order(source, left))
    finally:
        source.close()
    return found


def _after_seek(source: PyAVSource, ts: float) -> VideoFrame | None:
    source.seek(ts)
    while (frame := source.read()) is not None:
        if abs(frame.pts - ts) <= SAME_FRAME_S:
            return frame
        if frame.pts > ts + SAME_FRAME_S:
            return None
    return None


def _in_order(source: PyAVSource, wanted: list[Shot]) -> dict[float, VideoFrame]:
    found: dict[float, VideoFrame] = {}
    pending = [shot.ts for shot in wanted]
    while pending and (frame := source.read()) is not None:
        while pending and pending[0] < frame.pts - SAME_FRAME_S:
            pending.pop(0)  # passed without a frame at its time: left out
        if pending and abs(frame.pts - pending[0]) <= SAME_FRAME_S:
            found[pending.pop(0)] = frame
    return found


def _picture(frame: VideoFrame, shot: Shot) -> Thumbnail:
    image = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
    box = None
    if shot.box is not None:
        scale = frame.source_scale  # source pixels per image pixel
        box = tuple(v / scale for v in shot.box)
    small_scale = FRAME_WIDTH / image.shape[1]
    small = cv2.resize(image, (FRAME_WIDTH, max(1, round(image.shape[0] * small_scale))), interpolation=cv2.INTER_AREA)
    face = None
    if box is not None:
        x, y, w, h = box
        cv2.rectangle(small, (round(x * small_scale), round(y * small_scale)),
                      (round((x + w) * small_scale), round((y + h) * small_scale)), _BOX_COLOUR, 2)
        face = _crop(image, x, y, w, h)
    return Thumbnail(ts=shot.ts, frame_jpeg=_jpeg(small), face_jpeg=None if face is None else _jpeg(face))


def _crop(image: np.ndarray, x: float, y: float, w: float, h: float) -> np.ndarray | None:
    height, width = image.shape[:2]
    mx, my = w * FACE_MARGIN, h * FACE_MARGIN
    left, top = max(0, int(x - mx)), max(0, int(y - my))
    right, bottom = min(width, int(x + w + mx)), min(height, int(y + h + my))
    if right - left < 2 or bottom - top < 2:
        return None
    crop = image[top:bottom, left:right]
    scale = FACE_SIDE / max(crop.shape[:2])
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def _jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise AffectstreamError("could not encode a JPEG thumbnail")
    return bytes(data.tobytes())
