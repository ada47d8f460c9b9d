"""Latency as a browser sees it: glass to glass from a camera frame to its overlay, and the server
video's delay behind its source (issue 13, "Done when").

The server is the real CLI, ``affectstream run --allow-browser-sources --rate 4 --port 0``, in its own
process. Debian's Chromium (headless, through Playwright) plays a fake camera fed from a .y4m made
once from OpenCV's Megamind.avi with ffmpeg, and opens two pages:

- ``/capture?name=lat&stamp=1``: the capture page draws each camera frame into a canvas with
  ``Date.now()`` painted into its top row (48 squares of 8x8 px) and sends the canvas over WebRTC;
  the server reads the stamp and makes it the frame's media time. So an estimate's ``ts * 1000`` is
  the moment its frame was drawn, and when the page draws that estimate's overlay it records
  ``Date.now() - ts * 1000``: the **glass-to-glass latency** (draw, encode, network, decode on the
  server, sampling, face detection and classification, the websocket, the overlay's draw) in
  ``window.affectstreamLatency``.
- ``/`` (the dashboard), which watches stream ``lat`` over WebRTC. For each displayed frame it knows the
  frame's media time (the RTP timestamp and the ``clock`` data channel) and records the **delay of the
  server's video behind the source**: ``Date.now() - (wall + (frame_ts - ts) * 1000)`` from the
  newest clock message (``wall``: when the pipeline held the frame of media time ``ts``): the
  server's encode, the network, the browser's jitter buffer and decode. Since the source is stamped,
  the frame's media time is also when it was drawn in the capture page: ``Date.now() - frame_ts *
  1000`` is the **video's glass to glass** (camera page to server to dashboard display).

After ``--warmup`` seconds, samples are collected for ``--seconds``; p50/p90/p99/max are printed and
written with ``--json PATH``. The server's CPU (utime + stime from /proc/PID/stat) over the window is
recorded too, and the machine's 1-minute load average at the start and end of the window (other work on
the same cores inflates the tail). Both pages run in one browser on the same machine as the server: the figures include
the browser's own encode and decode, on the same cores.

    .venv/bin/python benchmarks/browser_latency.py --seconds 60 --json /tmp/browser_latency.json

Needs Debian's chromium, playwright (the Python package; no browser download), ffmpeg and aiortc.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 "--disable-features=WebRtcHideLocalIpsWithMdns",
                 # Two pages on one machine: neither may be throttled as a background tab.
                 "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                 "--disable-backgrounding-occluded-windows"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PORT_LINE = re.compile(r"dashboard and websocket at http://[^ ]+:(\d+)/")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to collect samples (default 60)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after the first overlay before "
                        "samples count (default 5)")
    parser.add_argument("--rate", type=float, default=4.0, help="the run's --rate (default 4 Hz)")
    parser.add_argument("--name", default="lat", help="the browser camera's stream name (default lat)")
    parser.add_argument("--camera", type=Path, help="a .y4m for the fake camera (default: 10 s of "
                        "Megamind.avi, 640 px wide, made with ffmpeg)")
    parser.add_argument("--chromium", default=CHROMIUM)
    parser.add_argument("--run-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for `affectstream run` (repeatable), e.g. --run-arg=--device=cpu")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON here")
    return parser.parse_args(argv)


def make_camera(directory: Path) -> Path:
    path = directory / "camera.y4m"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(SAMPLE), "-t", "10", "-vf", "scale=640:-2",
                    "-pix_fmt", "yuv420p", str(path)], check=True, timeout=300)
    return path


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[tuple[subprocess.Popen[str], int, list[str]]]:
    command = [sys.executable, "-m", "affectstream", "run", "--allow-browser-sources", "--rate", str(args.rate),
               "--port", "0", "--quiet", *args.run_arg]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert process.stderr is not None
        port = None
        for line in process.stderr:
            lines.append(line)
            found = PORT_LINE.search(line)
            if found:
                port = int(found.group(1))
                break
        if port is None:
            raise SystemExit("affectstream run did not start:\n" + "".join(lines))
        threading.Thread(target=lambda: lines.extend(process.stderr or []), daemon=True).start()
        yield process, port, lines
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def summary(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)

    def percentile(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]

    return {"n": len(ordered), "p50": round(percentile(50)), "p90": round(percentile(90)),
            "p99": round(percentile(99)), "max": round(ordered[-1]), "mean": round(statistics.fmean(ordered), 1)}


def wait(page: Any, script: str, seconds: float, what: str) -> Any:
    try:
        return page.wait_for_function(script, timeout=seconds * 1000).json_value()
    except Exception as error:  # playwright's TimeoutError
        raise SystemExit(f"{what} did not happen within {seconds:.0f} s ({error})") from None


def measure(args: argparse.Namespace, camera: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with server(args) as (process, port, log), sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=args.chromium, args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={camera}"])
        try:
            base = f"http://127.0.0.1:{port}"
            errors: list[str] = []
            capture = browser.new_page(viewport={"width": 1000, "height": 800})
            capture.on("pageerror", lambda e: errors.append(str(e)))
            capture.goto(f"{base}/capture?name={args.name}&stamp=1&start=1")
            wait(capture, "() => window.affectstreamLatency.length > 0", 60, "the first stamped overlay")
            dashboard = browser.new_page(viewport={"width": 1400, "height": 900})
            dashboard.on("pageerror", lambda e: errors.append(str(e)))
            dashboard.goto(f"{base}/")
            card = f"window.affectstream?.cards?.[{json.dumps(args.name)}]"
            transport = wait(dashboard, f"() => {card}?.panel.delayLog.length > 0 && {card}.panel.transport", 60,
                             "the dashboard's first frame of the camera's stream")
            print(f"streaming; dashboard video over {transport}; warming up {args.warmup:.0f} s", file=sys.stderr)
            time.sleep(args.warmup)
            start_latency = capture.evaluate("() => window.affectstreamLatency.length")
            start_wall = dashboard.evaluate("() => Date.now()")
            load_start = os.getloadavg()[0]
            cpu_start, clock_start = cpu_seconds(process.pid), time.monotonic()
            deadline = clock_start + args.seconds
            while time.monotonic() < deadline:
                time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
                count = capture.evaluate("() => window.affectstreamLatency.length") - start_latency
                print(f"  {time.monotonic() - clock_start:5.0f} s: {count} overlay samples", file=sys.stderr)
            cpu = (cpu_seconds(process.pid) - cpu_start) / (time.monotonic() - clock_start) * 100
            load = [round(load_start, 2), round(os.getloadavg()[0], 2)]
            glass = capture.evaluate(f"() => window.affectstreamLatency.slice({start_latency})")
            frames = dashboard.evaluate(f"() => {card}.panel.delayLog.filter((row) => row[0] >= {start_wall})")
            capture_info = capture.evaluate("""() => ({stamped: window.affectstreamCapture.stamped || 0,
                size: [window.affectstreamCapture.canvas?.width, window.affectstreamCapture.canvas?.height]})""")
            version = browser.version
        finally:
            browser.close()
        if errors:
            raise SystemExit(f"the pages raised: {errors}")
    delays = [row[2] for row in frames]
    video_glass = [row[0] - row[1] * 1000 for row in frames]
    return {
        "benchmark": "browser_latency", "seconds": args.seconds, "rate_hz": args.rate,
        "glass_to_glass_ms": summary(glass),
        "video_delay_behind_source_ms": summary(delays),
        "video_glass_to_glass_ms": summary(video_glass),
        "dashboard_transport": transport, "dashboard_frames": len(frames),
        "dashboard_fps": round(len(frames) / args.seconds, 1),
        "camera_frames_stamped": capture_info["stamped"], "camera_size": capture_info["size"],
        "server_cpu_percent": round(cpu, 1), "cpu_count": os.cpu_count(),
        "load_average_1min": load,  # at the start and the end of the window: other work on the machine
        "machine": platform.machine(), "python": platform.python_version(), "chromium": version,
        "run_args": ["--allow-browser-sources", "--rate", str(args.rate), *args.run_arg],
        "server_log_tail": [line.rstrip() for line in log[-5:]],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        camera = args.camera or make_camera(Path(directory))
        result = measure(args, camera)
    glass, delay, video = (result["glass_to_glass_ms"], result["video_delay_behind_source_ms"],
                           result["video_glass_to_glass_ms"])
    print(json.dumps({k: v for k, v in result.items() if k != "server_log_tail"}))
    print(f"glass to glass (camera frame -> its overlay drawn), {glass['n']} overlays: "
          f"p50 {glass.get('p50')} ms, p99 {glass.get('p99')} ms, max {glass.get('max')} ms", file=sys.stderr)
    print(f"server video behind the source, {delay['n']} frames: p50 {delay.get('p50')} ms, "
          f"p99 {delay.get('p99')} ms; video glass to glass p50 {video.get('p50')} ms, p99 {video.get('p99')} ms",
          file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
