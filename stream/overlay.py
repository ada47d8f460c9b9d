"""`--show`: live overlays of the estimates on the sampled frames, in an OpenCV window.

Drawing is a pure function (tested on arrays), ``draw_overlay``: the one drawing rule, shared by the
window and the annotated videos of ``--annotate`` / ``--record`` (stream/recording.py). Only
``OverlayWindow.run`` touches the GUI, and it must run on the main thread, as OpenCV's HighGUI requires.
"""

from __future__ import annotations

import collections
import threading

import cv2
import numpy as np

from affectstream.errors import MissingExtraError
from affectstream.stream.frames import VideoFrame
from affectstream.stream.messages import Estimate, EstimateState, FaceEstimate, Record

_SAME_TIME_S = 1e-5  # estimates carry their frame's pts rounded to the microsecond
_BAR_COLOURS = [(60, 60, 230), (60, 200, 250), (80, 160, 60), (200, 120, 160), (200, 120, 40), (40, 200, 200),
                (170, 165, 155)]  # BGR; the 7th is neutral


def bar_colour_hex(row: int) -> str:
    """The colour of label ``row`` as the overlay draws its bar, as CSS hex (the HTML report's colours)."""
    blue, green, red = _BAR_COLOURS[row % len(_BAR_COLOURS)]
    return f"#{red:02x}{green:02x}{blue:02x}"


