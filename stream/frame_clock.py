"""Media time of decoded frames: FFmpeg's best-effort timestamp, and a clock that fills gaps and stalls."""

from __future__ import annotations

from typing import Any

FALLBACK_FPS = 25.0  # spacing of invented timestamps when a stream has neither pts nor a frame rate
_SAME_S = 1e-9  # timestamps closer than this are the same instant (time bases are at most ns-fine)


class TimestampCorrector:
    """FFmpeg's best-effort timestamp: trust pts unless they go backwards more often than dts do.

    Some streams attach pts in decode order; FFmpeg then falls back to the dts, which is what
    ffprobe reports as ``best_effort_timestamp``. AVI has no presentation times at all: what FFmpeg
    guesses as pts there (packed B-frames) can go backwards, while the dts is AVI's own frame counter,
    so ``prefer_dts`` takes the dts, and the frame the decoder gives back at the end without one (it
    held it back for reordering) is the next count, which is its time exactly, not a guess.
    """

    def __init__(self, prefer_dts: bool = False) -> None:
        self._prefer_dts = prefer_dts
        self._last_pts: int | None = None
        self._last_dts: int | None = None
        self._faulty_pts = 0
        self._faulty_dts = 0

    @property
    def prefers_dts(self) -> bool:
        return self._prefer_dts

    def correct(self, pts: int | None, dts: int | None) -> int | None:
        if dts is not None:
            if self._last_dts is not None and dts <= self._last_dts:
                self._faulty_dts += 1
            self._last_dts = dts
        if pts is not None:
            if self._last_pts is not None and pts <= self._last_pts:
                self._faulty_pts += 1
            self._last_pts = pts
        if self._prefer_dts:
            if dts is None and pts is not None and self._last_dts is not None:
                self._last_dts += 1
                return self._last_dts
            return dts
        if pts is not None and (self._faulty_pts <= self._faulty_dts or dts is None):
            return pts
        return dts


class FrameClock:
    """Media time of each frame: the container's, or previous + 1/fps when a frame has none or its
    clock is stuck.

    A stuck clock repeats the previous frame's timestamp (an MP4 whose stts deltas are 0 stamps every
    frame 0.000 s): read as given, the whole file would be one instant. Each repeat adds one frame
    interval to an offset that every later timestamp carries (``repaired`` counts them), so an
    all-zero file comes out evenly spaced and a single duplicate shifts what follows by one interval,
    with no drift: the container's own spacing is kept. A timestamp that goes *back* (a source that
    restarts its clock) is a jump, not a stuck clock: it is kept, the offset dropped, and the
    sessions handle the jump.
    """

    def __init__(self, nominal_fps: float | None) -> None:
        self._step = 1.0 / (nominal_fps or FALLBACK_FPS)
        self._first: float | None = None
        self._last_given: float | None = None  # the container's previous timestamp, as it came
        self._offset = 0.0  # one step per repeated timestamp so far (since the last jump back)
        self.last: float | None = None
        self.count = 0
        self.missing = 0
        self.repaired = 0

    @property
    def step(self) -> float:
        """Seconds between two invented timestamps (one frame at the rate it was given)."""
        return self._step

    def next(self, pts_s: float | None) -> float:
        if pts_s is None:
            self.missing += 1
            shown = 0.0 if self.last is None else self.last + self._step
        else:
            previous = self._last_given
            if previous is not None and abs(pts_s - previous) < _SAME_S:
                self.repaired += 1
                self._offset += self._step
            elif previous is not None and pts_s < previous:
                self._offset = 0.0
            self._last_given = pts_s
            shown = pts_s + self._offset
        if self._first is None:
            self._first = shown
        self.last = shown
        self.count += 1
        return shown

    def mean_interval(self) -> float | None:
        if self._first is None or self.last is None or self.count < 2:
            return None
        return (self.last - self._first) / (self.count - 1)


def plausible_fps(rate: Any, limit: float) -> float | None:
    try:
        fps = float(rate) if rate is not None else 0.0
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return fps if 0 < fps <= limit else None
