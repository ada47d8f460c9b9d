"""Peak memory of ``affectstream analyze`` by source resolution: 720p, 4K and 8K.

    python benchmarks/memory_by_resolution.py --json memory-by-resolution.json
    python benchmarks/memory_by_resolution.py --rate 0            # every frame: the rings fill
    python benchmarks/memory_by_resolution.py --sizes 1280x720,3840x2160 --seconds 3

Each clip is Megamind.avi (Debian's opencv-doc: a real talking face, so the face stage works on every
size) looped and scaled to the size, ``--seconds`` long at ``--fps``, H.264 (libx264 ultrafast), made
once and kept in ``--work``. Each run is a fresh child process, ``python -m affectstream analyze CLIP
--model tiny-random``, and its peak RSS is the kernel's own figure for that child (``os.wait4``'s
``ru_maxrss``, taken by a small launcher process so that the caller's memory is not counted), so
nothing is sampled too late.

Figures per size: frames read, estimates made, the share of analysed time with a face, peak RSS (MB),
wall seconds, the exit status; docs/benchmarks.md, "Memory by source resolution", has a run. Frames
are reduced to ``SourceConfig.max_frame_side`` as they are decoded and rings are bounded in bytes
(docs/architecture.md, "Frame size"), so past 1080p the figure should barely grow with the source.
Exit status 1 if a run did not end with 0 or made no estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")
DEFAULT_SIZES = "1280x720,3840x2160,7680x4320"
_ENCODE_TIMEOUT_S = 600  # an 8K clip takes about 20 s on 2 cores


@dataclass(frozen=True, slots=True)
class ChildRun:
    """One child process: how it exited, its peak RSS and how long it took."""

    status: int
    peak_rss_mb: float
    wall_s: float


@dataclass(frozen=True, slots=True)
class Row:
    size: str
    frames_read: int
    estimates: int
    with_face: float | None  # share of analysed time with a face (the face stage still finds it at 8K)
    peak_rss_mb: float
    wall_s: float
    status: int


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``1280x720,3840x2160`` → [(1280, 720), (3840, 2160)]."""
    sizes = []
    for part in text.split(","):
        width, sep, height = part.strip().lower().partition("x")
        if not sep or not width.isdigit() or not height.isdigit() or int(width) < 16 or int(height) < 16:
            raise SystemExit(f"--sizes: expected WIDTHxHEIGHT[,WIDTHxHEIGHT...], got {part!r}")
        sizes.append((int(width), int(height)))
    return sizes


# Runs the measured command and reports its rusage. A child's ru_maxrss includes the memory of the
# process it was spawned from (the kernel counts the mm that exec replaced), so the measured command is
# spawned from this small launcher, never from the caller (pytest, or a benchmark holding large data).
_LAUNCHER = """
import json, os, subprocess, sys, time
deadline = time.monotonic() + float(sys.argv[1])
child = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while True:
    pid, status, usage = os.wait4(child.pid, os.WNOHANG)
    if pid:
        break
    if time.monotonic() > deadline:
        child.kill()
        pid, status, usage = os.wait4(child.pid, 0)
        break
    time.sleep(0.05)
print(json.dumps({"status": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}))
"""


def run_child(command: Sequence[str], timeout_s: float) -> ChildRun:
    """Run ``command`` to its end (killed after ``timeout_s``); its own peak RSS, from ``wait4``."""
    started = time.monotonic()
    launcher = subprocess.run([sys.executable, "-c", _LAUNCHER, f"{timeout_s:g}", *command], capture_output=True,
                              text=True, check=True, timeout=timeout_s + 60)
    report = json.loads(launcher.stdout)
    # Linux reports ru_maxrss in KiB.
    return ChildRun(int(report["status"]), report["maxrss_kib"] / 1024, time.monotonic() - started)


def make_clip(source: Path, size: tuple[int, int], seconds: float, fps: float, work: Path) -> Path:
    width, height = size
    path = work / f"{source.stem}-{width}x{height}-{seconds:g}s-{fps:g}fps.mp4"
    if path.exists():
        return path
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg is not installed (Debian: apt-get install ffmpeg)")
    partial = path.with_suffix(".part.mp4")
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-stream_loop", "-1", "-i", str(source),
                    "-t", f"{seconds:g}", "-vf", f"scale={width}:{height},fps={fps:g}", "-an", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(partial)],
                   check=True, timeout=_ENCODE_TIMEOUT_S)
    partial.rename(path)
    return path


def measure(clip: Path, size: tuple[int, int], model: str, rate: float | None, timeout_s: float) -> Row:
    with tempfile.TemporaryDirectory(prefix="affect-mem-") as tmp:
        summary = Path(tmp) / "summary.json"
        command = [sys.executable, "-m", "affectstream", "analyze", str(clip), "--model", model,
                   "--summary", str(summary), "--no-progress"]
        if rate is not None:
            command += ["--rate", f"{rate:g}"]
        child = run_child(command, timeout_s)
        report = json.loads(summary.read_text()) if summary.exists() else {}
    damage, states = report.get("damage", {}), report.get("states")
    return Row(size=f"{size[0]}x{size[1]}", frames_read=int(damage.get("frames", 0)),
               estimates=int(report.get("frames", 0)),
               with_face=None if states is None else round(1.0 - float(states.get("no_face", 0.0)), 4),
               peak_rss_mb=round(child.peak_rss_mb, 1),
               wall_s=round(child.wall_s, 1), status=child.status)


HEADER = f"{'size':>10} {'frames':>7} {'estimates':>9} {'with face':>9} {'peak RSS MB':>11} {'wall s':>7} {'exit':>4}"


def table_row(row: Row) -> str:
    face = "-" if row.with_face is None else f"{row.with_face:.1%}"
    return (f"{row.size:>10} {row.frames_read:>7} {row.estimates:>9} {face:>9} {row.peak_rss_mb:>11.1f} "
            f"{row.wall_s:>7.1f} {row.status:>4}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"WIDTHxHEIGHT list (default: {DEFAULT_SIZES})")
    parser.add_argument("--seconds", type=float, default=6.0, help="clip length (default: 6)")
    parser.add_argument("--fps", type=float, default=25.0, help="clip frame rate (default: 25)")
    parser.add_argument("--video", type=Path, default=MEGAMIND, help="footage to scale (default: Megamind.avi)")
    parser.add_argument("--model", default="tiny-random", help="analyze --model (default: tiny-random)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "affectstream-memory-bench",
                        help="where the clips are made and kept")
    parser.add_argument("--rate", type=float, default=None, metavar="HZ",
                        help="analyze --rate (default: analyze's, 2 Hz for files; 0: every frame, so that the "
                             "pipeline, not the decoder, is the slow side and the rings fill)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per analyze run")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if not args.video.exists():
        raise SystemExit(f"{args.video} is missing (Debian: apt-get install opencv-doc), or pass --video")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    print(HEADER, flush=True)
    for size in parse_sizes(args.sizes):
        clip = make_clip(args.video, size, args.seconds, args.fps, args.work)
        rows.append(measure(clip, size, args.model, args.rate, args.timeout))
        print(table_row(rows[-1]), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": "python benchmarks/memory_by_resolution.py " + " ".join(argv or sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "seconds": args.seconds, "fps": args.fps, "model": args.model, "rate": args.rate,
            "rows": [asdict(row) for row in rows]}, indent=2) + "\n")
    return 0 if all(row.status == 0 and row.estimates > 0 for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
