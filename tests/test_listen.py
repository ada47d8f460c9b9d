"""`affectstream listen` against a live server: JSONL for pipes, readable lines, tokens, reconnection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from affectstream.stream.listen import format_message, websocket_url, with_resume
from affectstream.stream.messages import Event
from affectstream.stream.subscriptions import resume_in_query
from tests._server_helpers import Publisher, make_hello, start_server
from tests.timeouts import scaled

LISTEN = [sys.executable, "-m", "affectstream", "listen"]


def listen(*args: str, timeout: float = 15, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LISTEN, *args], check=False, capture_output=True, text=True, timeout=scaled(timeout),
                          env={**os.environ, **(env or {})}, cwd=Path(__file__).parent.parent)


def test_urls_people_type_become_websocket_urls() -> None:
    assert websocket_url("127.0.0.1:8765", None) == "ws://127.0.0.1:8765/ws"
    assert websocket_url("http://h:1/", "t") == "ws://h:1/ws?token=t"
    assert websocket_url("wss://h/ws?a=1", "t") == "wss://h/ws?a=1&token=t"


def test_a_reconnection_resumes_in_the_url() -> None:
    assert with_resume("ws://h:1/ws?token=t", {}) == "ws://h:1/ws?token=t"
    resumed = with_resume("ws://h:1/ws?token=t&resume=%7B%7D", {"cam": 41, "talk": -1})
    assert resumed.startswith("ws://h:1/ws?token=t&resume=")
    assert resume_in_query(resumed.split("?", 1)[1]) == {"cam": 41, "talk": -1}


def test_readable_lines() -> None:
    line = format_message({"type": "event", "stream": "cam", "seq": 3, "wall": 0, "kind": "onset",
                           "label": "fear", "value": 0.812})
    assert line.endswith("cam        event    onset fear 0.81")
    assert "hello" in format_message(make_hello().to_wire())


def test_jsonl_of_chosen_types_for_a_pipe() -> None:
    server = start_server()
    publisher = Publisher(server, hz=20, event_every=2).start()
    try:
        done = listen(server.url, "--jsonl", "--types", "event,summary", "--streams", "cam", "--count", "8")
        human = listen(server.url, "--count", "3")
    finally:
        publisher.stop()
        server.stop()
    assert done.returncode == 0, done.stderr
    messages = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(messages) == 8
    assert {(m["stream"], m["type"]) for m in messages} <= {("cam", "event"), ("cam", "summary")}
    assert human.returncode == 0 and len(human.stdout.splitlines()) == 3
    assert human.stdout.splitlines()[0].split()[1:3] == ["-", "hello"]


def test_a_wrong_token_exits_2_with_a_reason() -> None:
    server = start_server(token="right")
    try:
        wrong = listen(server.url, "--token", "wrong", "--count", "1")
        right = listen(server.url, "--count", "1", env={"AFFECTSTREAM_TOKEN": "right"})
    finally:
        server.stop()
    assert wrong.returncode == 2 and "401" in wrong.stderr
    assert right.returncode == 0 and "hello" in right.stdout


def test_no_server_and_no_reconnect_exits_1() -> None:
    assert listen("ws://127.0.0.1:9/ws", "--no-reconnect", "--count", "1").returncode == 4  # nothing received: no server


@pytest.mark.slow
def test_reconnects_and_resumes_after_a_server_restart(tmp_path: Path) -> None:
    log_path = tmp_path / "events.sqlite"
    server = start_server(eventlog_path=log_path)
    port = server.port
    publisher = Publisher(server, hz=20, event_every=2).start()
    process = subprocess.Popen([*LISTEN, server.url, "--jsonl", "--types", "event", "--count", "60"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).parent.parent)
    try:
        time.sleep(1.5)
        before = publisher
        publisher.stop()
        server.stop()
        time.sleep(0.5)
        server = start_server(eventlog_path=log_path, port=port)
        publisher = Publisher(server, hz=20, event_every=2,
                              first_seq={s: server.next_seq(s) for s in ("cam", "file")}).start()
        out, err = process.communicate(timeout=scaled(30))
    finally:
        process.kill()
        publisher.stop()
        server.stop()
    assert process.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == 60
    for stream in ("cam", "file"):
        got = [m["seq"] for m in events if m["stream"] == stream]
        sent = [m.seq for p in (before, publisher) for m in p.durable(stream) if isinstance(m, Event)]
        start = sent.index(got[0])
        assert got == sent[start:start + len(got)], "every event once, across the restart"
        assert got[-1] > before.durable(stream)[-1].seq, "the run went on past the restart"
