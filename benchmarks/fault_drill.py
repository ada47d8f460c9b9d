"""The fault drill: issue 11's adversarial run against affectstream, repeated as one script.

Six sections, each against real peers (the real command in subprocesses, a real ``websockets``
client, GStreamer's RTSP server, a real SQLite event log, a real tmpfs); no mocks:

- ``media``: ~40 odd files (truncated, moov-less, empty, garbage, audio-only, 8K, rotated, zero
  timestamps, VFR, corrupt, 2x2, one frame, HTML as .mp4, a directory, mode 000, long and unicode
  names, ...) through ``affectstream analyze --model tiny-random``: no traceback, no hang, the exit
  status docs/cli.md gives its kind, a summary JSON that parses; peak RSS at 720p/4K/8K; rotation
  and zero timestamps repaired.
- ``server``: websocket and HTTP abuse of ``affectstream run --port P``: bad JSON, binary and huge
  frames, resume seqs >= 2^63 and negative (message and ``?resume=``), DNS rebinding (Host and Origin
  both evil.example), methods other than GET/HEAD, HEAD without a body, the connection cap, a reader
  that never reads.
- ``kill9``: ``--event-log FILE``, kill -9 right after an estimate, restart, resume from the highest
  seq seen: every durable message arrives and seq keeps increasing across the restart.
- ``rtsp``: a stalled, dropped, unreachable, silent and unresolvable camera: time to report against
  docs/cli.md, SIGTERM shutdown in each state (< 2 s), HTML and 404 URLs, and a second SIGTERM during
  the flush of a 4-file ``run --fast``.
- ``disk``: the event log on a 1 MiB tmpfs that fills up (root only; skipped with the reason
  otherwise) while a client listens; bad ``--event-log`` paths.
- ``soak``: a live-paced run of ``--minutes`` with faces off and a client: RSS slope, events missing.

Run from the repository root with the project's virtualenv::

    .venv/bin/python benchmarks/fault_drill.py                        # everything, 10-minute soak
    .venv/bin/python benchmarks/fault_drill.py --only media,server --json drill.json
    .venv/bin/python benchmarks/fault_drill.py --only soak --minutes 1

It prints one row per check (name, figure, limit, PASS/FAIL/SKIP) and exits 1 when any check
failed: a loss, a crash, a hang, a traceback or a figure over its limit.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

if str(Path(__file__).resolve().parent) not in sys.path:  # imported from elsewhere, not run as a script
    sys.path.append(str(Path(__file__).resolve().parent))  # its two helpers sit beside it
import _drill_media as corpus  # noqa: E402
import _drill_peers as peers  # noqa: E402

from affectstream.errors import ExitStatus  # noqa: E402

Message = dict[str, Any]
EXIT_STATUSES = frozenset(int(status) for status in ExitStatus)
MODEL = ("--model", "tiny-random")
ANALYZE_TIMEOUT_S = 240.0  # the 8K clip on a busy 2-core machine; a hang is anything longer
SHUTDOWN_LIMIT_S = 2.0  # issue 11: SIGTERM shutdown under 2 s in every state
READ_TIMEOUT_S = 5.0  # docs/cli.md: --read-timeout default
OPEN_TIMEOUT_S = 10.0  # docs/cli.md: --open-timeout default
REPORT_MARGIN_S = 1.5  # time a fault may take beyond its documented timeout to be reported
RSS_RATIO_8K = 1.5  # frames reduced at decode: 8K may cost at most this much more than 720p
RSS_SLOPE_LIMIT = 1.0  # MB per minute over the soak
UNHELPFUL = ("Immediate exit requested", "Input/output error", "Invalid data found",
             "pass a writable --event-log path")


@dataclass(frozen=True)
class Row:
    """One check: what was measured against what it must be."""

    section: str
    name: str
    figure: str
    limit: str
    passed: bool | None  # None: skipped (``note`` says why)
    note: str = ""

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]


@dataclass(frozen=True)
class Drill:
    """Settings shared by every section."""

    work: Path
    minutes: float = 10.0
    jobs: int = 2
    disk_seconds: float = 50.0


def row(section: str, name: str, figure: str, limit: str, passed: bool, problems: Iterable[str] = ()) -> Row:
    """A row that passes when ``passed`` holds and there are no problems; the problems are its note."""
    found = list(problems)
    return Row(section, name, figure, limit, passed and not found, "; ".join(found))


def checked(section: str, name: str, figure: str, limit: str, problems: list[str]) -> Row:
    """A row that passes when there are no problems; the problems are its note."""
    return Row(section, name, figure, limit, not problems, "; ".join(problems))


def skipped(section: str, name: str, reason: str) -> Row:
    return Row(section, name, "-", "-", None, reason)


def without_log_prefix(line: str) -> str:
    """A log line's message alone (``2026-01-01 10:00:00,000 ERROR logger: message`` -> message)."""
    parts = line.split(" ", 4)
    return parts[4] if len(parts) == 5 and parts[2].isupper() and parts[3].endswith(":") else line


def stderr_problems(stderr: str) -> list[str]:
    """A traceback (or a C++ abort) in stderr, named by its exception line."""
    if not peers.has_traceback(stderr):
        return []
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if peers.TRACEBACK in line or "terminate called" in line]
    after = lines[starts[0]:] if starts else lines
    exception = next((line for line in after[1:] if line and not line.startswith((" ", "\t"))), after[0])
    return [f"{len(starts)} traceback(s) in stderr: {exception.strip()[:100]}"]


def by_key(messages: Iterable[Message]) -> set[str]:
    """Messages as canonical text, to compare what was emitted with what a client received."""
    return {json.dumps(message, sort_keys=True) for message in messages}


def of_type(messages: Iterable[Message], *types: str) -> list[Message]:
    return [m for m in messages if m.get("type") in types]


def events(messages: Iterable[Message], kind: str) -> list[Message]:
    return [m for m in messages if m.get("type") == "event" and m.get("kind") == kind]


def looped_megamind(drill: Drill, seconds: float) -> Path:
    """Debian's talking face looped to ``seconds`` (360 px wide, 10 fps), made once per drill."""
    out = drill.work / "footage" / f"megamind-{int(seconds)}s.mp4"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        corpus.ffmpeg("-stream_loop", "-1", "-i", str(corpus.MEGAMIND), "-t", str(seconds), "-vf",
                      "scale=360:-2,fps=10", "-c:v", "libx264", "-preset", "ultrafast", "-g", "20", "-an", str(out))
    return out


@contextlib.contextmanager
def affectstream(args: list[str], cwd: Path, name: str) -> Iterator[peers.Affectstream]:
    """An ``affectstream`` process that is always gone when the block ends."""
    cwd.mkdir(parents=True, exist_ok=True)
    process = peers.Affectstream(args, cwd, name)
    try:
        yield process
    finally:
        process.kill()


# == (a) media corpus =====================================================================================


