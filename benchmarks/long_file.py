"""Memory and time left over a long file: ``affectstream analyze`` on an hour of video.

    python benchmarks/long_file.py --json long-file.json                 # 60 minutes, the default models
    python benchmarks/long_file.py --minutes 10 --json /tmp/ten.json     # a shorter check

The file is Debian's opencv-doc ``Megamind.avi`` (720x528 MPEG-4, 23.976 fps, 11.26 s) looped with
``ffmpeg -stream_loop N -c copy`` to at least ``--minutes`` (no re-encode: 320 loops make 60 min 5 s),
made once and kept in ``--work``. The command is the real CLI, ``python -m affectstream analyze LOOP
--out-dir DIR --csv DIR/table.csv --progress`` (every output on: summary, HTML report with its
thumbnails, the per-frame table), with the default models unless ``--model``.

While it runs, its RSS is sampled from /proc/PID/status (VmRSS) every ``--interval`` seconds, and its
progress bar (``--progress``: tqdm on stderr) is read for how far the media is and what time left it
says. Figures:

- ``rss_at_5min_mb``: the RSS at the first sample after 5 minutes of media were analysed;
- ``peak_rss_mb``: the kernel's own peak for the process (``os.wait4``'s ``ru_maxrss``, taken by a
  small launcher process so that this script's memory is not counted), which includes the end (the
  summary, the report, the thumbnails);
- ``ratio``: peak / RSS at 5 min (the issue's bound: at most 1.5);
- ``eta``: at 10, 25, 50, 75 and 90 % of the media, the time left the bar said against the time the
  analysis then really took to finish the media;
- ``wall_s``, the exit status, the sizes written.

Exit status 1 if the run did not exit 0 or the ratio is over 1.5. docs/benchmarks.md ("An hour of
video") records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _proc import cpu_model

MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")
BOUND = 1.5
CHECKPOINTS = (0.10, 0.25, 0.50, 0.75, 0.90)
# The bar: "{desc}: {pct}%|{bar}| {n:.1f}/{total} s media [{elapsed}<{remaining}, {rate}]".
_BAR = re.compile(r"(?P<n>\d+(?:\.\d+)?)/(?P<total>\d+(?:\.\d+)?) s media \[(?P<elapsed>[\d:]+)<(?P<remaining>[\d:?]+)")

# Runs the measured command with its stderr passed through; prints the child's pid, then its rusage.
_LAUNCHER = """
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
print(child.pid, flush=True)
pid, status, usage = os.wait4(child.pid, 0)
print(json.dumps({"status": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}), flush=True)
"""


def clock_s(text: str) -> float | None:
    """tqdm's ``[H:]MM:SS`` as seconds (None for ``?``)."""
    if "?" in text:
        return None
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def make_loop(source: Path, minutes: float, work: Path) -> tuple[Path, float]:
    """``source`` looped (stream copy) to at least ``minutes``; the file and its duration in s."""
    duration = probe_duration(source)
    loops = max(1, int(-(-minutes * 60 // duration)))
    path = work / f"{source.stem}-x{loops}.avi"
    if not path.exists():
        if shutil.which("ffmpeg") is None:
            raise SystemExit("ffmpeg is not installed (Debian: apt-get install ffmpeg)")
        partial = path.with_suffix(".part.avi")
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-stream_loop", str(loops - 1),
                        "-i", str(source), "-an", "-c", "copy", str(partial)], check=True, timeout=600)
        partial.rename(path)
    return path, probe_duration(path)


def probe_duration(path: Path) -> float:
    done = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=duration",
                           "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[0])


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Progress:
    """The latest bar read from the child's stderr (tqdm redraws with carriage returns)."""

    def __init__(self, stream: Any, log: Any) -> None:
        self.media_s = 0.0
        self.total_s: float | None = None
        self.remaining_s: float | None = None
        self.lines: list[str] = []
        self._stream = stream
        self._log = log
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = ""
        while chunk := self._stream.read(256):
            self._log.write(chunk)
            buffer += chunk
            *parts, buffer = re.split(r"[\r\n]", buffer)
            for part in parts:
                self._take(part)

    def _take(self, text: str) -> None:
        found = _BAR.search(text)
        if found is None:
            if text.strip():
                self.lines.append(text)
            return
        self.media_s = float(found["n"])
        self.total_s = float(found["total"])
        self.remaining_s = clock_s(found["remaining"])

    def join(self) -> None:
        self._thread.join(10)


def run(video: Path, out: Path, model: str | None, interval: float, log_path: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "affectstream", "analyze", str(video), "--out-dir", str(out), "--csv",
               str(out / "table.csv"), "--progress", "--force"]
    if model:
        command += ["--model", model]
    started = time.monotonic()
    with log_path.open("w", encoding="utf-8") as log:
        launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, *command], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, bufsize=1)
        assert launcher.stdout is not None and launcher.stderr is not None
        pid = int(launcher.stdout.readline())
        progress = Progress(launcher.stderr, log)
        samples: list[dict[str, float]] = []
        said: list[dict[str, float]] = []  # (wall, media, remaining) as the bar said it
        while launcher.poll() is None:
            rss = rss_kib(pid)
            now = time.monotonic() - started
            if rss is not None:
                samples.append({"t_s": round(now, 1), "media_s": progress.media_s, "rss_mb": round(rss / 1024, 1)})
            if progress.remaining_s is not None:
                said.append({"t_s": now, "media_s": progress.media_s, "remaining_s": progress.remaining_s})
            time.sleep(interval)
        report = json.loads(launcher.stdout.readline())
        progress.join()
    wall = time.monotonic() - started
    return {"command": command, "samples": samples, "said": said, "status": int(report["status"]),
            "peak_rss_mb": round(report["maxrss_kib"] / 1024, 1), "wall_s": round(wall, 1),
            "media_s": progress.media_s, "total_s": progress.total_s, "log_tail": progress.lines[-12:]}


