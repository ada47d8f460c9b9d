"""Video load: 0, 1, 5 and 10 WebRTC viewers (and 1 and 10 MJPEG viewers) of one stream of a real run.

The server is the real CLI, ``affectstream run s0=LOOP.avi --port P --quiet`` (the default models: on
a machine without CLIP weights that is the face stage only), in its own process, fed a long loop of
OpenCV's Megamind.avi (720x528 MPEG-4, 23.976 fps) made once with ffmpeg (``-stream_loop``, no
re-encode) and read in real time. The viewers run in another process (so that their decoding is not
counted as the server's): N aiortc peers that offer a recvonly video transceiver and a ``clock`` data
channel to ``POST /webrtc/s0`` and count the frames their track yields (decoded, as a browser would;
``--no-decode`` counts the encoded frames instead), or N HTTP readers of ``GET /video/s0.mjpg`` that
count the JPEG parts.

One server process serves every case, in order, so the baseline (no viewer: analysis only) is
measured by the same process as the rest; the baseline is measured again at the end to show drift.
For each case the viewers connect, and once every one of them has a frame the benchmark waits
``--warmup`` seconds, then measures over ``--seconds``: the server's CPU (utime + stime of all its
threads, from /proc/PID/stat, plus any child processes), its RSS (VmRSS at the end of the window and
the peak VmHWM so far), each viewer's frames per second, the viewer process's CPU and the whole
machine's busy share (/proc/stat). The viewers then close and the benchmark waits for the server's
encoders to stop (they end ``encoder_idle_s`` = 2 s after their last viewer) before the next case.

    .venv/bin/python benchmarks/video_load.py --seconds 15 --markdown --json /tmp/video_load.json

Prints one JSON line per case and a last line with the ratio (extra CPU at 10 WebRTC viewers) /
(10 x extra CPU at 1): near 1 would mean every viewer costs what the first one does (an encode per
viewer); far below 1 that the encode is shared and a viewer costs only its packets. With --markdown,
a table for docs/benchmarks.md. Needs ffmpeg, ffprobe and aiortc (the ``video`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from _proc import cpu_model, free_port, loadavg, machine_ticks

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")
STREAM = "s0"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ENCODER_IDLE_S = 2.0  # VideoSettings.encoder_idle_s: an encoder ends this long after its last viewer
CONNECT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Case:
    kind: str  # "none", "webrtc" or "mjpeg"
    viewers: int
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or (f"{self.viewers} {self.kind}" if self.viewers else "baseline")


@dataclass
class Result:
    case: str
    kind: str
    viewers: int
    receiving: int  # viewers that got at least one frame in the window
    seconds: float
    server_cpu_percent: float  # of one core
    extra_cpu_percent: float  # over the first baseline
    extra_cpu_per_viewer: float | None
    server_rss_mb: float
    server_peak_rss_mb: float  # VmHWM: the process's peak so far
    fps_min: float | None
    fps_median: float | None
    viewer_process_cpu_percent: float | None
    machine_busy_percent: float  # all CPUs, 100 = every CPU busy
    loadavg: str
    clock_messages: int | None = None  # WebRTC: viewers that got a clock message on the data channel
    frame_sizes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# -- /proc --------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as file:
        text = file.read()
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on; comm may hold spaces


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (by parent pid)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(entry)] = int(_stat_fields(int(entry))[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), its reaped children, and its live descendants."""
    fields = _stat_fields(pid)
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime (fields 14-17)
    for child in descendants(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ticks += sum(int(value) for value in _stat_fields(child)[11:13])
    return ticks / CLK_TCK


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", math.nan), values.get("VmHWM", math.nan)


# -- input and server ---------------------------------------------------------------------------------


def make_input(source: Path, folder: Path, seconds_needed: float) -> Path:
    """A loop of ``source`` at least ``seconds_needed`` long, remuxed (no re-encode); checked to play."""
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed to make the test input")
    one = probe_duration(source)
    loops = max(1, math.ceil(seconds_needed / one))
    target = folder / "loop.avi"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i", str(source), "-an",
                    "-c", "copy", str(target)], check=True)
    duration = probe_duration(target)
    if duration < seconds_needed - 1:
        raise SystemExit(f"{target} is {duration:.0f} s long, {seconds_needed:.0f} s are needed")
    for start in (0.0, duration - 4):  # it decodes at its start and at its end
        check = subprocess.run(["ffmpeg", "-v", "error", "-ss", f"{start:.2f}", "-i", str(target), "-t", "3",
                                "-f", "null", "-"], capture_output=True, text=True)
        if check.returncode != 0 or check.stderr.strip():
            raise SystemExit(f"{target} does not play at {start:.0f} s: {check.stderr.strip()[:500]}")
    return target