@dataclass(frozen=True)
class CaseRun:
    case: corpus.MediaCase
    finished: peers.Finished | None  # None: the input could not be built here
    summary: Message | None
    messages: list[Message]
    build_error: str = ""


def analyze_case(case: corpus.MediaCase, folder: Path) -> CaseRun:
    case_dir = folder / case.name
    case_dir.mkdir(parents=True, exist_ok=True)
    try:
        path = case.make(case_dir)
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        return CaseRun(case, None, None, [], f"cannot build it here: {error}")
    run_dir = case_dir / "run"  # the cwd: NAME.affect.json lands here
    run_dir.mkdir()
    out = run_dir / "messages.jsonl"
    finished = peers.run_measured([*peers.AFFECTSTREAM, "analyze", str(path), *MODEL, "--no-progress",
                                   "--out", str(out)], run_dir, ANALYZE_TIMEOUT_S)
    summary = None
    with contextlib.suppress(ValueError):
        parsed = json.loads(finished.stdout) if finished.stdout.strip() else None
        summary = parsed if isinstance(parsed, dict) else None
    return CaseRun(case, finished, summary, peers.read_jsonl(out))


def media_row(run: CaseRun) -> Row:
    case, finished = run.case, run.finished
    if finished is None:
        return skipped("media", case.name, run.build_error)
    expected = "/".join(str(s) for s in sorted(case.expected))
    limit = f"exit {expected}, < {ANALYZE_TIMEOUT_S:.0f} s, no traceback"
    problems = stderr_problems(finished.stderr)
    if finished.timed_out:
        problems.append(f"hung: killed after {ANALYZE_TIMEOUT_S:.0f} s")
        return checked("media", case.name, f"hang ({case.kind})", limit, problems)
    if finished.status not in EXIT_STATUSES:
        problems.append(f"exit {finished.status} is not an ExitStatus")
    elif finished.status not in case.expected:
        problems.append(f"exit {finished.status}: its kind ({case.kind}) earns {expected}")
    if finished.stdout.strip() and run.summary is None:
        problems.append("stdout is not a JSON object")
    if finished.status in (ExitStatus.OK, ExitStatus.PARTIAL) and run.summary is None:
        problems.append("no summary JSON on stdout")
    frames = run.summary.get("frames") if run.summary else "-"
    figure = f"exit {finished.status}, {finished.seconds:.1f} s, {frames} est, {finished.peak_rss_mb:.0f} MB"
    return checked("media", case.name, figure, limit, problems)


def resolution_memory_row(runs: dict[str, CaseRun]) -> Row:
    peaks = {name: runs[name].finished for name in ("720p", "4k", "8k") if name in runs}
    if any(f is None or f.status != ExitStatus.OK for f in peaks.values()) or len(peaks) < 3:
        return Row("media", "peak-rss-by-resolution", "-", "-", False, "720p, 4K and 8K must all analyse (exit 0)")
    mb = {name: f.peak_rss_mb for name, f in peaks.items() if f is not None}
    ratio = mb["8k"] / mb["720p"]
    figure = f"720p {mb['720p']:.0f} / 4K {mb['4k']:.0f} / 8K {mb['8k']:.0f} MB ({ratio:.2f}x)"
    return row("media", "peak-rss-by-resolution", figure, f"8K <= {RSS_RATIO_8K}x 720p", ratio <= RSS_RATIO_8K)


def _largest_box(estimate: Message) -> list[float] | None:
    boxes = [face["box"] for face in estimate.get("faces") or []]
    return max(boxes, key=lambda b: b[2] * b[3]) if boxes else None


def _box_offsets(rotated: list[Message], upright: list[Message]) -> list[float]:
    """Per frame with a face in both clips (same pictures, same times): how far the largest face's
    centre in the rotated clip is from the upright clip's, as a share of the displayed width."""
    width = corpus.MEGAMIND_SIZE[0]
    reference = {round(m["ts"], 2): box for m in of_type(upright, "estimate") if (box := _largest_box(m))}
    offsets = []
    for estimate in of_type(rotated, "estimate"):
        box, other = _largest_box(estimate), reference.get(round(estimate["ts"], 2))
        if box and other:
            dx = (box[0] + box[2] / 2) - (other[0] + other[2] / 2)
            dy = (box[1] + box[3] / 2) - (other[1] + other[3] / 2)
            offsets.append((dx * dx + dy * dy) ** 0.5 / width)
    return offsets


def rotation_row(runs: dict[str, CaseRun]) -> Row:
    """The rotated clip is seen as a player shows it: its face boxes sit where the upright clip's do
    (a detector finds sideways faces too, so only the boxes tell)."""
    rotated, upright = runs.get("rotated-90"), runs.get("megamind-mp4")
    if rotated is None or upright is None or rotated.finished is None or upright.finished is None:
        return skipped("media", "rotated-90-as-shown", "rotated-90 or megamind-mp4 did not run")
    offsets = _box_offsets(rotated.messages, upright.messages)
    faces = sum(_largest_box(m) is not None for m in of_type(upright.messages, "estimate"))
    median = statistics.median(offsets) if offsets else float("nan")
    figure = f"face centre {median:.0%} of the width from upright's ({len(offsets)} of {faces} frames)"
    passed = faces > 0 and len(offsets) >= faces / 2 and median <= 0.05
    return row("media", "rotated-90-as-shown", figure, "<= 5%, >= half the frames", passed)


def zero_timestamps_row(runs: dict[str, CaseRun]) -> Row:
    zero, reference = runs.get("zero-timestamps"), runs.get("megamind-mp4")
    if zero is None or reference is None or zero.summary is None or reference.summary is None:
        return Row("media", "zero-timestamps-repaired", "-", "-", False, "no summary to compare")
    frames, expected = int(zero.summary.get("frames", 0)), int(reference.summary.get("frames", 0))
    damage = zero.summary.get("damage") or {}
    figure = f"{frames} of {expected} estimates; truncated={damage.get('truncated')}; {damage.get('detail', '')[:60]}"
    passed = expected > 0 and frames >= 0.9 * expected and not damage.get("truncated")
    return row("media", "zero-timestamps-repaired", figure, ">= 90% of reference, not truncated", passed)


def check_media(drill: Drill) -> list[Row]:
    folder = drill.work / "media"
    cases = corpus.corpus()
    try:
        with ThreadPoolExecutor(max(1, drill.jobs)) as pool:
            runs = dict(zip([c.name for c in cases], pool.map(lambda c: analyze_case(c, folder), cases)))
    finally:
        corpus.restore_permissions(folder)
    rows = [media_row(run) for run in runs.values()]
    return [*rows, resolution_memory_row(runs), rotation_row(runs), zero_timestamps_row(runs)]


# == (b) server abuse =====================================================================================


def _ws_url(port: int, query: str = "") -> str:
    return f"ws://127.0.0.1:{port}/ws{query}"


