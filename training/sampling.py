"""Frame sampling for training: the frames of each segment, picked by media time.

Videos are read through the runtime's sources (``affectstream.stream.sources``), so odd media (missing,
empty, not a video, no video track, truncated, corrupt) gives the same typed outcomes here as in
``affectstream run``; image sequences (CK+, MUG) are read with OpenCV at their nominal frame rate.
Frames are picked with the runtime's ``MediaTimeSampler`` on a grid anchored at each segment's first
frame, so the first frame of a segment is always taken and a segment with any frame gives T >= 1.

What could not be used is not an exception: it is a ``SkipRecord`` (whole segment, or frames of it)
with a ``SkipReason`` so that ``extract`` can report counts by reason.

Segments of one video are sampled in one pass over the video (``sample_video_segments``): MOSEI has
many short segments per video, and decoding it once per segment would multiply the work.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from affectstream.errors import ConfigError, SourceError, SourceOutcome
from affectstream.stream.sampler import DEFAULT_FILE_RATE_HZ, SEED_RATE_HZ, MediaTimeSampler
from affectstream.stream.sources import SourceConfig, SourceKind, classify_uri, open_source
from affectstream.training.datasets import Segment

log = logging.getLogger(__name__)

RATE_PRESETS: dict[str, float] = {"seed": SEED_RATE_HZ, "default": DEFAULT_FILE_RATE_HZ, "all": 0.0}
_EPSILON_S = 1e-6  # timestamps come from integer time bases; compare segment bounds with slack


class SkipReason(str, enum.Enum):
    """Why a segment (or some of its frames) was not used. Source outcomes keep their names."""

    MISSING = SourceOutcome.MISSING.value
    EMPTY = SourceOutcome.EMPTY.value
    NOT_VIDEO = SourceOutcome.NOT_VIDEO.value
    NO_VIDEO_TRACK = SourceOutcome.NO_VIDEO_TRACK.value
    TRUNCATED = SourceOutcome.TRUNCATED.value  # the frames before the cut were used
    CORRUPT = SourceOutcome.CORRUPT.value  # what decoded was used
    UNREADABLE_IMAGE = "unreadable_image"  # a frame of an image sequence that OpenCV cannot decode
    NO_FRAMES_IN_SEGMENT = "no_frames_in_segment"  # the video has no frame between start and end
    NOT_A_FILE = "not_a_file"  # a dataset pointing at a webcam or URL: training reads files only

    @classmethod
    def from_outcome(cls, outcome: SourceOutcome) -> SkipReason:
        try:
            return cls(outcome.value)
        except ValueError:
            return cls.CORRUPT


@dataclass(frozen=True, slots=True)
class SkipRecord:
    """One thing left out: ``whole_segment`` False means the segment kept the frames that could be read."""

    key: str
    reason: SkipReason
    detail: str = ""
    whole_segment: bool = True

    def as_dict(self) -> dict[str, object]:
        return {"key": self.key, "reason": self.reason.value, "detail": self.detail,
                "whole_segment": self.whole_segment}


@dataclass(frozen=True)
class SamplingConfig:
    """How frames of a segment are picked. ``rate_hz`` 0 takes every frame."""

    rate_hz: float = DEFAULT_FILE_RATE_HZ
    max_frames_per_segment: int | None = None  # evenly thinned down to this many where a segment has more

    def __post_init__(self) -> None:
        MediaTimeSampler(self.rate_hz)  # validates the rate with the runtime's own rule
        if self.max_frames_per_segment is not None and self.max_frames_per_segment < 1:
            raise ConfigError(f"max_frames_per_segment must be >= 1 (or None), got {self.max_frames_per_segment}")

    @classmethod
    def preset(cls, name: str, max_frames_per_segment: int | None = None) -> SamplingConfig:
        """``seed`` is the seed study's 1 frame every 4 s; ``default`` 2 Hz; ``all`` every frame."""
        if name not in RATE_PRESETS:
            raise ConfigError(f"unknown sampling preset {name!r}: use one of {', '.join(RATE_PRESETS)}")
        return cls(RATE_PRESETS[name], max_frames_per_segment)


@dataclass(frozen=True)
class SampledSegment:
    """The frames picked from one segment: RGB ``HxWx3`` uint8 images and their media times."""

    segment: Segment
    frames: tuple[np.ndarray, ...] = field(repr=False)
    times: np.ndarray  # (T,) float64 seconds

    @property
    def key(self) -> str:
        return self.segment.segment_id


@dataclass(frozen=True)
class SamplingResult:
    sampled: tuple[SampledSegment, ...]
    skipped: tuple[SkipRecord, ...]


def thin(count: int, limit: int | None) -> np.ndarray:
    """Indices of ``limit`` items spread evenly over ``count`` (first and last kept); all when under."""
    if limit is None or count <= limit:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, limit)).astype(np.int64))


def _finish(segment: Segment, frames: list[np.ndarray], times: list[float], config: SamplingConfig
            ) -> SampledSegment:
    keep = thin(len(frames), config.max_frames_per_segment)
    return SampledSegment(segment, tuple(frames[i] for i in keep), np.asarray([times[i] for i in keep], np.float64))


# ------------------------------------------------------------------------------------------ videos