def probe_duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                          str(path)], check=True, capture_output=True, text=True).stdout
    return float(out.strip())


def start_server(video: Path, port: int, log_path: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    cli = Path(sys.executable).with_name("affectstream")
    command = [str(cli) if cli.exists() else sys.executable, *([] if cli.exists() else ["-m", "affectstream"]),
               "run", f"{STREAM}={video}", "--port", str(port), "--quiet", *extra]
    log = open(log_path, "wb")  # the server's stdout and stderr, kept for the report
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}): see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                if reply.status == 200:
                    return process
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the server did not answer /healthz in 180 s: see {log_path}")


def stop_server(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


def log_problems(log_path: Path) -> list[str]:
    """The server log's lines above INFO, and tracebacks."""
    lines = log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if " WARNING " in line or " ERROR " in line or " CRITICAL " in line
            or line.startswith("Traceback") or "Exception" in line]


# -- viewers (child process) --------------------------------------------------------------------------


class Viewer:
    def __init__(self) -> None:
        self.frames = 0
        self.clocks = 0
        self.sizes: set[str] = set()
        self.error = ""
        self.first = asyncio.Event()
        self.pc: Any = None
        self.task: asyncio.Task[None] | None = None

    def got(self, size: str | None = None) -> None:
        self.frames += 1
        if size is not None and len(self.sizes) < 4:
            self.sizes.add(size)
        self.first.set()


async def watch_webrtc(viewer: Viewer, session: Any, base: str) -> None:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    viewer.pc = pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("clock")

    def on_message(_text: Any) -> None:
        viewer.clocks += 1

    channel.on("message", on_message)
    got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def on_track(track: Any) -> None:
        if not got.done():
            got.set_result(track)

    pc.on("track", on_track)
    await pc.setLocalDescription(await pc.createOffer())
    offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
    async with session.post(f"{base}/webrtc/{STREAM}", json=offer) as reply:
        body = await reply.json(content_type=None)
        if reply.status != 200:
            raise RuntimeError(f"POST /webrtc/{STREAM}: {reply.status} {body}")
    await pc.setRemoteDescription(RTCSessionDescription(body["sdp"], body["type"]))
    track = await asyncio.wait_for(got, CONNECT_TIMEOUT_S)
    while True:
        frame = await track.recv()
        viewer.got(f"{frame.width}x{frame.height}" if hasattr(frame, "width") else None)


async def watch_mjpeg(viewer: Viewer, session: Any, base: str) -> None:
    async with session.get(f"{base}/video/{STREAM}.mjpg") as reply:
        if reply.status != 200:
            raise RuntimeError(f"GET /video/{STREAM}.mjpg: {reply.status} {await reply.text()}")
        content = reply.content
        while True:
            line = await content.readline()
            if not line:
                raise RuntimeError("the MJPEG response ended")
            if line.strip() != b"--frame":
                continue
            length = 0
            while (header := (await content.readline()).strip()):
                key, _, value = header.decode().partition(":")
                if key.lower() == "content-length":
                    length = int(value)
            data = await content.readexactly(length)
            if not data.startswith(b"\xff\xd8"):
                raise RuntimeError("an MJPEG part is not a JPEG")
            viewer.got()


def skip_decoding() -> None:
    """Make aiortc's receivers yield one placeholder per encoded frame instead of decoding it."""
    from aiortc import rtcrtpreceiver

    class Counted:
        def decode(self, encoded: Any) -> list[Any]:
            return [Placeholder()]

    class Placeholder:
        pts = 0
        time_base = None

    setattr(rtcrtpreceiver, "get_decoder", lambda codec: Counted())  # noqa: B010 - a stub, not its type