def _next_of(ws: Any, types: set[str], timeout_s: float) -> tuple[Message | None, int | None]:
    """The next message of one of ``types`` (others skipped), or the close code if it closed first."""
    from websockets.exceptions import ConnectionClosed

    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                message = json.loads(ws.recv(timeout=max(0.05, deadline - time.monotonic())))
            except TimeoutError:
                break
            if message.get("type") in types:
                return message, None
    except ConnectionClosed as closed:
        return None, closed.rcvd.code if closed.rcvd is not None else 1006
    return None, None


def _still_open(ws: Any) -> bool:
    ws.send(json.dumps({"type": "subscribe", "types": ["summary", "event"]}))
    reply, _ = _next_of(ws, {"subscribed"}, 5)
    return reply is not None


def bad_message_row(port: int, name: str, frame: str | bytes, code: str) -> Row:
    """A bad client message gets an ``error`` with ``code`` and the connection stays open."""
    from websockets.sync.client import connect

    with connect(_ws_url(port), open_timeout=10, max_size=None) as ws:
        ws.send(frame)
        reply, closed = _next_of(ws, {"error"}, 5)
        open_after = closed is None and _still_open(ws)
    got = reply.get("code") if reply else (f"closed {closed}" if closed else "no reply")
    figure = f"{got}, {'still open' if open_after else 'connection gone'}"
    return row("server", name, figure, f"error {code}, stays open", got == code and open_after)


def close_code_row(port: int, name: str, frames: list[str], code: int) -> Row:
    from websockets.sync.client import connect

    with connect(_ws_url(port), open_timeout=10, max_size=None) as ws:
        for frame in frames:
            ws.send(frame)
        _, closed = _next_of(ws, {"__never__"}, 10)
    return row("server", name, f"closed {closed}" if closed else "still open", f"closed {code}", closed == code)


def upgrade_row(port: int, name: str, expected: int, query: str = "", host: str | None = None,
                origin: str | None = None) -> Row:
    reply = peers.websocket_upgrade(port, "/ws" + query, host_header=host, origin=origin)
    return row("server", name, f"HTTP {reply.status}", f"HTTP {expected}", reply.status == expected)


def methods_row(port: int) -> Row:
    answers = {}
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
        reply = peers.http_exchange(port, method, "/", {"Content-Length": "0"})
        answers[method] = (reply.status, b"<html" in reply.body.lower())
    figure = ", ".join(f"{m} {status}{' +dashboard' if page else ''}" for m, (status, page) in answers.items())
    passed = all(status != 200 and not page for status, page in answers.values())
    return row("server", "methods-other-than-get-head", figure, "none 200, no dashboard", passed)


def head_row(port: int) -> Row:
    reply = peers.http_exchange(port, "HEAD", "/")
    figure = f"HTTP {reply.status}, body {len(reply.body)} bytes"
    return row("server", "head-has-no-body", figure, "HTTP 200, 0 bytes", reply.status == 200 and not reply.body)


def dashboard_row(port: int) -> Row:
    reply = peers.http_exchange(port, "GET", "/")
    figure = f"HTTP {reply.status}, {len(reply.body)} bytes"
    return row("server", "get-dashboard", figure, "HTTP 200 with the page", reply.status == 200 and bool(reply.body))


def connection_cap_row(port: int, cap: int) -> Row:
    """``cap`` clients get in, one more gets 503 with Retry-After, and a place that frees up is reusable."""
    time.sleep(1)  # the connections of the checks before are gone from the server's count
    recorders = [peers.start_recorder(_ws_url(port)) for _ in range(cap)]
    try:
        admitted = sum(r.wait_until(lambda ms: bool(of_type(ms, "hello")), 10) for r in recorders)
        over = peers.websocket_upgrade(port)
        recorders.pop().stop()
        after, deadline = 0, time.monotonic() + 5
        while time.monotonic() < deadline and after != 101:
            after = peers.websocket_upgrade(port).status
            time.sleep(0.2)
    finally:
        for recorder in recorders:
            recorder.stop()
    retry_after = over.headers.get("retry-after", "none")
    figure = f"{admitted}/{cap} admitted; #{cap + 1}: HTTP {over.status} Retry-After {retry_after}; then {after}"
    passed = admitted == cap and over.status == 503 and retry_after != "none" and after == 101
    return row("server", "connection-cap", figure, f"{cap} in, 503 + Retry-After, 101 after one left", passed)


def slow_reader_row(port: int, seconds: float = 12.0) -> Row:
    """Clients that never read (each asking for the whole history) must not stall the pipeline nor the
    other clients."""
    everything = "?resume=" + quote(json.dumps({"srv": -1}))
    stalled = [peers.StalledReader(port, everything) for _ in range(3)]
    fast = peers.start_recorder(_ws_url(port))
    try:
        time.sleep(seconds)
        arrivals = fast.arrival_times()[1:]  # after the hello
    finally:
        fast.stop()
        for reader in stalled:
            reader.close()
    estimates = len(of_type(fast.messages(), "estimate"))
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])] or [seconds]
    answers = "/".join(reader.status_line.strip()[-3:] for reader in stalled)
    figure = f"3 stalled readers {answers}; max gap {max(gaps):.2f} s; {estimates} est in {seconds:.0f} s"
    passed = max(gaps) <= 2.0 and estimates >= seconds  # files sample 2 Hz: at least half of that
    return row("server", "slow-reader-stalls-nobody", figure, "max gap <= 2 s, >= 1 est/s", passed)


def ipv6_url_row(drill: Drill, video: Path) -> Row:
    """The dashboard URL of an IPv6 host is printed with brackets (http://[::1]:P/)."""
    try:
        with contextlib.closing(socket.socket(socket.AF_INET6)) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        return skipped("server", "ipv6-url-bracketed", f"no IPv6 loopback here: {error}")
    with affectstream(["run", f"v6={video}", *MODEL, "--faces", "off", "--host", "::1", "--port", "0", "--quiet",
                       "--duration", "3"], drill.work / "server", "ipv6") as process:
        status = process.wait(90)
        stderr = process.stderr()
    line = next((text for text in stderr.splitlines() if "http://" in text), "no URL printed")
    passed = "http://[::1]:" in line and status == ExitStatus.OK
    return row("server", "ipv6-url-bracketed", line.split(" at ")[-1][:60], "http://[::1]:PORT/, exit 0", passed,
               stderr_problems(stderr))


