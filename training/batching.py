"""From feature sequences to padded tensors: the split by video, per-step targets and masks.

Sequences keep their full length: a batch is padded to its longest member and a mask marks the valid
steps (the seed padded every segment to 50 frames and dropped longer ones; masking needs neither).
"""

from __future__ import annotations

import enum
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError
from affectstream.training.featureset import SequenceFeatures


class Target(str, enum.Enum):
    """What every step of a sequence is trained towards."""

    SEGMENT = "segment"  # the segment's labels at every step (all a dataset like MOSEI has)
    FRAMES = "frames"  # per-frame truth where the set has it (synthetic), else the segment's labels
    PREFIX = "prefix"  # per-frame truth accumulated: "shown so far in this segment"; its last step = segment


class Pool(str, enum.Enum):
    """How per-step outputs become one score per segment for the segment metrics."""

    AUTO = "auto"  # max for FRAMES targets, mean for bidirectional models, else last
    LAST = "last"
    MEAN = "mean"
    MAX = "max"


@dataclass(frozen=True)
class Split:
    train: tuple[SequenceFeatures, ...]
    val: tuple[SequenceFeatures, ...]
    test: tuple[SequenceFeatures, ...]

    def video_ids(self) -> dict[str, list[str]]:
        return {name: sorted({s.video_id for s in side})
                for name, side in (("train", self.train), ("val", self.val), ("test", self.test))}


