"""`--show`: the pure drawing, the newest-frame bookkeeping, and the message without a GUI build."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from affectstream.engine.labels import EMOTIONS
from affectstream.errors import MissingExtraError
from affectstream.stream.frames import VideoFrame
from affectstream.stream.overlay import OverlayWindow, draw_overlay, gui_available


def frame(stream: str, value: int, size: tuple[int, int] = (480, 360)) -> VideoFrame:
    image = np.full((size[1], size[0], 3), value, np.uint8)
    return VideoFrame(stream, 0, 0.0, 0, 0, image)


def estimate(stream: str, anger: float) -> dict[str, object]:
    scores = dict.fromkeys(EMOTIONS, 0.0)
    scores["anger"] = anger
    return {"type": "estimate", "stream": stream, "ts": 1.5, "scores": scores, "sentiment": -0.25}


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


def test_the_window_shows_each_stream_with_its_newest_frame_and_estimate() -> None:
    window = OverlayWindow(EMOTIONS)
    assert window.render("a") is None
    window.on_frame(frame("a", 10))
    window.on_frame(frame("a", 90))
    window.on_frame(frame("b", 200))
    window.on_message(estimate("a", 0.1))
    window.on_message(estimate("a", 0.8))
    window.on_message({"type": "summary", "stream": "a"})
    shown = window.render("a")
    assert shown is not None and tuple(shown[-1, -1]) == (90, 90, 90)
    assert bar_length(shown, 0) == bar_length(draw_overlay(frame("a", 90).image, EMOTIONS, estimate("a", 0.8)), 0)
    plain = window.render("b")
    assert plain is not None and np.array_equal(plain, draw_overlay(frame("b", 200).image, EMOTIONS, None))


@pytest.mark.skipif(gui_available(), reason="this OpenCV build has a GUI")
def test_without_a_gui_build_show_names_the_extra_to_install() -> None:
    with pytest.raises(MissingExtraError, match=r"affectstream\[gui\]"):
        OverlayWindow(EMOTIONS).run(threading.Event(), threading.Event())