def sample_video_segments(
    video: Path, segments: Sequence[Segment], config: SamplingConfig, source_config: SourceConfig | None = None,
) -> SamplingResult:
    """Sample every segment of one video in one pass; a segment without start/end spans the whole video."""
    uri = str(video)
    if classify_uri(uri) is not SourceKind.FILE:
        return SamplingResult((), tuple(SkipRecord(s.segment_id, SkipReason.NOT_A_FILE, uri) for s in segments))
    source = open_source(uri, f"extract:{video.name}", source_config or SourceConfig())
    windows = [_window(segment) for segment in segments]
    samplers = [MediaTimeSampler(config.rate_hz) for _ in segments]
    frames: list[list[np.ndarray]] = [[] for _ in segments]
    times: list[list[float]] = [[] for _ in segments]
    skipped: list[SkipRecord] = []
    stop_after = max(end for _, end in windows)
    try:
        source.open()
        while (frame := source.read()) is not None:
            for i, (start, end) in enumerate(windows):
                if start - _EPSILON_S <= frame.pts < end - _EPSILON_S and samplers[i].offer(frame.pts):
                    frames[i].append(frame.image)
                    times[i].append(frame.pts)
            if frame.pts >= stop_after:
                break  # no segment reaches further: the rest of the video is not decoded
        outcome = source.damage.outcome
    except SourceError as error:
        outcome = error.outcome
        if not any(frames):
            reason = SkipReason.from_outcome(error.outcome)
            return SamplingResult((), tuple(SkipRecord(s.segment_id, reason, str(error)) for s in segments))
        log.warning("%s: %s; using the %d frames read before it", video, error, sum(map(len, frames)))
    finally:
        source.close()
    sampled = []
    for i, segment in enumerate(segments):
        if not frames[i]:
            detail = f"{video.name} has no frame in [{windows[i][0]:.3f}, {windows[i][1]:.3f}) s"
            if outcome in (SourceOutcome.TRUNCATED, SourceOutcome.CORRUPT):
                skipped.append(SkipRecord(segment.segment_id, SkipReason.from_outcome(outcome), detail))
            else:
                skipped.append(SkipRecord(segment.segment_id, SkipReason.NO_FRAMES_IN_SEGMENT, detail))
            continue
        if outcome in (SourceOutcome.TRUNCATED, SourceOutcome.CORRUPT):
            skipped.append(SkipRecord(segment.segment_id, SkipReason.from_outcome(outcome),
                                      f"{video.name} is damaged; its readable frames were used", whole_segment=False))
        sampled.append(_finish(segment, frames[i], times[i], config))
    return SamplingResult(tuple(sampled), tuple(skipped))


def _window(segment: Segment) -> tuple[float, float]:
    start = segment.start_s if segment.start_s is not None else 0.0
    end = segment.end_s if segment.end_s is not None else float("inf")
    return start, end


# ---------------------------------------------------------------------------------- image sequences


def sample_image_sequence(segment: Segment, config: SamplingConfig) -> SamplingResult:
    """CK+/MUG: frame i is at ``i / frame_rate`` s; unreadable images are left out and recorded."""
    paths = segment.frame_paths or ()
    fps = segment.frame_rate or 30.0
    sampler = MediaTimeSampler(config.rate_hz)
    frames: list[np.ndarray] = []
    times: list[float] = []
    skipped: list[SkipRecord] = []
    for index, path in enumerate(paths):
        pts = index / fps
        if not sampler.offer(pts):
            continue
        image, problem = read_image(path)
        if image is None:
            skipped.append(SkipRecord(segment.segment_id, problem or SkipReason.UNREADABLE_IMAGE, str(path),
                                      whole_segment=False))
            sampler.reset()  # the next readable frame takes this grid point instead
            continue
        frames.append(image)
        times.append(pts)
    if not frames:
        return SamplingResult((), (*skipped, SkipRecord(segment.segment_id, SkipReason.UNREADABLE_IMAGE,
                                                        f"none of {len(paths)} images could be read")))
    return SamplingResult((_finish(segment, frames, times, config),), tuple(skipped))


def read_image(path: Path) -> tuple[np.ndarray | None, SkipReason | None]:
    """An RGB uint8 image, or None and why not."""
    if not path.is_file():
        return None, SkipReason.MISSING
    if path.stat().st_size == 0:
        return None, SkipReason.EMPTY
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        return None, SkipReason.UNREADABLE_IMAGE
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), None


# ------------------------------------------------------------------------------------------ dispatch


def sample_segments(
    segments: Sequence[Segment], config: SamplingConfig, source_config: SourceConfig | None = None,
) -> SamplingResult:
    """Sample a list of segments in their order, grouping consecutive segments of the same video."""
    sampled: list[SampledSegment] = []
    skipped: list[SkipRecord] = []
    index = 0
    while index < len(segments):
        segment = segments[index]
        if segment.video_path is None:
            result = sample_image_sequence(segment, config)
            index += 1
        else:
            group_end = index + 1
            while group_end < len(segments) and segments[group_end].video_path == segment.video_path:
                group_end += 1
            result = sample_video_segments(segment.video_path, segments[index:group_end], config, source_config)
            index = group_end
        sampled.extend(result.sampled)
        skipped.extend(result.skipped)
    # Results in the order asked for, whatever the grouping did.
    order = {segment.segment_id: i for i, segment in enumerate(segments)}
    sampled.sort(key=lambda item: order[item.key])
    return SamplingResult(tuple(sampled), tuple(skipped))
