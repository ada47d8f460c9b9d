"""affectstream.client against real servers: typed records, resume across a server restart (no gap, no
duplicate), tokens, lag, the sync iterator; and the parsing it rests on (records round-trip)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from affectstream.client import AuthError, ConnectError, connect, connect_sync
from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError, SourceOutcome
from affectstream.stream import messages
from affectstream.stream.messages import (
    MAX_SEQ,
    ErrorReply,
    Estimate,
    EstimateState,
    Event,
    EventKind,
    FaceEstimate,
    Hello,
    LagEntry,
    Lagged,
    MessageError,
    Record,
    ServerStatus,
    Stats,
    StatsFields,
    StreamRecord,
    Subscribed,
    Summary,
    UnknownMessageError,
    parse_message,
    parse_text,
)
from affectstream.stream.reconnect import Backoff, ResumeCursor, Verdict
from affectstream.stream.server import ServerConfig, StreamServer
from affectstream.stream.subscriptions import resume_in_query
from tests._server_helpers import Publisher, make_hello, start_server
from tests.timeouts import scaled

STREAMS = ("cam", "file")
EXTRAS = ("pad", "t_pub_ns")  # fields only the test publisher adds: the client must ignore them

# -- parsing: every record round-trips ------------------------------------------------------------------

TEXT = st.text(max_size=8)
NAME = st.text(min_size=1, max_size=8)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.floats(allow_nan=False, allow_infinity=False)
                    | TEXT, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=8)


def records(canonical: bool) -> st.SearchStrategy[Record]:
    """Every message type; ``canonical``: values already rounded as they go on the wire."""
    def number(digits: int | None = None) -> st.SearchStrategy[float]:
        values = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
        return values.map(lambda x: round(x, digits)) if canonical and digits is not None else values

    def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.none() | strategy

    numbers = st.dictionaries(NAME, number(), max_size=4)
    count = st.integers(0, 10**9)
    header = {"stream": NAME, "seq": st.integers(0, MAX_SEQ), "ts": number(6), "wall": st.integers(0, 2**53)}
    face = st.builds(FaceEstimate, id=st.integers(1, 10**6), box=st.tuples(*[number(1)] * 4), score=number(4),
                     frame_scores=numbers, scores=numbers, dominant=NAME, state=st.sampled_from(EstimateState),
                     sentiment=number())
    return st.one_of(
        st.builds(Estimate, **header, scores=numbers, sentiment=number(), dominant=maybe(NAME),
                  state=maybe(st.sampled_from(EstimateState)), latency_ms=maybe(numbers), age_ms=maybe(number()),
                  faces=maybe(st.lists(face, max_size=3).map(tuple))),
        st.builds(Summary, **header, window_s=number(), start=number(), end=number(), frames=count, mean=numbers,
                  dominant=maybe(NAME), share=numbers, sentiment_mean=number(), sentiment_trend=number(),
                  partial=st.booleans(), states=maybe(numbers)),
        st.builds(Event, **header, kind=st.sampled_from(EventKind), label=maybe(NAME), value=maybe(number()),
                  face=maybe(st.integers(1, 10**6)), started=maybe(number()), confirmed=maybe(number()),
                  duration=maybe(number()), forced=st.booleans(), previous=maybe(NAME), detail=maybe(TEXT),
                  attempt=maybe(count), outcome=maybe(st.sampled_from(SourceOutcome)), frames_read=maybe(count),
                  damage=maybe(st.dictionaries(TEXT, JSON, max_size=3)), restart_ts=maybe(number()),
                  new=maybe(count), total=maybe(count)),
        st.builds(Stats, **header, fields=st.builds(
            StatsFields, input_fps=number(), sampled_fps=number(), frames_in=count, frames_sampled=count,
            estimates=count, drops=count, queue_depth=count, batch_size=number(), latency_ms=numbers,
            stage_ms=st.dictionaries(NAME, numbers, max_size=3),
            sinks=maybe(st.lists(st.builds(messages.SinkLag, name=NAME, state=st.sampled_from(["up", "down"]),
                                           lag=st.integers(-1, 10**6)), max_size=2).map(tuple)))),
        st.builds(Hello, labels=st.lists(NAME, max_size=7).map(tuple), model=st.dictionaries(TEXT, JSON, max_size=3),
                  streams=st.lists(NAME, max_size=4).map(tuple), wall=st.integers(0, 2**53), server=TEXT,
                  protocol=st.integers(1, 9)),
        st.builds(Subscribed, streams=maybe(st.lists(NAME, max_size=3).map(tuple)),
                  types=maybe(st.lists(NAME, max_size=3).map(tuple)),
                  excluded_streams=st.lists(NAME, max_size=3).map(tuple),
                  excluded_types=st.lists(NAME, max_size=3).map(tuple)),
        st.builds(Lagged, streams=st.dictionaries(NAME, st.builds(LagEntry, resume_after=st.integers(-1, MAX_SEQ),
                                                                   missed=count), max_size=3), hint=TEXT),
        st.builds(ErrorReply, code=TEXT, message=TEXT),
        st.builds(ServerStatus, event_log=st.sampled_from(["ok", "failing"]), backlog=count, lost=count,
                  detail=maybe(TEXT), **_sinks()),
        st.builds(messages.StreamControlReply, action=st.sampled_from(["list_streams", "add_stream", "remove_stream"]),
                  ok=st.just(True), stream=maybe(NAME),
                  streams=maybe(st.lists(st.builds(messages.StreamEntry, name=NAME, uri=TEXT, running=st.booleans(),
                                                   rate=maybe(number()), ended=maybe(TEXT),
                                                   faces=maybe(st.booleans())), max_size=2).map(tuple))),
        st.builds(messages.StreamControlReply, action=st.just("add_stream"), ok=st.just(False), stream=maybe(NAME),
                  error=TEXT, status=st.sampled_from([400, 404, 409])),
    )


def _sinks() -> dict[str, Any]:
    """ServerStatus.sinks, where this version has them."""
    report = getattr(messages, "SinkReport", None)
    if report is None:
        return {}
    sink = st.builds(report, name=NAME, state=st.sampled_from(["starting", "up", "down", "closed"]),
                     lag=st.integers(-1, 10**6), delivered=st.integers(0, 10**9), failures=st.integers(0, 10**6),
                     error=st.none() | TEXT)
    return {"sinks": st.lists(sink, max_size=2).map(tuple)}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=records(canonical=True))
def test_every_record_round_trips_through_its_wire_text(record: Record) -> None:
    assert parse_text(record.text) == record
    assert parse_message(record.to_wire()) == record


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=records(canonical=False), extra=st.dictionaries(st.text(min_size=1).map(lambda k: "x_" + k), JSON,
                                                               max_size=3))
def test_the_wire_form_is_a_fixed_point_and_unknown_fields_are_ignored(record: Record, extra: dict[str, Any]) -> None:
    wire = json.loads(record.text)
    assert parse_message({**wire, **extra}).to_wire() == wire


def test_parsing_is_strict_about_what_a_record_needs() -> None:
    event = json.loads(Event(stream="cam", seq=4, ts=1.5, wall=1, kind=EventKind.ONSET, label="fear", value=0.8).text)
    for broken, says in (
        ({k: v for k, v in event.items() if k != "seq"}, "'seq' must be an integer (it is missing)"),
        ({**event, "seq": "4"}, "'seq' must be an integer (got '4')"),
        ({**event, "seq": True}, "'seq' must be an integer"),
        ({**event, "seq": -1}, "'seq' must be from 0"),
        ({**event, "ts": None}, "'ts' must be a finite number (got null)"),
        ({**event, "value": "high"}, "'value' must be a finite number or null"),
        ({**event, "v": 2}, "protocol version 2"),
        ({k: v for k, v in event.items() if k != "v"}, "protocol version None"),
        ({k: v for k, v in event.items() if k != "type"}, "'type' must be a string"),
    ):
        with pytest.raises(MessageError, match=re.escape(says)) as caught:
            parse_message(broken)
        assert not isinstance(caught.value, UnknownMessageError)
        assert caught.value.wire == broken
    estimate = json.loads(Estimate(stream="cam", seq=1, ts=0.0, wall=1, scores={"fear": 0.5}, sentiment=0.0,
                                   dominant="fear").text)
    with pytest.raises(MessageError, match=r"'scores' must be an object of finite numbers \(got \{'fear': 'x'\}\)"):
        parse_message({**estimate, "scores": {"fear": "x"}})
    with pytest.raises(MessageError, match=r"faces\[0\]: field 'box' must be"):
        parse_message({**estimate, "faces": [{"id": 1, "box": [1, 2, 3]}]})
    with pytest.raises(MessageError, match="JSON object"):
        parse_text("[1, 2]")
    with pytest.raises(MessageError, match="one JSON object"):
        parse_text("{not json")


def test_what_a_newer_server_may_send_is_unknown_not_broken() -> None:
    with pytest.raises(UnknownMessageError, match="message type 'gesture'"):
        parse_message({"type": "gesture", "v": 1, "stream": "cam", "seq": 3})
    event = json.loads(Event(stream="cam", seq=4, ts=1.5, wall=1, kind=EventKind.STREAM_ENDED,
                             outcome=SourceOutcome.ENDED).text)
    with pytest.raises(UnknownMessageError, match="event kind 'blink'"):
        parse_message({**event, "kind": "blink"})
    ended = parse_message({**event, "outcome": "teleported"})  # the stream's end is not lost for a new outcome
    assert isinstance(ended, Event) and ended.terminal and ended.outcome is None


# -- the resume rule (sans I/O) ------------------------------------------------------------------------


def test_the_resume_rule_drops_duplicates_and_replays_a_renumbered_stream(caplog: pytest.LogCaptureFixture) -> None:
    take, duplicate = Verdict.TAKE, Verdict.DUPLICATE
    cursor = ResumeCursor()
    assert cursor.url("ws://h:1/ws?token=t") == "ws://h:1/ws?token=t"  # the first connection: live
    assert [cursor.receive("cam", seq) for seq in (5, 6, 6, 4, 7)] == [take, take, duplicate, duplicate, take]
    url = cursor.url("ws://h:1/ws?token=t", streams={"cam"})
    assert resume_in_query(url.split("?", 1)[1]) == {"cam": 7}
    with caplog.at_level(logging.WARNING):
        assert cursor.receive("cam", 8) is take  # resumed: the server goes on above 7
        assert cursor.receive("cam", 8) is duplicate
    assert not caplog.records
    cursor.url("ws://h:1/ws")
    with caplog.at_level(logging.WARNING):
        assert cursor.receive("cam", 3) is Verdict.RENUMBERED, "a server numbering from lower down is noticed"
    assert "numbers it from seq 3 again" in caplog.text
    assert resume_in_query(cursor.url("ws://h:1/ws").split("?", 1)[1]) == {"cam": -1}, "replay its new numbering"
    assert [cursor.receive("cam", seq) for seq in (1, 1, 2)] == [take, duplicate, take]
    assert cursor.last_seq == {"cam": 2}
    assert json.loads(cursor.answer_lagged({"cam": 2})) == {"type": "resume", "streams": {"cam": 2}}

    live = ResumeCursor({"cam": 3}, resume=False)
    assert live.url("ws://h:1/ws") == "ws://h:1/ws"
    assert live.receive("cam", 1) is take and live.last_seq == {"cam": 1}

    backoff = Backoff(max_s=2.0)
    delays = [backoff.next_delay() for _ in range(8)]
    assert 0.125 <= delays[0] <= 0.25 and all(d <= 2.0 for d in delays) and delays[-1] >= 1.0
    backoff.reset()
    assert backoff.next_delay() <= 0.25


def test_arguments_are_checked_before_connecting() -> None:
    for bad in ({"types": ["events"]}, {"types": "event"}, {"streams": "cam"}, {"resume": {"cam": -2}},
                {"resume": {"cam": 1.5}}, {"token": ""}):
        with pytest.raises(ConfigError):
            connect("ws://127.0.0.1:1/ws", **bad)
    with pytest.raises(ConfigError, match="websocket URL"):
        connect("ftp://127.0.0.1:1/ws")
    assert connect("127.0.0.1:8765").url == "ws://127.0.0.1:8765/ws"


# -- against a real server -----------------------------------------------------------------------------


async def collect(client: Any, until: Callable[[Record], bool], timeout: float) -> list[Record]:
    """Records from ``client`` until one satisfies ``until`` (included)."""
    got: list[Record] = []

    async def loop() -> None:
        async for message in client:
            got.append(message)
            if until(message):
                return
        raise AssertionError(f"the iteration ended after {len(got)} records")

    await asyncio.wait_for(loop(), scaled(timeout))
    return got


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def wire_of(sent: StreamRecord) -> dict[str, Any]:
    """What the publisher's record is on the wire, less the fields clients ignore."""
    return {key: value for key, value in sent.to_wire().items() if key not in EXTRAS}


