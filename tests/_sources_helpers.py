"""Helpers for the source and grabber tests: bounded calls, an event recorder, ring draining (frames and
the lifecycle events the grabber puts between them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from affectstream.errors import SourceError
from affectstream.stream.frames import SourceEvent, SourceState, VideoFrame
from affectstream.stream.ring import RingBuffer
from affectstream.stream.sources import Source, SourceDamage, SourceInfo
from tests.timeouts import scaled

T = TypeVar("T")


def run_bounded(call: Callable[[], T], seconds: float) -> T:
    """``call()`` on a daemon thread; fails the test if it takes longer than ``scaled(seconds)``."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed back to the test thread
            error.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(scaled(seconds))
    assert not thread.is_alive(), f"still running after {scaled(seconds):.1f} s: the source hangs"
    if error:
        raise error[0]
    return result[0]


def read_everything(source: Source) -> tuple[SourceInfo, list[VideoFrame], SourceDamage]:
    """Open, read to the end and close; SourceError propagates (after close)."""
    try:
        info = source.open()
        frames = []
        while (frame := source.read()) is not None:
            frames.append(frame)
        return info, frames, source.damage
    finally:
        source.close()


def outcome_of(source: Source) -> tuple[str, list[VideoFrame], SourceDamage | SourceError]:
    """("ok", frames, damage) or ("open_error"/"read_error", frames so far, the error)."""
    frames: list[VideoFrame] = []
    try:
        try:
            source.open()
        except SourceError as exc:
            return "open_error", frames, exc
        try:
            while (frame := source.read()) is not None:
                frames.append(frame)
        except SourceError as exc:
            return "read_error", frames, exc
        return "ok", frames, source.damage
    finally:
        source.close()


class EventRecorder:
    """Collects SourceEvents from a grabber thread; tests wait for a condition on them."""

    def __init__(self) -> None:
        self.events: list[SourceEvent] = []
        self._changed = threading.Condition()

    def __call__(self, event: SourceEvent) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def states(self) -> list[SourceState]:
        with self._changed:
            return [event.state for event in self.events]

    def wait_for(self, predicate: Callable[[list[SourceEvent]], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + scaled(seconds)
        with self._changed:
            while not predicate(self.events):
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no {what} within {scaled(seconds):.1f} s; events: {self.events}"
                self._changed.wait(remaining)

    def count(self, state: SourceState) -> int:
        return sum(1 for event in self.events if event.state is state)


def drain_items(ring: RingBuffer, seconds: float,
                on_frame: Callable[[VideoFrame], None] | None = None) -> list[VideoFrame | SourceEvent]:
    """Read the ring until it is closed and empty: frames and lifecycle events, in the order they came
    out; fails after ``scaled(seconds)``."""
    items: list[VideoFrame | SourceEvent] = []
    deadline = time.monotonic() + scaled(seconds)
    while True:
        assert time.monotonic() < deadline, f"ring not closed within {scaled(seconds):.1f} s"
        item = ring.get(timeout=0.05)
        if item is not None:
            items.append(item)
            if on_frame is not None and isinstance(item, VideoFrame):
                on_frame(item)
        elif ring.drained:
            return items


def drain(ring: RingBuffer, seconds: float, on_frame: Callable[[VideoFrame], None] | None = None) -> list[VideoFrame]:
    """The frames of ``drain_items`` (the lifecycle events the grabber puts between them left out)."""
    return [item for item in drain_items(ring, seconds, on_frame) if isinstance(item, VideoFrame)]


def events_in(items: list[VideoFrame | SourceEvent]) -> list[SourceEvent]:
    return [item for item in items if isinstance(item, SourceEvent)]
