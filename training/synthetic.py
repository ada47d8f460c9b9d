"""Synthetic expression videos with exact labels: procedural faces drawn with OpenCV.

Each video is a cartoon face whose expression parameters (brow height and tilt, eye openness, mouth
curvature, openness and width, nose wrinkle, cheek raise) move smoothly over time. A timeline of
*episodes* drives six emotion intensities; each emotion has a parameter signature, and the face shows
``neutral + intensities @ signatures``.

Labels depend on time, not only on the picture: an emotion counts at a frame only once its intensity
has stayed at or above ``onset_level`` for ``min_duration_s``. Short *flicker* episodes reach full
intensity but never last that long, so they are labelled 0: a per-frame classifier cannot tell a
flicker peak from a held expression, a temporal model can.

Output (``generate_synthetic``)::

    out_dir/videos/synth_000.avi        the videos (MJPG/AVI or mp4v/MP4)
    out_dir/labels.csv                  annotator rows in MOSEI's Mechanical Turk format
    out_dir/segments.csv                video_id,clip,start,end
    out_dir/ground_truth/synth_000.json per-frame intensities, labels and parameters; the episodes
    out_dir/config.json                 the SyntheticConfig used

so the result loads with ``load_mosei`` like the real thing. Everything is deterministic for a seed.
The pure parts (timeline, labels, parameters, and the drawing in ``synthetic_face``) take data and
return arrays; only ``generate_synthetic`` and the writers touch the disk.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError
from affectstream.training.datasets import Dataset
from affectstream.training.mosei import (
    AnnotatorRating,
    SegmentTime,
    load_mosei,
    write_mosei_labels,
    write_segment_times,
)
from affectstream.training.synthetic_face import PARAMETERS, Identity, Pose, add_noise, render_face

logger = logging.getLogger(__name__)

NEUTRAL = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0], np.float32)
# Change from neutral at full intensity, one row per emotion in EMOTIONS order, loosely after Ekman's
# descriptions (brow_tilt > 0 lifts the inner brow corners, < 0 pulls them down into a frown).
SIGNATURES = np.array([
    #  raise  tilt   eyes  curve  open  width  nose  cheek
    [-0.7, -1.0, -0.10, -0.30, 0.00, -0.30, 0.20, 0.00],  # anger
    [0.00, 0.00, -0.30, 1.00, 0.15, 0.30, 0.00, 1.00],  # happiness
    [-0.4, -0.3, -0.35, -0.60, 0.10, -0.10, 1.00, 0.30],  # disgust
    [0.70, 0.80, 0.50, -0.30, 0.35, 0.35, 0.00, 0.00],  # fear
    [-0.1, 1.00, -0.35, -0.90, 0.00, -0.10, 0.00, 0.00],  # sadness
    [1.00, 0.00, 0.60, 0.00, 0.90, -0.30, 0.00, 0.00],  # surprise
], np.float32)
NEGATIVE_EMOTIONS = ("anger", "disgust", "fear", "sadness")
RAMP_S = 0.2  # time an expression takes to build up or fade


class VideoFormat(str, enum.Enum):
    AVI_MJPG = "avi"
    MP4_MP4V = "mp4"

    @property
    def fourcc(self) -> str:
        return "MJPG" if self is VideoFormat.AVI_MJPG else "mp4v"


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Defaults are small so that tests and CI stay fast."""

    n_videos: int = 12
    seconds: float = 8.0
    fps: float = 10.0
    size: tuple[int, int] = (96, 96)  # width, height
    seed: int = 0
    class_weights: tuple[float, ...] = (1.0,) * len(EMOTIONS)  # relative odds of each emotion (imbalance)
    min_duration_s: float = 1.0  # an expression must be held this long before it counts
    onset_level: float = 0.5  # intensity from which an expression counts as shown
    flicker_probability: float = 0.35  # share of episodes that are brief distractors
    mix_probability: float = 0.1  # share of episodes that blend two emotions
    segment_s: float = 4.0  # length of the labelled clips (MOSEI segments)
    annotators: int = 3
    annotator_miss_probability: float = 0.0  # chance an annotator overlooks a present emotion
    pixel_noise: float = 4.0  # standard deviation of Gaussian pixel noise, in 0-255 units
    jitter: float = 0.01  # per-frame random walk of the head, fraction of the frame
    head_motion: float = 0.05  # amplitude of the slow head sway, fraction of the frame
    video_format: VideoFormat = VideoFormat.AVI_MJPG

    def __post_init__(self) -> None:
        if self.n_videos < 1 or self.seconds <= 0 or self.fps <= 0 or self.segment_s <= 0:
            raise ConfigError("n_videos, seconds, fps and segment_s must be positive")
        if min(self.size) < 32:
            raise ConfigError(f"size {self.size} is too small to draw a face: use at least 32x32")
        if len(self.class_weights) != len(EMOTIONS) or min(self.class_weights) < 0 or sum(self.class_weights) <= 0:
            raise ConfigError(f"class_weights needs {len(EMOTIONS)} non-negative weights, not all zero")
        if self.min_duration_s <= 0 or not 0 < self.onset_level <= 1 or self.annotators < 1:
            raise ConfigError("min_duration_s must be > 0, onset_level in (0, 1], annotators >= 1")

    @property
    def n_frames(self) -> int:
        return max(1, round(self.seconds * self.fps))

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["video_format"] = self.video_format.value
        return data