async def drive_viewers(pipe: Connection, port: int, kind: str, count: int, decode: bool) -> None:
    import aiohttp

    if not decode:
        skip_decoding()
    base = f"http://127.0.0.1:{port}"
    viewers = [Viewer() for _ in range(count)]
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def run(viewer: Viewer) -> None:
            try:
                await (watch_webrtc if kind == "webrtc" else watch_mjpeg)(viewer, session, base)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # reported, not raised: one viewer failing is a result
                viewer.error = f"{type(error).__name__}: {error}"[:300]
                viewer.first.set()

        for viewer in viewers:
            viewer.task = asyncio.create_task(run(viewer))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(v.first.wait() for v in viewers)), CONNECT_TIMEOUT_S)
        pipe.send({"ready": sum(v.frames > 0 for v in viewers), "errors": [v.error for v in viewers if v.error]})
        await asyncio.to_thread(pipe.recv)  # start
        frames0, cpu0, wall0 = [v.frames for v in viewers], os.times(), time.monotonic()
        await asyncio.to_thread(pipe.recv)  # stop
        frames1, cpu1, wall1 = [v.frames for v in viewers], os.times(), time.monotonic()
        elapsed = wall1 - wall0
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        report = {
            "fps": [(b - a) / elapsed for a, b in zip(frames0, frames1)], "cpu_percent": 100 * cpu / elapsed,
            "clocks": sum(v.clocks > 0 for v in viewers) if kind == "webrtc" else None,
            "sizes": sorted(set().union(*(v.sizes for v in viewers))),
            "errors": [v.error for v in viewers if v.error],
        }
        for viewer in viewers:
            if viewer.task is not None:
                viewer.task.cancel()
        await asyncio.gather(*(v.task for v in viewers if v.task is not None), return_exceptions=True)
        await asyncio.gather(*(v.pc.close() for v in viewers if v.pc is not None), return_exceptions=True)
    pipe.send(report)


def viewer_process(pipe: Connection, port: int, kind: str, count: int, decode: bool) -> None:
    try:
        asyncio.run(drive_viewers(pipe, port, kind, count, decode))
    except Exception as error:
        pipe.send({"crashed": f"{type(error).__name__}: {error}"})


# -- one case -----------------------------------------------------------------------------------------


def measure(case: Case, server: subprocess.Popen[bytes], port: int, seconds: float, warmup: float,
            decode: bool, baseline: float | None) -> Result:
    pipe, process = None, None
    errors: list[str] = []
    ready = case.viewers
    if case.viewers:
        pipe, child = mp.Pipe()
        process = mp.get_context("spawn").Process(target=viewer_process,
                                                  args=(child, port, case.kind, case.viewers, decode))
        process.start()
        if not pipe.poll(CONNECT_TIMEOUT_S + 60):
            raise SystemExit(f"{case.name}: the viewer process never reported")
        hello = pipe.recv()
        if "crashed" in hello:
            raise SystemExit(f"{case.name}: the viewer process failed: {hello['crashed']}")
        ready, errors = hello["ready"], hello["errors"]
    time.sleep(warmup)
    load = loadavg()
    if pipe is not None:
        pipe.send("start")
    cpu0, busy0, wall0 = cpu_seconds(server.pid), machine_ticks(), time.monotonic()
    time.sleep(seconds)
    cpu1, busy1, wall1 = cpu_seconds(server.pid), machine_ticks(), time.monotonic()
    if pipe is not None:
        pipe.send("stop")
    rss, peak = memory_mb(server.pid)
    elapsed = wall1 - wall0
    server_cpu = 100 * (cpu1 - cpu0) / elapsed
    machine_busy = 100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    report: dict[str, Any] = {"fps": [], "cpu_percent": None, "clocks": None, "sizes": [], "errors": []}
    if pipe is not None and process is not None:
        if pipe.poll(60):
            report = pipe.recv()
        process.join(30)
        if process.is_alive():
            process.kill()
        if "crashed" in report:
            errors.append(report["crashed"])
            report = {"fps": [], "cpu_percent": None, "clocks": None, "sizes": [], "errors": []}
    fps = sorted(report["fps"])
    extra = server_cpu - baseline if baseline is not None else 0.0
    receiving = sum(f > 0 for f in fps)
    if case.viewers and receiving < case.viewers:
        errors.append(f"{case.viewers - receiving} of {case.viewers} viewers got no frame in the window"
                      f" ({ready} had one before it)")
    return Result(
        case=case.name, kind=case.kind, viewers=case.viewers, receiving=receiving, seconds=round(elapsed, 1),
        server_cpu_percent=round(server_cpu, 1), extra_cpu_percent=round(extra, 1),
        extra_cpu_per_viewer=round(extra / case.viewers, 1) if case.viewers else None,
        server_rss_mb=round(rss, 1), server_peak_rss_mb=round(peak, 1),
        fps_min=round(fps[0], 1) if fps else None, fps_median=round(statistics.median(fps), 1) if fps else None,
        viewer_process_cpu_percent=None if report["cpu_percent"] is None else round(report["cpu_percent"], 1),
        machine_busy_percent=round(machine_busy, 1), loadavg=load, clock_messages=report["clocks"],
        frame_sizes=report["sizes"], errors=sorted(set(errors + report["errors"])),
    )


def ratio(results: list[Result], kind: str) -> tuple[float, float, float] | None:
    """(extra at 10 / (10 x extra at 1), extra at 1, marginal extra per viewer from 1 to 10)."""
    by_count = {r.viewers: r for r in results if r.kind == kind}
    if 1 not in by_count or 10 not in by_count:
        return None
    one, ten = by_count[1].extra_cpu_percent, by_count[10].extra_cpu_percent
    return (ten / (10 * one) if one > 0 else math.inf), one, (ten - one) / 9