def draw_overlay(image_rgb: np.ndarray, labels: tuple[str, ...], estimate: Estimate | None,
                 source_scale: float = 1.0, min_width: int = 480) -> np.ndarray:
    """Return a BGR copy of the frame with one bar per label and the sentiment written on it, and per
    face its box, id, dominant label with its score and, where the box is wide enough, small bars.

    ``source_scale``: source pixels per pixel of ``image_rgb`` (``VideoFrame.source_scale``), since
    boxes are in the source's pixels and a 4K frame is shown from its reduced image. A frame narrower
    than ``min_width`` is enlarged so that the text fits (the window); 0 keeps the frame's own size
    (the annotated videos, written at the decoded frame's size).
    """
    canvas = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    scale = max(1.0, min_width / max(1, canvas.shape[1]))
    if scale > 1.0:
        canvas = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    if estimate is None:
        return canvas
    scores = estimate.scores
    # A stream with faces off in a run with faces scores fewer labels (no neutral): draw its own.
    labels = tuple(label for label in labels if label in scores) or labels
    bar_width = canvas.shape[1] // 3
    for row, label in enumerate(labels):
        value = float(scores.get(label, 0.0))
        top = 10 + row * 18
        cv2.rectangle(canvas, (10, top), (10 + int(bar_width * value), top + 12),
                      _BAR_COLOURS[row % len(_BAR_COLOURS)], -1)
        cv2.putText(canvas, f"{label} {value:.2f}", (14 + bar_width, top + 11),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(canvas, f"sentiment {estimate.sentiment:+.2f}  t={estimate.ts:.1f}s",
                (10, 20 + len(labels) * 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    for face in estimate.faces or ():  # over the stream's bars: a face's box and label stay readable
        _draw_face(canvas, face, scale / source_scale, labels)
    return canvas


FACE_OK_COLOUR = (80, 220, 80)  # BGR: the box of a face whose estimate is ok
FACE_UNCERTAIN_COLOUR = (40, 200, 230)  # BGR: uncertain (docs/faces.md)
_FACE_BARS_MIN_WIDTH = 60  # px of the drawn box: below this, per-face bars are too small to read


def box_thickness(canvas_shape: tuple[int, ...]) -> int:
    """Line width of a face box: 2 px up to about 720p, growing with the picture (3 at 1080p)."""
    return max(2, round(min(canvas_shape[:2]) / 360))


def _draw_face(canvas: np.ndarray, face: FaceEstimate, scale: float, labels: tuple[str, ...] = ()) -> None:
    """The face's box, its id, dominant label and score; yellow when uncertain. Under a box wide
    enough to read them, one small bar per label (the colours of the stream's bars)."""
    x, y, w, h = (int(round(v * scale)) for v in face.box)
    colour = FACE_OK_COLOUR if face.state is EstimateState.OK else FACE_UNCERTAIN_COLOUR
    cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, box_thickness(canvas.shape))
    if labels and w >= _FACE_BARS_MIN_WIDTH:
        _draw_face_bars(canvas, face, labels, x, y + h, w)
    label = f"#{face.id} {face.dominant} {face.scores.get(face.dominant, 0.0):.2f}"
    (text_w, text_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    top = max(0, y - text_h - 6)
    cv2.rectangle(canvas, (x, top), (x + text_w + 6, top + text_h + 6), colour, -1)
    cv2.putText(canvas, label, (x + 3, top + text_h + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)


def _draw_face_bars(canvas: np.ndarray, face: FaceEstimate, labels: tuple[str, ...], x: int, bottom: int,
                    width: int) -> None:
    """Per label a bar as long as its score over the box's width, on a dark strip under the box (left
    out where the strip would leave the picture)."""
    bar_h = max(3, min(8, width // 40))
    top = bottom + 4 + box_thickness(canvas.shape)
    strip_bottom = top + len(labels) * (bar_h + 1) + 1
    if strip_bottom > canvas.shape[0] or x < 0 or x + width > canvas.shape[1]:
        return
    cv2.rectangle(canvas, (x, top), (x + width, strip_bottom), (30, 30, 30), -1)
    for row, label in enumerate(labels):
        value = min(1.0, max(0.0, float(face.scores.get(label, 0.0))))
        bar_top = top + 1 + row * (bar_h + 1)
        if value > 0:
            cv2.rectangle(canvas, (x + 1, bar_top), (x + 1 + int((width - 2) * value), bar_top + bar_h - 1),
                          _BAR_COLOURS[row % len(_BAR_COLOURS)], -1)


def require_gui() -> None:
    """``--show`` needs OpenCV's HighGUI: opencv-python-headless has none."""
    if not gui_available():
        raise MissingExtraError("opencv-python", "gui", "--show (an OpenCV window)")


def gui_available() -> bool:
    """opencv-python-headless has no HighGUI; ``imshow`` there raises."""
    info = cv2.getBuildInformation()
    gui_line = next((line for line in info.splitlines() if line.strip().startswith("GUI:")), "")
    return bool(gui_line) and "NONE" not in gui_line.upper()


class OverlayWindow:
    """Shows each stream's newest estimate on the frame it was computed from.

    Sampled frames wait here until their estimate arrives (an estimate's ``ts`` is its frame's
    ``pts``), so the bars never describe a face the window no longer shows; the picture lags the
    camera by the pipeline's latency. Before the first estimate, the newest frame is shown bare.
    """

    def __init__(self, labels: tuple[str, ...], max_waiting: int = 32) -> None:
        self._labels = labels
        self._lock = threading.Lock()
        self._waiting: dict[str, collections.deque[VideoFrame]] = {}
        self._shown: dict[str, tuple[VideoFrame, Estimate]] = {}
        self._max_waiting = max_waiting

    def on_frame(self, frame: VideoFrame) -> None:
        with self._lock:
            waiting = self._waiting.setdefault(frame.stream_id, collections.deque(maxlen=self._max_waiting))
            waiting.append(frame)

    def on_record(self, message: Record) -> None:
        if not isinstance(message, Estimate):
            return
        stream_id, ts = message.stream, message.ts
        with self._lock:
            waiting = self._waiting.get(stream_id) or collections.deque()
            position = next((i for i, frame in enumerate(waiting) if abs(frame.pts - ts) < _SAME_TIME_S), None)
            if position is not None:
                for _ in range(position):
                    waiting.popleft()  # older frames: their estimates came already or never will
                self._shown[stream_id] = (waiting.popleft(), message)
            elif stream_id in self._shown:  # its frame was evicted: keep the picture, update the bars
                self._shown[stream_id] = (self._shown[stream_id][0], message)

    def render(self, stream_id: str) -> np.ndarray | None:
        with self._lock:
            shown = self._shown.get(stream_id)
            waiting = self._waiting.get(stream_id)
            newest = waiting[-1].image if waiting else None
        if shown is not None:
            frame, estimate = shown
            return draw_overlay(frame.image, self._labels, estimate, frame.source_scale)
        return None if newest is None else draw_overlay(newest, self._labels, None)

    def run(self, stop: threading.Event, done: threading.Event) -> None:
        """Show one window per stream until stop/done is set or the user presses q or Esc."""
        require_gui()
        try:
            while not stop.is_set() and not done.is_set():
                with self._lock:
                    stream_ids = sorted(set(self._waiting) | set(self._shown))
                for stream_id in stream_ids:
                    canvas = self.render(stream_id)
                    if canvas is not None:
                        cv2.imshow(f"affectstream {stream_id}", canvas)
                if cv2.waitKey(30) & 0xFF in (ord("q"), 27):
                    stop.set()
        finally:
            cv2.destroyAllWindows()
