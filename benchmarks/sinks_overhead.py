"""Sinks overhead: 4 streams with 3 sinks (MQTT, Redis Streams, a webhook) against none (issue 15).

The server is the real CLI, in its own process, run once per case and round:

    affectstream run a=LOOP b=LOOP c=LOOP d=LOOP --port 0 --quiet --out OUT.jsonl --duration S --no-video
        [--sink mqtt://127.0.0.1:P/PREFIX --sink redis://127.0.0.1:P/0?stream=KEY --sink http://127.0.0.1:P/PATH]

(the default models and ``--rate``: on a machine without CLIP weights that is the face stage at 2 Hz per
file), fed a loop of OpenCV's Megamind.avi made once with ffmpeg (``-stream_loop``, ``-c copy``) and read
in real time. The brokers are started once, on free ports: mosquitto (anonymous, ``user root``, no
persistence), redis-server (``--save ""``, no AOF) and a webhook receiver (http.server in this process,
answering 204). Cases alternate, A B A B...: without sinks, then with the three (each sink run gets its
own MQTT prefix, Redis key and webhook path, so that what each consumer got is counted per run).

Frame-to-event latency. The emitter (stream/pipeline.py) computes, for every estimate, ``age_ms`` = the
monotonic time from the moment the grabber held the decoded frame (for a paced file: the moment the frame
became due) to the moment the emitter took the frame's result, just before it builds the estimate and the
events and summaries that frame completes (same ``wall``) and writes them to the sinks (--out file,
websocket server, event log; the --sink threads are woken from there). It is on the wire in every
estimate, so this benchmark pools the ages of every estimate of OUT.jsonl from ``--warmup`` s after the
run's first estimate on; an event's or summary's frame-to-event time is the age of the estimate it came
with (same stream and wall, written just before it): ``event.wall - (estimate.wall - estimate.age_ms)``.
Lifecycle events (stream_*, frames_dropped) and partial summaries come with no frame and are not timed.
The ``stats`` messages' ``latency_ms`` (stream/stats.py) are percentiles of the same ages over each
stream's last 512 estimates, i.e. over the whole run here (warm-up included); the last stats of each
stream are reported too (median and max over the 4 streams).

Consumers: an MQTT subscriber (paho, QoS 1, ``PREFIX/#``, receive time = ``time.time()`` in its callback),
the Redis stream read with XLEN and XRANGE after the run (receive time = the entry id's milliseconds: when
redis-server took the XADD), and the webhook's batches (receive time = when the handler read the body).
Each consumer's messages are matched by ``(stream, seq)`` against OUT.jsonl, per type; delivery delay =
receive time - the message's ``wall`` (same machine, same clock).

Per run also: the server's CPU (its rusage once reaped), and every second the machine's busy share and the
time the server's threads spent runnable but waiting for a CPU (/proc/PID/task/*/schedstat): on a shared
machine a latency spike with a high run-queue wait is the machine's doing, not the server's own work.

    .venv/bin/python benchmarks/sinks_overhead.py --rounds 2 --seconds 40 --markdown --json /tmp/sinks_overhead.json

Prints one JSON line per run, then the p99 ratio (with sinks / without) per round and pooled over the
rounds; with --markdown, tables for docs/benchmarks.md. Needs ffmpeg, ffprobe, mosquitto, redis-server,
paho-mqtt and redis (the ``mqtt`` and ``redis`` extras).
"""

from __future__ import annotations

import argparse
import http.server
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _proc import cpu_model, free_port, loadavg, machine_ticks

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")
STREAMS = ("a", "b", "c", "d")
DURABLE = ("event", "summary")
UNFRAMED = frozenset({"stream_started", "stream_reconnecting", "stream_ended", "stream_error", "frames_dropped"})
SINK_TYPES = ("estimate", "event", "summary")  # what a --sink sends by default (stream/brokers.py)
CLK_TCK = os.sysconf("SC_CLK_TCK")
LIMIT_P99_RATIO = 1.10


# -- small helpers ------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """numpy's linear-interpolation percentile (as stream/stats.py), None for no values."""
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 1) if values else None


