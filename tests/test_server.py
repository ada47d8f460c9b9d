"""The websocket server end to end over real sockets: admission, subscriptions, resume, restarts, fuzz."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from affectstream.errors import ConfigError
from affectstream.stream.server import ServerConfig, StreamServer
from tests._server_helpers import Publisher, durable_keys, receive_until, start_server, url
from tests.timeouts import scaled


@pytest.fixture()
def server() -> Any:
    server = start_server()
    yield server
    server.stop()


def rejected_status(target: str, **options: Any) -> int:
    async def attempt() -> int:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(target, open_timeout=scaled(5), **options):
                pass
        return caught.value.response.status_code

    return asyncio.run(attempt())


def test_config_refuses_an_open_host_without_a_token() -> None:
    with pytest.raises(ConfigError, match="--token"):
        ServerConfig(host="0.0.0.0")
    assert ServerConfig(host="0.0.0.0", token="s3cret").token == "s3cret"
    assert ServerConfig(host="0.0.0.0", insecure=True).insecure
    with pytest.raises(ConfigError, match="port"):
        ServerConfig(port=70000)


def test_settings_come_from_the_command_line_and_the_environment() -> None:
    from affectstream.cli import build_parser
    from affectstream.stream.server import server_config_from_args

    args = build_parser().parse_args(["run", "x.mp4", "--host", "0.0.0.0", "--port", "0", "--allow-origin",
                                      "http://a.example", "--event-log", "/tmp/x.sqlite", "--max-connections", "3"])
    with pytest.raises(ConfigError, match="--token"):
        server_config_from_args(args, {})
    config = server_config_from_args(args, {"AFFECTSTREAM_TOKEN": "from-env"})
    assert (config.token, config.allowed_origins, config.max_connections) == ("from-env", ("http://a.example",), 3)
    assert str(config.eventlog_path) == "/tmp/x.sqlite"


def test_a_port_in_use_is_reported(server: StreamServer) -> None:
    with pytest.raises(Exception, match="--port"):
        StreamServer(ServerConfig(port=server.port), dict).start()


def test_serves_the_dashboard_and_health_over_http(server: StreamServer) -> None:
    base = f"http://127.0.0.1:{server.port}"
    with urllib.request.urlopen(base + "/") as page:
        assert b'src="app.js"' in page.read()
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    with urllib.request.urlopen(base + "/app.js") as script:
        assert script.headers["Content-Type"].startswith("text/javascript")
    with urllib.request.urlopen(base + "/healthz") as health:
        assert health.read() == b"ok\n"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(base + "/../etc/passwd")
    assert missing.value.code == 404


def test_admission_token_origin_and_cap() -> None:
    server = start_server(token="s3cret", max_connections=2, allowed_origins=("http://trusted.example",))
    try:
        assert rejected_status(url(server)) == 401
        assert rejected_status(url(server, "wrong")) == 401
        assert rejected_status(url(server, "s3cret"), origin=Origin("http://evil.example")) == 403
        assert rejected_status(url(server, "s3cret") + "&resume=%7Bcam") == 400
        assert rejected_status(url(server, "s3cret", resume={"cam": -2})) == 400

        async def admitted() -> None:
            same_origin = Origin(f"http://127.0.0.1:{server.port}")
            async with connect(url(server, "s3cret"), origin=same_origin) as first, \
                    connect(server.url, origin=Origin("http://trusted.example"),
                            additional_headers={"Authorization": "Bearer s3cret"}) as second:
                assert json.loads(await first.recv())["type"] == "hello"
                assert json.loads(await second.recv())["type"] == "hello"
                with pytest.raises(InvalidStatus) as over:
                    async with connect(url(server, "s3cret"), open_timeout=scaled(5)):
                        pass
                assert over.value.response.status_code == 503
        asyncio.run(admitted())
    finally:
        server.stop()


def test_an_oversize_message_closes_with_1009() -> None:
    server = start_server(max_message_bytes=1024)
    try:
        async def oversize() -> int | None:
            async with connect(server.url, max_size=None) as client:
                await client.recv()
                await client.send("x" * 2048)
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(client.recv(), scaled(5))
                return closed.value.rcvd.code if closed.value.rcvd else None
        assert asyncio.run(oversize()) == 1009
    finally:
        server.stop()


def test_subscribe_by_stream_and_type(server: StreamServer) -> None:
    publisher = Publisher(server, hz=20, event_every=2).start()
    try:
        async def watch() -> list[dict[str, Any]]:
            async with connect(server.url) as client:
                await client.send(json.dumps({"type": "subscribe", "streams": ["cam"], "types": ["event"],
                                              "future_field": True}))
                await receive_until(client, lambda m: m["type"] == "subscribed", scaled(5))
                return await receive_until(client, lambda m: m.get("seq", 0) > 30, scaled(10))
        seen = asyncio.run(watch())
    finally:
        publisher.stop()
    assert {(m["stream"], m["type"]) for m in seen} == {("cam", "event")}


def test_resume_replays_what_was_missed_then_goes_live(server: StreamServer) -> None:
    publisher = Publisher(server, hz=20, event_every=2).start()
    try:
        async def twice() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            async with connect(server.url) as client:
                first = await receive_until(client, lambda m: m["type"] == "event" and m["seq"] > 10, scaled(10))
            await asyncio.sleep(1.0)  # events go by while it is away
            last = {s: max(m["seq"] for m in first if m.get("stream") == s) for s in ("cam", "file")}
            # In the URL, so that nothing live crosses it (a `resume` message sent now could).
            async with connect(url(server, resume=last)) as client:
                target = max(m.seq for m in publisher.durable("cam")) + 20
                second = await receive_until(
                    client, lambda m: m.get("stream") == "cam" and m["seq"] > target, scaled(10))
            return first, second
        first, second = asyncio.run(twice())
    finally:
        publisher.stop()
    for stream in ("cam", "file"):
        got = durable_keys(first, stream) + durable_keys(second, stream)
        assert len(got) == len(set(got)), "no duplicates"
        upto = got[-1][1]
        expected = [(m.stream, m.seq) for m in publisher.durable(stream) if m.seq <= upto]
        assert got == expected, "no gaps, in order"


def test_resume_across_a_server_restart_loses_no_event(tmp_path: Path) -> None:
    log_path = tmp_path / "events.sqlite"
    server = start_server(eventlog_path=log_path)
    publisher = Publisher(server, hz=20, event_every=2).start()

    async def listen_a_while(server: StreamServer, predicate: Any) -> list[dict[str, Any]]:
        async with connect(server.url) as client:
            return await receive_until(client, predicate, scaled(10))

    first = asyncio.run(listen_a_while(server, lambda m: m["type"] == "event" and m["seq"] > 10))
    last = {s: max(m["seq"] for m in first if m.get("stream") == s) for s in ("cam", "file")}
    asyncio.run(asyncio.sleep(0.5))
    publisher.stop()
    server.stop()  # the events after `last` were never seen by the client: only the log has them
    before_restart = {s: publisher.durable(s) for s in ("cam", "file")}

    server = start_server(eventlog_path=log_path)
    restarted = Publisher(server, hz=20, event_every=2,
                          first_seq={s: server.next_seq(s) for s in ("cam", "file")}).start()
    try:
        async def resume() -> list[dict[str, Any]]:
            async with connect(url(server, resume=last)) as client:
                def third_new_event(m: dict[str, Any]) -> bool:
                    published = restarted.durable("cam")
                    return (m["type"] == "event" and m["stream"] == "cam" and len(published) > 2
                            and m["seq"] >= published[2].seq)

                return await receive_until(client, third_new_event, scaled(10))
        second = asyncio.run(resume())
    finally:
        restarted.stop()
        server.stop()
    for stream in ("cam", "file"):
        missed = [(stream, m.seq) for m in before_restart[stream] if m.seq > last[stream]]
        assert missed, "the test needs events published while the client was away"
        got = durable_keys(second, stream)
        assert got[:len(missed)] == missed
        after = [(stream, m.seq) for m in restarted.durable(stream)]
        assert got[len(missed):] == after[:len(got) - len(missed)]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=12)
CLIENT_LIKE = st.fixed_dictionaries({"type": st.sampled_from(["subscribe", "unsubscribe", "resume", "nope", ""])},
                                    optional={"streams": JSON, "types": JSON, "v": JSON})
FRAMES = st.one_of(
    st.text(max_size=64),
    st.binary(max_size=64),
    JSON.map(json.dumps),
    CLIENT_LIKE.map(json.dumps),
    st.just("[" * 5000 + "]" * 5000),
    st.just('{"type": "resume", "streams": {"cam": 1e309}}'),
)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(FRAMES, min_size=5, max_size=30))
def test_fuzzed_client_frames_leave_the_server_and_other_clients_unharmed(
        fuzz_server: tuple[StreamServer, Publisher], batch: list[str | bytes]) -> None:
    server, publisher = fuzz_server

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with connect(server.url) as good:
            await receive_until(good, lambda m: m["type"] == "hello", scaled(5))
            replies: list[dict[str, Any]] = []
            async with connect(server.url) as bad:
                for frame in batch:
                    await bad.send(frame)
                try:
                    await bad.send(json.dumps({"type": "subscribe", "streams": []}))
                    replies = await receive_until(bad, lambda m: m["type"] == "subscribed", scaled(5))
                except ConnectionClosed as closed:
                    assert closed.rcvd is not None and closed.rcvd.code == 1008  # too many bad frames
            mark = max(m.seq for m in publisher.durable("cam")) + 4
            seen = await receive_until(good, lambda m: m.get("stream") == "cam" and m["seq"] > mark, scaled(10))
            return seen, replies

    seen, replies = asyncio.run(run())
    known = {"hello", "error", "subscribed", "lagged", "estimate", "event", "summary", "stats"}
    assert {r["type"] for r in replies} <= known, "the fuzzing client got only protocol messages"
    for stream in ("cam", "file"):
        got = durable_keys(seen, stream)
        expected = [(stream, m.seq) for m in publisher.durable(stream)]
        start = expected.index(got[0]) if got else 0
        assert got == expected[start:start + len(got)], "the good client saw every event, in order"
    with socket.create_connection(("127.0.0.1", server.port), timeout=scaled(5)) as raw:
        raw.sendall(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n")
        raw.recv(1024)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz") as health:
        assert health.status == 200


@pytest.fixture(scope="module")
def fuzz_server() -> Any:
    server = start_server()
    publisher = Publisher(server, hz=50, event_every=1).start()
    yield server, publisher
    publisher.stop()
    server.stop()


def test_a_resume_from_another_numbering_replays_this_log_instead_of_holding_events_back() -> None:
    server = start_server()  # in memory: a restart without an event log numbers from 0 again
    publisher = Publisher(server, hz=20, event_every=2).start()
    try:
        async def resume_far_ahead() -> list[dict[str, Any]]:
            async with connect(url(server, resume={"cam": 72_000})) as client:
                return await receive_until(client, lambda m: m["type"] == "event" and m.get("stream") == "cam",
                                           scaled(5))
        got = asyncio.run(resume_far_ahead())
    finally:
        publisher.stop()
        server.stop()
    first = next(m for m in got if m["type"] == "event")
    assert first["seq"] < 72_000, "this server's events came, not held back until its seqs pass 72,000"