def durable_keys(received: list[Record], stream: str) -> list[tuple[str, int]]:
    return [(m.stream, m.seq) for m in received if isinstance(m, Event | Summary) and m.stream == stream]


def assert_no_gap_no_duplicate(received: list[Record], published: list[StreamRecord], stream: str) -> None:
    got = durable_keys(received, stream)
    expected = [(m.stream, m.seq) for m in published if isinstance(m, Event | Summary) and m.stream == stream]
    assert got, f"nothing durable of {stream} arrived"
    start = expected.index(got[0])
    assert got == expected[start:start + len(got)], f"{stream}: every event and summary once, in order"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_server_messages_come_out_as_typed_records() -> None:
    server = start_server()
    publisher = Publisher(server, hz=20, event_every=2).start()
    try:
        async def read() -> list[Record]:
            async with connect(server.url) as client:
                return await collect(client, lambda m: isinstance(m, Stats), 10)
        got = asyncio.run(read())
    finally:
        publisher.stop()
        server.stop()
    hello = got[0]
    assert isinstance(hello, Hello)
    assert hello.labels == EMOTIONS and hello.streams == STREAMS and hello.server.startswith("affectstream/")
    assert {type(m) for m in got[1:]} == {Estimate, Event, Summary, Stats}
    sent = {(m.stream, m.seq): m for m in publisher.sent}
    for message in got[1:]:
        assert isinstance(message, StreamRecord)
        published = sent[(message.stream, message.seq)]
        assert isinstance(published, type(message))
        assert message.to_wire() == wire_of(published), "every field as published; unknown ones ignored"
    events = [m for m in got if isinstance(m, Event)]
    assert all(isinstance(e.kind, EventKind) and e.label in EMOTIONS and 0 <= (e.value or 0) <= 1 for e in events)
    estimate = next(m for m in got if isinstance(m, Estimate))
    assert set(estimate.scores) == set(EMOTIONS) and estimate.latency_ms == {"encode": 3.1, "head": 0.4}
    stats = next(m for m in got if isinstance(m, Stats))
    assert stats.fields.latency_ms == {"p50": 20.0, "p95": 30.0, "p99": 35.0}


