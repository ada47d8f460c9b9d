"""``affectstream bench``: encoder backends, frame-to-event latency, stream capacity, naive loop vs pipeline.

Sections (all in one run, on one video and one model, written to one JSON file plus PNG plots):

a. encoder throughput and latency per backend variant and batch size (affectstream/_bench_encoder.py);
b. frame-to-event latency with its per-stage breakdown, one paced stream at a rate the encoder
   sustains, checked against 1.5 x the encoder's batch-1 latency + the batcher's max wait;
c. the most concurrent paced streams at a sampling rate before p99 frame-to-event breaks a target;
d. the naive single-thread loop against the pipeline, 1 and 4 streams (affectstream/_bench_naive.py);
faces. the face stage: every frame against the `fer` package, live streams with faces, memory while
   faces come and go (affectstream/_bench_faces.py; not in the default set: it installs a peer venv).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

from affectstream.errors import ConfigError, ExitStatus, MissingExtraError

log = logging.getLogger("affectstream.bench")

DEFAULT_VIDEO = "/usr/share/doc/opencv-doc/examples/data/Megamind.avi"
SECTIONS = ("a", "b", "c", "d", "faces")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"expected integers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"expected positive integers, got {text!r}")
    return values


def add_bench_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("bench", help="measure encoder backends, frame-to-event latency, stream "
                                 "capacity, and the pipeline against a naive loop; JSON + PNG plots")
    parser.add_argument("--model", default="vit-b32-random", help="model preset (default: ViT-B-32, random weights)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--video", default=None, help=f"video to run (default: {DEFAULT_VIDEO})")
    parser.add_argument("--variants", default="torch-fp32,torch-bf16,onnx-fp32,onnx-int8",
                        help="a: encoder variants (torch-fp32/bf16, onnx-fp32/int8, compile-fp32/bf16)")
    parser.add_argument("--batches", default="1,4,8,16", help="a: batch sizes")
    parser.add_argument("--repeats", type=int, default=5, help="a: timed calls per variant and batch size")
    parser.add_argument("--pipeline-variant", default="auto",
                        help="b, c: encoder variant the pipeline runs (auto: best throughput in a that passed parity)")
    parser.add_argument("--rate", type=float, default=None, metavar="HZ",
                        help="b: sampling rate (default: half of what the encoder sustains at batch 1)")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="b, c, d: the batcher's max wait")
    parser.add_argument("--streams", default="1,2,4,8,12,16", help="c: stream counts to try, in order")
    parser.add_argument("--stream-rate", type=float, default=2.0, metavar="HZ", help="c: sampling rate per stream")
    parser.add_argument("--target-p99-ms", type=float, default=1000.0, help="c: p99 frame-to-event target")
    parser.add_argument("--seconds", type=float, default=10.0, help="b, c: seconds per pipeline run")
    parser.add_argument("--naive-streams", default="1,4", help="d: stream counts")
    parser.add_argument("--naive-rate", type=float, default=4.0, metavar="HZ", help="d: sampling rate per stream")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="CPU threads for torch and ONNX Runtime, every variant and the naive loop alike "
                             "(0: each library's default, one per core)")
    parser.add_argument("--omp-spin", action="store_true",
                        help="leave OpenMP's spin-waiting on (by default the bench sets OMP_WAIT_POLICY=PASSIVE)")
    parser.add_argument("--sections", default="a,b,c,d", help="which sections to run (a,b,c,d,faces)")
    parser.add_argument("--face-streams", type=int, default=4, help="faces: live streams")
    parser.add_argument("--face-rate", type=float, default=4.0, metavar="HZ", help="faces: sampling rate per stream")
    parser.add_argument("--soak-minutes", type=float, default=10.0, help="faces: media minutes of the memory run")
    parser.add_argument("--fer-venv", default=None, help="faces: the fer peer's virtualenv (default: in the cache)")
    parser.add_argument("--no-fer", action="store_true", help="faces: do not run the fer peer")
    parser.add_argument("--no-detectors", action="store_true", help="faces: skip the detector comparison")
    parser.add_argument("--out", default="bench.json", help="JSON report")
    parser.add_argument("--plots", default=None, metavar="DIR", help="PNG plots (default: beside --out)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few repeats, short runs")
    parser.add_argument("-v", "--verbose", action="count", default=0)


def run_bench(args: argparse.Namespace) -> int:
    # torch's OpenMP threads spin-wait after every parallel region. On a CPU shared with other work
    # (or with the other variants and the decoder threads of this very process) that spinning takes
    # the cores the next call needs, and torch eager became 10x slower in our runs; passive waiting
    # applies to every variant and to the naive loop alike. libgomp reads this when torch loads,
    # which is below this line (the CLI does not import torch to parse arguments).
    if not args.omp_spin:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from affectstream import _bench_encoder as enc
    from affectstream.engine.encoder import resolve_device
    from affectstream.engine.models import ModelSpec

    sections = {part.strip() for part in args.sections.split(",") if part.strip()}
    if not sections or sections - set(SECTIONS):
        raise ConfigError(f"--sections takes some of {','.join(SECTIONS)}, got {args.sections!r}")
    if args.quick:
        args.repeats, args.seconds = min(args.repeats, 2), min(args.seconds, 3.0)
    video = args.video or DEFAULT_VIDEO
    if not Path(video).is_file():
        raise ConfigError(f"bench video {video} not found: pass --video FILE (or install opencv-doc)")
    if "faces" in sections:
        report_faces = _faces(args, video)
        if sections == {"faces"}:
            return report_faces
    spec = ModelSpec.from_preset(args.model)
    device = resolve_device(args.device)
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from affectstream.build_engine import read_frames

    frames = read_frames(video, 24)
    report: dict[str, Any] = {"command": "affectstream bench " + " ".join(_argv(args)), "machine": machine(),
                              "model": spec.name, "video": video, "device": device}
    started = time.monotonic()
    names = enc.parse_variants(args.variants)
    encoders, parity = enc.build_variants(names, spec, device, frames, args.threads)
    report["parity"] = parity
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if "a" in sections:
        rows = enc.measure(encoders, frames, _ints(args.batches), args.repeats)
        report["encoders"] = {"rows": rows, "ratios": enc.ratios(rows)}
        _save(out, report)
    variant = _pipeline_variant(args.pipeline_variant, encoders, parity, rows)
    report["pipeline_variant"] = variant
    if sections & {"b", "c", "d"}:
        _pipeline_sections(args, sections, report, spec, encoders, variant, rows, video, out)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    _save(out, report)
    try:
        from affectstream._bench_plots import write_plots

        report_plots = write_plots(report, Path(args.plots) if args.plots else out.parent)
        log.info("plots: %s", ", ".join(report_plots))
    except MissingExtraError as error:
        log.warning("%s; JSON written without plots", error)
    print(json.dumps(_headline(report), indent=2))
    return ExitStatus.OK


def _faces(args: argparse.Namespace, video: str) -> int:
    """The faces section, in a report of its own (``--out``, or faces.json beside the main one)."""
    from affectstream._bench_faces import faces_section, scratch_dir

    out = Path(args.out)
    if args.sections.strip() != "faces":
        out = out.with_name(out.stem + ".faces.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    seconds = 3.0 if args.quick else args.seconds
    soak = 0.5 if args.quick else args.soak_minutes
    report: dict[str, Any] = {"command": "affectstream bench " + " ".join(_argv(args)), "machine": machine()}
    started = time.monotonic()
    from affectstream.engine.encoder import resolve_device

    report["faces"] = faces_section(video, args.face_streams, args.face_rate, seconds, soak, args.fer_venv,
                                    args.no_fer, scratch_dir(), resolve_device(args.device),
                                    compare_detectors=not args.no_detectors, quick=args.quick)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    _save(out, report)
    headline = {key: value for key, value in report["faces"].items() if key not in ("memory", "detectors")}
    headline["memory"] = {k: v for k, v in report["faces"]["memory"].items() if k != "samples"}
    print(json.dumps(headline, indent=2))
    return ExitStatus.OK


def _save(out: Path, report: dict[str, Any]) -> None:
    """Written after every section, so that a run cut short still leaves what it measured."""
    out.write_text(json.dumps(report, indent=2))


def _pipeline_sections(args: argparse.Namespace, sections: set[str], report: dict[str, Any], spec: Any,
                       encoders: dict[str, Any], variant: str, rows: list[dict[str, Any]], video: str,
                       out: Path) -> None:
    from affectstream import _bench_encoder as enc
    from affectstream import _bench_pipeline as pipe

    encoder = encoders[variant]
    if "b" in sections:
        batch1 = enc.batch1_latency_ms(rows, variant) or _batch1(encoder, video)
        rate = args.rate or round(min(10.0, 0.5 * 1000.0 / batch1), 2)
        config = pipe.RunConfig(rate_hz=rate, pace=True, max_wait_ms=args.max_wait_ms, seconds=args.seconds)
        run = pipe.run_pipeline(video, 1, encoder, _head(spec), config)
        bound = 1.5 * batch1 + args.max_wait_ms
        p99 = run["frame_to_event_ms"].get("p99", float("inf"))
        report["latency"] = {"variant": variant, "rate_hz": rate, "encoder_batch1_ms": batch1,
                             "bound_ms": round(bound, 2), "p99_within_bound": p99 <= bound, "run": run}
        _save(out, report)
    if "c" in sections:
        config = pipe.RunConfig(rate_hz=args.stream_rate, pace=True, max_wait_ms=args.max_wait_ms,
                                seconds=args.seconds)
        counts = _ints(args.streams)[:2] if args.quick else _ints(args.streams)
        report["streams"] = {"variant": variant, **pipe.max_streams(video, counts, encoder, lambda: _head(spec),
                                                                     config, args.target_p99_ms)}
        _save(out, report)
    if "d" in sections:
        report["naive_vs_pipeline"] = _naive_section(args, spec, encoders, video)


def _naive_section(args: argparse.Namespace, spec: Any, encoders: dict[str, Any], video: str) -> dict[str, Any]:
    from affectstream import _bench_naive as naive
    from affectstream import _bench_pipeline as pipe
    from affectstream.engine.models import build_clip

    model = build_clip(spec, device="cpu")
    transform = naive.open_clip_transform(spec)
    config = pipe.RunConfig(rate_hz=args.naive_rate, pace=False, max_wait_ms=args.max_wait_ms)
    rows = []
    for count in _ints(args.naive_streams):
        naive_run = naive.naive_loop(video, count, args.naive_rate, model, transform, _lstm(spec))
        pipeline_run = pipe.run_pipeline(video, count, encoders["torch-fp32"], _head(spec), config)
        rows.append(naive.compare_rows(naive_run, pipeline_run))
        log.info("d: %d streams: pipeline %.2fx the naive loop", count, rows[-1]["pipeline_speedup"])
    return {"encoder": "torch-fp32 (both)", "rate_hz": args.naive_rate, "rows": rows}


def _lstm(spec: Any) -> Any:
    import torch

    from affectstream.engine.lstm import TemporalConfig, TemporalLSTM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same random LSTM for the naive loop and the pipeline
        return TemporalLSTM(TemporalConfig(input_dim=spec.embed_dim)).eval()


def _head(spec: Any) -> Any:
    from affectstream.engine.heads import LstmHead

    return LstmHead(_lstm(spec))


def _batch1(encoder: Any, video: str) -> float:
    from affectstream.build_engine import read_frames

    frame = read_frames(video, 1)
    encoder.encode(frame)
    started = time.perf_counter()
    for _ in range(3):
        encoder.encode(frame)
    return (time.perf_counter() - started) / 3 * 1e3


def _pipeline_variant(requested: str, encoders: dict[str, Any], parity: dict[str, Any],
                      rows: list[dict[str, Any]]) -> str:
    if requested != "auto":
        if requested not in encoders:
            raise ConfigError(f"--pipeline-variant {requested} is not among the built variants {sorted(encoders)}")
        return requested
    passed = [name for name in encoders if parity.get(name, {}).get("passed")]
    if not rows or not passed:
        return "torch-fp32"
    largest = max(row["batch"] for row in rows)
    best = max((row for row in rows if row["batch"] == largest and row["variant"] in passed),
               key=lambda row: row["frames_per_s"])
    return str(best["variant"])


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    headline: dict[str, Any] = {"out": report.get("command"), "pipeline_variant": report.get("pipeline_variant")}
    if "encoders" in report:
        headline["ratios"] = report["encoders"]["ratios"]
    if "latency" in report:
        latency = report["latency"]
        headline["latency"] = {"p99_ms": latency["run"]["frame_to_event_ms"].get("p99"),
                               "bound_ms": latency["bound_ms"], "within": latency["p99_within_bound"]}
    if "streams" in report:
        headline["max_streams"] = report["streams"]["max_streams"]
    if "naive_vs_pipeline" in report:
        headline["pipeline_speedup"] = {row["streams"]: row["pipeline_speedup"]
                                        for row in report["naive_vs_pipeline"]["rows"]}
    return headline


def _argv(args: argparse.Namespace) -> list[str]:
    skip = {"command", "verbose"}
    parts = []
    for key, value in sorted(vars(args).items()):
        if key in skip or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {value}")
    return parts


def machine() -> dict[str, Any]:
    import numpy
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), "torch": torch.__version__, "numpy": numpy.__version__,
                            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                            "load_average": [round(x, 2) for x in os.getloadavg()],
                            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                            "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        info["cpu"] = platform.processor()
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info