def machine() -> str:
    cpu = cpu_model()
    import aiortc
    import av

    return (f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, aiortc {aiortc.__version__}, "
            f"PyAV {av.__version__}, {platform.system()}")


def cell(value: Any) -> str:
    return "-" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webrtc", type=int, nargs="*", default=[1, 5, 10], help="WebRTC viewer counts")
    parser.add_argument("--mjpeg", type=int, nargs="*", default=[1, 10], help="MJPEG viewer counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per case")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after every viewer has a frame")
    parser.add_argument("--source", type=Path, default=SAMPLE, help="the video looped into the test input")
    parser.add_argument("--no-decode", action="store_true",
                        help="WebRTC viewers count encoded frames without decoding them (less viewer CPU)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for `affectstream run` (repeatable), e.g. --server-arg=--video-fps=10")
    parser.add_argument("--keep", type=Path, help="make the input and the server log in this folder, and keep both"
                        " (default: a temporary folder; the input is deleted, the log kept)")
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)

    cases = [Case("none", 0), *(Case("webrtc", n) for n in args.webrtc), *(Case("mjpeg", n) for n in args.mjpeg),
             Case("none", 0, "baseline again")]
    per_case = args.seconds + args.warmup + ENCODER_IDLE_S + 15  # connect, close and settle: generous
    folder = args.keep or Path(tempfile.mkdtemp(prefix="video_load-"))
    folder.mkdir(parents=True, exist_ok=True)
    load_before = loadavg()
    video = make_input(args.source, folder, len(cases) * per_case + 120)
    port, log_path = free_port(), folder / "server.log"
    server = start_server(video, port, log_path, args.server_arg)
    results: list[Result] = []
    try:
        time.sleep(args.warmup)  # the pipeline's first frames and model warm-up are not the baseline
        baseline: float | None = None
        for case in cases:
            result = measure(case, server, port, args.seconds, args.warmup, not args.no_decode, baseline)
            if baseline is None:
                baseline = result.server_cpu_percent
                result.extra_cpu_percent = 0.0
            results.append(result)
            print(json.dumps(asdict(result)), flush=True)
            if server.poll() is not None:
                raise SystemExit(f"the server exited ({server.returncode}) during {case.name}: see {log_path}")
            time.sleep(ENCODER_IDLE_S + 2)  # the encoders of this case's kind end before the next case
    finally:
        code = stop_server(server)
    load_after = loadavg()
    problems = log_problems(log_path)
    summary: dict[str, Any] = {"loadavg_before": load_before, "loadavg_after": load_after, "server_exit": code,
                               "server_log_problems": problems[:50], "machine": machine(),
                               "decode": not args.no_decode}
    for kind in ("webrtc", "mjpeg"):
        found = ratio(results, kind)
        if found is not None:
            summary[f"{kind}_ratio"] = round(found[0], 3)
            summary[f"{kind}_extra_at_1"] = round(found[1], 1)
            summary[f"{kind}_marginal_per_viewer"] = round(found[2], 2)
            print(f"{kind}: extra CPU at 10 viewers / (10 x extra CPU at 1 viewer) = {found[0]:.3f} "
                  f"(extra at 1: {found[1]:.1f} %; each viewer from 1 to 10 adds {found[2]:.2f} % of a core)")
    print(f"load average before {load_before}, after {load_after}; server exit {code}; "
          f"{len(problems)} warning/error lines in {log_path}")
    for line in problems[:10]:
        print(f"  server log: {line}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "results": [asdict(r) for r in results]}, indent=2))
    if args.markdown:
        print(f"\nMachine: {summary['machine']}\n")
        print("| case | viewers receiving | server CPU % | extra CPU % | extra CPU % per viewer | server RSS MB "
              "| peak RSS MB | viewer fps min / median | viewer process CPU % | machine busy % |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            fps = "-" if r.fps_min is None else f"{r.fps_min} / {r.fps_median}"
            print(f"| {r.case} | {r.receiving}/{r.viewers} | {r.server_cpu_percent} | {r.extra_cpu_percent} | "
                  f"{cell(r.extra_cpu_per_viewer)} | {r.server_rss_mb} | {r.server_peak_rss_mb} | {fps} | "
                  f"{cell(r.viewer_process_cpu_percent)} | {r.machine_busy_percent} |")
    if not args.keep:
        video.unlink(missing_ok=True)  # the server log stays, for its warnings
    return 0


if __name__ == "__main__":
    sys.exit(main())
