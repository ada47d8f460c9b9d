"""The ``affectstream extract`` and ``affectstream synth`` commands, and opening a dataset directory by format.

Dataset directories (``DATASET_DIR``) by ``--format``:

- ``mosei``: label CSV(s) (``--labels``, default ``labels.csv`` or every ``*.csv`` holding
  ``Input.VIDEO_ID``), segment times (``--segments``, default ``segments.csv``, else
  ``Transcript/Segmented/Combined``; none: whole videos), videos (``--videos``, default ``videos/``,
  else the directory itself).
- ``synthetic``: what ``affectstream synth`` writes (MOSEI layout plus ``ground_truth/``, whose
  per-frame labels are stored with the features).
- ``ckplus``: the folder holding ``cohn-kanade-images`` and ``Emotion``; ``mug``: the MUG root.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError, ExitStatus

if TYPE_CHECKING:  # the CLI builds its parser on every start: the heavy modules load when a verb runs
    from affectstream.training.datasets import Dataset
    from affectstream.training.extract import ExtractSummary, FrameLabeler
    from affectstream.training.sampling import SamplingConfig

log = logging.getLogger("affectstream")

FORMATS = ("mosei", "synthetic", "ckplus", "mug")
# `affectstream` exit statuses (affectstream/cli.py): partial when something was skipped, nothing when all was.


@dataclass(frozen=True)
class DatasetLocation:
    """Where a dataset's parts are; ``None`` parts are found by the conventions of the module doc."""

    root: Path
    format: str
    labels: tuple[Path, ...] = ()
    segments: Path | None = None
    videos: Path | None = None
    threshold: float = 0.0

    def open(self) -> tuple[Dataset, FrameLabeler]:
        from affectstream.training.extract import SyntheticFrameLabels, no_frame_labels
        from affectstream.training.image_sets import load_ckplus, load_mug
        from affectstream.training.mosei import load_mosei

        if self.format not in FORMATS:
            raise ConfigError(f"unknown dataset format {self.format!r}: use one of {', '.join(FORMATS)}")
        if not self.root.is_dir():
            raise ConfigError(f"{self.root} is not a directory: pass the dataset's root directory")
        if self.format == "ckplus":
            return load_ckplus(self.root), no_frame_labels
        if self.format == "mug":
            return load_mug(self.root), no_frame_labels
        name = "synthetic" if self.format == "synthetic" else "cmu-mosei"
        dataset = load_mosei(self._labels(), self._segments(), self._videos(), threshold=self.threshold, name=name)
        labeler: FrameLabeler = SyntheticFrameLabels(self.root) if self.format == "synthetic" else no_frame_labels
        return dataset, labeler

    def _labels(self) -> list[Path]:
        if self.labels:
            return list(self.labels)
        if (self.root / "labels.csv").is_file():
            return [self.root / "labels.csv"]
        found = [p for p in sorted(self.root.glob("*.csv")) if "Input.VIDEO_ID" in _first_line(p)]
        if not found:
            raise ConfigError(f"{self.root} has no MOSEI label file (labels.csv, or a Mechanical Turk batch CSV "
                              "with an Input.VIDEO_ID column): pass --labels FILE")
        return found

    def _segments(self) -> Path | None:
        if self.segments is not None:
            return self.segments
        for candidate in (self.root / "segments.csv", self.root / "Transcript" / "Segmented" / "Combined"):
            if candidate.exists():
                return candidate
        log.warning("%s: no segment times (segments.csv): each labelled clip is taken as a whole video", self.root)
        return None

    def _videos(self) -> Path:
        if self.videos is not None:
            return self.videos
        return self.root / "videos" if (self.root / "videos").is_dir() else self.root


def _first_line(path: Path) -> str:
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        return handle.readline()


# ---------------------------------------------------------------------------------------- extract


def add_extract_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = commands.add_parser("extract", help="sample frames of a dataset and store their image features "
                                 "(resumable; locally or on Ray)")
    parser.add_argument("dataset_dir", metavar="DATASET_DIR")
    parser.add_argument("--format", required=True, choices=FORMATS, help="dataset layout (see docs/training.md)")
    parser.add_argument("--out", required=True, metavar="FEATURES_DIR", help="where the feature shards go; "
                        "rerun with the same --out to resume")
    parser.add_argument("--model", default="clip-vit-b32", help="model preset, weights file or ARCH:FILE")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--backend", default="torch", choices=["torch", "compile", "onnx", "tensorrt", "auto"],
                        help="image encoder backend (default torch: the reference features)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16", "int8"],
                        help="encoder precision; auto = fp16 on CUDA, else fp32")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float, default=None, metavar="HZ",
                      help="sampled frames per second of media time (default 2; 0 = every frame)")
    rate.add_argument("--seed-rate", action="store_true", help="the seed study's 1 frame every 4 s (0.25 Hz)")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N",
                        help="at most N frames per segment, spread evenly")
    parser.add_argument("--batch", type=int, default=32, metavar="N", help="frames per encoder call")
    parser.add_argument("--faces", action="store_true",
                        help="CLIP features of each frame's largest face (MTCNN; the whole frame where there is "
                        "none), for an LSTM that reads faces; the bundle then makes run/analyze do the same")
    parser.add_argument("--shard-size", type=int, default=64, metavar="N", help="segments per shard")
    parser.add_argument("--ray", default=None, metavar="ADDRESS",
                        help="run on Ray Data: a cluster address, or 'local' for a Ray instance here")
    parser.add_argument("--ray-workers", type=int, default=1, metavar="N", help="encoder actors on Ray")
    parser.add_argument("--overwrite", action="store_true", help="replace an extraction made with other settings")
    parser.add_argument("--labels", action="append", default=[], metavar="CSV", help="MOSEI label file(s)")
    parser.add_argument("--segments", default=None, metavar="FILE", help="MOSEI segment times")
    parser.add_argument("--videos", default=None, metavar="DIR", help="MOSEI video directory")
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="MOSEI: an emotion is present when its mean intensity is above this")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return parser


