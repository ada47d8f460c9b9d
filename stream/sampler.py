"""Which frames to analyse, decided by media time rather than frame count.

Deciding by presentation timestamp keeps the analysis rate the same whatever the source's frame rate
(25, 30, variable) and however many frames the ring dropped before the sampler saw them. Sampled
frames sit on a grid anchored at the first frame: ``origin, origin + period, origin + 2 period, ...``;
a frame is sampled when it is the first one at or past the next grid point. A grid (rather than
"one period after the last sampled frame") keeps the long-run rate exact when frames arrive with
jitter (two picks are then a period apart, give or take a frame interval). A forward jump skips the
grid points that no frame reached; a jump backwards by more than a period (a reconnect, a looping
file) restarts the grid at the new frame.
"""

from __future__ import annotations

import math

from affectstream.errors import ConfigError

DEFAULT_LIVE_RATE_HZ = 4.0
DEFAULT_FILE_RATE_HZ = 2.0
SEED_RATE_HZ = 0.25  # the seed study's 1 frame every 4 s

# Timestamps are rounded from integer time bases; tolerate float error when comparing with the grid.
_EPSILON_S = 1e-9


class MediaTimeSampler:
    """Says, frame by frame, whether a frame with this media time is analysed. Pure logic."""

    def __init__(self, rate_hz: float | None) -> None:
        if rate_hz is not None and (not math.isfinite(rate_hz) or rate_hz < 0):
            raise ConfigError(f"sampling rate must be a finite number of Hz >= 0 (0 = every frame), got {rate_hz!r}")
        self._period = 1.0 / rate_hz if rate_hz else 0.0
        self._origin: float | None = None
        self._next_step = 0  # index of the next grid point due
        self._last_pts: float | None = None

    @property
    def rate_hz(self) -> float | None:
        return 1.0 / self._period if self._period else None

    @property
    def period(self) -> float:
        """Seconds between grid points; 0.0 when every frame is sampled."""
        return self._period

    def reset(self) -> None:
        """Forget the grid: the next frame offered is sampled and anchors a new one."""
        self._origin = None
        self._next_step = 0
        self._last_pts = None

    def offer(self, pts: float) -> bool:
        """True if the frame with media time ``pts`` (seconds) is to be analysed.

        A frame without a usable timestamp (NaN, infinite) is never sampled and leaves the grid alone.
        """
        if not math.isfinite(pts):
            return False
        if self._period == 0.0:
            return True
        went_back = self._last_pts is not None and pts < self._last_pts - self._period
        self._last_pts = pts
        if self._origin is None or went_back:
            self._origin = pts
            self._next_step = 1
            return True
        if pts + _EPSILON_S < self._due():
            return False
        # Skip every grid point at or before this frame, so one frame never accounts for two.
        passed = math.floor((pts - self._origin) / self._period + _EPSILON_S / self._period)
        self._next_step = max(self._next_step, passed) + 1
        return True

    def _due(self) -> float:
        assert self._origin is not None
        return self._origin + self._next_step * self._period
