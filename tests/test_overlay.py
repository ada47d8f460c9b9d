"""`--show`: the pure drawing, pairing each estimate with its frame, and the message without a GUI build."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from affectstream.engine.labels import EMOTIONS
from affectstream.errors import MissingExtraError
from affectstream.stream.frames import VideoFrame
from affectstream.stream.messages import Estimate, Summary
from affectstream.stream.overlay import OverlayWindow, draw_overlay, gui_available


def frame(stream: str, value: int, size: tuple[int, int] = (480, 360), pts: float = 0.0) -> VideoFrame:
    image = np.full((size[1], size[0], 3), value, np.uint8)
    return VideoFrame(stream, 0, pts, 0, 0, image)


def estimate(stream: str, anger: float, ts: float = 1.5) -> Estimate:
    scores = dict.fromkeys(EMOTIONS, 0.0)
    scores["anger"] = anger
    return Estimate(stream=stream, seq=0, ts=ts, wall=0, scores=scores, sentiment=-0.25, dominant="anger")


def summary(stream: str) -> Summary:
    return Summary(stream=stream, seq=1, ts=1.5, wall=0, window_s=5.0, start=0.0, end=1.5, frames=1,
                   mean=dict.fromkeys(EMOTIONS, 0.0), dominant="anger", share=dict.fromkeys(EMOTIONS, 0.0),
                   sentiment_mean=0.0, sentiment_trend=0.0)


def bar_length(canvas: np.ndarray, row: int) -> int:
    """Pixels of the coloured bar in label row ``row`` (bars start at x=10, rows 18 px apart)."""
    line = canvas[10 + row * 18 + 6, 10:]
    return int(np.count_nonzero(np.any(line != line[-1], axis=-1)[: canvas.shape[1] // 3]))


def test_bars_grow_with_the_scores_and_the_frame_is_untouched_elsewhere() -> None:
    image = np.zeros((360, 480, 3), np.uint8)
    image[:, :, 0] = 200  # red in RGB
    low = draw_overlay(image, EMOTIONS, estimate("a", 0.2))
    high = draw_overlay(image, EMOTIONS, estimate("a", 0.9))
    assert bar_length(high, 0) > 3 * bar_length(low, 0) > 0
    assert tuple(low[-1, -1]) == (0, 0, 200), "RGB in, BGR out for OpenCV"
    assert (draw_overlay(image, EMOTIONS, None) == (0, 0, 200)).all(), "no estimate yet: the frame alone"


def test_small_frames_are_enlarged_so_that_the_text_fits() -> None:
    canvas = draw_overlay(np.zeros((60, 80, 3), np.uint8), EMOTIONS, estimate("a", 0.5))
    assert canvas.shape[1] >= 480 and canvas.shape[0] == 360


def test_the_window_shows_each_estimate_on_the_frame_it_was_computed_from() -> None:
    window = OverlayWindow(EMOTIONS)
    assert window.render("a") is None
    for pts, value in ((1.0, 10), (1.25, 50), (1.5, 90)):
        window.on_frame(frame("a", value, pts=pts))
    window.on_frame(frame("b", 200))
    first = window.render("a")
    assert first is not None and tuple(first[-1, -1]) == (90, 90, 90), "no estimate yet: the newest frame"
    window.on_record(estimate("a", 0.8, ts=1.25))
    window.on_record(summary("a"))
    shown = window.render("a")
    assert shown is not None and tuple(shown[-1, -1]) == (50, 50, 50), "the frame of ts 1.25, not the newest"
    assert bar_length(shown, 0) == bar_length(draw_overlay(frame("a", 50).image, EMOTIONS, estimate("a", 0.8)), 0)
    window.on_record(estimate("a", 0.1, ts=1.5))
    later = window.render("a")
    assert later is not None and tuple(later[-1, -1]) == (90, 90, 90)
    assert bar_length(later, 0) < bar_length(shown, 0)
    window.on_record(estimate("a", 0.9, ts=9.0))  # a frame this window never saw: same picture, new bars
    kept = window.render("a")
    assert kept is not None and tuple(kept[-1, -1]) == (90, 90, 90) and bar_length(kept, 0) > bar_length(later, 0)
    plain = window.render("b")
    assert plain is not None and np.array_equal(plain, draw_overlay(frame("b", 200).image, EMOTIONS, None))


def test_frames_waiting_for_an_estimate_are_bounded() -> None:
    window = OverlayWindow(EMOTIONS, max_waiting=4)
    for index in range(100):
        window.on_frame(frame("a", index, pts=index / 10))
    window.on_record(estimate("a", 0.5, ts=0.2))  # evicted long ago
    assert window.render("a") is not None
    window.on_record(estimate("a", 0.5, ts=9.7))
    shown = window.render("a")
    assert shown is not None and tuple(shown[-1, -1]) == (97, 97, 97)


@pytest.mark.skipif(gui_available(), reason="this OpenCV build has a GUI")
def test_without_a_gui_build_show_names_the_extra_to_install() -> None:
    with pytest.raises(MissingExtraError, match=r"affectstream\[gui\]"):
        OverlayWindow(EMOTIONS).run(threading.Event(), threading.Event())