def sampling_from_args(args: argparse.Namespace) -> SamplingConfig:
    from affectstream.training.sampling import SamplingConfig

    if args.seed_rate:
        return SamplingConfig.preset("seed", args.max_frames)
    if args.rate is None:
        return SamplingConfig.preset("default", args.max_frames)
    return SamplingConfig(args.rate, args.max_frames)


def run_extract(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from affectstream.training.extract import ExtractConfig, run_extraction

    location = DatasetLocation(
        root=Path(args.dataset_dir), format=args.format, labels=tuple(Path(p) for p in args.labels),
        segments=Path(args.segments) if args.segments else None, videos=Path(args.videos) if args.videos else None,
        threshold=args.threshold,
    )
    dataset, labeler = location.open()
    if not dataset.segments:
        log.error("%s: no usable segments (%d problems while loading)", args.dataset_dir, len(dataset.problems))
        return ExitStatus.NOTHING
    config = ExtractConfig(model=args.model, device=args.device, sampling=sampling_from_args(args),
                           backend=args.backend, precision=args.precision, batch_size=args.batch,
                           shard_size=args.shard_size, faces=args.faces)
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            summary = run_extraction(dataset, Path(args.out), config, labeler, ray_address=args.ray,
                                     overwrite=args.overwrite, progress=False if args.no_progress else None,
                                     ray_workers=args.ray_workers)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: the shards written so far are complete files, and a rerun reuses them.
        log.warning("interrupted: the finished shards in %s are kept; run the same command again to resume",
                    args.out)
        raise
    print("\n".join(summary.lines()))  # the result asked for: stdout (logs and the bar are on stderr)
    return exit_status(summary)


def exit_status(summary: ExtractSummary) -> int:
    if summary.segments_extracted == 0:
        return ExitStatus.NOTHING
    return ExitStatus.PARTIAL if summary.skipped_by_reason else ExitStatus.OK


# ------------------------------------------------------------------------------------------ synth


def add_synth_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = commands.add_parser("synth", help="generate a synthetic expression dataset with exact labels")
    parser.add_argument("out", metavar="OUT")
    parser.add_argument("--videos", type=int, default=12, help="number of videos")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each video")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--size", default="96x96", metavar="WxH")
    parser.add_argument("--segment-seconds", type=float, default=4.0, help="length of the labelled clips")
    parser.add_argument("--imbalance", default=None, metavar="EMOTION=W,...",
                        help="relative odds of emotions (others 1), e.g. fear=0.2,disgust=0.3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-motion", type=float, default=0.05, metavar="FRACTION",
                        help="amplitude of the slow head sway, fraction of the frame (0: still)")
    parser.add_argument("--jitter", type=float, default=0.01, metavar="FRACTION",
                        help="per-frame random walk of the head, fraction of the frame (0: none)")
    parser.add_argument("--still", action="store_true",
                        help="a still camera and head: --head-motion 0 --jitter 0 (docs/training.md)")
    parser.add_argument("--video-format", default="avi", choices=["avi", "mp4"])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return parser


def class_weights(text: str | None) -> tuple[float, ...]:
    weights = dict.fromkeys(EMOTIONS, 1.0)
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, value = item.partition("=")
        if name.strip() not in weights:
            raise ConfigError(f"--imbalance: unknown emotion {name.strip()!r}; use {', '.join(EMOTIONS)}")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--imbalance: {item!r} is not EMOTION=NUMBER") from None
    return tuple(weights[name] for name in EMOTIONS)


def run_synth(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from affectstream.training.synthetic import SyntheticConfig, VideoFormat, generate_synthetic

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {args.size!r} must be WIDTHxHEIGHT, e.g. 96x96") from None
    config = SyntheticConfig(n_videos=args.videos, seconds=args.seconds, fps=args.fps, size=(width, height),
                             seed=args.seed, class_weights=class_weights(args.imbalance),
                             segment_s=args.segment_seconds, video_format=VideoFormat(args.video_format),
                             head_motion=0.0 if args.still else args.head_motion,
                             jitter=0.0 if args.still else args.jitter)
    dataset = generate_synthetic(Path(args.out), config)
    counts = json.dumps(dataset.class_counts())
    print(f"synthetic: {config.n_videos} videos, {len(dataset)} segments -> {args.out}; positives {counts}")
    return ExitStatus.OK
