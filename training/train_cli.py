"""`affectstream train` and `affectstream evaluate`: thin adapters over training.fit and training.evaluate.

Arguments are parsed here and turned into config objects once; progress bars (tqdm) and the summary
at the end go to stderr; everything else is computed by the modules below.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from affectstream.errors import ConfigError, ExitStatus

log = logging.getLogger("affectstream")



def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not three comma-separated fractions") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"--split needs three fractions (train,val,test), got {text!r}")
    return values[0], values[1], values[2]


def _speeds(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW,HIGH (e.g. 0.8,1.25)") from None
    return low, high


def add_train_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = commands.add_parser("train", help="train the temporal LSTM on extracted features; write a model bundle")
    parser.add_argument("features", metavar="FEATURES_DIR", help="made by `affectstream extract`")
    parser.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="the model bundle to write")
    model = parser.add_argument_group("model")
    model.add_argument("--hidden", type=int, default=128, help="LSTM units (the seed's 128)")
    model.add_argument("--layers", type=int, default=1)
    model.add_argument("--bidirectional", action="store_true",
                       help="read whole files in both directions (offline only: not for live streams)")
    model.add_argument("--dropout", type=float, default=0.0)
    model.add_argument("--no-sentiment", action="store_true", help="no sentiment head")
    fit = parser.add_argument_group("training")
    fit.add_argument("--epochs", type=int, default=30)
    fit.add_argument("--batch-size", type=int, default=32, metavar="N", help="sequences per step")
    fit.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (the seed's 1e-3)")
    fit.add_argument("--patience", type=int, default=6, help="epochs without a better validation macro AUC")
    fit.add_argument("--seed", type=int, default=0, help="seeds the split, the weights and the batch order")
    fit.add_argument("--split", type=_fractions, default=(0.7, 0.15, 0.15), metavar="TR,VA,TE",
                     help="fractions of segments per side; whole videos are dealt out")
    fit.add_argument("--target", default="segment", choices=["segment", "frames", "prefix"],
                     help="what every step learns: the segment's labels, per-frame truth (synthetic sets), "
                          "or per-frame truth accumulated over the segment")
    fit.add_argument("--context", default="segment", choices=["segment", "video"],
                     help="one sequence per segment (the seed's), or a video's segments back to back")
    fit.add_argument("--pool", default="auto", choices=["auto", "last", "mean", "max"],
                     help="how step outputs become a segment score (auto: max for frames, else last/mean)")
    fit.add_argument("--no-standardise", action="store_true", help="train on raw features (no scaling folded in)")
    balance = parser.add_argument_group("balancing (004 seed)")
    balance.add_argument("--balance", default="none", choices=["none", "interpolate", "clips"],
                         help="add synthetic samples of the rare classes to the training side")
    balance.add_argument("--balance-fill", type=float, default=1.0, metavar="F",
                         help="fill each class up to F x the largest class")
    balance.add_argument("--videos", default=None, metavar="DIR", help="--balance clips: the dataset's videos")
    balance.add_argument("--clip-speed", type=_speeds, default=(0.8, 1.25), metavar="LO,HI",
                         help="--balance clips: playback speed range (1,1: no re-timing)")
    parser.add_argument("--no-frame-classifier", action="store_true",
                        help="skip the per-frame baseline trained on the same training side")
    parser.add_argument("--device", default="cpu", help="encoder device for --balance clips (auto, cpu, cuda)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's own; 1 is fastest for small models on shared CPUs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return parser


def add_evaluate_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = commands.add_parser("evaluate", help="score trained bundles on a feature set, with the seeds' baselines")
    parser.add_argument("features", metavar="FEATURES_DIR")
    parser.add_argument("--bundle", action="append", required=True, metavar="BUNDLE_DIR",
                        help="a trained bundle; repeat to compare (e.g. with and without --balance)")
    parser.add_argument("--baselines", action="store_true",
                        help="also score the zero-shot and per-frame classifier baselines")
    parser.add_argument("--side", default="test", choices=["train", "val", "test", "all"],
                        help="which side of the bundle's split (all: every segment)")
    parser.add_argument("--dynamic-threshold", type=float, default=0.5, metavar="RATIO",
                        help="zero-shot baseline: scores below RATIO x the segment's top count as absent")
    parser.add_argument("--report", default=None, metavar="OUT.md",
                        help="write the Markdown report here (and the numbers beside it as OUT.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return parser


def train_options(args: argparse.Namespace) -> Any:
    from affectstream.training.fit import FitOptions
    from affectstream.training.train import TrainConfig

    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, hidden=args.hidden,
        layers=args.layers, bidirectional=args.bidirectional, dropout=args.dropout,
        sentiment=not args.no_sentiment, target=args.target, context=args.context, pool=args.pool,
        patience=args.patience, seed=args.seed, split=args.split,
    )
    return FitOptions(train=config, balance=args.balance, balance_fill=args.balance_fill,
                      standardise=not args.no_standardise, frame_classifier=not args.no_frame_classifier,
                      videos_dir=Path(args.videos) if args.videos else None, clip_speeds=args.clip_speed)


def run_train(args: argparse.Namespace, environment: dict[str, str]) -> int:
    from tqdm import tqdm

    from affectstream.training.featureset import FeatureSet
    from affectstream.training.fit import fit, write_run

    options = train_options(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    featureset = FeatureSet.load(Path(args.features))
    if not featureset.sequences:
        raise ConfigError(f"{args.features} holds no sequences: extraction found nothing to train on")

    def encoder() -> Any:
        from affectstream.engine.encoder import TorchEncoder, resolve_device
        from affectstream.engine.models import ModelSpec

        return TorchEncoder.from_spec(ModelSpec.from_manifest(featureset.backbone), device=resolve_device(args.device))

    with tqdm(total=options.train.epochs, unit="epoch", desc=f"train {featureset.dataset}",
              disable=True if args.no_progress else None) as bar:
        def on_epoch(record: dict[str, Any]) -> None:
            side = record.get("val", record["train"])
            bar.update(1)
            bar.set_postfix(loss=f"{record['train']['loss']:.4f}", val_auc=f"{side['macro_auc']:.3f}", refresh=False)

        outcome = fit(featureset, options, on_epoch, encoder)
    path = write_run(Path(args.out), outcome)
    print_train_summary(outcome, path)
    return ExitStatus.OK


def print_train_summary(outcome: Any, path: Path) -> None:
    result, split = outcome.result, outcome.split
    test = outcome.test_metrics
    lines = [
        f"trained on {len(split.train)} segments (+{len(outcome.added)} synthetic, balance "
        f"{outcome.options.balance.value}), validated on {len(split.val)}, tested on {len(split.test)}",
        f"epochs run {len(result.history)}, best {result.best_epoch}"
        + (" (stopped early)" if result.stopped_early else ""),
    ]
    if test:
        lines.append(f"test: loss {test['loss']:.4f}  precision {test['precision']:.4f}  recall {test['recall']:.4f}  "
                     f"AUC {test['auc']:.4f}  macro AUC {test['macro_auc']:.4f}  binary acc. "
                     f"{test['binary_accuracy']:.4f}")
    lines.append(f"bundle: {path} (history, checkpoint and split in {path / 'training'})")
    print("\n".join(lines))  # the result asked for: stdout (logs and the bar are on stderr)


def run_evaluate(args: argparse.Namespace, environment: dict[str, str]) -> int:
    if args.report:
        from affectstream.checks import writable_file

        writable_file(args.report, "--report")  # before any bundle is evaluated
    from tqdm import tqdm

    from affectstream.training.checkpoint import json_safe
    from affectstream.training.evaluate import evaluate_bundle
    from affectstream.training.featureset import FeatureSet
    from affectstream.training.report import percent, render

    featureset = FeatureSet.load(Path(args.features))
    reports = []
    for bundle in tqdm(args.bundle, unit="bundle", desc="evaluate", disable=True if args.no_progress else None):
        reports.append(evaluate_bundle(featureset, Path(bundle), args.baselines, args.side, args.dynamic_threshold))
    markdown = render(reports)
    if args.report:
        out = Path(args.report)
        if out.exists():
            print(f"replacing {out}", file=sys.stderr)  # a report is never replaced silently
        out.write_text(markdown, encoding="utf-8")
        numbers = out.with_suffix(".json") if out.suffix != ".json" else out.with_name(f"{out.stem}.numbers.json")
        numbers.write_text(json.dumps(json_safe(reports), indent=2) + "\n", encoding="utf-8")
    else:
        print(markdown)
    for report in reports:
        summary = ", ".join(
            f"{name}: macro AUC {model['multilabel']['macro_auc']:.3f}, normalized acc. "
            f"{percent(model['single_label']['normalized_accuracy'])}" for name, model in report["models"].items())
        print(f"{report['bundle']} ({report['side']}, {report['segments']} segments): {summary}")
    return ExitStatus.OK