@dataclass(frozen=True, slots=True)
class Episode:
    """One expression on the timeline; ``flicker`` episodes are too short to ever be labelled."""

    emotions: tuple[str, ...]
    start_s: float
    end_s: float
    peak: float
    flicker: bool


@dataclass(frozen=True)
class GroundTruth:
    """Per-frame truth of one synthetic video (read back with ``read_ground_truth``)."""

    video_id: str
    fps: float
    times: np.ndarray  # (F,) seconds
    intensity: np.ndarray  # (F, 6) in [0, 1]
    labels: np.ndarray  # (F, 6) 0/1
    params: np.ndarray  # (F, len(PARAMETERS))
    episodes: tuple[Episode, ...]


# ------------------------------------------------------------------------------------- the timeline


def plan_episodes(rng: np.random.Generator, config: SyntheticConfig) -> list[Episode]:
    """Alternate neutral gaps and episodes until the video ends."""
    weights = np.asarray(config.class_weights, np.float64) / sum(config.class_weights)
    episodes = []
    t = float(rng.uniform(0.2, 1.0))
    while t < config.seconds - 0.2:
        flicker = bool(rng.random() < config.flicker_probability)
        # Flickers stay well under min_duration_s; held episodes comfortably exceed it (ramps included).
        scale = rng.uniform(0.25, 0.7) if flicker else rng.uniform(1.6, 3.0)
        end = min(t + float(scale) * config.min_duration_s + (0 if flicker else 2 * RAMP_S), config.seconds)
        primary = int(rng.choice(len(EMOTIONS), p=weights))
        emotions = [EMOTIONS[primary]]
        if rng.random() < config.mix_probability:
            others = [i for i in range(len(EMOTIONS)) if i != primary and weights[i] > 0]
            if others:
                emotions.append(EMOTIONS[int(rng.choice(others))])
        episodes.append(Episode(tuple(emotions), round(t, 4), round(end, 4), round(float(rng.uniform(0.7, 1.0)), 4),
                                flicker))
        t = end + float(rng.uniform(0.4, 1.5))
    return episodes


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def expression_tracks(episodes: Sequence[Episode], times: np.ndarray) -> np.ndarray:
    """``(F, 6)`` emotion intensities in [0, 1]: each episode rises and falls smoothly."""
    intensity = np.zeros((len(times), len(EMOTIONS)), np.float32)
    for episode in episodes:
        ramp = min(RAMP_S, (episode.end_s - episode.start_s) / 3)
        rise = _smoothstep((times - episode.start_s) / ramp)
        fall = _smoothstep((episode.end_s - times) / ramp)
        envelope = episode.peak * np.minimum(rise, fall)
        for emotion in episode.emotions:
            column = EMOTIONS.index(emotion)
            intensity[:, column] = np.maximum(intensity[:, column], envelope)
    return intensity


def frame_labels(intensity: np.ndarray, fps: float, min_duration_s: float, onset_level: float) -> np.ndarray:
    """``(F, 6)`` 0/1: an emotion counts once it has been held at ``onset_level`` for ``min_duration_s``.

    Causal on purpose: the label at a frame depends on that frame and the ones before it only, so a
    streaming temporal model can learn it exactly.
    """
    needed = max(1, math.ceil(min_duration_s * fps - 1e-9))  # frames held, the current one included
    labels = np.zeros(intensity.shape, np.uint8)
    run = np.zeros(intensity.shape[1], np.int64)
    for i, row in enumerate(intensity):
        run = np.where(row >= onset_level, run + 1, 0)
        labels[i] = run >= needed
    return labels