def _server_checks(port: int, cap: int) -> list[tuple[str, Callable[[], Row]]]:
    """(name, check) of every abuse, in the order they run against one server."""
    resume = {"2^63": 2**63, "2^64": 2**64, "-2": -2, "-2^63-1": -(2**63) - 1}
    checks: list[tuple[str, Callable[[], Row]]] = [
        ("bad-json", lambda: bad_message_row(port, "bad-json", "{not json", "bad_json")),
        ("binary-frame", lambda: bad_message_row(port, "binary-frame", b"\x00\x01\x02", "bad_message")),
        ("unknown-type", lambda: bad_message_row(port, "unknown-type", json.dumps({"type": "dance"}),
                                                 "unknown_type")),
        ("resume-seq-text", lambda: bad_message_row(
            port, "resume-seq-text", json.dumps({"type": "resume", "streams": {"srv": "x"}}), "bad_message")),
    ]
    for label, seq in resume.items():
        frame, name = json.dumps({"type": "resume", "streams": {"srv": seq}}), f"resume-seq-{label}"
        checks.append((name, functools.partial(bad_message_row, port, name, frame, "bad_message")))
    for label, value in {**resume, "not-json": "nope{", "a-list": "[1, 2]"}.items():
        text = value if isinstance(value, str) else json.dumps({"srv": value})
        query, name = f"?resume={quote(text)}", f"url-resume-{label}"
        checks.append((name, functools.partial(upgrade_row, port, name, 400, query)))
    evil = f"evil.example:{port}"
    return checks + [
        ("url-resume-all-ok", lambda: upgrade_row(port, "url-resume-all-ok", 101,
                                                  f"?resume={quote(json.dumps({'srv': -1}))}")),
        ("huge-message-1MiB", lambda: close_code_row(port, "huge-message-1MiB", ["x" * (1 << 20)], 1009)),
        ("malformed-flood", lambda: close_code_row(port, "malformed-flood", ["nope"] * 25, 1008)),
        ("dns-rebinding", lambda: upgrade_row(port, "dns-rebinding", 403, host=evil, origin=f"http://{evil}")),
        ("foreign-origin", lambda: upgrade_row(port, "foreign-origin", 403, origin="http://evil.example")),
        ("same-origin-ok", lambda: upgrade_row(port, "same-origin-ok", 101, origin=f"http://127.0.0.1:{port}")),
        ("localhost-origin-ok", lambda: upgrade_row(port, "localhost-origin-ok", 101, host=f"localhost:{port}",
                                                    origin=f"http://localhost:{port}")),
        ("methods-other-than-get-head", lambda: methods_row(port)),
        ("head-has-no-body", lambda: head_row(port)),
        ("get-dashboard", lambda: dashboard_row(port)),
        ("connection-cap", lambda: connection_cap_row(port, cap)),
        ("slow-reader-stalls-nobody", lambda: slow_reader_row(port)),
    ]


def guarded(section: str, name: str, check: Callable[[], Row]) -> Row:
    """Run one check; a failure of the drill's own client (refused, reset) is that check's failure."""
    try:
        return check()
    except Exception as error:  # a crash of the peer under test shows up here
        return Row(section, name, "-", "-", False, f"{type(error).__name__}: {error}"[:200])


def check_server(drill: Drill) -> list[Row]:
    video = looped_megamind(drill, 300)
    port, cap = peers.free_port(), 8
    args = ["run", f"srv={video}", *MODEL, "--faces", "off", "--port", str(port), "--max-connections", str(cap),
            "--windows", "1,5", "--quiet", "--duration", "600"]
    rows: list[Row] = []
    with affectstream(args, drill.work / "server", "server") as server:
        if not server.wait_http(port):
            return [Row("server", "server-starts", "-", "-", False, server.stderr()[-300:])]
        rows += [guarded("server", name, check) for name, check in _server_checks(port, cap)]
        alive = server.alive() and server.wait_http(port, 5)
        rows.append(row("server", "alive-after-abuse", "healthz 200" if alive else "down", "healthz 200", alive))
        status = server.stop()
        rows.append(checked("server", "exit-after-abuse", f"exit {status}", "exit 0, no traceback",
                            stderr_problems(server.stderr()) + ([] if status == 0 else [f"exit {status}"])))
    rows.append(guarded("server", "ipv6-url-bracketed", lambda: ipv6_url_row(drill, video)))
    return rows


# == (c) kill -9 and resume ===============================================================================


def _stored_durable(event_log: Path) -> list[Message]:
    with contextlib.closing(sqlite3.connect(f"file:{event_log}?mode=ro", uri=True)) as db:
        return [json.loads(body) for (body,) in db.execute("SELECT body FROM messages ORDER BY stream, seq")]


def _seq_violations(messages: list[Message]) -> list[str]:
    """Every place a stream's seq does not go up (across every type, hence also within each type)."""
    last: dict[str, tuple[int, str]] = {}
    bad = []
    for message in messages:
        if "seq" not in message:
            continue
        stream, seq, what = message["stream"], int(message["seq"]), str(message.get("kind", message["type"]))
        if stream in last and seq <= last[stream][0]:
            bad.append(f"{what} {seq} after {last[stream][1]} {last[stream][0]}")
        last[stream] = (seq, what)
    return bad


class KillAfterEstimate:
    """on_message for the first client: kill -9 the server the moment an estimate arrives, once enough
    summaries have been durably logged (so that there is something to resume)."""

    def __init__(self, pid: int, summaries: int = 3) -> None:
        self.pid, self.summaries, self.seen, self.killed_at_seq = pid, summaries, 0, -1

    def __call__(self, message: Message) -> None:
        self.seen += message.get("type") == "summary"
        if self.killed_at_seq < 0 and message.get("type") == "estimate" and self.seen >= self.summaries:
            os.kill(self.pid, signal.SIGKILL)
            self.killed_at_seq = int(message["seq"])


def _kill9_first_run(args: list[str], folder: Path, port: int) -> tuple[list[Message], int, str]:
    with affectstream(args + ["--out", str(folder / "run1.jsonl")], folder, "run1") as first:
        if not first.wait_http(port):
            raise RuntimeError(f"the first run did not start: {first.stderr()[-300:]}")
        killer = KillAfterEstimate(first.pid)
        # From the start of the log: a stream_started published before this client connected counts.
        client = peers.start_recorder(_ws_url(port, "?resume=" + quote(json.dumps({"k": -1}))), on_message=killer)
        client.wait_until(lambda ms: killer.killed_at_seq >= 0, 90)
        first.wait(10)
        received = client.stop()
    return received.messages, killer.killed_at_seq, first.stderr()


def check_kill9(drill: Drill) -> list[Row]:
    folder = drill.work / "kill9"
    folder.mkdir(parents=True, exist_ok=True)
    event_log, port = folder / "events.db", peers.free_port()
    args = ["run", f"k={looped_megamind(drill, 300)}", *MODEL, "--faces", "off", "--port", str(port),
            "--event-log", str(event_log), "--windows", "1,5", "--quiet"]
    before, killed_at, _ = _kill9_first_run(args, folder, port)
    highest = max(int(m["seq"]) for m in before if "seq" in m)
    with affectstream(args + ["--out", str(folder / "run2.jsonl")], folder, "run2") as second:
        if not second.wait_http(port):
            return [Row("kill9", "restart", "-", "-", False, second.stderr()[-300:])]
        client = peers.start_recorder(_ws_url(port, "?resume=" + quote(json.dumps({"k": highest}))))
        second.wait_for(folder / "run2.jsonl", lambda ms: len(of_type(ms, "summary")) >= 4, 60)
        time.sleep(1)
        status = second.stop()
        after = client.stop().messages
        stderr = second.stderr()
    return kill9_rows(before, after, highest, killed_at, status, stderr, event_log, folder / "run2.jsonl")