def test_across_a_server_restart_events_and_summaries_have_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    log_path = tmp_path / "events.sqlite"
    first_server = start_server(eventlog_path=log_path)
    port = first_server.port
    first = Publisher(first_server, hz=20, event_every=2).start()
    restarted: dict[str, Any] = {}

    def restart() -> None:
        first.stop()
        first_server.stop()
        time.sleep(0.5)  # the client's attempts are refused meanwhile
        server = StreamServer(ServerConfig(port=port, eventlog_path=log_path), make_hello)
        second = Publisher(server, hz=20, event_every=2, first_seq={s: server.next_seq(s) for s in STREAMS})
        for _ in range(12):  # published before the server listens: only its event log can give them to the client
            second.step()
        restarted["before_listening"] = {s: second.durable(s) for s in STREAMS}
        server.start()
        second.start()
        restarted.update(server=server, publisher=second)

    async def run() -> tuple[list[Record], int]:
        received: list[Record] = []
        async with connect(first_server.url, types=["event", "summary"], max_backoff_s=0.5) as client:
            async def read() -> None:
                async for message in client:
                    received.append(message)

            reader = asyncio.create_task(read())
            await wait_for(lambda: all(len(durable_keys(received, s)) >= 5 for s in STREAMS), 10, "events")
            await asyncio.to_thread(restart)
            second = restarted["publisher"]

            def past_the_restart() -> bool:
                return all(len(second.durable(s)) > 20 and durable_keys(received, s)
                           and durable_keys(received, s)[-1][1] >= second.durable(s)[20].seq for s in STREAMS)

            await wait_for(past_the_restart, 15, "events of the restarted server")
            reader.cancel()
            return received, client.connections

    try:
        received, connections = asyncio.run(run())
    finally:
        first.stop()
        first_server.stop()
        if "server" in restarted:
            restarted["publisher"].stop()
            restarted["server"].stop()
    assert connections == 2
    assert {type(m) for m in received} == {Event, Summary}
    second = restarted["publisher"]
    published = first.sent + second.sent
    for stream in STREAMS:
        assert_no_gap_no_duplicate(received, published, stream)
        got = set(durable_keys(received, stream))
        replayed = [(m.stream, m.seq) for m in restarted["before_listening"][stream]]
        assert replayed and set(replayed) <= got, "what was published while the client was away came from the log"
        assert any(m.seq in {k[1] for k in got} for m in first.durable(stream)), "the first server's events too"
    sent = {(m.stream, m.seq): m for m in published}
    assert all(m.to_wire() == wire_of(sent[(m.stream, m.seq)]) for m in received if isinstance(m, StreamRecord))


