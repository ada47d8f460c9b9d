"""Feature extraction: sampled frames of every segment, encoded in batches, written as resumable shards.

The work is cut into a deterministic plan of shards (consecutive segments in (video, start) order, so
a video's segments stay together and its file is decoded once per shard). Each shard is computed by
one pure-ish function, ``compute_shard`` (sample, encode, attach labels), and written atomically
(temporary name, then rename): a shard file either is complete or does not exist. A rerun with the
same settings reuses every complete shard and computes only the rest, so an extraction killed half
way loses at most the shards in flight. The local loop here and the Ray Data path
(``training/ray_extract.py``) call the same ``run_shard``, so both give the same files.

Output directory (see ``training/featureset.py`` for the shard format)::

    plan.json         settings fingerprint and the segment keys of each shard (checked on resume)
    shards/*.safetensors
    index.csv         one row per frame: video_id, key, shard, row, time
    skipped.csv       what was left out and why (dataset problems and sampling skips)
    featureset.json   the manifest, written last: its presence means the extraction finished
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from affectstream.engine.interfaces import ImageEncoder
from affectstream.errors import ConfigError
from affectstream.training.datasets import Dataset, Segment
from affectstream.training.extract_summary import ExtractSummary, ShardStats, summarise, write_skipped
from affectstream.training.featureset import (
    FORMAT_VERSION,
    MANIFEST,
    SHARD_DIR,
    SequenceFeatures,
    read_shard_metadata,
    shard_is_complete,
    shard_name,
    write_index,
    write_manifest,
    write_shard,
)
from affectstream.training.sampling import (
    SampledSegment,
    SamplingConfig,
    SkipRecord,
    sample_segments,
)
from affectstream.training.synthetic import GroundTruth, read_ground_truth

log = logging.getLogger(__name__)

PLAN = "plan.json"


@dataclass(frozen=True)
class ExtractConfig:
    """What to extract with. ``batch_size`` does not enter the fingerprint (results match to float error)."""

    model: str = "clip-vit-b32"
    device: str = "auto"
    sampling: SamplingConfig = SamplingConfig()
    backend: str = "torch"  # torch | compile | onnx | tensorrt | auto (engine/backends.py)
    precision: str = "auto"
    batch_size: int = 32
    shard_size: int = 64  # segments per shard
    faces: bool = False  # encode each frame's primary face crop (engine/face_crops.py), not the whole frame

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.shard_size < 1:
            raise ConfigError(f"batch size and shard size must be >= 1, got {self.batch_size}, {self.shard_size}")


@dataclass(frozen=True)
class ShardJob:
    """One shard of the plan: its file name and its segments."""

    index: int
    name: str
    segments: tuple[Segment, ...]


class FrameLabeler(Protocol):
    """Per-frame truth for a segment's sampled times, where the dataset has one."""

    def __call__(self, segment: Segment, times: np.ndarray) -> np.ndarray | None: ...


def no_frame_labels(segment: Segment, times: np.ndarray) -> np.ndarray | None:
    return None


@dataclass(frozen=True)
class SyntheticFrameLabels:
    """Labels of the nearest ground-truth frame, from ``<root>/ground_truth/<video_id>.json``."""

    root: Path

    def __call__(self, segment: Segment, times: np.ndarray) -> np.ndarray | None:
        path = self.root / "ground_truth" / f"{segment.video_id}.json"
        if not path.is_file():
            return None
        truth = _ground_truth(str(path))
        nearest = np.abs(truth.times[None, :] - np.asarray(times)[:, None]).argmin(axis=1)
        return truth.labels[nearest].astype(np.float32)


@functools.lru_cache(maxsize=4)
def _ground_truth(path: str) -> GroundTruth:
    """Cached: a video's segments come one after another, and each would parse the same JSON again."""
    return read_ground_truth(Path(path))


# -------------------------------------------------------------------------------------------- plan


