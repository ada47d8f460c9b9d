"""The golden run: a lossless generated video whose every pixel is fixed by arithmetic alone, and the
command whose messages tests/data/golden_run.jsonl stores (made with the code before the typed-records
refactor; tests/test_golden.py checks that the code now gives the same messages). Regenerated once
since, for issue 11, with the same messages checked equal as a multiset: `stream_ended` became the
stream's last durable message (the final summaries moved before it, so seqs shifted) and `damage`
gained `repaired_pts`; for issue 14 `damage` gained `spans` (where the damage was: none here)."""

from __future__ import annotations

import fractions
from pathlib import Path
from typing import Any, cast

import numpy as np

SIZE = (96, 72)
FPS = 8
SECONDS = 6
GOLDEN = Path(__file__).resolve().parent / "data" / "golden_run.jsonl"
# --faces off: the stored messages are whole-frame CLIP's (they were made before the face stage existed).
RUN_ARGS = ("--model", "tiny-random", "--faces", "off", "--fast", "--no-serve", "--quiet", "--rate", "4",
            "--windows", "2,4", "--stats-interval", "3600")
# Fields that depend on the clock or the machine, not on the media and the model.
WALL_CLOCK_FIELDS = ("wall", "latency_ms", "age_ms")
STATS_KEPT = ("type", "v", "stream", "seq", "ts", "frames_in", "frames_sampled", "estimates", "drops")


def frame(index: int) -> np.ndarray:
    """RGB: a colour ramp that drifts with time and a square that moves (no font, no anti-aliasing)."""
    width, height = SIZE
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 2 + index * 9) % 256, (y * 3 + index * 5) % 256, (x + y + index * 13) % 256], axis=-1)
    left, top = (index * 5) % (width - 24), (index * 3) % (height - 24)
    image[top:top + 24, left:left + 24] = (255 - index * 4 % 256, 40, 200)
    return image.astype(np.uint8)


def make_video(path: Path) -> Path:
    """PNG frames in QuickTime: decoded to the very pixels written, on any FFmpeg build."""
    import av

    time_base = fractions.Fraction(1, FPS)
    with av.open(str(path), "w") as container:
        stream = cast("av.VideoStream", container.add_stream("png", rate=FPS))
        stream.width, stream.height = SIZE
        stream.pix_fmt = "rgb24"
        stream.time_base = time_base
        for index in range(SECONDS * FPS):
            video_frame = av.VideoFrame.from_ndarray(frame(index), format="rgb24")
            video_frame.pts = index
            video_frame.time_base = time_base
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    return path


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """A message without what the clock decides."""
    if message["type"] == "stats":
        return {key: message[key] for key in STATS_KEPT}
    return {key: value for key, value in message.items() if key not in WALL_CLOCK_FIELDS}