def test_a_server_restarted_without_its_log_is_replayed_from_its_new_numbering(
        caplog: pytest.LogCaptureFixture) -> None:
    server = start_server()
    port = server.port
    publisher = Publisher(server, hz=20, event_every=2).start()
    state: dict[str, Any] = {}

    def restart() -> None:
        publisher.stop()
        server.stop()
        state["server"] = start_server(port=port)  # in memory: it numbers from 0 again
        state["publisher"] = Publisher(state["server"], hz=20, event_every=2).start()

    async def run() -> tuple[list[Record], list[Record]]:
        # No estimates nor stats shown: the server holds back a resumed stream's events and summaries up
        # to the old mark, so only the stats the client subscribes to on its own can reveal the new numbering.
        async with connect(server.url, types=["event", "summary"], max_backoff_s=0.5) as client:
            before = await collect(client, lambda m: isinstance(m, Event) and m.seq > 60, 10)
            await asyncio.to_thread(restart)
            after = await collect(client, lambda m: isinstance(m, Event) and m.stream == "cam"
                                  and len(state["publisher"].durable("cam")) > 12
                                  and m.seq >= state["publisher"].durable("cam")[12].seq, 15)
            return before, after

    try:
        with caplog.at_level(logging.WARNING, logger="affectstream"):
            before, after = asyncio.run(run())
    finally:
        publisher.stop()
        server.stop()
        if "server" in state:
            state["publisher"].stop()
            state["server"].stop()
    received = before + after
    assert {type(m) for m in received} == {Event, Summary}
    cam = [m for m in received if m.stream_id == "cam"]
    back = next(i for i in range(1, len(cam)) if cam[i].seq_no < cam[i - 1].seq_no)  # where the numbering restarted
    assert_no_gap_no_duplicate(cam[:back], publisher.sent, "cam")
    assert_no_gap_no_duplicate(cam[back:], state["publisher"].sent, "cam")
    first = next(m for m in state["publisher"].sent if isinstance(m, Event | Summary) and m.stream == "cam")
    assert (cam[back].stream_id, cam[back].seq_no) == ("cam", first.seq), "the new numbering from its start"
    assert "numbers it from seq" in caplog.text