def kill9_rows(before: list[Message], after: list[Message], highest: int, killed_at: int, status: int | None,
               stderr: str, event_log: Path, out2: Path) -> list[Row]:
    emitted_after = peers.read_jsonl(out2)
    durable = by_key(_stored_durable(event_log)) | by_key(of_type(emitted_after, "event", "summary"))
    received = by_key(before) | by_key(after)
    missing = sorted(durable - received)
    missing_kinds = [json.loads(m).get("kind", json.loads(m)["type"]) for m in missing]
    started = events(emitted_after, "stream_started")
    got_started = bool(started) and by_key(started[:1]) <= received
    violations = _seq_violations(before + after)
    first_after = min((int(m["seq"]) for m in after if "seq" in m), default=None)
    return [
        row("kill9", "durable-delivered", f"{len(missing)} of {len(durable)} missing {missing_kinds[:4]}", "0 missing",
            not missing),
        row("kill9", "new-stream-started-delivered", "received" if got_started else "never received", "received",
            got_started),
        row("kill9", "seq-increasing-across-restart",
            f"killed after est {killed_at}; resumed from {highest}; first after {first_after}; "
            f"{len(violations)} back-steps", "0 back-steps", not violations, violations[:3]),
        checked("kill9", "restart-exit", f"exit {status}", "exit 0, no traceback",
                stderr_problems(stderr) + ([] if status == 0 else [f"exit {status}"])),
    ]


# == (d) RTSP faults and signals ==========================================================================


@dataclass(frozen=True)
class Outcome:
    """How a live run ended after the drill stopped it (or it stopped itself)."""

    status: int | None
    seconds: float  # from the signal (or the start) to the exit
    messages: list[Message]
    stderr: str


def _live_args(source: str, out: Path, *extra: str) -> list[str]:
    return ["run", f"door={source}", *MODEL, "--faces", "off", "--no-serve", "--quiet", "--out", str(out),
            "--rate", "4", *extra]


def _estimates(count: int) -> Callable[[list[Message]], bool]:
    return lambda ms: len(of_type(ms, "estimate")) >= count


def _streaming(process: peers.Affectstream, out: Path) -> None:
    """Wait for the camera's first estimates; without them the fault that follows would prove nothing."""
    if not process.wait_for(out, _estimates(4), 90):
        raise RuntimeError(f"no estimates from the camera within 90 s: {process.stderr()[-200:]}")


def _terminate(process: peers.Affectstream, out: Path, number: int = signal.SIGTERM) -> Outcome:
    sent = process.signal(number)
    status = process.wait(30)
    seconds = time.monotonic() - sent
    if status is None:
        process.kill()
    return Outcome(status, seconds, peers.read_jsonl(out), process.stderr())


def _fault_event_after(messages: list[Message], wall_s: float) -> Message | None:
    kinds = ("stream_reconnecting", "stream_error")
    return next((m for m in messages if m.get("kind") in kinds and m["wall"] / 1000 >= wall_s), None)


def shutdown_row(name: str, outcome: Outcome, expected: int) -> Row:
    problems = stderr_problems(outcome.stderr)
    if outcome.status != expected:
        problems.append(f"exit {outcome.status}")
    # A stream that never opened may end with its stream_error; one that was up ends with stream_ended.
    ends = ["stream_ended"] if expected == ExitStatus.OK else ["stream_ended", "stream_error"]
    if not any(events(outcome.messages, kind) for kind in ends):
        problems.append("no stream_ended")
    if outcome.seconds >= SHUTDOWN_LIMIT_S:
        problems.append(f"took {outcome.seconds:.1f} s")
    figure = f"{outcome.seconds:.2f} s, exit {outcome.status}"
    return checked("rtsp", name, figure, f"< {SHUTDOWN_LIMIT_S:.0f} s, exit {expected}, stream_ended", problems)


def message_row(name: str, event: Message | None, must_mention: tuple[str, ...] = ()) -> Row:
    detail = str((event or {}).get("detail", ""))
    problems = [f"says '{phrase}'" for phrase in UNHELPFUL if phrase in detail]
    if event is None:
        problems.append("no event")
    elif must_mention and not any(word.lower() in detail.lower() for word in must_mention):
        problems.append(f"does not mention {'/'.join(must_mention)}")
    return checked("rtsp", name, detail[:70] or "-", "says what happened", problems)


@contextlib.contextmanager
def _camera_run(drill: Drill, name: str) -> Iterator[tuple[peers.RtspCamera, peers.Affectstream, Path]]:
    """A live run of a fresh RTSP camera, streaming: (camera, the run, its JSONL); the camera is killed after."""
    camera = peers.RtspCamera()
    camera.start()
    out = drill.work / "rtsp" / f"{name}.jsonl"
    try:
        with affectstream(_live_args(camera.url, out), drill.work / "rtsp", name) as process:
            _streaming(process, out)
            yield camera, process, out
    finally:
        camera.kill()


def rtsp_streaming(drill: Drill) -> list[Row]:
    with _camera_run(drill, "streaming") as (_, process, out):
        return [shutdown_row("sigterm-streaming", _terminate(process, out), ExitStatus.OK)]


def rtsp_stall(drill: Drill) -> list[Row]:
    """A frozen camera: reported after the read timeout; SIGTERM while the source reopens."""
    with _camera_run(drill, "stall") as (camera, process, out):
        frozen = camera.freeze()
        process.wait_for(out, lambda ms: _fault_event_after(ms, frozen) is not None, 30)
        event = _fault_event_after(peers.read_jsonl(out), frozen)
        time.sleep(1.5)  # backoff, then an open that hangs on the frozen server
        outcome = _terminate(process, out)
    return [report_row("stall-reported", frozen, event, READ_TIMEOUT_S, "read timeout"),
            message_row("stall-message", event, ("frame", "timeout", "stall", "no data")),
            shutdown_row("sigterm-reopening", outcome, ExitStatus.OK)]


def rtsp_stalled_signal(drill: Drill) -> list[Row]:
    """SIGTERM while the camera is frozen and the read timeout has not fired yet."""
    with _camera_run(drill, "stalled") as (camera, process, out):
        camera.freeze()
        time.sleep(2)
        return [shutdown_row("sigterm-stalled", _terminate(process, out), ExitStatus.OK)]