def face_parameters(intensity: np.ndarray) -> np.ndarray:
    """``(F, len(PARAMETERS))``: the neutral face plus the emotions' signatures, weighted."""
    return NEUTRAL + np.asarray(intensity, np.float32) @ SIGNATURES


# ------------------------------------------------------------------------------------------ motion


def head_poses(rng: np.random.Generator, config: SyntheticConfig) -> list[Pose]:
    """A slow sway plus a small jitter, one pose per frame."""
    n = config.n_frames
    times = np.arange(n) / config.fps
    phase = rng.uniform(0, 2 * np.pi, size=3)
    period = rng.uniform(3.0, 7.0, size=3)
    sway = np.sin(2 * np.pi * times[:, None] / period + phase)  # (n, 3): x, y, roll
    # A mean-reverting walk: jittery like a random walk, but it never drifts off the frame on long videos.
    steps = rng.normal(0, config.jitter, size=(n, 2))
    walk = np.zeros((n, 2))
    for i in range(1, n):
        walk[i] = 0.9 * walk[i - 1] + steps[i]
    return [
        Pose(
            centre_x=float(0.5 + config.head_motion * sway[i, 0] + walk[i, 0]),
            centre_y=float(0.5 + 0.5 * config.head_motion * sway[i, 1] + walk[i, 1]),
            roll=float(2.0 * config.head_motion * sway[i, 2]),
        )
        for i in range(n)
    ]


# ------------------------------------------------------------------------------ segments and raters


def segment_times(video_id: str, config: SyntheticConfig) -> list[SegmentTime]:
    """Consecutive clips of ``segment_s``; a tail shorter than one frame is dropped."""
    times = []
    start, clip = 0.0, 0
    while config.seconds - start > 1.0 / config.fps - 1e-9:
        end = min(start + config.segment_s, config.seconds)
        times.append(SegmentTime(video_id, str(clip), round(start, 4), round(end, 4)))
        start, clip = end, clip + 1
    return times


def segment_truth(times: np.ndarray, labels: np.ndarray, clip: SegmentTime) -> np.ndarray:
    """``(6,)`` 0/1: an emotion is present in a clip if any of its frames is labelled with it."""
    inside = (times >= clip.start_s - 1e-9) & (times < clip.end_s - 1e-9)
    if not inside.any():
        return np.zeros(labels.shape[1], np.uint8)
    return np.asarray(labels[inside].max(axis=0), np.uint8)


def annotate(
    rng: np.random.Generator, clip: SegmentTime, times: np.ndarray, intensity: np.ndarray, labels: np.ndarray,
    config: SyntheticConfig,
) -> list[AnnotatorRating]:
    """Simulated Mechanical Turk rows for one clip.

    A present emotion gets an intensity 1-3 from its peak (an annotator may overlook it with
    ``annotator_miss_probability``); an absent one gets 0, flickers included. Sentiment follows the share
    of labelled time of happiness minus that of the negative emotions.
    """
    inside = (times >= clip.start_s - 1e-9) & (times < clip.end_s - 1e-9)
    present = segment_truth(times, labels, clip)
    peaks = intensity[inside].max(axis=0) if inside.any() else np.zeros(len(EMOTIONS))
    shares = labels[inside].mean(axis=0) if inside.any() else np.zeros(len(EMOTIONS))
    negative = sum(shares[EMOTIONS.index(name)] for name in NEGATIVE_EMOTIONS)
    sentiment = float(np.clip(round(3 * 1.5 * (shares[EMOTIONS.index("happiness")] - negative)), -3, 3))
    ratings = []
    for annotator in range(config.annotators):
        seen = present.astype(bool) & (rng.random(len(EMOTIONS)) >= config.annotator_miss_probability)
        strength = np.clip(np.round(3 * peaks), 1, 3)
        intensities = tuple(float(v) for v in np.where(seen, strength, 0.0))
        ratings.append(AnnotatorRating(clip.video_id, clip.clip, intensities, sentiment, f"synthetic-{annotator}"))
    return ratings