def test_a_refused_token_raises_at_once_and_the_right_one_goes_in_a_header() -> None:
    server = start_server(token="right")

    async def attempts() -> tuple[AuthError, AuthError, float, Record, str]:
        started = time.monotonic()
        with pytest.raises(AuthError) as wrong:
            async with connect(server.url, token="hunter2"):  # reconnect=True: still no retry loop
                pass
        elapsed = time.monotonic() - started
        with pytest.raises(AuthError) as missing:
            async for _ in connect(server.url):
                pass
        async with connect(server.url, token="right", types=["hello"]) as client:
            hello = await asyncio.wait_for(anext(client), scaled(5))
            return wrong.value, missing.value, elapsed, hello, client.url

    try:
        wrong, missing, elapsed, hello, used_url = asyncio.run(asyncio.wait_for(attempts(), scaled(10)))
    finally:
        server.stop()
    assert wrong.status == 401 and missing.status == 401 and elapsed < scaled(2)
    assert "401" in str(wrong) and "hunter2" not in str(wrong)
    assert isinstance(hello, Hello) and "token" not in used_url


def test_without_reconnect_refused_raises_and_a_server_stop_ends_the_iteration() -> None:
    port = free_port()

    async def refused() -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws", reconnect=False):
            pass

    with pytest.raises(ConnectError, match="cannot connect"):
        asyncio.run(refused())

    async def until_the_server_comes(server_box: dict[str, Any]) -> tuple[Record, list[Record]]:
        # reconnect=True: a client started before its server connects once the server listens
        async with connect(f"ws://127.0.0.1:{port}/ws", max_backoff_s=0.3, types=["hello"]) as client:
            hello = await asyncio.wait_for(anext(client), scaled(5))
        async with connect(f"ws://127.0.0.1:{port}/ws", reconnect=False, types=["hello", "event"]) as client:
            first = await asyncio.wait_for(anext(client), scaled(5))
            await asyncio.to_thread(server_box["server"].stop)
            rest = [m async for m in client]  # ends: the server closed the connection cleanly
            return hello, [first, *rest]

    box: dict[str, Any] = {}
    threading.Timer(0.6, lambda: box.setdefault("server", start_server(port=port))).start()
    try:
        hello, seen = asyncio.run(until_the_server_comes(box))
    finally:
        if "server" in box:
            box["server"].stop()
    assert isinstance(hello, Hello) and isinstance(seen[0], Hello)