def eta_accuracy(said: list[dict[str, float]], total_s: float) -> list[dict[str, float]]:
    """At each checkpoint of the media: what the bar said was left, and what was really left (to the
    moment the bar reached the end of the media)."""
    done = next((row["t_s"] for row in said if row["media_s"] >= total_s - 1.0), said[-1]["t_s"] if said else None)
    rows = []
    for share in CHECKPOINTS:
        row = next((row for row in said if row["media_s"] >= share * total_s), None)
        if row is None or done is None:
            continue
        actual = done - row["t_s"]
        rows.append({"at": share, "said_left_s": round(row["remaining_s"], 1), "actual_left_s": round(actual, 1),
                     "error_s": round(row["remaining_s"] - actual, 1),
                     "error_share": round((row["remaining_s"] - actual) / actual, 3) if actual > 0 else 0.0})
    return rows


def machine() -> dict[str, Any]:
    model = cpu_model()
    memory = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "0")
    return {"cpu": model, "cpus": os.cpu_count(), "memory_gib": round(int(memory) / 2**20, 1),
            "platform": platform.platform(), "python": platform.python_version(), "load_before": os.getloadavg()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the looped file (default: 60)")
    parser.add_argument("--video", type=Path, default=MEGAMIND, help="footage to loop (default: Megamind.avi)")
    parser.add_argument("--model", default=None, help="analyze --model (default: analyze's own default)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between RSS samples (default: 2)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "affectstream-long-file",
                        help="where the looped file is made and kept, and the outputs written")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if not args.video.exists():
        raise SystemExit(f"{args.video} is missing (Debian: apt-get install opencv-doc), or pass --video")
    args.work.mkdir(parents=True, exist_ok=True)
    video, duration = make_loop(args.video, args.minutes, args.work)
    out = args.work / "out"
    out.mkdir(exist_ok=True)
    figures = machine()
    result = run(video, out, args.model, args.interval, args.work / "analyze.log")
    figures["load_after"] = os.getloadavg()
    at_5 = next((s for s in result["samples"] if s["media_s"] >= 300.0), None)
    ratio = round(result["peak_rss_mb"] / at_5["rss_mb"], 3) if at_5 else None
    sizes = {path.name: path.stat().st_size for path in sorted(out.iterdir()) if path.is_file()}
    report = {
        "command": "python benchmarks/long_file.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "analyze": " ".join(result["command"][1:]),
        "machine": figures,
        "video": {"path": str(video), "duration_s": round(duration, 3), "source": str(args.video)},
        "status": result["status"], "wall_s": result["wall_s"], "realtime_factor": round(duration / result["wall_s"], 2),
        "rss_at_5min_mb": at_5["rss_mb"] if at_5 else None,
        "rss_at_5min_t_s": at_5["t_s"] if at_5 else None,
        "last_sample_rss_mb": result["samples"][-1]["rss_mb"] if result["samples"] else None,
        "max_sampled_rss_mb": max((s["rss_mb"] for s in result["samples"]), default=None),
        "peak_rss_mb": result["peak_rss_mb"], "ratio": ratio, "bound": BOUND,
        "eta": eta_accuracy(result["said"], result["total_s"] or duration),
        "outputs_bytes": sizes,
        "samples": result["samples"],
    }
    text = json.dumps(report, indent=2) + "\n"
    if args.json is not None:
        args.json.write_text(text)
    summary = {key: report[key] for key in ("status", "wall_s", "realtime_factor", "rss_at_5min_mb", "peak_rss_mb",
                                            "ratio", "eta")}
    print(json.dumps(summary, indent=2))
    return 0 if result["status"] == 0 and ratio is not None and ratio <= BOUND else 1


if __name__ == "__main__":
    raise SystemExit(main())