def plan_shards(segments: Iterable[Segment], shard_size: int) -> tuple[ShardJob, ...]:
    """Deterministic shards: segments in (video, start, key) order, ``shard_size`` at a time."""
    ordered = sorted(segments, key=lambda s: (s.video_id, s.start_s or 0.0, s.segment_id))
    return tuple(ShardJob(i // shard_size, shard_name(i // shard_size), tuple(ordered[i:i + shard_size]))
                 for i in range(0, len(ordered), shard_size))


def fingerprint(dataset: Dataset, backbone: dict[str, Any], config: ExtractConfig,
                jobs: Sequence[ShardJob]) -> dict[str, Any]:
    """What must match for a shard of an earlier run to be reused."""
    keys = [[segment.segment_id for segment in job.segments] for job in jobs]
    return {
        "format": FORMAT_VERSION, "dataset": dataset.name, "backbone": backbone,
        "rate_hz": config.sampling.rate_hz, "max_frames_per_segment": config.sampling.max_frames_per_segment,
        "shard_size": config.shard_size,
        "segments_sha256": hashlib.sha256(json.dumps(keys).encode()).hexdigest(),
    }


def prepare_output(out: Path, plan_document: dict[str, Any], overwrite: bool) -> None:
    """Check an existing output directory was made with the same settings (or clear it), write plan.json."""
    plan_path = out / PLAN
    if plan_path.is_file() and not overwrite:
        previous = json.loads(plan_path.read_text(encoding="utf-8")).get("fingerprint")
        if previous != plan_document["fingerprint"]:
            changed = sorted(k for k in plan_document["fingerprint"] if (previous or {}).get(k)
                             != plan_document["fingerprint"][k])
            raise ConfigError(f"{out} holds an extraction made with other settings ({', '.join(changed)} differ): "
                              "pass another --out, or --overwrite to replace it")
    if overwrite and (out / SHARD_DIR).is_dir():
        for old in (out / SHARD_DIR).iterdir():
            old.unlink()
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    for leftover in (out / SHARD_DIR).glob(".*.tmp"):  # from a run killed while writing
        leftover.unlink()
    plan_path.write_text(json.dumps(plan_document, indent=1) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------- shards


def encode_batched(encoder: ImageEncoder, frames: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    chunks = [encoder.encode(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, encoder.embed_dim), np.float32)


def _video_groups(segments: Sequence[Segment]) -> Iterator[Sequence[Segment]]:
    """Runs of consecutive segments of one video (an image sequence is a run of its own)."""
    start = 0
    for i in range(1, len(segments) + 1):
        if i == len(segments) or segments[i].video_path is None or segments[i].video_path != segments[start].video_path:
            yield segments[start:i]
            start = i


def compute_shard(job: ShardJob, encoder: ImageEncoder, config: ExtractConfig,
                  labeler: FrameLabeler = no_frame_labels) -> tuple[list[SequenceFeatures], list[SkipRecord]]:
    """Sample and encode the segments of one shard. Frames are held one video at a time."""
    sequences: list[SequenceFeatures] = []
    skipped: list[SkipRecord] = []
    for group in _video_groups(job.segments):
        result = sample_segments(group, config.sampling)
        skipped.extend(result.skipped)
        frames = [frame for item in result.sampled for frame in item.frames]
        features = encode_batched(encoder, frames, config.batch_size)
        offset = 0
        for item in result.sampled:
            count = len(item.frames)
            sequences.append(_sequence(item, features[offset:offset + count], labeler))
            offset += count
    return sequences, skipped


def _sequence(item: SampledSegment, features: np.ndarray, labeler: FrameLabeler) -> SequenceFeatures:
    segment = item.segment
    return SequenceFeatures(
        key=segment.segment_id, video_id=segment.video_id, times=item.times, features=features,
        labels=np.asarray(segment.labels, np.float32), label_scores=np.asarray(segment.label_scores, np.float32),
        sentiment=segment.sentiment, class_name=segment.class_name, frame_labels=labeler(segment, item.times),
    )


def run_shard(job: ShardJob, out: Path, encoder: ImageEncoder, config: ExtractConfig,
              labeler: FrameLabeler = no_frame_labels) -> ShardStats:
    """Compute one shard and write it atomically; the unit of work of both the local and the Ray path."""
    sequences, skipped = compute_shard(job, encoder, config, labeler)
    stats = ShardStats(job.name, len(sequences), sum(s.n_frames for s in sequences), tuple(skipped), reused=False)
    write_shard(out / SHARD_DIR / job.name, sequences, extra=stats.header())
    log.debug("shard %s: %d sequences, %d frames", job.name, stats.sequences, stats.frames)
    return stats


def reused_stats(out: Path, jobs: Sequence[ShardJob]) -> tuple[list[ShardStats], list[ShardJob]]:
    """Stats of the shards already complete on disk, and the jobs still to do."""
    done, pending = [], []
    for job in jobs:
        path = out / SHARD_DIR / job.name
        if shard_is_complete(path):
            done.append(ShardStats.from_header(job.name, read_shard_metadata(path)))
        else:
            pending.append(job)
    return done, pending


# -------------------------------------------------------------------------------------------- driver


ShardRunner = Callable[[Sequence[ShardJob]], Iterator[ShardStats]]


def extract_features(
    dataset: Dataset,
    out: Path,
    config: ExtractConfig,
    backbone: dict[str, Any],
    run_pending: ShardRunner,
    overwrite: bool = False,
    progress: bool | None = None,
    ray: str | None = None,
) -> ExtractSummary:
    """Plan, reuse finished shards, run the rest with ``run_pending``, then write index and manifest.

    ``run_pending`` yields one ``ShardStats`` per finished shard (in any order): the local loop
    (``local_runner``) or Ray Data (``ray_extract.ray_runner``).
    """
    from tqdm import tqdm

    started = time.monotonic()
    out = Path(out)
    jobs = plan_shards(dataset.segments, config.shard_size)
    plan = {"fingerprint": fingerprint(dataset, backbone, config, jobs),
            "shards": {job.name: [s.segment_id for s in job.segments] for job in jobs}}
    prepare_output(out, plan, overwrite)
    done, pending = reused_stats(out, jobs)
    if pending:
        (out / MANIFEST).unlink(missing_ok=True)  # readers must not take a half-redone set for a finished one
    if done:
        log.info("%s: reusing %d finished shards, %d to do", out, len(done), len(pending))
    stats = list(done)
    # Counted in segments, not shards: a shard can hold many, and the bar should move as work lands.
    sizes = {job.name: len(job.segments) for job in jobs}
    with tqdm(total=len(dataset.segments), initial=sum(sizes[s.name] for s in done), unit="segment",
              desc=f"extract {dataset.name}", disable=None if progress is None else not progress) as bar:
        for result in run_pending(pending):
            stats.append(result)
            bar.update(sizes[result.name])
            bar.set_postfix(shards=f"{len(stats)}/{len(jobs)}", frames=sum(s.frames for s in stats), refresh=False)
    names = [job.name for job in jobs]
    write_index(out, names)
    write_skipped(out, dataset, stats)
    summary = summarise(dataset, out, stats, time.monotonic() - started, ray)
    embed_dim = int(backbone.get("embed_dim", 0))
    write_manifest(out, dataset.name, config.sampling.rate_hz, backbone, embed_dim, names,
                   extra={"max_frames_per_segment": config.sampling.max_frames_per_segment,
                          "encoder": {"backend": config.backend, "precision": config.precision},
                          "summary": summary.as_dict()})
    return summary


def local_runner(out: Path, make_encoder: Callable[[], ImageEncoder], config: ExtractConfig,
                 labeler: FrameLabeler = no_frame_labels) -> ShardRunner:
    """Run shards one after the other in this process; the encoder is built only if a shard is left to do."""

    def run(jobs: Sequence[ShardJob]) -> Iterator[ShardStats]:
        if not jobs:
            return
        encoder = make_encoder()
        for job in jobs:
            yield run_shard(job, out, encoder, config, labeler)

    return run


@dataclass(frozen=True)
class EncoderRecipe:
    """How to build the encoder (any engine backend): picklable, so that Ray workers build their own."""

    model: str = "clip-vit-b32"
    device: str = "auto"
    backend: str = "torch"  # torch | compile | onnx | tensorrt | auto (engine/backends.py)
    precision: str = "auto"
    faces: bool = False  # CLIP on the primary face crop (MTCNN from the model cache)

    def spec_manifest(self) -> dict[str, Any]:
        from affectstream.engine.models import ModelSpec

        return ModelSpec.from_preset(self.model).to_manifest()

    def build(self) -> ImageEncoder:
        from affectstream.engine.backends import build_encoder, choose_backend, gather_facts
        from affectstream.engine.encoder import resolve_device
        from affectstream.engine.models import ModelSpec

        device = resolve_device(self.device)
        choice = choose_backend(self.backend, self.precision, gather_facts(device, None, None, self.precision))
        encoder = build_encoder(choice, ModelSpec.from_preset(self.model), device)
        if not self.faces:
            return encoder
        from affectstream.engine.face_crops import FaceCropEncoder
        from affectstream.engine.face_engine import CropPolicy, load_detector

        policy = CropPolicy()
        return FaceCropEncoder(encoder, load_detector(self.face_detector(), device, policy), policy)

    def face_detector(self) -> str:
        """The detector extraction crops with; the bundle records it and the runtime crops the same."""
        from affectstream.engine.encoder import resolve_device
        from affectstream.engine.face_engine import resolve_detector

        return resolve_detector("auto", resolve_device(self.device))


def run_extraction(
    dataset: Dataset,
    out: Path,
    config: ExtractConfig,
    labeler: FrameLabeler = no_frame_labels,
    ray_address: str | None = None,
    encoder: ImageEncoder | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    ray_workers: int = 1,
) -> ExtractSummary:
    """Extract locally (``encoder`` or one built from ``config``) or on Ray (``ray_address``: an address or "local")."""
    recipe = EncoderRecipe(config.model, config.device, config.backend, config.precision, config.faces)
    backbone = recipe.spec_manifest()
    if config.faces:
        # Travels with the features into the trained bundle, whose runtime then encodes faces too,
        # cut by the same detector.
        backbone["input"] = "face"
        backbone["face_detector"] = recipe.face_detector()
    if ray_address is not None:
        from affectstream.training.ray_extract import ray_runner

        runner = ray_runner(Path(out), recipe, config, labeler, ray_address, ray_workers)
    else:
        given = encoder
        runner = local_runner(Path(out), (lambda: given) if given is not None else recipe.build, config, labeler)
    return extract_features(dataset, Path(out), config, backbone, runner, overwrite, progress, ray_address)
