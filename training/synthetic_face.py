"""The cartoon face of the synthetic videos: expression parameters in, one BGR frame out.

The face is drawn in its own coordinates (head radius 1, y down), moved, scaled and rolled by a
:class:`Pose`, at 4x the output size and shrunk, so that sub-pixel motion stays smooth. Colours and
proportions that stay fixed within a video are an :class:`Identity`. Everything here is pure: arrays in,
arrays out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

PARAMETERS: tuple[str, ...] = (
    "brow_raise", "brow_tilt", "eye_open", "mouth_curve", "mouth_open", "mouth_width", "nose_wrinkle",
    "cheek_raise",
)

SUPERSAMPLE = 4  # draw at 4x and shrink, so sub-pixel motion stays smooth


@dataclass(frozen=True, slots=True)
class Identity:
    """What stays fixed within a video and varies between them."""

    skin: tuple[int, int, int]  # BGR
    background: tuple[int, int, int]
    face_width: float
    eye_spacing: float
    brow_colour: tuple[int, int, int]

    @classmethod
    def random(cls, rng: np.random.Generator) -> Identity:
        tone = rng.uniform(0.45, 1.0)
        skin = (int(120 * tone + 40), int(150 * tone + 40), int(190 * tone + 50))
        background = tuple(int(v) for v in rng.integers(30, 225, size=3))
        brow = int(rng.integers(10, 70))
        return cls(skin, (background[0], background[1], background[2]), float(rng.uniform(0.68, 0.82)),
                   float(rng.uniform(0.28, 0.36)), (brow, brow, brow + 10))


@dataclass(frozen=True, slots=True)
class Pose:
    """Where the head is: centre as a fraction of the frame, size (fraction of height), roll (radians)."""

    centre_x: float = 0.5
    centre_y: float = 0.5
    scale: float = 0.36
    roll: float = 0.0


def _ellipse(cx: float, cy: float, rx: float, ry: float, count: int = 32) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)


def _bezier(start: np.ndarray, middle: np.ndarray, end: np.ndarray, count: int = 12) -> np.ndarray:
    """A quadratic curve from ``start`` to ``end`` that passes through ``middle`` at its half-way point."""
    control = 2 * middle - (start + end) / 2
    t = np.linspace(0, 1, count)[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end


class _Canvas:
    """Draws shapes given in face coordinates (head radius 1, y down) onto a supersampled image."""

    def __init__(self, image: np.ndarray, pose: Pose) -> None:
        self.image = image
        height, width = image.shape[:2]
        self.radius = pose.scale * height
        self.centre = np.array([pose.centre_x * width, pose.centre_y * height])
        cos, sin = math.cos(pose.roll), math.sin(pose.roll)
        self.rotation = np.array([[cos, -sin], [sin, cos]])

    def _pixels(self, points: np.ndarray) -> np.ndarray:
        return np.round(points @ self.rotation.T * self.radius + self.centre).astype(np.int32)

    def fill(self, points: np.ndarray, colour: tuple[int, int, int]) -> None:
        cv2.fillPoly(self.image, [self._pixels(points)], colour, lineType=cv2.LINE_AA)

    def line(self, points: np.ndarray, colour: tuple[int, int, int], width: float, closed: bool = False) -> None:
        thickness = max(1, round(width * self.radius))
        cv2.polylines(self.image, [self._pixels(points)], closed, colour, thickness, lineType=cv2.LINE_AA)


def _blend(a: tuple[int, int, int], b: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    amount = float(np.clip(amount, 0.0, 1.0))
    return (round(a[0] + (b[0] - a[0]) * amount), round(a[1] + (b[1] - a[1]) * amount),
            round(a[2] + (b[2] - a[2]) * amount))


def render_face(params: np.ndarray, pose: Pose, identity: Identity, size: tuple[int, int]) -> np.ndarray:
    """One ``HxWx3`` BGR uint8 frame of the face with expression ``params`` (no noise)."""
    width, height = size
    image = np.empty((height * SUPERSAMPLE, width * SUPERSAMPLE, 3), np.uint8)
    image[:] = identity.background
    canvas = _Canvas(image, pose)
    p = dict(zip(PARAMETERS, (float(v) for v in params)))
    canvas.fill(_ellipse(0, 0.04 * p["mouth_open"], identity.face_width, 1.0 + 0.08 * p["mouth_open"], 48),
                identity.skin)
    _draw_cheeks(canvas, p, identity)
    _draw_eyes(canvas, p, identity)
    _draw_brows(canvas, p, identity)
    _draw_nose(canvas, p, identity)
    _draw_mouth(canvas, p, identity)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _draw_cheeks(canvas: _Canvas, p: dict[str, float], identity: Identity) -> None:
    if p["cheek_raise"] > 0.05:
        colour = _blend(identity.skin, (120, 110, 230), 0.5 * p["cheek_raise"])
        for side in (-1, 1):
            canvas.fill(_ellipse(side * 0.45, 0.28 - 0.06 * p["cheek_raise"], 0.14, 0.1), colour)


def _draw_eyes(canvas: _Canvas, p: dict[str, float], identity: Identity) -> None:
    openness = float(np.clip(p["eye_open"], 0.1, 2.0))
    eye_y = -0.12 - 0.03 * max(p["cheek_raise"], 0.0)
    for side in (-1, 1):
        cx = side * identity.eye_spacing
        outline = _ellipse(cx, eye_y, 0.15, 0.085 * openness)
        canvas.fill(outline, (245, 245, 245))
        iris = min(0.065, 0.085 * openness)
        canvas.fill(_ellipse(cx, eye_y, iris, iris, 16), (50, 40, 30))
        canvas.line(outline, (40, 40, 40), 0.025, closed=True)


def _draw_brows(canvas: _Canvas, p: dict[str, float], identity: Identity) -> None:
    base = -0.38 - 0.12 * p["brow_raise"]
    for side in (-1, 1):
        inner = np.array([side * 0.1, base - 0.1 * p["brow_tilt"]])
        outer = np.array([side * (identity.eye_spacing + 0.16), base + 0.04 * p["brow_tilt"]])
        middle = (inner + outer) / 2 + np.array([0.0, -0.03])
        canvas.line(_bezier(inner, middle, outer, 8), identity.brow_colour, 0.065)


def _draw_nose(canvas: _Canvas, p: dict[str, float], identity: Identity) -> None:
    shade = _blend(identity.skin, (40, 50, 70), 0.45)
    canvas.line(np.array([[0.0, -0.05], [0.06, 0.17], [-0.03, 0.2]]), shade, 0.03)
    if p["nose_wrinkle"] > 0.05:
        crease = _blend(identity.skin, (30, 40, 60), 0.7 * p["nose_wrinkle"])
        for y in (-0.08, -0.02):
            canvas.line(np.array([[-0.08, y], [0.08, y]]), crease, 0.025)
        for side in (-1, 1):  # lines from the nose wings down to the mouth corners
            canvas.line(np.array([[side * 0.1, 0.18], [side * 0.2, 0.36]]), crease, 0.025)


def _draw_mouth(canvas: _Canvas, p: dict[str, float], identity: Identity) -> None:
    centre_y = 0.5
    half_width = 0.26 * max(p["mouth_width"], 0.3)
    corner_y = centre_y - 0.12 * p["mouth_curve"]
    left, right = np.array([-half_width, corner_y]), np.array([half_width, corner_y])
    lift = 0.05 * max(p["nose_wrinkle"], 0.0) + 0.06 * max(p["mouth_open"], 0.0)  # open mouths round up
    upper_mid = np.array([0.0, centre_y - 0.02 - lift])
    lower_mid = np.array([0.0, centre_y + 0.02 + 0.3 * max(p["mouth_open"], 0.0)])
    upper = _bezier(left, upper_mid, right)
    lower = _bezier(right, lower_mid, left)
    canvas.fill(np.concatenate([upper, lower]), (40, 30, 90))
    lips = _blend(identity.skin, (70, 60, 150), 0.6)
    canvas.line(upper, lips, 0.04)
    canvas.line(lower, lips, 0.04)


def add_noise(image: np.ndarray, rng: np.random.Generator, sigma: float, brightness: float) -> np.ndarray:
    """Lighting change (a gain) and Gaussian pixel noise; ``sigma`` in 0-255 units."""
    noisy = image.astype(np.float32) * brightness
    if sigma > 0:
        noisy += rng.normal(0.0, sigma, size=image.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)