def rtsp_drop(drill: Drill) -> list[Row]:
    """The camera process dies: reported within the read timeout; SIGTERM while reconnecting."""
    with _camera_run(drill, "drop") as (camera, process, out):
        gone = camera.kill()
        process.wait_for(out, lambda ms: _fault_event_after(ms, gone) is not None, 30)
        event = _fault_event_after(peers.read_jsonl(out), gone)
        time.sleep(1.5)  # now in the backoff between reopen attempts
        outcome = _terminate(process, out)
    return [report_row("drop-reported", gone, event, READ_TIMEOUT_S, "read timeout"),
            shutdown_row("sigterm-reconnecting", outcome, ExitStatus.OK)]


def report_row(name: str, fault_at: float, event: Message | None, documented_s: float, what: str) -> Row:
    limit = f"<= {documented_s + REPORT_MARGIN_S:.1f} s ({what} {documented_s:.0f} s)"
    if event is None:
        return Row("rtsp", name, "never reported", limit, False, "no stream_reconnecting/stream_error within 30 s")
    seconds = event["wall"] / 1000 - fault_at
    return row("rtsp", name, f"{seconds:.2f} s ({event['kind']})", limit, seconds <= documented_s + REPORT_MARGIN_S)


def failed_open_rows(drill: Drill, name: str, source: str, documented_s: float, what: str,
                     mention: tuple[str, ...], *extra: str) -> list[Row]:
    """A source that never opens: stream_error within its documented time after the pipeline starts,
    exit 4, a message that helps."""
    out = drill.work / "rtsp" / f"{name}.jsonl"
    with affectstream(_live_args(source, out, *extra), drill.work / "rtsp", name) as process:
        status = process.wait(documented_s + 120)
        stderr = process.stderr()
    messages = peers.read_jsonl(out)
    error = next(iter(events(messages, "stream_error")), None)
    started = peers.pipeline_started_at(stderr)
    problems = stderr_problems(stderr) + ([] if status == ExitStatus.NOTHING else [f"exit {status}"])
    if error is None or started is None:
        problems.append("no stream_error" if error is None else "no model-loaded log line to time from")
        figure = f"exit {status}"
    else:
        seconds = error["wall"] / 1000 - started
        figure = f"{seconds:.2f} s, exit {status}"
        if seconds > documented_s + REPORT_MARGIN_S:
            problems.append(f"reported after {seconds:.1f} s")
    limit = f"<= {documented_s + REPORT_MARGIN_S:.1f} s ({what}), exit 4"
    return [checked("rtsp", name, figure, limit, problems), message_row(f"{name}-message", error, mention)]


def rtsp_opening_signal(drill: Drill, silent: peers.SilentListener) -> list[Row]:
    """SIGTERM while the source is still opening (a server that accepts and never answers)."""
    out = drill.work / "rtsp" / "opening.jsonl"
    with affectstream(_live_args(f"rtsp://127.0.0.1:{silent.port}/x", out), drill.work / "rtsp", "opening") as p:
        deadline = time.monotonic() + 90
        while peers.pipeline_started_at(p.stderr()) is None and time.monotonic() < deadline and p.alive():
            time.sleep(0.1)
        time.sleep(1.5)
        return [shutdown_row("sigterm-opening", _terminate(p, out), ExitStatus.NOTHING)]


def second_sigterm_row(drill: Drill) -> Row:
    """Two SIGTERMs during the flush of a 4-file ``run --fast``: a clean exit with every stream_ended."""
    out = drill.work / "rtsp" / "four.jsonl"
    sources = [f"{name}={corpus.VTEST}" for name in "abcd"]
    args = ["run", *sources, *MODEL, "--fast", "--no-serve", "--quiet", "--out", str(out)]
    with affectstream(args, drill.work / "rtsp", "four") as process:
        process.wait_for(out, lambda ms: {m["stream"] for m in of_type(ms, "estimate")} >= set("abcd"), 120)
        process.signal(signal.SIGTERM)
        time.sleep(0.3)
        outcome = _terminate(process, out)
        outcome = Outcome(outcome.status, outcome.seconds + 0.3, outcome.messages, outcome.stderr)
    ended = {m["stream"] for m in events(outcome.messages, "stream_ended")}
    problems = stderr_problems(outcome.stderr)
    if outcome.status not in (ExitStatus.OK, ExitStatus.TERMINATED):
        problems.append(f"exit {outcome.status}")
    if ended != set("abcd"):
        problems.append(f"stream_ended for {sorted(ended)}")
    if outcome.seconds >= SHUTDOWN_LIMIT_S:
        problems.append(f"took {outcome.seconds:.1f} s")
    figure = f"exit {outcome.status} in {outcome.seconds:.2f} s, stream_ended {len(ended)}/4"
    return checked("rtsp", "second-sigterm-in-flush", figure, "exit 0/143 (not 134), 4/4, < 2 s", problems)


def url_rows(drill: Drill) -> list[Row]:
    """An HTML page and a permanent 404 behind http:// fail at once (not retried for ever)."""
    pages = peers.WebPages()
    try:
        base = f"http://127.0.0.1:{pages.port}"
        return [*failed_open_rows(drill, "http-html-page", f"{base}/page.mp4", 2.0, "not a video: at once",
                                  ("html", "not a video", "video")),
                *failed_open_rows(drill, "http-404", f"{base}/missing.mp4", 2.0, "not there: at once",
                                  ("404", "not found"))]
    finally:
        pages.close()


def check_rtsp(drill: Drill) -> list[Row]:
    (drill.work / "rtsp").mkdir(parents=True, exist_ok=True)
    missing = peers.gstreamer_missing()
    rows: list[Row] = []
    if missing:
        rows.append(skipped("rtsp", "rtsp-camera", missing))
    else:
        for scenario in (rtsp_streaming, rtsp_stall, rtsp_stalled_signal, rtsp_drop):
            rows += guarded_many("rtsp", scenario.__name__, functools.partial(scenario, drill))
    closed_port = peers.free_port()
    rows += guarded_many("rtsp", "unreachable", lambda: failed_open_rows(
        drill, "unreachable", f"rtsp://127.0.0.1:{closed_port}/x", 1.0, "refused: at once",
        ("refused", "cannot connect"), "--open-retries", "0"))
    rows += guarded_many("rtsp", "unresolvable", lambda: failed_open_rows(
        drill, "unresolvable", "rtsp://nonexistent.invalid:8554/x", OPEN_TIMEOUT_S, "open timeout",
        ("resolve", "name", "dns", "unknown host"), "--open-retries", "0"))
    silent = peers.SilentListener()
    try:
        rows += guarded_many("rtsp", "open-timeout", lambda: failed_open_rows(
            drill, "open-timeout", f"rtsp://127.0.0.1:{silent.port}/x", 3.0, "--open-timeout 3",
            ("no answer", "timeout", "timed out"), "--open-timeout", "3", "--open-retries", "0"))
        rows += guarded_many("rtsp", "sigterm-opening", lambda: rtsp_opening_signal(drill, silent))
    finally:
        silent.close()
    rows += guarded_many("rtsp", "url", lambda: url_rows(drill))
    rows.append(guarded("rtsp", "second-sigterm-in-flush", lambda: second_sigterm_row(drill)))
    return rows