def split_by_video(
    sequences: Sequence[SequenceFeatures], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0,
) -> Split:
    """Deal whole videos to (train, val, test) so that no video appears on two sides.

    Videos are shuffled with ``seed``; a video goes to the side its middle sequence falls in, so the
    sides hold about their fraction of the sequences (as ``datasets.split_by_video`` does for segments).
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    groups: dict[str, list[SequenceFeatures]] = defaultdict(list)
    for sequence in sequences:
        groups[sequence.video_id].append(sequence)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    bounds = (fractions[0] * len(sequences), (fractions[0] + fractions[1]) * len(sequences))
    sides: tuple[list[SequenceFeatures], list[SequenceFeatures], list[SequenceFeatures]] = ([], [], [])
    placed = 0
    for key in keys:
        middle = placed + len(groups[key]) / 2
        sides[0 if middle < bounds[0] else 1 if middle < bounds[1] else 2].extend(groups[key])
        placed += len(groups[key])
    return Split(tuple(sides[0]), tuple(sides[1]), tuple(sides[2]))


def select_videos(sequences: Sequence[SequenceFeatures], video_ids: Sequence[str]) -> tuple[SequenceFeatures, ...]:
    wanted = set(video_ids)
    return tuple(s for s in sequences if s.video_id in wanted)


def step_targets(sequence: SequenceFeatures, target: Target) -> np.ndarray:
    """``(T, 6)`` float32 targets of every step of ``sequence``."""
    n = sequence.n_frames
    if target is Target.SEGMENT or sequence.frame_labels is None:
        return np.broadcast_to(sequence.labels.astype(np.float32), (n, len(EMOTIONS))).copy()
    frames = np.asarray(sequence.frame_labels, np.float32)
    if target is Target.FRAMES:
        return frames.copy()
    return np.maximum.accumulate(frames, axis=0)


class Context(str, enum.Enum):
    """What one training sequence is."""

    SEGMENT = "segment"  # each segment alone, the state starting from zero (the seed's set-up)
    VIDEO = "video"  # a video's segments in time order as one sequence: the state carries on, as on a stream


@dataclass(frozen=True)
class Track:
    """One sequence the LSTM runs over: one segment, or all segments of a video back to back."""

    segments: tuple[SequenceFeatures, ...]
    features: np.ndarray  # (T, D)
    targets: np.ndarray  # (T, 6)
    owner: np.ndarray  # (T,) index into ``segments`` of the segment each step belongs to

    @property
    def n_steps(self) -> int:
        return len(self.owner)


def make_tracks(sequences: Sequence[SequenceFeatures], target: Target, context: Context) -> list[Track]:
    if context is Context.SEGMENT:
        groups = [[s] for s in sequences]
    else:
        by_video: dict[str, list[SequenceFeatures]] = defaultdict(list)
        for sequence in sequences:
            by_video[sequence.video_id].append(sequence)
        groups = [sorted(members, key=lambda s: float(s.times[0])) for members in by_video.values()]
    return [Track(
        tuple(group), np.concatenate([s.features for s in group]).astype(np.float32),
        np.concatenate([step_targets(s, target) for s in group]),
        np.concatenate([np.full(s.n_frames, i) for i, s in enumerate(group)]),
    ) for group in groups]


@dataclass(frozen=True)
class Batch:
    features: torch.Tensor  # (B, T, D), zeros past each track's end
    mask: torch.Tensor  # (B, T) bool, True on valid steps (a prefix of each row)
    targets: torch.Tensor  # (B, T, 6)
    owner: torch.Tensor  # (B, T) long: index into ``segments`` of each step, -1 on padding
    segments: tuple[SequenceFeatures, ...]  # every segment of the batch, in track order
    sentiment: torch.Tensor  # (B, T) the step's segment sentiment in [-1, 1]; 0 where unknown
    has_sentiment: torch.Tensor  # (B, T) bool

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(np.stack([s.labels for s in self.segments]).astype(np.float32))


def make_batch(tracks: Sequence[Track]) -> Batch:
    """Pad ``tracks`` to the longest one and mark the valid steps."""
    if not tracks:
        raise ConfigError("cannot batch zero sequences")
    longest = max(t.n_steps for t in tracks)
    dim = tracks[0].features.shape[1]
    features = np.zeros((len(tracks), longest, dim), np.float32)
    targets = np.zeros((len(tracks), longest, len(EMOTIONS)), np.float32)
    owner = np.full((len(tracks), longest), -1, np.int64)
    sentiment = np.zeros((len(tracks), longest), np.float32)
    has_sentiment = np.zeros((len(tracks), longest), bool)
    segments: list[SequenceFeatures] = []
    for row, track in enumerate(tracks):
        n = track.n_steps
        features[row, :n], targets[row, :n] = track.features, track.targets
        owner[row, :n] = track.owner + len(segments)
        values = np.array([np.nan if s.sentiment is None else s.sentiment for s in track.segments], np.float32)
        sentiment[row, :n] = np.nan_to_num(values[track.owner])
        has_sentiment[row, :n] = ~np.isnan(values[track.owner])
        segments.extend(track.segments)
    owner_tensor = torch.from_numpy(owner)
    return Batch(torch.from_numpy(features), owner_tensor >= 0, torch.from_numpy(targets), owner_tensor,
                 tuple(segments), torch.from_numpy(sentiment), torch.from_numpy(has_sentiment))


def batches(tracks: Sequence[Track], batch_size: int, rng: random.Random | None = None) -> list[Batch]:
    """Batches of ``batch_size`` tracks, shuffled by ``rng`` (in order without one)."""
    order = list(range(len(tracks)))
    if rng is not None:
        rng.shuffle(order)
    return [make_batch([tracks[i] for i in order[start:start + batch_size]])
            for start in range(0, len(order), batch_size)]


def segment_scores(step_scores: torch.Tensor, batch: Batch, pool: Pool) -> torch.Tensor:
    """``(B, T, L)`` per-step scores → ``(S, L)``: one row per segment of the batch, pooled over its steps."""
    rows = []
    for index in range(len(batch.segments)):
        steps = batch.owner == index
        row = int(steps.any(dim=1).nonzero()[0, 0])
        rows.append(pool_steps(step_scores[row:row + 1], steps[row:row + 1], pool)[0])
    return torch.stack(rows)


def pool_steps(step_scores: torch.Tensor, mask: torch.Tensor, pool: Pool) -> torch.Tensor:
    """``(B, T, L)`` per-step scores → ``(B, L)``, pooled over the steps where ``mask`` (B, T) holds.

    ``mask`` must be one contiguous run of steps per row (a segment inside a track)."""
    if pool is Pool.AUTO:
        raise ConfigError("resolve Pool.AUTO before pooling (resolve_pool)")
    valid = mask.unsqueeze(-1).to(step_scores.dtype)
    if pool is Pool.LAST:
        positions = torch.arange(mask.shape[1]).expand_as(mask)
        last = torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=1).values.clamp(min=0)
        return step_scores[torch.arange(step_scores.shape[0]), last]
    if pool is Pool.MEAN:
        return (step_scores * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    return step_scores.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1).values


def resolve_pool(pool: Pool, target: Target, bidirectional: bool) -> Pool:
    if pool is not Pool.AUTO:
        return pool
    if target is Target.FRAMES:
        return Pool.MAX
    return Pool.MEAN if bidirectional else Pool.LAST
