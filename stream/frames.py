"""What crosses a queue: frames, source lifecycle and overflow policy.

Everything here is a frozen dataclass or an enum so it can be handed between threads without copies
or locks. ``VideoFrame.image`` is an ``HxWx3`` uint8 RGB array owned by the frame (sources copy
out of decoder buffers before handing it on), upright as a player shows it, and no larger than
``fit_within`` allows: a 4K or 8K frame is reduced as it is decoded, so that rings and batches hold
what the models read, not the source's full resolution.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from affectstream.errors import SourceOutcome

if TYPE_CHECKING:
    from affectstream.stream.sources import SourceInfo


@dataclass(frozen=True, slots=True)
class VideoFrame:
    """One decoded frame of one stream.

    ``pts`` is media time in seconds from the container's presentation timestamps where there are
    some (never frame index x nominal fps); ``captured_ns`` is ``time.monotonic_ns()`` when the grabber
    held the decoded frame, and ``wall_ms`` the matching wall-clock time (ms since epoch).
    """

    stream_id: str
    index: int
    pts: float
    captured_ns: int
    wall_ms: int
    image: np.ndarray = field(repr=False, compare=False)
    # (width, height) of the frame as a player shows it (rotated, full size) when ``image`` was reduced
    # to fit ``SourceConfig.max_frame_side``; None when ``image`` is that frame itself. Boxes on the
    # wire are in these pixels (``source_scale``), not in the reduced image's.
    source_size: tuple[int, int] | None = None

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def source_scale(self) -> float:
        """Source pixels per image pixel: what maps a box found on ``image`` to the displayed frame."""
        if self.source_size is None or self.width == 0:
            return 1.0
        return self.source_size[0] / self.width


def fit_within(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The (width, height) a frame is reduced to: its long side at most ``max_side``, the aspect kept
    (None: no limit). Never enlarged."""
    long_side = max(width, height)
    if max_side is None or long_side <= max_side:
        return width, height
    scale = max_side / long_side
    return max(1, round(width * scale)), max(1, round(height * scale))


class SourceState(str, enum.Enum):
    """Lifecycle of a source. Allowed moves are in ``SOURCE_TRANSITIONS``."""

    NOT_STARTED = "not_started"
    OPENING = "opening"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    ENDED = "ended"  # finished normally (a file reached its end) or stopped on request
    FAILED = "failed"  # gave up: see the SourceOutcome carried by the event


SOURCE_TRANSITIONS: dict[SourceState, frozenset[SourceState]] = {
    SourceState.NOT_STARTED: frozenset({SourceState.OPENING, SourceState.ENDED}),
    SourceState.OPENING: frozenset(
        {SourceState.RUNNING, SourceState.RECONNECTING, SourceState.FAILED, SourceState.ENDED}
    ),
    SourceState.RUNNING: frozenset({SourceState.RECONNECTING, SourceState.ENDED, SourceState.FAILED}),
    SourceState.RECONNECTING: frozenset(
        {SourceState.OPENING, SourceState.RUNNING, SourceState.FAILED, SourceState.ENDED}
    ),
    SourceState.ENDED: frozenset(),
    SourceState.FAILED: frozenset(),
}


def check_transition(current: SourceState, new: SourceState) -> None:
    """Raise ``ValueError`` for a lifecycle move that ``SOURCE_TRANSITIONS`` does not allow."""
    if new not in SOURCE_TRANSITIONS[current]:
        raise ValueError(f"source cannot move from {current.value} to {new.value}")


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """A lifecycle change of a source, produced by grabbers and turned into protocol events."""

    stream_id: str
    state: SourceState
    wall_ms: int
    outcome: SourceOutcome | None = None
    detail: str = ""
    attempt: int = 0  # reconnect attempt number, 0 when not reconnecting
    frames_read: int = 0
    damage: dict[str, Any] | None = None  # terminal events of files: what the reader counted as damaged
    info: SourceInfo | None = None  # RUNNING: what the opened source is (live or not, size, fps)
    # RUNNING after a reconnect: the media time the new connection's first frame is given, so that a
    # stream's ts never goes backwards (each connection's own clock is shifted to continue from here)
    restart_ts: float | None = None

    @property
    def terminal(self) -> bool:
        return self.state in (SourceState.ENDED, SourceState.FAILED)

    @property
    def new_context(self) -> bool:
        """A (re)connection starts: state kept from before it (a head's, a detector's boxes) is stale."""
        return self.state in (SourceState.RUNNING, SourceState.RECONNECTING)

    @property
    def ended_as(self) -> SourceOutcome | None:
        """How the stream ended: the outcome, or ENDED for a normal end that names none (None for a
        failure without one: an internal error)."""
        if self.outcome is None and self.state is SourceState.ENDED:
            return SourceOutcome.ENDED
        return self.outcome


class OverflowPolicy(str, enum.Enum):
    """What a full ring buffer does with a new frame.

    DROP_OLDEST: the writer overwrites the oldest unread frame and counts it. Latency stays bounded
    and the newest frames are always analysed; frames are lost when the consumer is slower than the
    source. The right choice for live sources, which cannot be paused.

    WAIT: the writer blocks until a slot is free. Nothing is lost, and the source is read only as fast
    as the pipeline consumes; latency grows instead. The right choice for files.
    """

    DROP_OLDEST = "drop_oldest"
    WAIT = "wait"