# -------------------------------------------------------------------------------------------- output


def generate_synthetic(out_dir: Path, config: SyntheticConfig = SyntheticConfig()) -> Dataset:
    """Write videos, MOSEI-format labels, segment times and per-frame truth; return them as a Dataset."""
    out_dir = Path(out_dir)
    video_dir, truth_dir = out_dir / "videos", out_dir / "ground_truth"
    video_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    all_ratings: list[AnnotatorRating] = []
    all_times: list[SegmentTime] = []
    for index in range(config.n_videos):
        video_id = f"synth_{index:03d}"
        truth = _generate_video(video_dir / f"{video_id}.{config.video_format.value}", video_id, index, config)
        _write_ground_truth(truth_dir / f"{video_id}.json", truth, config)
        clips = segment_times(video_id, config)
        rater_rng = np.random.default_rng([config.seed, index, 1])
        for clip in clips:
            all_ratings.extend(annotate(rater_rng, clip, truth.times, truth.intensity, truth.labels, config))
        all_times.extend(clips)
    write_mosei_labels(out_dir / "labels.csv", all_ratings)
    write_segment_times(out_dir / "segments.csv", all_times)
    (out_dir / "config.json").write_text(json.dumps(config.as_dict(), indent=2) + "\n", encoding="utf-8")
    logger.info("synthetic: %d videos, %d clips written to %s", config.n_videos, len(all_times), out_dir)
    return load_mosei(out_dir / "labels.csv", out_dir / "segments.csv", video_dir, name="synthetic")


def _generate_video(path: Path, video_id: str, index: int, config: SyntheticConfig) -> GroundTruth:
    rng = np.random.default_rng([config.seed, index])
    episodes = plan_episodes(rng, config)
    times = np.arange(config.n_frames, dtype=np.float64) / config.fps
    intensity = expression_tracks(episodes, times)
    labels = frame_labels(intensity, config.fps, config.min_duration_s, config.onset_level)
    params = face_parameters(intensity)
    identity = Identity.random(rng)
    poses = head_poses(rng, config)
    lighting = 1.0 + 0.08 * np.sin(2 * np.pi * times / rng.uniform(4.0, 9.0) + rng.uniform(0, 2 * np.pi))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*config.video_format.fourcc), config.fps,
                             config.size)
    if not writer.isOpened():
        raise ConfigError(f"OpenCV cannot write {config.video_format.fourcc} video to {path}: try another video_format")
    try:
        for i in range(config.n_frames):
            frame = render_face(params[i], poses[i], identity, config.size)
            writer.write(add_noise(frame, rng, config.pixel_noise, float(lighting[i])))
    finally:
        writer.release()
    return GroundTruth(video_id, config.fps, times, intensity, labels, params, tuple(episodes))


def _write_ground_truth(path: Path, truth: GroundTruth, config: SyntheticConfig) -> None:
    document = {
        "video_id": truth.video_id,
        "fps": truth.fps,
        "n_frames": len(truth.times),
        "size": list(config.size),
        "emotions": list(EMOTIONS),
        "parameters": list(PARAMETERS),
        "min_duration_s": config.min_duration_s,
        "onset_level": config.onset_level,
        "episodes": [dataclasses.asdict(episode) for episode in truth.episodes],
        "frames": {
            "t": [round(float(t), 4) for t in truth.times],
            "intensity": np.round(truth.intensity, 4).tolist(),
            "labels": truth.labels.astype(int).tolist(),
            "params": np.round(truth.params, 4).tolist(),
        },
    }
    path.write_text(json.dumps(document) + "\n", encoding="utf-8")


def read_ground_truth(path: Path) -> GroundTruth:
    """Read a ``ground_truth/<video_id>.json`` written by ``generate_synthetic``."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    frames = document["frames"]
    return GroundTruth(
        video_id=document["video_id"],
        fps=float(document["fps"]),
        times=np.asarray(frames["t"], np.float64),
        intensity=np.asarray(frames["intensity"], np.float32),
        labels=np.asarray(frames["labels"], np.uint8),
        params=np.asarray(frames["params"], np.float32),
        episodes=tuple(Episode(tuple(e["emotions"]), e["start_s"], e["end_s"], e["peak"], e["flicker"])
                       for e in document["episodes"]),
    )