def guarded_many(section: str, name: str, check: Callable[[], list[Row]]) -> list[Row]:
    try:
        return check()
    except Exception as error:  # the drill goes on with the next scenario
        return [Row(section, name, "-", "-", False, f"{type(error).__name__}: {error}"[:200])]


# == (e) full disk ========================================================================================


@contextlib.contextmanager
def tiny_tmpfs(folder: Path, free_kb: int) -> Iterator[str]:
    """A 1 MiB tmpfs mounted on ``folder``, filled up to ``free_kb`` free; yields '' or why it cannot be."""
    if os.geteuid() != 0:
        yield f"not root (uid {os.geteuid()}): cannot mount a tmpfs"
        return
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        yield f"mount -t tmpfs refused: {mounted.stderr.strip()[:120]}"
        return
    try:
        stat = os.statvfs(folder)
        fill = stat.f_bavail * stat.f_frsize - free_kb * 1024
        (folder / "filler").write_bytes(b"\0" * max(0, fill))
        yield ""
    finally:
        subprocess.run(["umount", str(folder)], check=False, capture_output=True)


def _free_kb(folder: Path) -> float:
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize / 1024


def full_disk_rows(drill: Drill, mount: Path, port: int) -> list[Row]:
    folder = drill.work / "disk"
    out = folder / "all.jsonl"
    video = looped_megamind(drill, drill.disk_seconds + 30)
    args = ["run", f"a={video}", f"b={video}", *MODEL, "--faces", "off", "--windows", "1,5", "--duration",
            str(drill.disk_seconds), "--event-log", str(mount / "events.db"), "--port", str(port), "--quiet",
            "--out", str(out)]
    with affectstream(args, folder, "full") as process:
        if not process.wait_http(port):
            return [Row("disk", "full-disk-run", "-", "-", False, process.stderr()[-300:])]
        client = peers.start_recorder(_ws_url(port, _resume_all("a", "b")))
        lowest_free = _free_kb(mount)
        deadline = time.monotonic() + drill.disk_seconds + 90
        while process.alive() and time.monotonic() < deadline:
            lowest_free = min(lowest_free, _free_kb(mount))
            time.sleep(0.2)
        status = process.wait(10)
        received = client.stop().messages
        stderr = process.stderr()
    return full_disk_verdicts(peers.read_jsonl(out), received, status, stderr, lowest_free)


def _resume_all(*streams: str) -> str:
    """?resume= asking for everything the log keeps: the client connects after the streams began."""
    return "?resume=" + quote(json.dumps({stream: -1 for stream in streams}))


def live_after_hello(emitted: list[Message], received: list[Message], margin_ms: float = 500) -> list[Message]:
    """The estimates emitted once the client was surely connected (its hello, plus a margin): those it
    must get live. Earlier ones are not replayed (only events and summaries are)."""
    hello = next((m for m in received if m.get("type") == "hello"), None)
    if hello is None:
        return of_type(emitted, "estimate")
    return [m for m in of_type(emitted, "estimate") if m["wall"] >= hello["wall"] + margin_ms]


def log_status_messages(messages: Iterable[Message]) -> list[Message]:
    """Messages that report the event log's state (a ``server_status``, or a stats/event field about it)."""
    return [m for m in messages if m.get("type") != "hello"
            and (any("log" in key for key in m) or "log" in str(m.get("kind", "")))]


def _delivered_row(name: str, emitted: list[Message], received: set[str]) -> Row:
    keys = by_key(emitted)
    got = len(keys & received)
    return row("disk", name, f"{got} of {len(keys)}", "all", bool(keys) and got == len(keys))


def full_disk_verdicts(emitted: list[Message], received: list[Message], status: int | None, stderr: str,
                       lowest_free_kb: float) -> list[Row]:
    got = by_key(received)
    log_lines = [line for line in stderr.splitlines() if ("event log" in line.lower() or "event-log" in line.lower())
                 and any(word in line.lower() for word in ("space", "full", "disk"))]
    errors = [line for line in stderr.splitlines() if " ERROR " in line or "Exception" in line]
    flagged = log_status_messages([*emitted, *received])
    failing = [m for m in flagged if "fail" in json.dumps(m).lower()]
    exit_ok = status in EXIT_STATUSES and status not in (ExitStatus.OK, ExitStatus.BUG)
    tail = [without_log_prefix(line) for line in stderr.strip().splitlines()[-1:]] or [""]
    return [
        row("disk", "log-filled-up", f"{lowest_free_kb:.0f} KB free at the lowest", "< 16 KB (the fault happened)",
            lowest_free_kb < 16),
        checked("disk", "no-traceback", f"{sum(peers.TRACEBACK in line for line in stderr.splitlines())} tracebacks",
                "0", stderr_problems(stderr)),
        _delivered_row("summaries-delivered", of_type(emitted, "summary"), got),
        _delivered_row("estimates-delivered", live_after_hello(emitted, received), got),
        _delivered_row("stream-ended-delivered", events(emitted, "stream_ended"), got),
        row("disk", "one-clear-error", f"{len(log_lines)} clear, {len(errors)} error lines",
            "1-5 lines naming the event log and the space", 1 <= len(log_lines) <= 5 and len(errors) <= 5),
        row("disk", "failure-in-the-stream", f"{len(failing)} messages say the log fails "
            f"({sorted({str(m.get('type')) for m in failing})})", ">= 1", bool(failing)),
        row("disk", "exit-says-log-failed", f"exit {status}: {tail[0][:60]}", "non-zero ExitStatus, not 1",
            exit_ok and "log" in tail[0].lower()),
    ]


def bad_event_log_rows(drill: Drill) -> list[Row]:
    """--event-log paths that cannot work: a usage error (2) naming the problem, no traceback."""
    folder = drill.work / "disk" / "paths"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a-file").write_text("not a directory\n")
    corrupt = corpus.tests_media().make_random_bytes(folder / "corrupt.db", size=8192)
    (folder / "a-directory.db").mkdir(exist_ok=True)
    video = corpus.tests_media().make_video(folder / "v.avi", seconds=2)
    cases = {"event-log-under-a-file": (folder / "a-file" / "events.db", ("directory", "not a dir")),
             "event-log-is-a-directory": (folder / "a-directory.db", ("directory",)),
             "event-log-corrupt": (corrupt, ("corrupt", "not an event log", "not a database", "malformed"))}
    rows = []
    for name, (path, mention) in cases.items():
        finished = peers.run_measured([*peers.AFFECTSTREAM, "run", str(video), *MODEL, "--faces", "off", "--port",
                                       "0", "--quiet", "--duration", "3", "--event-log", str(path)], folder, 120)
        said = without_log_prefix(next((line for line in reversed(finished.stderr.splitlines()) if line.strip()), ""))
        problems = stderr_problems(finished.stderr)
        if finished.status != ExitStatus.USAGE:
            problems.append(f"exit {finished.status}")
        if not any(word in said.lower() for word in mention) or any(p in said for p in UNHELPFUL):
            problems.append("the message does not say what is wrong")
        rows.append(checked("disk", name, f"exit {finished.status}: {said[:60]}", "exit 2, says what is wrong",
                            problems))
    return rows


