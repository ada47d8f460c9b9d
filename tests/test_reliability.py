"""Issue 11: nothing lost, nobody let in. Each test reproduces one fault found by an adversarial run.

The event log under a full disk (a real 1 MB tmpfs where root can mount one; else SQLite's own
``max_page_count``, which makes SQLite answer SQLITE_FULL, "database or disk is full", at the same
call a full disk does), DNS rebinding, seq numbers across kill -9, a second SIGTERM during the
flush, resume seqs beyond 64 bits, HTTP methods, and the event log's messages for bad paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from affectstream.errors import ConfigError, ExitStatus
from affectstream.stream.eventlog import SEQ_RESERVE, EventLog, EventLogConfig
from affectstream.stream.log_backlog import BufferedLog, LogState
from affectstream.stream.messages import Estimate, Event, EventKind, StreamRecord, wall_ms
from affectstream.stream.server import ServerConfig, StreamServer, host_allowed, host_name
from tests import media
from tests._cli_process import CliProcess
from tests._faces_helpers import MEGAMIND, VTEST, need
from tests._server_helpers import make_hello, receive_until, start_server, url
from tests.timeouts import scaled

# -- 1. a full disk under the event log ------------------------------------------------------------


def _event(stream: str, seq: int, size: int = 400) -> Event:
    return Event(stream=stream, seq=seq, ts=float(seq), wall=wall_ms(), kind=EventKind.PEAK, label="fear",
                 value=0.5, detail="x" * size)


def _estimate(stream: str, seq: int) -> Estimate:
    return Estimate(stream=stream, seq=seq, ts=float(seq), wall=wall_ms(), scores={"fear": 0.5}, sentiment=0.0,
                    dominant="fear")


def _fill_up(log: EventLog) -> None:
    """Limit the file to the pages it has: the next pages SQLite needs fail as on a full disk."""
    pages = log._db.execute("PRAGMA page_count").fetchone()[0]
    log._db.execute(f"PRAGMA max_page_count = {pages}")


def _free_up(log: EventLog) -> None:
    log._db.execute("PRAGMA max_page_count = 1073741823")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_full_log_keeps_a_backlog_replays_it_and_writes_it_when_space_returns(tmp_path: Path) -> None:
    log = EventLog(EventLogConfig(tmp_path / "log.sqlite"))
    clock = Clock()
    buffered = BufferedLog(log, limit=1000, clock=clock)
    assert not buffered.append([_event("a", 0)])
    _fill_up(log)
    changed = False
    for seq in range(1, 40):
        changed |= buffered.append([_estimate("a", 2 * seq - 1), _event("a", 2 * seq)])
    health = buffered.health()
    assert changed and health.state is LogState.FAILING and "disk is full" in str(health.error)
    assert health.backlog > 0 and health.lost == 0
    # A client resuming now gets the stored rows and then the waiting ones, in order, no gap.
    replay = [row.seq for row in buffered.since("a", -1, limit=1000)]
    assert replay == [0] + [2 * seq for seq in range(1, 40)]
    _free_up(log)
    clock.now += 5.0  # the next try is due
    assert buffered.append([_event("a", 80)])  # back to OK: a change
    assert buffered.health().state is LogState.OK and buffered.health().backlog == 0
    assert [row.seq for row in log.since("a", -1, limit=1000)] == replay + [80]
    assert log.next_seq("a") == 0 + SEQ_RESERVE + 1  # reserved past the first event


def test_a_backlog_that_overflows_counts_what_it_lost(tmp_path: Path) -> None:
    log = EventLog(EventLogConfig(tmp_path / "log.sqlite"))
    buffered = BufferedLog(log, limit=10, clock=Clock())
    _fill_up(log)
    for seq in range(40):
        buffered.append([_event("a", seq)])
    stored = len(log.since("a", -1, limit=100))  # what fitted in the pages the file had
    health = buffered.close()
    assert stored < 30 and (health.backlog, health.lost) == (10, 40 - 10 - stored) and health.failed


def test_live_clients_get_everything_while_the_log_cannot_write(tmp_path: Path) -> None:
    log = EventLog(EventLogConfig(tmp_path / "log.sqlite"))
    server = StreamServer(ServerConfig(port=0), make_hello, eventlog=log)
    server.start()
    sent: list[StreamRecord] = []

    async def scenario() -> list[dict[str, Any]]:
        async with connect(url(server)) as client:
            await receive_until(client, lambda m: m["type"] == "hello", scaled(5))
            _fill_up(log)
            for seq in range(60):
                record = _estimate("cam", seq) if seq % 2 else _event("cam", seq)
                sent.append(record)
                server.publish(record)
                await asyncio.sleep(0.002)
            return await receive_until(client, lambda m: m.get("seq") == 59, scaled(10))

    try:
        received = asyncio.run(scenario())
    finally:
        server.stop()
    statuses = [m for m in received if m["type"] == "server_status"]
    assert statuses and statuses[0]["event_log"] == "failing" and "full" in statuses[0]["detail"]
    assert [m["seq"] for m in received if m["type"] == "event"] == [r.seq for r in sent if isinstance(r, Event)]
    assert server.log_health.failed  # at exit the backlog could still not be written


def _mount_tmpfs(target: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                          capture_output=True, text=True)
    return done.returncode == 0


@contextlib.contextmanager
def small_tmpfs(tmp_path: Path, free_kb: int) -> Iterator[Path]:
    target = tmp_path / "small"
    if not _mount_tmpfs(target, "1m"):
        pytest.skip("a real full disk needs root and `mount -t tmpfs` (not permitted here); the same SQLITE_FULL "
                    "is injected by the max_page_count tests above")
    try:
        free = shutil.disk_usage(target).free
        (target / "ballast").write_bytes(b"\0" * max(0, free - free_kb * 1024))
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


async def _collect(port: int, until_ended: int, timeout: float) -> list[dict[str, Any]]:
    received: list[dict[str, Any]] = []
    async with connect(f"ws://127.0.0.1:{port}/ws") as client:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                async for frame in client:
                    received.append(json.loads(frame))
                    if sum(1 for m in received if m.get("kind") == "stream_ended") >= until_ended:
                        break
    return received


def test_run_on_a_full_disk_delivers_everything_and_exits_3(tmp_path: Path) -> None:
    video = media.make_video(tmp_path / "long.avi", seconds=8.0, fps=10, size=(160, 120))
    with small_tmpfs(tmp_path, free_kb=144) as disk:  # as in the run
        cli = CliProcess(["run", f"a={video}", f"b={video}", "--model", "tiny-random", "--faces", "off",
                          "--windows", "1,5", "--port", "0", "--quiet", "--out", str(tmp_path / "all.jsonl"),
                          "--event-log", str(disk / "log.sqlite")], tmp_path)
        received = asyncio.run(_collect(cli.port(), until_ended=2, timeout=scaled(60)))
        status = cli.finish()
    err = cli.stderr
    sent = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]

    def keys(messages: list[dict[str, Any]], *types: str) -> list[tuple[str, int]]:
        return sorted((m["stream"], m["seq"]) for m in messages if m["type"] in types)

    assert "Traceback" not in err and "Exception in callback" not in err, err
    assert keys(received, "summary", "event") == keys(sent, "summary", "event")  # nothing durable lost live
    assert len(keys(received, "estimate")) >= 0.9 * len(keys(sent, "estimate"))
    assert sum(1 for m in received if m.get("kind") == "stream_ended") == 2
    assert any(m["type"] == "server_status" and m["event_log"] == "failing" for m in received)
    assert "cannot store messages" in err and "did not store" in err, err
    assert status == ExitStatus.PARTIAL, err


# -- 2. DNS rebinding ---------------------------------------------------------------------------------


def _upgrade_status(port: int, host: str, origin: str | None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=scaled(5))
    headers = {"Host": host, "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    if origin is not None:
        headers["Origin"] = origin
    connection.request("GET", "/ws", headers=headers)
    status = connection.getresponse().status
    connection.close()
    return status


def test_a_rebound_host_name_is_refused() -> None:
    server = start_server()
    try:
        port = server.port
        evil = f"evil.example:{port}"
        assert _upgrade_status(port, evil, f"http://{evil}") == 403
        assert _upgrade_status(port, evil, None) == 403
        assert _upgrade_status(port, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}") == 101
        assert _upgrade_status(port, f"localhost:{port}", f"http://localhost:{port}") == 101
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=scaled(5))
        plain.request("GET", "/", headers={"Host": evil})
        response = plain.getresponse()
        assert response.status == 403 and b"--allow-host evil.example" in response.read()
    finally:
        server.stop()
    allowed = start_server(allowed_hosts=("cams.example",))
    try:
        name = f"cams.example:{allowed.port}"
        assert _upgrade_status(allowed.port, name, f"http://{name}") == 101
    finally:
        allowed.stop()


def test_host_names_are_read_as_browsers_send_them() -> None:
    assert host_name("[::1]:8765") == "::1" and host_name("Example.COM:80") == "example.com"
    assert host_name("10.0.0.2") == "10.0.0.2" and host_name("") == ""
    assert host_allowed("[::1]:1", "127.0.0.1", ()) and host_allowed("192.168.1.9:1", "0.0.0.0", ())
    assert host_allowed("box.lan:1", "box.lan", ()) and host_allowed("app.localhost:1", "127.0.0.1", ())
    assert not host_allowed("box.lan:1", "0.0.0.0", ()) and not host_allowed("", "127.0.0.1", ())
    assert host_allowed("anything:1", "127.0.0.1", ("*",))


# -- 3. seq across kill -9 ----------------------------------------------------------------------------


async def _until_estimate(port: int) -> list[dict[str, Any]]:
    async with connect(f"ws://127.0.0.1:{port}/ws") as client:
        return await receive_until(client, lambda m: m["type"] == "estimate", scaled(60))


async def _resume(port: int, after: dict[str, int]) -> list[dict[str, Any]]:
    query = urllib.parse.quote(json.dumps(after))
    async with connect(f"ws://127.0.0.1:{port}/ws?resume={query}") as client:
        return await receive_until(client, lambda m: m.get("kind") == "stream_started", scaled(60))


def test_seq_goes_on_increasing_after_kill_9(tmp_path: Path) -> None:
    video = media.make_video(tmp_path / "long.avi", seconds=60.0, fps=10, size=(160, 120))
    log_path = tmp_path / "log.sqlite"
    args = ["run", f"cam={video}", "--model", "tiny-random", "--faces", "off", "--port", "0", "--quiet",
            "--event-log", str(log_path)]
    first = CliProcess(args, tmp_path)
    seen = asyncio.run(_until_estimate(first.port()))
    first.process.send_signal(signal.SIGKILL)  # right after an estimate: it was never stored
    first.finish()
    highest = max(m["seq"] for m in seen if m.get("stream") == "cam")
    second = CliProcess(args, tmp_path)
    try:
        replayed = asyncio.run(_resume(second.port(), {"cam": highest}))
    finally:
        second.process.send_signal(signal.SIGTERM)
        second.finish()
    started = [m for m in replayed if m.get("kind") == "stream_started"]
    assert started and started[0]["seq"] > highest, (highest, started)
    assert all(m["seq"] > highest for m in replayed if m.get("stream") == "cam")


def test_the_high_water_mark_counts_messages_that_are_not_stored_and_is_written_rarely(tmp_path: Path) -> None:
    log = EventLog(EventLogConfig(tmp_path / "log.sqlite"))
    log.append([_event("cam", 0), _estimate("cam", 1), _estimate("cam", 2)])
    changes = log._db.total_changes
    for seq in range(3, SEQ_RESERVE):  # estimates within the reservation: no write at all
        log.append([_estimate("cam", seq)])
    assert log._db.total_changes == changes
    log.append([_estimate("cam", SEQ_RESERVE + 5)])  # past it: one new reservation
    assert log._db.total_changes == changes + 1
    log.close()
    assert EventLog(EventLogConfig(tmp_path / "log.sqlite")).next_seq("cam") == 2 * SEQ_RESERVE + 5 + 1


# -- 4. a second SIGTERM during the flush -----------------------------------------------------------------


@pytest.mark.slow
def test_a_second_sigterm_shortens_the_flush_and_exits_cleanly(tmp_path: Path) -> None:
    # Real footage with faces: the flush then has detection and expression batches in flight, which
    # is when a second signal used to abort the process (134, "terminate called ...").
    films = [need(VTEST), need(MEGAMIND)] * 2
    out = tmp_path / "all.jsonl"
    cli = CliProcess(["run", *(f"{name}={film}" for name, film in zip("abcd", films)), "--model", "tiny-random",
                      "--fast", "--port", "0", "--quiet", "--out", str(out)], tmp_path)
    for name in "abcd":
        cli.wait_for(rf"opened {name} ")
    time.sleep(1.0)
    cli.process.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    cli.process.send_signal(signal.SIGTERM)
    status = cli.finish()
    err = cli.stderr
    assert status in (ExitStatus.OK, ExitStatus.TERMINATED), (status, err)
    assert "terminate called" not in err and "Traceback" not in err, err
    ended = [json.loads(line) for line in out.read_text().splitlines() if '"stream_ended"' in line]
    assert sorted(m["stream"] for m in ended) == ["a", "b", "c", "d"]


# -- 5. resume seqs beyond 64 bits ----------------------------------------------------------------------


def test_a_resume_seq_beyond_the_largest_is_a_bad_message() -> None:
    server = start_server()
    huge = 2**63

    async def scenario() -> tuple[list[dict[str, Any]], int]:
        async with connect(url(server)) as client:
            await receive_until(client, lambda m: m["type"] == "hello", scaled(5))
            await client.send(json.dumps({"type": "resume", "streams": {"cam": huge}}))
            replies = await receive_until(client, lambda m: m["type"] == "error", scaled(5))
            await client.send(json.dumps({"type": "subscribe", "streams": ["cam"]}))
            await receive_until(client, lambda m: m["type"] == "subscribed", scaled(5))  # still open
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=scaled(5))
        connection.request("GET", "/ws?resume=" + urllib.parse.quote(json.dumps({"cam": huge})),
                           headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        return replies, connection.getresponse().status

    try:
        replies, status = asyncio.run(scenario())
    finally:
        server.stop()
    assert replies[-1]["code"] == "bad_message" and str(2**53 - 1) in replies[-1]["message"]
    assert status == 400


# -- 11. HTTP methods -------------------------------------------------------------------------------------


def test_only_get_and_head_are_answered_and_head_has_no_body() -> None:
    server = start_server()
    try:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=scaled(5))
        raw.sendall(b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        head = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := raw.recv(65536):
                head += chunk
        raw.close()
        headers, _, body = head.partition(b"\r\n\r\n")
        assert headers.startswith(b"HTTP/1.1 200") and body == b""
        length = int(next(line for line in headers.split(b"\r\n") if line.lower().startswith(b"content-length"))
                     .split(b":")[1])
        get = http.client.HTTPConnection("127.0.0.1", server.port, timeout=scaled(5))
        get.request("GET", "/")
        assert len(get.getresponse().read()) == length > 0
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=scaled(5))
            connection.request(method, "/")
            response = connection.getresponse()
            assert response.status == 405 and response.getheader("Allow") == "GET, HEAD"
            assert b"<html" not in response.read().lower()
        # A request with a body gets its answer too (websockets' own parser used to close it unanswered).
        with_body = http.client.HTTPConnection("127.0.0.1", server.port, timeout=scaled(5))
        with_body.request("POST", "/", body=b"{}", headers={"Content-Type": "application/json"})
        assert with_body.getresponse().status == 405
    finally:
        server.stop()


# -- 10. the event log's messages ----------------------------------------------------------------------


def test_a_log_that_is_not_a_log_and_a_file_in_the_way_are_named(tmp_path: Path) -> None:
    corrupt = tmp_path / "junk.sqlite"
    corrupt.write_bytes(b"this is not SQLite at all\n" * 200)
    with pytest.raises(ConfigError, match="is not an affectstream event log or is damaged"):
        EventLog(EventLogConfig(corrupt))
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create its directory"):
        EventLog(EventLogConfig(blocker / "log.sqlite"))
    with pytest.raises(ConfigError, match="is a directory"):
        EventLog(EventLogConfig(tmp_path))
    with contextlib.closing(sqlite3.connect(corrupt)):  # still untouched: nothing overwrote it
        pass
    assert corrupt.read_bytes().startswith(b"this is not SQLite")


def test_run_with_a_file_where_the_log_directory_should_be_exits_2(tmp_path: Path, short_video: Path) -> None:
    (tmp_path / "plain-file").write_text("x")
    cli = CliProcess(["run", str(short_video), "--model", "tiny-random", "--faces", "off", "--port", "0",
                      "--quiet", "--event-log", str(tmp_path / "plain-file" / "log.sqlite")], tmp_path)
    status = cli.finish()
    assert status == ExitStatus.USAGE and "Traceback" not in cli.stderr
    assert "cannot create its directory" in cli.stderr, cli.stderr


def test_a_name_too_long_for_its_summary_file_is_shortened_and_a_given_one_refused(tmp_path: Path) -> None:
    # Found by benchmarks/fault_drill.py: NAME.affect.json of a 246-character NAME is over 255 bytes.
    video = media.make_video(tmp_path / ("x" * 246 + ".avi"), seconds=1.0)
    done = subprocess.run([sys.executable, "-m", "affectstream", "analyze", str(video), "--model", "tiny-random",
                           "--faces", "off", "--no-progress"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=scaled(120))
    assert done.returncode == ExitStatus.OK and "Traceback" not in done.stderr, done.stderr
    (summary,) = tmp_path.glob("*.affect.json")
    assert len(summary.name) <= 255 and summary.name.startswith("x" * 100)
    refused = subprocess.run([sys.executable, "-m", "affectstream", "analyze", str(video), "--model", "tiny-random",
                              "--summary", "y" * 300 + ".json"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=scaled(120))
    assert refused.returncode == ExitStatus.USAGE and "File name too long" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr


def test_allowed_host_names_are_checked_and_healthz_answers_any_name() -> None:
    with pytest.raises(ConfigError, match="host name alone"):
        ServerConfig(allowed_hosts=("cams.example:8765",))
    with pytest.raises(ConfigError, match="host name alone"):
        ServerConfig(allowed_hosts=("http://cams.example",))
    assert host_allowed("Cams.Example.:1", "127.0.0.1", ServerConfig(allowed_hosts=("cams.example",)).allowed_hosts)
    server = start_server()
    try:
        probe = http.client.HTTPConnection("127.0.0.1", server.port, timeout=scaled(5))
        probe.request("GET", "/healthz", headers={"Host": "affectstream:8765"})  # a compose service name
        assert probe.getresponse().status == 200
    finally:
        server.stop()


def test_clients_hear_of_losses_while_the_log_fails_and_a_replay_waits_when_it_cannot_read(tmp_path: Path) -> None:
    log = EventLog(EventLogConfig(tmp_path / "log.sqlite"))
    clock = Clock()
    buffered = BufferedLog(log, limit=3, clock=clock)
    buffered.append([_event("a", 0)])
    _fill_up(log)
    announced = []
    for seq in range(1, 30):
        clock.now += 0.5
        if buffered.append([_event("a", seq)]):
            announced.append(buffered.health())
    assert announced[0].state is LogState.FAILING
    assert any(h.lost > 0 for h in announced), "a growing loss is announced while the log still fails"
    assert len(announced) <= 16  # at most once a second of the 14.5 s

    class Unreadable(EventLog):
        def since(self, stream: str, after_seq: int, limit: int = 500) -> list[Any]:
            raise sqlite3.OperationalError("disk I/O error")

    from affectstream.stream.eventlog import ReplayUnavailable

    unreadable = BufferedLog(Unreadable(EventLogConfig()), clock=Clock())
    unreadable.append([_event("a", 0), _event("a", 1)])  # stored by this process
    with pytest.raises(ReplayUnavailable):
        unreadable.since("a", -1)  # seqs 0 and 1 are on disk: not skipped
    assert unreadable.since("a", 1) == []  # nothing stored after 1: the (empty) backlog is the answer


def test_a_signal_during_the_flush_hurries_instead_of_raising() -> None:
    from affectstream._shutdown import HurryOnSignal

    calls: list[int] = []
    before = signal.getsignal(signal.SIGTERM)
    with HurryOnSignal(lambda: calls.append(1)) as guard:
        os.kill(os.getpid(), signal.SIGTERM)  # raised Terminated here before: a flush cut short
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # signals are handled between bytecodes of the main thread
    assert calls == [1, 1] and guard.status is ExitStatus.INTERRUPTED  # the last signal names the status
    assert signal.getsignal(signal.SIGTERM) is before