def test_a_client_that_lags_still_gets_every_event() -> None:
    server = start_server(client_queue_size=4)
    publisher = Publisher(server, hz=20, event_every=1)

    async def run() -> list[Record]:
        received: list[Record] = []
        async with connect(server.url, types=["event", "summary"]) as client:
            async def read_slowly() -> None:
                async for message in client:
                    received.append(message)
                    await asyncio.sleep(0.001)

            reader = asyncio.create_task(read_slowly())
            publisher.step()
            await wait_for(lambda: len(received) >= 2, 5, "the first events")
            for _ in range(250):  # a burst: far more events than the server queues for this client
                publisher.step()
            last = {s: publisher.durable(s)[-1].seq for s in STREAMS}
            await wait_for(lambda: all(durable_keys(received, s) and durable_keys(received, s)[-1][1] == last[s]
                                       for s in STREAMS), 15, "the burst's last events")
            reader.cancel()
        return received

    try:
        received = asyncio.run(run())
        lagged = server.counters().lagged_times
    finally:
        server.stop()
    assert lagged >= 1, "the test needs the server to have lagged this client"
    for stream in STREAMS:
        assert_no_gap_no_duplicate(received, publisher.sent, stream)
        assert len(durable_keys(received, stream)) >= 250


def test_the_sync_iterator_yields_what_the_async_one_does() -> None:
    server = start_server()
    publisher = Publisher(server, hz=20, event_every=2)
    for _ in range(60):
        publisher.step()
    last = {s: publisher.durable(s)[-1].seq for s in STREAMS}
    everything = dict.fromkeys(STREAMS, -1)

    def done(received: list[Record]) -> bool:
        return all(durable_keys(received, s) and durable_keys(received, s)[-1][1] == last[s] for s in STREAMS)

    async def read_async() -> list[Record]:
        got: list[Record] = []
        async with connect(server.url, types=["event", "summary"], resume=everything) as client:
            async def loop() -> None:
                async for message in client:
                    got.append(message)
                    if done(got):
                        return

            await asyncio.wait_for(loop(), scaled(10))
        return got

    try:
        asynchronous = asyncio.run(read_async())
        synchronous: list[Record] = []
        with connect_sync(server.url, types=["event", "summary"], resume=everything) as client:
            for message in client:
                synchronous.append(message)
                if done(synchronous):
                    break
            assert client.last_seq["cam"] >= last["cam"] and isinstance(client.hello, Hello)
        with pytest.raises(StopIteration):
            next(client)  # closed: the iteration is over
    finally:
        server.stop()
    for stream in STREAMS:
        assert_no_gap_no_duplicate(synchronous, publisher.sent, stream)
        assert durable_keys(synchronous, stream)[0][1] == publisher.durable(stream)[0].seq, "-1 replays all kept"
        assert [m for m in synchronous if m.stream_id == stream] == [m for m in asynchronous if m.stream_id == stream]


def test_the_documented_consumer_example_runs_as_written() -> None:
    text = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    section = text[text.index("## Consuming the events from another program"):]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found and "from affectstream.client import" in found.group(1)
    server = start_server()
    publisher = Publisher(server, hz=20, event_every=2).start()  # every event an onset, a summary each 0.5 s
    lines: list[str] = []
    example = subprocess.Popen([sys.executable, "-u", "-c", found.group(1).replace("ws://127.0.0.1:8765/ws", server.url)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output = example.stdout
    assert output is not None

    def read() -> None:
        for line in output:
            lines.append(line)

    try:
        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + scaled(15)
        while time.monotonic() < deadline and example.poll() is None and not (
                any(" onset " in line for line in lines) and any("mostly" in line for line in lines)):
            time.sleep(0.05)
    finally:
        example.kill()
        _, errors = example.communicate()
        publisher.stop()
        server.stop()
    assert any(line.startswith(("cam onset ", "file onset ")) for line in lines), (lines[:5], errors[-2000:])
    assert any("mostly" in line and "over the last 5 s" in line for line in lines), (lines[:5], errors[-2000:])