def check_full_disk(drill: Drill) -> list[Row]:
    mount = drill.work / "disk" / "tmpfs"
    with tiny_tmpfs(mount, free_kb=64) as cannot:
        if cannot:
            rows = [skipped("disk", "full-disk", cannot)]
        else:
            rows = guarded_many("disk", "full-disk", lambda: full_disk_rows(drill, mount, peers.free_port()))
    return rows + guarded_many("disk", "bad-event-log-paths", lambda: bad_event_log_rows(drill))


# == (f) soak =============================================================================================


def rss_slope(samples: list[tuple[float, float]]) -> float:
    """MB per minute, least squares after the warm-up (the first 30 s or fifth of the run, the longer;
    a 1-minute soak is a smoke test: its slope is mostly warm-up noise)."""
    warm_up = max(30.0, 0.2 * samples[-1][0]) if samples else 0.0
    kept = [(t, mb) for t, mb in samples if t >= warm_up]
    if len(kept) < 3:
        return float("nan")
    times = [t / 60 for t, _ in kept]
    return float(statistics.linear_regression(times, [mb for _, mb in kept]).slope)


def check_soak(drill: Drill) -> list[Row]:
    folder = drill.work / "soak"
    out, port, seconds = folder / "all.jsonl", peers.free_port(), drill.minutes * 60
    video = looped_megamind(drill, seconds + 30)
    args = ["run", f"a={video}", f"b={video}", *MODEL, "--faces", "off", "--port", str(port), "--duration",
            f"{seconds:g}", "--quiet", "--out", str(out), "--event-log", str(folder / "events.db")]
    samples: list[tuple[float, float]] = []
    with affectstream(args, folder, "soak") as process:
        if not process.wait_http(port):
            return [Row("soak", "soak-run", "-", "-", False, process.stderr()[-300:])]
        client = peers.start_recorder(_ws_url(port, _resume_all("a", "b")))
        started = time.monotonic()
        while process.alive() and time.monotonic() - started < seconds - 5:  # steady state, not the stop
            mb = process.rss_mb()
            if mb is not None:
                samples.append((time.monotonic() - started, mb))
            time.sleep(2)
        status = process.wait(120)
        received = client.stop().messages
        stderr = process.stderr()
    (folder / "rss.csv").write_text("seconds,rss_mb\n" + "".join(f"{t:.1f},{mb:.1f}\n" for t, mb in samples))
    return soak_rows(peers.read_jsonl(out), received, samples, status, stderr, drill.minutes)


def soak_rows(emitted: list[Message], received: list[Message], samples: list[tuple[float, float]],
              status: int | None, stderr: str, minutes: float) -> list[Row]:
    slope = rss_slope(samples)
    first, last = (samples[0][1], samples[-1][1]) if samples else (0.0, 0.0)
    rows = [row("soak", "rss-slope", f"{slope:.2f} MB/min ({first:.0f} -> {last:.0f} MB, {len(samples)} samples, "
                f"{minutes:g} min)", f"<= {RSS_SLOPE_LIMIT} MB/min", slope <= RSS_SLOPE_LIMIT)]
    got = by_key(received)
    for stream in sorted({m["stream"] for m in emitted if "stream" in m}):
        durable = by_key(m for m in of_type(emitted, "event", "summary") if m["stream"] == stream)
        missing = len(durable - got)
        rows.append(row("soak", f"events-missing-{stream}", f"{missing} of {len(durable)}", "0",
                        bool(durable) and not missing))
    rows.append(checked("soak", "exit", f"exit {status}", "exit 0, no traceback",
                        stderr_problems(stderr) + ([] if status == 0 else [f"exit {status}"])))
    return rows


# == the table and the command ============================================================================

SECTIONS: dict[str, Callable[[Drill], list[Row]]] = {
    "media": check_media, "server": check_server, "kill9": check_kill9, "rtsp": check_rtsp,
    "disk": check_full_disk, "soak": check_soak,
}


def table(rows: list[Row]) -> str:
    headers = ("check", "figure", "limit", "result")
    cells = [(f"{r.section}/{r.name}", r.figure, r.limit, r.verdict + (f"  {r.note}" if r.note else ""))
             for r in rows]
    widths = [min(70, max(len(h), *(len(c[i]) for c in cells))) for i, h in enumerate(headers[:3])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, [*widths, 0])).rstrip()]
    lines.append("  ".join("-" * w for w in [*widths, 6]))
    for cell in cells:
        lines.append("  ".join([*(c[:w].ljust(w) for c, w in zip(cell[:3], widths)), cell[3]]))
    failed = sum(r.passed is False for r in rows)
    lines.append(f"\n{len(rows)} checks: {sum(r.passed is True for r in rows)} pass, {failed} fail, "
                 f"{sum(r.passed is None for r in rows)} skipped")
    return "\n".join(lines)


def run_sections(drill: Drill, names: list[str]) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        started = time.monotonic()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        rows += guarded_many(name, "section", functools.partial(SECTIONS[name], drill))
        print(f"== {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    parser.add_argument("--jobs", type=int, default=2, help="media files analysed at once (default 2)")
    parser.add_argument("--disk-seconds", type=float, default=50.0, help="length of the full-disk run (50)")
    parser.add_argument("--work", type=Path, help="keep the inputs, outputs and logs here (default: a temp dir)")
    parser.add_argument("--strict", action="store_true",
                        help="a skipped check fails the drill too (a machine that cannot mount the tmpfs)")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}: use {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Started in the background by a shell without job control, this process (and so every command it
    # starts) would ignore SIGINT, which the drill uses to stop runs: handled here, it is the default
    # again in the children.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    work = args.work or Path(tempfile.mkdtemp(prefix="fault-drill-"))
    work.mkdir(parents=True, exist_ok=True)
    drill = Drill(work.resolve(), minutes=args.minutes, jobs=args.jobs, disk_seconds=args.disk_seconds)
    names = [name for name in SECTIONS if name in args.only.split(",")]
    try:
        rows = run_sections(drill, names)
    finally:
        if args.work is None:
            corpus.restore_permissions(work)
            shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    if args.json:
        report = {"machine": platform.node(), "python": platform.python_version(), "sections": names,
                  "minutes": args.minutes, "passed": not any(r.passed is False for r in rows),
                  "rows": [asdict(r) | {"verdict": r.verdict} for r in rows]}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    failed = any(r.passed is False or (args.strict and r.passed is None) for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
