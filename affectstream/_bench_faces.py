"""``affectstream bench --sections faces``: the face stage against the `fer` package, live capacity,
and memory while faces come and go.

1. **every frame**: `affectstream analyze VIDEO --rate 0` as a whole process, against the `fer`
   package's own pipeline (``fer.fer.FER().detect_emotions`` on every frame) run by
   benchmarks/fer_peer.py in a virtualenv of its own (TensorFlow is a peer, never our dependency);
   the ratio of their wall times, and their agreement on frames where both find the face.
2. **live**: N paced streams at R Hz through one pipeline with the face stage; frame-to-event
   latency percentiles (the estimate's ``age_ms``).
3. **memory**: a long file where faces come and go (the one-face shot, covered for 2 s of every 5 s)
   played at its own speed, as a live camera would be, for ``soak_minutes``; resident memory sampled
   every 5 s, its slope after the first fifth (loading and warm-up: allocator pools, ONNX Runtime's
   arena), and the most face tracks any session held.
4. **detectors** (benchmarks/face_detectors.py): recall, false boxes and ms per frame of each face
   detector on the test media, at batch 1 and batched.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

log = logging.getLogger("affectstream.bench")

ONE_FACE_SHOT_S = 8.4  # Megamind.avi from 8.4 s to its end: one shot of one large frontal face
FER_PEER = Path(__file__).resolve().parents[1] / "benchmarks" / "fer_peer.py"
DETECTORS = Path(__file__).resolve().parents[1] / "benchmarks" / "face_detectors.py"


def faces_section(video: str, streams: int, rate_hz: float, seconds: float, soak_minutes: float,
                  fer_venv: str | None, skip_fer: bool, workdir: Path, device: str = "cpu",
                  compare_detectors: bool = True, quick: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"video": video, "device": device}
    out["every_frame"] = every_frame(video, workdir, fer_venv, skip_fer, device)
    out["live"] = live(video, streams, rate_hz, seconds, device)
    out["memory"] = memory(video, soak_minutes, workdir, device)
    if compare_detectors:
        out["detectors"] = detectors(workdir, device, quick)
    return out


def detectors(workdir: Path, device: str, quick: bool) -> dict[str, Any]:
    """benchmarks/face_detectors.py: recall on the test media and ms per frame at batch 1 and 8."""
    if not DETECTORS.is_file():
        return {"skipped": f"{DETECTORS} not found: run the bench from a checkout of affectstream"}
    out = workdir / "face-detectors.json"
    command = [sys.executable, str(DETECTORS), "--json", str(out), "--device", device, *(["--quick"] if quick else [])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        return {"skipped": f"the detector comparison failed ({result.returncode}): {result.stderr[-500:]}"}
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures


# -- 1. every frame, against fer ---------------------------------------------------------------------


def every_frame(video: str, workdir: Path, fer_venv: str | None, skip_fer: bool, device: str) -> dict[str, Any]:
    ours_jsonl = workdir / "faces_ours.jsonl"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "affectstream", "analyze", video, "--rate", "0", "--device", device,
                             "--out", str(ours_jsonl), "--summary", str(workdir / "faces_ours.json")],
                            capture_output=True, text=True, timeout=3600)
    ours_s = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"affectstream analyze failed ({result.returncode}): {result.stderr[-800:]}")
    estimates = [json.loads(line) for line in ours_jsonl.read_text().splitlines() if '"estimate"' in line]
    estimates = [m for m in estimates if m["type"] == "estimate"]
    section: dict[str, Any] = {
        "command": f"affectstream analyze {video} --rate 0 --out faces_ours.jsonl",
        "ours": {"process_wall_s": round(ours_s, 2), "frames": len(estimates),
                 "face_found_rate": round(sum(1 for m in estimates if m.get("faces")) / max(1, len(estimates)), 4),
                 "ms_per_frame": round(ours_s * 1e3 / max(1, len(estimates)), 1)},
    }
    if skip_fer:
        section["fer"] = {"skipped": "--no-fer"}
        return section
    peer = _fer_peer()
    if peer is None:
        section["fer"] = {"skipped": f"{FER_PEER} not found: run the bench from a checkout of affectstream"}
        return section
    peer_json = workdir / "faces_fer.json"
    try:
        timing = peer.run_in_venv(Path(video), peer_json, Path(fer_venv) if fer_venv else None)
    except Exception as error:  # noqa: BLE001 a peer that cannot be installed is reported, not fatal
        section["fer"] = {"skipped": f"the fer peer could not run: {error}"}
        return section
    peer_timing = timing.get("timing", {})
    fer_s = float(peer_timing.get("process_wall_s") or 0.0)
    section["fer"] = {"process_wall_s": round(fer_s, 2), "frames": len(timing.get("frames", [])),
                      "face_found_rate": timing.get("face_found_rate"), "pipeline": timing.get("pipeline"),
                      "versions": {key: timing.get(key) for key in ("fer_version", "tensorflow_version",
                                                                    "opencv_version")},
                      "timing": peer_timing, "ms_per_frame": round(fer_s * 1e3 / max(1, len(timing.get("frames", []))), 1)}
    section["speedup"] = round(fer_s / ours_s, 2) if ours_s > 0 else None
    section["agreement"] = peer.compare(ours_jsonl, peer_json)
    return section


def _fer_peer() -> ModuleType | None:
    if not FER_PEER.is_file():
        return None
    spec = importlib.util.spec_from_file_location("affectstream_fer_peer", FER_PEER)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- 2. live: paced streams with faces ------------------------------------------------------------------


def live(video: str, streams: int, rate_hz: float, seconds: float, device: str) -> dict[str, Any]:
    from affectstream.engine.face_engine import load_face_model
    from affectstream.engine.labels import EXPRESSION_LABELS
    from affectstream.stream.messages import Estimate
    from affectstream.stream.pipeline import Pipeline, PipelineConfig
    from affectstream.stream.sinks import MemorySink

    faces = load_face_model(device=device)
    sink = MemorySink()
    config = PipelineConfig(rate_hz=rate_hz, pace_files=True, stats_interval_s=3600.0)
    sources = [(f"cam{i}", video) for i in range(streams)]
    pipeline = Pipeline(sources, None, None, sink, EXPRESSION_LABELS, config, faces=faces)
    pipeline.start()
    pipeline.wait(seconds)
    pipeline.stop()
    ages = [m.age_ms for m in sink.messages if isinstance(m, Estimate) and m.age_ms is not None]
    with_face = [m for m in sink.messages if isinstance(m, Estimate) and m.faces]
    p50, p95, p99 = (float(v) for v in np.percentile(ages, [50, 95, 99])) if ages else (0.0, 0.0, 0.0)
    return {"streams": streams, "rate_hz": rate_hz, "seconds": seconds, "estimates": len(ages),
            "expected_estimates": int(streams * rate_hz * min(seconds, 11.0)),
            "with_face": len(with_face), "frame_to_event_ms": {"p50": round(p50, 1), "p95": round(p95, 1),
                                                               "p99": round(p99, 1)}}


# -- 3. memory while faces come and go ---------------------------------------------------------------------


def memory(video: str, minutes: float, workdir: Path, device: str) -> dict[str, Any]:
    """RSS over a long run where faces come and go; the slope should be about 0 MB/min."""
    from affectstream.engine.face_engine import load_face_model
    from affectstream.engine.labels import EXPRESSION_LABELS
    from affectstream.stream.messages import Estimate, Event, EventKind, Record
    from affectstream.stream.pipeline import Pipeline, PipelineConfig

    long_video = _comings_and_goings(video, minutes, workdir)
    counts = {"estimates": 0, "appeared": 0, "lost": 0}
    most_open = [0]

    class _Counter:
        def write(self, message: Record) -> None:
            if isinstance(message, Estimate):
                counts["estimates"] += 1
            elif isinstance(message, Event) and message.kind is EventKind.FACE_APPEARED:
                counts["appeared"] += 1
            elif isinstance(message, Event) and message.kind is EventKind.FACE_LOST:
                counts["lost"] += 1

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    pipeline = Pipeline([("soak", str(long_video))], None, None, _Counter(), EXPRESSION_LABELS,
                        PipelineConfig(rate_hz=4.0, pace_files=True, stats_interval_s=3600.0),
                        faces=load_face_model(device=device))
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    pipeline.start()
    while not pipeline.wait(5.0):
        samples.append((time.monotonic() - started, _rss_mb()))
        most_open[0] = max(most_open[0], pipeline.open_faces)
    pipeline.stop()
    samples.append((time.monotonic() - started, _rss_mb()))
    # The first samples include loading and warm-up; the slope is over the rest of the run.
    steady = samples[len(samples) // 5:] if len(samples) >= 5 else samples
    slope = float(np.polyfit([t / 60 for t, _ in steady], [r for _, r in steady], 1)[0]) if len(steady) >= 2 else 0.0
    return {"media_minutes": minutes, "wall_s": round(samples[-1][0], 1), **counts,
            "rss_mb": {"first": round(samples[0][1], 1), "last": round(samples[-1][1], 1),
                       "max": round(max(r for _, r in samples), 1)},
            "rss_slope_mb_per_min": round(slope, 3), "most_open_face_tracks": most_open[0],
            "samples": [(round(t, 1), round(r, 1)) for t, r in samples]}


def _comings_and_goings(video: str, minutes: float, workdir: Path) -> Path:
    """The one-face shot looped for ``minutes``, blacked out 2 s of every 5 s: a face comes and goes."""
    shot = workdir / "faces_shot.mp4"
    dest = workdir / f"faces_soak_{minutes:g}min.mp4"
    if dest.is_file():
        return dest
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", str(ONE_FACE_SHOT_S), "-i", video, "-an", "-c:v",
                    "libx264", "-preset", "ultrafast", str(shot)], check=True, timeout=120)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(shot), "-t", str(minutes * 60),
                    "-vf", "drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='gt(mod(t,5),3)',scale=360:-2",
                    "-an", "-c:v", "libx264", "-preset", "ultrafast", str(dest)], check=True, timeout=1800)
    return dest


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="affectstream-bench-faces-"))

