"""4 streams through Ray (`run --ray local`) against the in-process pipeline, on one machine (issue 16).

Each case is the real CLI in its own process, cases alternating A B A B over ``--rounds``:

    affectstream run a=LOOP b=LOOP c=LOOP d=LOOP --port P --quiet --no-video --duration S [MODEL OPTIONS]
        [--ray local --ray-stream-cpus 0 --ray-replicas 2 --ray-cpus 1]

(with --ray: a model replica per core of a 2-core machine, the stream actors reserving no Ray CPU so
that all six fit; a single replica runs its models on one thread at a time, under one core, which caps a
Ray run at about 35 estimates/s here where the in-process pipeline makes 45: measured while choosing).

LOOP is OpenCV's Megamind.avi looped with ffmpeg (``-c copy``). Two measurements per case and round:

- latency (``--duration S``, files read in real time at the default 2 Hz per stream): frame-to-event =
  the time a websocket client in this process received an estimate minus the moment its frame was
  decoded (``estimate.wall - estimate.age_ms``; same machine, same clock). With --ray the estimate is
  made on a stream actor and crosses the actor -> driver hop before the websocket: that hop is in the
  figure, as a user's dashboard sees it. Estimates from ``--warmup`` s after each stream's first on.
- throughput (``--fast``: files read as fast as the pipeline takes them, ``--rate`` per stream, no
  server): estimates per second of wall time, first estimate to last, all four streams together.

With --ray the Ray instance, the Serve controller, one model replica and four stream actors start before
the first estimate; startup is not in either figure (it is printed). The targets: throughput ratio
(ray / in-process) >= 0.8, p99 ratio <= 1.5.

    .venv/bin/python benchmarks/ray_scale.py --rounds 2 --seconds 40 --json /tmp/ray_scale.json --markdown

Needs ffmpeg, ffprobe and ray[serve] (the ``ray`` extra). Model options default to the face stage (no
CLIP weights here): pass e.g. ``--model-args "--faces off --model tiny-random"`` for whole-frame CLIP.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _proc import cpu_model, free_port, loadavg
from sinks_overhead import SAMPLE, make_input, pct, wait_port

STREAMS = ("a", "b", "c", "d")
RAY_ARGS = ["--ray", "local", "--ray-stream-cpus", "0", "--ray-replicas", "2", "--ray-cpus", "1"]


def command(video: Path, extra: list[str], model_args: list[str]) -> list[str]:
    cli = Path(sys.executable).with_name("affectstream")
    head = [str(cli)] if cli.exists() else [sys.executable, "-m", "affectstream"]
    return [*head, "run", *[f"{s}={video}" for s in STREAMS], "--quiet", "--no-video", *model_args, *extra]


class Watcher(threading.Thread):
    """A websocket client that keeps every estimate with the time it came."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True, name="watcher")
        self.port = port
        self.got: list[tuple[float, dict[str, Any]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{self.port}/ws", max_size=None) as client:
            while not self.stop.is_set():
                try:
                    text = client.recv(timeout=0.5)
                except TimeoutError:
                    continue
                except Exception:  # the server went away: the run is over
                    return
                received = time.time() * 1000
                message = json.loads(text)
                if message.get("type") == "estimate":
                    self.got.append((received, message))


def latency_run(video: Path, seconds: float, warmup: float, ray: bool, model_args: list[str]) -> dict[str, Any]:
    port = free_port()
    started = time.time()
    process = subprocess.Popen(command(video, ["--port", str(port), "--duration", str(seconds), "--linger", "0",
                                               *(RAY_ARGS if ray else [])], model_args),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_port(port, 120)
    watcher = Watcher(port)
    watcher.start()
    _, stderr = process.communicate(timeout=seconds + 180)
    watcher.stop.set()
    watcher.join(5)
    if process.returncode != 0:
        raise SystemExit(f"run failed ({process.returncode}):\n{stderr[-3000:]}")
    first: dict[str, float] = {}
    delays: list[float] = []
    for received, estimate in watcher.got:
        made = estimate["wall"] - estimate["age_ms"]
        first.setdefault(estimate["stream"], made)
        if made >= first[estimate["stream"]] + warmup * 1000:
            delays.append(received - made)
    startup = min(first.values()) / 1000 - started if first else None
    return {"case": "ray" if ray else "in-process", "measure": "latency", "estimates": len(watcher.got),
            "timed": len(delays), "p50_ms": pct(delays, 50), "p95_ms": pct(delays, 95), "p99_ms": pct(delays, 99),
            "max_ms": round(max(delays), 1) if delays else None,
            "first_estimate_after_s": None if startup is None else round(startup, 1), "load": loadavg()}


def throughput_run(video: Path, folder: Path, rate: float, ray: bool, model_args: list[str]) -> dict[str, Any]:
    out = folder / f"fast-{'ray' if ray else 'local'}-{time.monotonic_ns()}.jsonl"
    result = subprocess.run(command(video, ["--fast", "--rate", str(rate), "--no-serve", "--out", str(out),
                                            *(RAY_ARGS if ray else [])], model_args),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"run failed ({result.returncode}):\n{result.stderr[-3000:]}")
    walls = [m["wall"] for m in map(json.loads, out.read_text().splitlines()) if m["type"] == "estimate"]
    span = (max(walls) - min(walls)) / 1000
    return {"case": "ray" if ray else "in-process", "measure": "throughput", "estimates": len(walls),
            "seconds": round(span, 2), "estimates_per_s": round(len(walls) / span, 2), "load": loadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=40.0, help="each latency run")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--fast-seconds", type=float, default=60.0, help="media seconds per stream, throughput runs")
    parser.add_argument("--rate", type=float, default=2.0, help="estimates per media second, throughput runs")
    parser.add_argument("--model-args", default="", help="model options for both cases, e.g. '--faces off'")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    model_args = shlex.split(args.model_args)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        live = make_input(SAMPLE, folder, args.seconds + 30)
        fast_dir = folder / "fast"
        fast_dir.mkdir()
        fast = make_input(SAMPLE, fast_dir, args.fast_seconds)
        for round_ in range(args.rounds):
            for ray in (False, True):
                for run in (latency_run(live, args.seconds, args.warmup, ray, model_args),
                            throughput_run(fast, folder, args.rate, ray, model_args)):
                    run["round"] = round_ + 1
                    print(json.dumps(run), flush=True)
                    runs.append(run)
    summary = summarise(runs)
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": cpu_model(), "runs": runs, "summary": summary}, indent=1))
    if args.markdown:
        print(markdown(runs, summary))


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds": []}
    for round_ in sorted({r["round"] for r in runs}):
        pick = {(r["case"], r["measure"]): r for r in runs if r["round"] == round_}
        out["rounds"].append({
            "round": round_,
            "throughput_ratio": round(pick["ray", "throughput"]["estimates_per_s"]
                                      / pick["in-process", "throughput"]["estimates_per_s"], 3),
            "p99_ratio": round(pick["ray", "latency"]["p99_ms"] / pick["in-process", "latency"]["p99_ms"], 3),
        })
    for key in ("throughput_ratio", "p99_ratio"):
        values = [r[key] for r in out["rounds"]]
        out[f"worst_{key}"] = min(values) if key == "throughput_ratio" else max(values)
    out["meets_targets"] = out["worst_throughput_ratio"] >= 0.8 and out["worst_p99_ratio"] <= 1.5
    return out


def markdown(runs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = ["| round | case | p50 ms | p99 ms | max ms | estimates/s (--fast) | first estimate after s | load |",
             "|---|---|---|---|---|---|---|---|"]
    for round_ in sorted({r["round"] for r in runs}):
        for case in ("in-process", "ray"):
            lat = next(r for r in runs if r["round"] == round_ and r["case"] == case and r["measure"] == "latency")
            thr = next(r for r in runs if r["round"] == round_ and r["case"] == case and r["measure"] == "throughput")
            lines.append(f"| {round_} | {case} | {lat['p50_ms']} | {lat['p99_ms']} | {lat['max_ms']} | "
                         f"{thr['estimates_per_s']} | {lat['first_estimate_after_s']} | {lat['load']} |")
    lines.append("")
    lines += [f"round {r['round']}: throughput ratio {r['throughput_ratio']}, p99 ratio {r['p99_ratio']}"
              for r in summary["rounds"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