def process_cpu_s(pid: int) -> float:
    """utime + stime of a live process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            text = file.read()
    except OSError:
        return math.nan
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_port(port: int, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


# -- input --------------------------------------------------------------------------------------------


def probe_duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                          str(path)], check=True, capture_output=True, text=True).stdout
    return float(out.strip())


def make_input(source: Path, folder: Path, seconds_needed: float) -> Path:
    """A loop of ``source`` at least ``seconds_needed`` long, remuxed (no re-encode)."""
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed to make the test input")
    loops = max(1, math.ceil(seconds_needed / probe_duration(source)))
    target = folder / "loop.avi"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i", str(source), "-an",
                    "-c", "copy", str(target)], check=True)
    duration = probe_duration(target)
    if duration < seconds_needed - 1:
        raise SystemExit(f"{target} is {duration:.0f} s long, {seconds_needed:.0f} s are needed")
    return target


# -- brokers and consumers ----------------------------------------------------------------------------


class Brokers:
    """mosquitto, redis-server and a webhook receiver, started once for every run."""

    def __init__(self, folder: Path) -> None:
        mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if mosquitto is None or shutil.which("redis-server") is None:
            raise SystemExit("needs mosquitto and redis-server (apt-get install mosquitto redis-server)")
        self.mqtt_port, self.redis_port = free_port(), free_port()
        config = folder / "mosquitto.conf"
        config.write_text(f"listener {self.mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n")
        redis_dir = folder / "redis"
        redis_dir.mkdir(exist_ok=True)
        self.processes = {
            "mosquitto": subprocess.Popen([mosquitto, "-c", str(config)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL),
            "redis-server": subprocess.Popen(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                              "--dir", str(redis_dir), "--save", "", "--appendonly", "no"],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        }
        wait_port(self.mqtt_port)
        wait_port(self.redis_port)
        self.hooks = Hooks(("127.0.0.1", 0), HookHandler)
        self.hook_port = self.hooks.server_address[1]
        threading.Thread(target=self.hooks.serve_forever, name="webhook", daemon=True).start()

    def cpu_s(self) -> dict[str, float]:
        return {name: process_cpu_s(p.pid) for name, p in self.processes.items()}

    def urls(self, tag: str) -> dict[str, str]:
        return {"mqtt": f"mqtt://127.0.0.1:{self.mqtt_port}/bench/{tag}",
                "redis": f"redis://127.0.0.1:{self.redis_port}/0?stream=bench-{tag}",
                "webhook": f"http://127.0.0.1:{self.hook_port}/hook/{tag}"}

    def close(self) -> None:
        self.hooks.shutdown()
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


class Hooks(http.server.ThreadingHTTPServer):
    daemon_threads = True
    lock = threading.Lock()
    batches: list[tuple[float, str, bytes]] = []  # (received, path, body)


class HookHandler(http.server.BaseHTTPRequestHandler):
    server: Hooks

    def do_POST(self) -> None:  # noqa: N802 http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        received = time.time()
        with self.server.lock:
            self.server.batches.append((received, self.path, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class MqttConsumer:
    """A QoS 1 subscriber to ``PREFIX/#``, subscribed before the run starts."""

    def __init__(self, port: int, prefix: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[float, str, bytes]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{prefix.replace('/', '-')}", clean_session=True)
        self.client.on_connect = lambda client, *_: client.subscribe(f"{prefix}/#", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append((time.time(), m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(15):
            raise SystemExit("the MQTT consumer could not subscribe")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- one run ------------------------------------------------------------------------------------------


@dataclass
class Consumer:
    sink: str
    received: int  # messages, duplicates included
    batches: int | None  # webhook POSTs
    per_type: dict[str, dict[str, int]]  # type -> {"out": in OUT.jsonl, "got": distinct received, "missing", "dup", "extra"}
    delay_p50_ms: float | None  # receive - wall, messages after the warm-up
    delay_p99_ms: float | None
    delay_max_ms: float | None  # all messages
    errors: list[str] = field(default_factory=list)


@dataclass
class Run:
    round: int
    case: str  # "none" or "3 sinks"
    exit_code: int
    seconds_measured: float  # from the warm-up mark to the last estimate
    estimates: int  # in the measured span, all streams
    estimates_per_s: float
    age_p50_ms: float | None  # pooled estimate ages (frame -> emission), measured span
    age_p99_ms: float | None
    age_max_ms: float | None
    event_n: int  # events + summaries timed (came with a frame), measured span
    event_p50_ms: float | None
    event_p99_ms: float | None
    untimed_durable: int  # events + summaries without a frame (lifecycle, final partial summaries)
    stats_p50_median_ms: float | None  # last stats per stream (its <=512 estimates: the whole run)
    stats_p99_median_ms: float | None
    stats_p99_max_ms: float | None
    stats_window_p99_median_ms: float | None  # every stats message's p99 after the warm-up mark
    stats_window_p99_max_ms: float | None
    drops: int  # frames dropped, last stats of each stream, summed
    out_counts: dict[str, int]
    server_cpu_percent: float  # of one core, whole run (start-up included)
    broker_cpu_percent: dict[str, float]  # of one core, over the run; bench = this process (consumers)
    machine_busy_percent: float  # all CPUs, everyone's work
    runqueue_wait_percent: float  # the server's threads' time runnable but not running, of one core, whole run
    runqueue_wait_max_percent: float  # the same, the worst 1 s sample
    loadavg_before: str
    loadavg_after: str
    consumers: list[Consumer] = field(default_factory=list)
    stderr_problems: list[str] = field(default_factory=list)
    timeline: list[dict[str, float]] = field(default_factory=list)  # Sampler's, in --json only


def run_cli(video: Path, folder: Path, tag: str, seconds: float, sinks: list[str],
            extra: list[str]) -> tuple[int, Path, Path, list[dict[str, float]]]:
    """The CLI's run, with a timeline of what the machine gave it (``Sampler``)."""
    cli = Path(sys.executable).with_name("affectstream")
    out, err = folder / f"{tag}.jsonl", folder / f"{tag}.stderr"
    command = [str(cli) if cli.exists() else sys.executable, *([] if cli.exists() else ["-m", "affectstream"]),
               "run", *(f"{name}={video}" for name in STREAMS), "--port", "0", "--quiet", "--out", str(out),
               "--duration", f"{seconds:g}", "--no-video", *(arg for url in sinks for arg in ("--sink", url)), *extra]
    with open(err, "wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, cwd=folder)
        sampler = Sampler(process.pid)
        sampler.start()
        try:
            code = process.wait(seconds + 300)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(10)
        finally:
            sampler.stop()
    return code, out, err, sampler.timeline


class Sampler(threading.Thread):
    """Every ``every`` s: the machine's busy and steal share (/proc/stat), the server's CPU (/proc/PID/stat)
    and the time its threads waited for a CPU while runnable (/proc/PID/task/*/schedstat, field 2): a
    process starved by other work waits on the run queue; one held up by its own lock (the GIL) does not."""

    def __init__(self, pid: int, every: float = 1.0) -> None:
        super().__init__(name="sampler", daemon=True)
        self.pid, self.every = pid, every
        self.timeline: list[dict[str, float]] = []
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def _waits(self) -> dict[str, int]:
        waits: dict[str, int] = {}
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return waits
        for tid in tids:
            try:
                with open(f"/proc/{self.pid}/task/{tid}/schedstat") as file:
                    waits[tid] = int(file.read().split()[1])
            except (OSError, IndexError, ValueError):
                pass
        return waits

    def run(self) -> None:
        started = time.monotonic()
        stat0, cpu0, waits0 = _cpu_fields(), process_cpu_s(self.pid), self._waits()
        while not self._stop_event.wait(self.every):
            stat1, cpu1, waits1 = _cpu_fields(), process_cpu_s(self.pid), self._waits()
            if math.isnan(cpu1):
                return
            total = max(sum(stat1[:8]) - sum(stat0[:8]), 1)
            idle = stat1[3] + stat1[4] - stat0[3] - stat0[4]
            waited = sum(max(0, w - waits0.get(tid, 0)) for tid, w in waits1.items()) / 1e9
            self.timeline.append({"t": round(time.monotonic() - started, 1),
                                  "machine_busy": round(100 * (total - idle) / total, 1),
                                  "steal": round(100 * (stat1[7] - stat0[7]) / total, 1),
                                  "server_cpu": round(100 * (cpu1 - cpu0) / self.every, 1),
                                  "runqueue_wait": round(100 * waited / self.every, 1)})
            stat0, cpu0, waits0 = stat1, cpu1, waits1


def _cpu_fields() -> list[int]:
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:]]


def stderr_problems(path: Path) -> list[str]:
    lines = path.read_text(errors="replace").splitlines()
    return [line for line in lines if any(word in line for word in ("WARNING", "ERROR", "CRITICAL", "Traceback",
                                                                     "Exception", "sink"))]


def analyse(lines: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    estimates = [m for m in lines if m.get("type") == "estimate" and m.get("stream") in STREAMS]
    if not estimates:
        raise SystemExit("the run wrote no estimate")
    first = min(m["wall"] for m in estimates)
    mark = first + warmup_s * 1000
    measured = [m for m in estimates if m["wall"] >= mark and m.get("age_ms") is not None]
    last = max(m["wall"] for m in estimates)
    span = max((last - mark) / 1000, 1e-3)
    ages = [float(m["age_ms"]) for m in measured]
    # An event or summary completed by a frame follows that frame's estimate (same stream, same wall).
    latest: dict[Any, dict[str, Any]] = {}
    event_ages: list[float] = []
    untimed = 0
    for m in lines:
        stream, kind = m.get("stream"), m.get("type")
        if kind == "estimate":
            latest[stream] = m
        elif kind in DURABLE:
            estimate = latest.get(stream)
            framed = not m.get("partial") and m.get("kind") not in UNFRAMED
            if framed and estimate is not None and estimate["wall"] == m["wall"] and estimate.get("age_ms") is not None:
                if m["wall"] >= mark:
                    event_ages.append(m["wall"] - (estimate["wall"] - float(estimate["age_ms"])))
            else:
                untimed += 1
        elif kind not in ("stats",):
            latest.pop(stream, None)  # anything else between: not the same frame's output
    stats = [m for m in lines if m.get("type") == "stats" and m.get("latency_ms")]
    final: dict[str, dict[str, Any]] = {}
    for m in stats:
        final[m["stream"]] = m
    final_p50 = [float(m["latency_ms"]["p50"]) for m in final.values()]
    final_p99 = [float(m["latency_ms"]["p99"]) for m in final.values()]
    window_p99 = [float(m["latency_ms"]["p99"]) for m in stats if m["wall"] >= mark]
    counts: dict[str, int] = {}
    for m in lines:
        counts[m.get("type", "?")] = counts.get(m.get("type", "?"), 0) + 1
    return {
        "mark": mark, "seconds_measured": round(span, 1), "estimates": len(measured),
        "estimates_per_s": round(len(measured) / span, 2),
        "age_p50_ms": pct(ages, 50), "age_p99_ms": pct(ages, 99), "age_max_ms": pct(ages, 100),
        "ages": ages, "event_ages": event_ages,
        "event_n": len(event_ages), "event_p50_ms": pct(event_ages, 50), "event_p99_ms": pct(event_ages, 99),
        "untimed_durable": untimed,
        "stats_p50_median_ms": pct(final_p50, 50), "stats_p99_median_ms": pct(final_p99, 50),
        "stats_p99_max_ms": pct(final_p99, 100),
        "stats_window_p99_median_ms": pct(window_p99, 50), "stats_window_p99_max_ms": pct(window_p99, 100),
        "drops": int(sum(m.get("drops", 0) for m in final.values())), "out_counts": counts,
    }


def match(sink: str, got: list[tuple[float, dict[str, Any]]], lines: list[dict[str, Any]], mark: float,
          batches: int | None = None, errors: list[str] | None = None) -> Consumer:
    """What a consumer got (receive time, message) against OUT.jsonl, per type."""
    per_type: dict[str, dict[str, int]] = {}
    for kind in SINK_TYPES:
        expected = {(m["stream"], m["seq"]) for m in lines if m.get("type") == kind}
        keys = [(m.get("stream"), m.get("seq")) for _, m in got if m.get("type") == kind]
        distinct = set(keys)
        per_type[kind] = {"out": len(expected), "got": len(distinct & expected),
                          "missing": len(expected - distinct), "dup": len(keys) - len(distinct),
                          "extra": len(distinct - expected)}
    other = sorted({str(m.get("type")) for _, m in got} - set(SINK_TYPES))
    if other:
        per_type["other"] = {"out": 0, "got": sum(1 for _, m in got if m.get("type") in other), "missing": 0,
                             "dup": 0, "extra": 0}
    delays = [received * 1000 - m["wall"] for received, m in got if isinstance(m.get("wall"), int)]
    measured = [received * 1000 - m["wall"] for received, m in got if isinstance(m.get("wall"), int) and m["wall"] >= mark]
    return Consumer(sink, len(got), batches, per_type, pct(measured, 50), pct(measured, 99), pct(delays, 100),
                    errors or [])


def collect(brokers: Brokers, tag: str, mqtt: MqttConsumer, lines: list[dict[str, Any]], mark: float) -> list[Consumer]:
    import redis

    consumers: list[Consumer] = []
    errors: list[str] = []
    got: list[tuple[float, dict[str, Any]]] = []
    for received, topic, payload in mqtt.messages:
        try:
            message = json.loads(payload)
        except ValueError:
            errors.append(f"not JSON on {topic}")
            continue
        expected_topic = f"bench/{tag}/{message.get('stream')}/{message.get('type')}"
        if topic != expected_topic:
            errors.append(f"topic {topic} for a message of {expected_topic}")
        got.append((received, message))
    consumers.append(match("mqtt", got, lines, mark, errors=errors[:5]))

    client = redis.Redis(port=brokers.redis_port)
    key = f"bench-{tag}"
    length = int(client.xlen(key))
    entries: list[Any] = client.xrange(key, "-", "+")  # type: ignore[assignment]  # redis-py's union return
    got, errors = [], []
    for entry_id, fields in entries:
        message = json.loads(fields[b"message"])
        if (fields[b"stream"].decode(), int(fields[b"seq"]), fields[b"type"].decode()) != (
                message.get("stream"), message.get("seq"), message.get("type")):
            errors.append(f"entry {entry_id!r}: its fields and its message differ")
        got.append((int(entry_id.split(b"-")[0]) / 1000, message))
    if length != len(entries):
        errors.append(f"XLEN {length} but XRANGE gave {len(entries)}")
    client.close()
    consumers.append(match("redis", got, lines, mark, errors=errors[:5]))

    with brokers.hooks.lock:
        batches = [(received, body) for received, path, body in brokers.hooks.batches if path == f"/hook/{tag}"]
    got = [(received, message) for received, body in batches for message in json.loads(body)]
    consumers.append(match("webhook", got, lines, mark, batches=len(batches)))
    return consumers


def one_run(round_no: int, with_sinks: bool, video: Path, folder: Path, brokers: Brokers, seconds: float,
            warmup_s: float, extra: list[str]) -> Run:
    tag = f"r{round_no}-{'sinks' if with_sinks else 'none'}"
    mqtt = MqttConsumer(brokers.mqtt_port, f"bench/{tag}") if with_sinks else None
    urls = list(brokers.urls(tag).values()) if with_sinks else []
    load_before = loadavg()
    busy0, total0 = machine_ticks()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    brokers0 = brokers.cpu_s()
    started = time.monotonic()
    code, out, err, timeline = run_cli(video, folder, tag, seconds, urls, extra)
    elapsed = time.monotonic() - started
    if mqtt is not None:
        time.sleep(2)  # the last PUBACKed messages reach the subscriber
        mqtt.close()
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    brokers1 = brokers.cpu_s()
    busy1, total1 = machine_ticks()
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    found = analyse(lines, warmup_s)
    server_cpu = (children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime) / elapsed * 100
    other_cpu = {name: round((brokers1[name] - brokers0[name]) / elapsed * 100, 1) for name in brokers0}
    other_cpu["bench"] = round((self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime) / elapsed * 100, 1)
    run = Run(
        round=round_no, case="3 sinks" if with_sinks else "none", exit_code=code,
        **{k: v for k, v in found.items() if k not in ("mark", "ages", "event_ages")},
        server_cpu_percent=round(server_cpu, 1), broker_cpu_percent=other_cpu,
        machine_busy_percent=round(100 * (busy1 - busy0) / max(total1 - total0, 1), 1),
        runqueue_wait_percent=round(sum(s["runqueue_wait"] for s in timeline) / max(len(timeline), 1), 1),
        runqueue_wait_max_percent=max((s["runqueue_wait"] for s in timeline), default=0.0),
        timeline=timeline,
        loadavg_before=load_before, loadavg_after=loadavg(), stderr_problems=stderr_problems(err)[:30],
    )
    if mqtt is not None:
        run.consumers = collect(brokers, tag, mqtt, lines, found["mark"])
    run_ages[(round_no, run.case)] = (found["ages"], found["event_ages"])
    return run


run_ages: dict[tuple[int, str], tuple[list[float], list[float]]] = {}


# -- report -------------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else round(a / b, 3)


def comparisons(runs: list[Run]) -> dict[str, Any]:
    by = {(r.round, r.case): r for r in runs}
    rounds = sorted({r.round for r in runs})
    per_round = []
    for n in rounds:
        none, sinks = by.get((n, "none")), by.get((n, "3 sinks"))
        if none is None or sinks is None:
            continue
        per_round.append({"round": n, "age_p99_ratio": ratio(sinks.age_p99_ms, none.age_p99_ms),
                          "event_p99_ratio": ratio(sinks.event_p99_ms, none.event_p99_ms),
                          "stats_p99_max_ratio": ratio(sinks.stats_p99_max_ms, none.stats_p99_max_ms)})
    pooled: dict[str, dict[str, float | None]] = {}
    for case in ("none", "3 sinks"):
        ages = [a for (n, c), (values, _) in run_ages.items() if c == case for a in values]
        events = [a for (n, c), (_, values) in run_ages.items() if c == case for a in values]
        pooled[case] = {"n": len(ages), "age_p50_ms": pct(ages, 50), "age_p99_ms": pct(ages, 99),
                        "event_n": len(events), "event_p50_ms": pct(events, 50), "event_p99_ms": pct(events, 99)}
    overall = ratio(pooled["3 sinks"]["age_p99_ms"], pooled["none"]["age_p99_ms"])
    return {"per_round": per_round, "pooled": pooled, "age_p99_ratio_pooled": overall,
            "event_p99_ratio_pooled": ratio(pooled["3 sinks"]["event_p99_ms"], pooled["none"]["event_p99_ms"]),
            "within_10_percent": None if overall is None else overall <= LIMIT_P99_RATIO}


def machine() -> str:
    cpu = cpu_model()
    versions = []
    for tool, flag in (("mosquitto", "-h"), ("redis-server", "--version")):
        path = shutil.which(tool) or f"/usr/sbin/{tool}"
        try:
            text = subprocess.run([path, flag], capture_output=True, text=True, timeout=10).stdout
            versions.append(text.splitlines()[0].strip())
        except (OSError, IndexError, subprocess.TimeoutExpired):
            pass
    import paho.mqtt
    import redis

    return (f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}, Python {platform.python_version()}, "
            f"{'; '.join(versions)}, paho-mqtt {paho.mqtt.__version__}, redis-py {redis.__version__}")


def cell(value: Any) -> str:
    return "-" if value is None else str(value)


def markdown(runs: list[Run], summary: dict[str, Any]) -> str:
    rows = ["| round | sinks | estimates/s | age p50 ms | age p99 ms | event+summary frame-to-event p50 / p99 ms (n) "
            "| stats p99 ms, median / max of 4 streams | server CPU % | server run-queue wait %, mean / worst 1 s "
            "| machine busy % | drops | loadavg before / after |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        rows.append(f"| {r.round} | {r.case} | {r.estimates_per_s} | {cell(r.age_p50_ms)} | {cell(r.age_p99_ms)} | "
                    f"{cell(r.event_p50_ms)} / {cell(r.event_p99_ms)} ({r.event_n}) | "
                    f"{cell(r.stats_p99_median_ms)} / {cell(r.stats_p99_max_ms)} | {r.server_cpu_percent} | "
                    f"{r.runqueue_wait_percent} / {r.runqueue_wait_max_percent} | "
                    f"{r.machine_busy_percent} | {r.drops} | {r.loadavg_before} / {r.loadavg_after} |")
    pooled = summary["comparison"]["pooled"]
    for case in ("none", "3 sinks"):
        p = pooled[case]
        rows.append(f"| all | {case} | - | {cell(p['age_p50_ms'])} | {cell(p['age_p99_ms'])} | "
                    f"{cell(p['event_p50_ms'])} / {cell(p['event_p99_ms'])} ({p['event_n']}) | - | - | - | - | - | - |")
    rows += ["", "| round | p99 ratio, estimate ages | p99 ratio, events+summaries | p99 ratio, stats (max of streams) |",
             "|---|---|---|---|"]
    for c in summary["comparison"]["per_round"]:
        rows.append(f"| {c['round']} | {cell(c['age_p99_ratio'])} | {cell(c['event_p99_ratio'])} | "
                    f"{cell(c['stats_p99_max_ratio'])} |")
    rows.append(f"| pooled | {cell(summary['comparison']['age_p99_ratio_pooled'])} | "
                f"{cell(summary['comparison']['event_p99_ratio_pooled'])} | - |")
    rows += ["", "| round | sink | received (batches) | events+summaries got / in OUT (missing, dup) | "
             "estimates got / in OUT (missing, dup) | delivery delay p50 / p99 / max ms | broker CPU % |",
             "|---|---|---|---|---|---|---|"]
    broker_of = {"mqtt": "mosquitto", "redis": "redis-server", "webhook": "bench"}
    for r in runs:
        for c in r.consumers:
            durable_got = sum(c.per_type[k]["got"] for k in DURABLE)
            durable_out = sum(c.per_type[k]["out"] for k in DURABLE)
            durable_missing = sum(c.per_type[k]["missing"] for k in DURABLE)
            durable_dup = sum(c.per_type[k]["dup"] for k in DURABLE)
            e = c.per_type["estimate"]
            batches = "" if c.batches is None else f" ({c.batches})"
            rows.append(f"| {r.round} | {c.sink} | {c.received}{batches} | {durable_got} / {durable_out} "
                        f"({durable_missing}, {durable_dup}) | {e['got']} / {e['out']} ({e['missing']}, {e['dup']}) | "
                        f"{cell(c.delay_p50_ms)} / {cell(c.delay_p99_ms)} / {cell(c.delay_max_ms)} | "
                        f"{r.broker_cpu_percent.get(broker_of[c.sink], '-')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (no sinks, 3 sinks); 2 or more to compare")
    parser.add_argument("--seconds", type=float, default=40.0, help="--duration of each run")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds after a run's first estimate left out of the percentiles")
    parser.add_argument("--source", type=Path, default=SAMPLE, help="the video looped into the test input")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for `affectstream run` (repeatable), e.g. --server-arg=--rate=4")
    parser.add_argument("--keep", type=Path, help="make the input, outputs and logs in this folder and keep them"
                        " (default: a temporary folder, deleted but for the runs' stderr)")
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds is 1 or more")

    folder = args.keep or Path(tempfile.mkdtemp(prefix="sinks_overhead-"))
    folder.mkdir(parents=True, exist_ok=True)
    load_before = loadavg()
    video = make_input(args.source, folder, args.seconds + 60)  # model loading is before --duration starts
    brokers = Brokers(folder)
    runs: list[Run] = []
    try:
        for round_no in range(1, args.rounds + 1):
            for with_sinks in (False, True):
                run = one_run(round_no, with_sinks, video, folder, brokers, args.seconds, args.warmup, args.server_arg)
                runs.append(run)
                print(json.dumps({k: v for k, v in asdict(run).items() if k != "timeline"}), flush=True)
    finally:
        brokers.close()
    load_after = loadavg()
    summary: dict[str, Any] = {"loadavg_before": load_before, "loadavg_after": load_after, "machine": machine(),
                               "seconds": args.seconds, "warmup": args.warmup, "rounds": args.rounds,
                               "server_args": args.server_arg, "folder": str(folder)}
    summary["comparison"] = comparisons(runs)
    for c in summary["comparison"]["per_round"]:
        print(f"round {c['round']}: p99 with sinks / without: estimate ages {c['age_p99_ratio']}, "
              f"events+summaries {c['event_p99_ratio']}, stats (max of streams) {c['stats_p99_max_ratio']}")
    overall = summary["comparison"]["age_p99_ratio_pooled"]
    print(f"pooled over rounds: p99 of estimate ages with sinks / without = {overall} "
          f"({'within' if summary['comparison']['within_10_percent'] else 'NOT within'} 10 %); events+summaries "
          f"{summary['comparison']['event_p99_ratio_pooled']}")
    print(f"load average before {load_before}, after {load_after}; exit codes {[r.exit_code for r in runs]}")
    for r in runs:
        for line in r.stderr_problems[:5]:
            print(f"  round {r.round} {r.case} stderr: {line}")
        for c in r.consumers:
            for error in c.errors:
                print(f"  round {r.round} {c.sink}: {error}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": [asdict(r) for r in runs]}, indent=2))
    if args.markdown:
        print(f"\nMachine: {summary['machine']}\n")
        print(markdown(runs, summary))
    if not args.keep:
        video.unlink(missing_ok=True)
        for out in folder.glob("*.jsonl"):
            out.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
