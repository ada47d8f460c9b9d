"""Delivery rules of one client, without sockets: filter, coalescing, lag, resume."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affectstream.stream.eventlog import EventLog, EventLogConfig
from affectstream.stream.messages import (
    Estimate,
    Event,
    EventKind,
    MessageType,
    SeqCounter,
    Stats,
    StatsFields,
    StreamRecord,
    Summary,
    Wire,
    wall_ms,
)
from affectstream.stream.subscriptions import ClientSession, Outgoing, ProtocolError, resume_in_query


class World:
    """A real event log and the message numbering of a few streams, as the server has them."""

    def __init__(self, streams: tuple[str, ...] = ("a", "b")) -> None:
        self.log = EventLog(EventLogConfig())
        self.numbering = {s: SeqCounter() for s in streams}

    def session(self, capacity: int = 8) -> ClientSession:
        return ClientSession(capacity, self.log.since)

    def record(self, stream: str, kind: str) -> StreamRecord:
        numbered = {"stream": stream, "seq": self.numbering[stream].take(), "ts": 1.0, "wall": wall_ms()}
        match MessageType(kind):
            case MessageType.EVENT:
                return Event(kind=EventKind.PEAK, label="fear", value=0.5, **numbered)
            case MessageType.ESTIMATE:
                return Estimate(scores={"fear": 0.5}, sentiment=0.0, dominant="fear", **numbered)
            case MessageType.SUMMARY:
                return Summary(window_s=5.0, start=0.0, end=1.0, frames=4, mean={"fear": 0.5}, dominant="fear",
                               share={"fear": 1.0}, sentiment_mean=0.0, sentiment_trend=0.0, **numbered)
            case MessageType.STATS:
                return Stats(fields=StatsFields(), **numbered)
        raise AssertionError(kind)

    def emit(self, stream: str, kind: str, *sessions: ClientSession) -> Wire:
        """Publish one message as the server does; returns its wire form, what a client should get."""
        message = self.record(stream, kind)
        self.log.append([message])
        for session in sessions:
            session.offer(Outgoing.of(message))
        return message.to_wire()


def drain(session: ClientSession) -> list[Wire]:
    out: list[Wire] = []
    while batch := session.take(5):
        out.extend(json.loads(item.text) for item in batch)
    return out


def keys(messages: list[Wire], types: tuple[str, ...] = ("event", "summary")) -> list[tuple[str, int]]:
    return [(m["stream"], m["seq"]) for m in messages if m["type"] in types]


def test_a_fast_client_gets_everything_in_order() -> None:
    world = World()
    session = world.session()
    sent = [world.emit(s, k, session) for s, k in [("a", "estimate"), ("a", "event"), ("b", "estimate")]]
    assert drain(session) == sent


def test_filter_by_stream_and_type() -> None:
    world = World()
    session = world.session()
    session.handle({"type": "subscribe", "streams": ["a"]})
    session.handle({"type": "unsubscribe", "types": ["estimate"]})
    world.emit("a", "estimate", session)
    event = world.emit("a", "event", session)
    world.emit("b", "event", session)
    out = drain(session)
    assert [m["type"] for m in out] == ["subscribed", "subscribed", "event"]
    assert out[-1] == event
    assert out[1]["streams"] == ["a"] and out[1]["excluded_types"] == ["estimate"]


def test_a_subscription_also_applies_to_what_is_still_queued() -> None:
    world = World()
    session = world.session()
    world.emit("a", "estimate", session)
    wanted = world.emit("a", "event", session)
    world.emit("b", "event", session)
    session.handle({"type": "subscribe", "streams": ["a"], "types": ["event"]})
    later = world.emit("a", "event", session)
    out = drain(session)
    assert [m for m in out if m["type"] != "subscribed"] == [wanted, later]
    assert session.counters().durable_queued == 0


def test_unsent_estimates_are_coalesced_and_order_is_kept() -> None:
    world = World()
    session = world.session()
    world.emit("a", "estimate", session)
    event = world.emit("a", "event", session)
    latest = world.emit("a", "estimate", session)
    other = world.emit("b", "estimate", session)
    assert drain(session) == [event, latest, other]
    assert session.counters().coalesced == 1


def test_overflow_lags_the_client_then_resume_fills_the_gap_exactly() -> None:
    world = World()
    session = world.session(capacity=4)
    first = world.emit("a", "event", session)
    assert drain(session) == [first]
    for _ in range(6):  # more than fit: the client stopped reading
        world.emit("a", "event", session)
        world.emit("b", "event", session)
        world.emit("a", "estimate", session)
    out = drain(session)
    assert [m["type"] for m in out] == ["lagged"]
    lag = out[0]["streams"]  # the unsent notice was kept up to date until it went out
    assert lag["a"]["resume_after"] == first["seq"]
    assert lag["a"]["missed"] == 6 and lag["b"]["missed"] == 6
    world.emit("a", "event", session)  # while lagged nothing of a lagged stream is sent...
    assert drain(session) == []  # ...and the client, told once, is not told again
    session.handle({"type": "resume", "streams": {s: info["resume_after"] for s, info in lag.items()}})
    latest = world.emit("a", "estimate", session)  # held during the replay, sent after it
    replayed = drain(session)
    everything = keys([json.loads(r.text) for s in ("a", "b") for r in world.log.since(s, -1)])
    assert sorted(keys(replayed)) == sorted(everything[1:])  # all but the first, which it already had
    assert [m for m in replayed if m["type"] == "estimate"] == [latest]
    assert replayed.index(latest) > max(i for i, m in enumerate(replayed) if m["stream"] == "a" and m["type"] == "event")
    live = world.emit("b", "event", session)
    assert drain(session) == [live]


def test_resume_on_a_new_connection_replays_from_the_log_in_pages() -> None:
    world = World(("a",))
    for _ in range(450):
        world.emit("a", "event")
    session = world.session(capacity=100)
    session.handle({"type": "resume", "streams": {"a": 9}})
    out = drain(session)
    assert [seq for _, seq in keys(out)] == list(range(10, 450))
    assert session.counters().replayed == 440
    live = world.emit("a", "event", session)
    assert drain(session) == [live]


def test_live_messages_during_a_replay_are_not_duplicated() -> None:
    world = World(("a",))
    for _ in range(5):
        world.emit("a", "event")
    session = world.session(capacity=2)
    session.handle({"type": "resume", "streams": {"a": -1}})
    got = [json.loads(i.text) for i in session.take(1)]
    for _ in range(3):  # published while the replay is under way: they are in the log too
        world.emit("a", "event", session)
    got += drain(session)
    assert [m["seq"] for m in got] == list(range(8))


@pytest.mark.parametrize("request_, code", [
    ([1, 2], "bad_message"),
    ({"type": "dance"}, "unknown_type"),
    ({"type": 3}, "bad_message"),
    ({"type": "subscribe", "streams": "a"}, "bad_message"),
    ({"type": "subscribe", "types": ["estimates"]}, "bad_message"),
    ({"type": "resume", "streams": {"a": "7"}}, "bad_message"),
    ({"type": "resume", "streams": {"a": -5}}, "bad_message"),
    ({"type": "resume"}, "bad_message"),
])
def test_bad_client_messages_raise_a_coded_error(request_: object, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        World().session().handle(request_)
    assert caught.value.code == code


@pytest.mark.parametrize(("query", "expected"), [
    ("", {}),
    ("token=x", {}),
    ("token=x&resume=%7B%22cam%22%3A41%2C%22talk%22%3A-1%7D", {"cam": 41, "talk": -1}),
])
def test_resume_in_the_url(query: str, expected: dict[str, int]) -> None:
    assert resume_in_query(query) == expected


@pytest.mark.parametrize("query", ["resume=%7Bcam", "resume=%5B1%5D", "resume=%7B%22cam%22%3A-2%7D",
                                   "resume=%7B%22cam%22%3Atrue%7D"])
def test_a_malformed_resume_in_the_url_says_the_form(query: str) -> None:
    with pytest.raises(ProtocolError, match="resume|seq"):
        resume_in_query(query)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["estimate", "event", "summary", "stats"]),
                          st.integers(0, 3)), max_size=80))
def test_no_durable_message_is_lost_or_duplicated_whatever_the_pace(
        plan: list[tuple[str, str, int]]) -> None:
    """Any interleaving of publishing and reading; the client resumes whenever told it lagged."""
    world = World()
    session = world.session(capacity=3)
    received: list[Wire] = []

    def read(count: int) -> None:
        for item in session.take(count):
            message = json.loads(item.text)
            if message["type"] == "lagged":
                session.handle({"type": "resume", "streams": {
                    s: info["resume_after"] for s, info in message["streams"].items()}})
            else:
                received.append(message)

    for stream, kind, reads in plan:
        world.emit(stream, kind, session)
        read(reads)
    while session.pending:
        read(10)
    everything = [(s, r.seq) for s in ("a", "b") for r in world.log.since(s, -1, limit=10_000)]
    assert sorted(keys(received)) == sorted(everything)
    for stream in ("a", "b"):
        seqs = [m["seq"] for m in received if m["stream"] == stream]
        assert seqs == sorted(seqs)  # per stream, in order
