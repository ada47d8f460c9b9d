"""Sinks' rules with data alone (stream/delivery.py SinkOutbox, stream/brokers.py parse_sink), and a
worker against a real SQLite event log and a transport that fails on purpose."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from affectstream.errors import ConfigError
from affectstream.stream.brokers import DeliveryError, Outbound, SinkKind, SinkSpec, parse_sink, signature
from affectstream.stream.delivery import BATCH, LIVE_LIMIT, SinkOutbox, SinkState, SinkWorker
from affectstream.stream.eventlog import EventLog, EventLogConfig, StoredMessage
from affectstream.stream.messages import Estimate, EstimateState, Event, EventKind, Record
from tests.timeouts import scaled


def _row(stream: str, seq: int, kind: str = "event", ts: float = 0.0) -> StoredMessage:
    return StoredMessage(stream, seq, kind, json.dumps({"type": kind, "stream": stream, "seq": seq, "ts": ts}))


def test_sink_urls_are_read_and_mistakes_named() -> None:
    mqtt = parse_sink("mqtt://user:pw@broker.lan/affect?types=event,summary")
    assert (mqtt.kind, mqtt.host, mqtt.port, mqtt.path, mqtt.username, mqtt.password) == (
        SinkKind.MQTT, "broker.lan", 1883, "affect", "user", "pw")
    assert mqtt.name == "mqtt://broker.lan:1883/affect" and "pw" not in mqtt.name
    assert mqtt.types == {"event", "summary"}
    redis = parse_sink("redis://127.0.0.1:6390/2?stream=cams&maxlen=500&estimate_hz=2")
    assert (redis.db, redis.path, redis.maxlen, redis.estimate_hz) == (2, "cams", 500, 2.0)
    hook = parse_sink("https://hooks.example/in?secret_env=HOOK_KEY")
    assert (hook.kind, hook.port, hook.secret_env) == (SinkKind.WEBHOOK, 443, "HOOK_KEY")
    assert parse_sink("jsonl:out/events.jsonl").path == "out/events.jsonl"
    for bad, says in [("kafka://x/y", "the scheme is"), ("mqtt://host/", "topic prefix"),
                      ("mqtt://host/a/#", "without [+] or #"), ("redis://host/zero", "database number"),
                      ("mqtt://h/p?types=estimate,nope", "types= takes"), ("mqtt://h/p?estimate_hz=-1", "estimate_hz"),
                      ("jsonl:", "needs a file path"), ("mqtt://u:secret@h:99999/p", "port")]:
        with pytest.raises(ConfigError, match=says) as caught:
            parse_sink(bad)
        assert "secret" not in str(caught.value)


def test_a_new_sink_starts_at_the_end_of_the_log_and_a_known_one_at_its_cursor() -> None:
    spec = parse_sink("jsonl:x.jsonl")
    fresh = SinkOutbox(spec, {}, {"cam": 41})
    assert fresh.cursors == {"cam": 41} and fresh.behind() == []
    fresh.stored("cam", 42)
    fresh.stored("door", 0)  # a stream that appears later: from its first message
    assert sorted(fresh.behind()) == ["cam", "door"]
    known = SinkOutbox(spec, {"cam": 10}, {"cam": 41})
    assert known.behind() == ["cam"]
    batch, cursors = known.choose({"cam": [_row("cam", s) for s in range(11, 20)]})
    assert [m.seq for m in batch] == list(range(11, 20)) and cursors["cam"] == 19
    assert known.cursors["cam"] == 10, "the cursor moves only once the batch is delivered"
    known.delivered(batch, cursors)
    assert known.cursors["cam"] == 19


def test_types_and_thinning_decide_rows_without_sending_them_and_events_are_never_thinned() -> None:
    spec = SinkSpec("mqtt://h/p?estimate_hz=1", "mqtt://h:1883/p", SinkKind.MQTT,
                    frozenset({"estimate", "event"}), estimate_hz=1.0)
    outbox = SinkOutbox(spec, {"cam": -1}, {"cam": 100})
    rows = [_row("cam", i, "estimate", ts=i * 0.25) for i in range(12)]  # 4 Hz for 3 s
    rows += [_row("cam", 12, "summary"), _row("cam", 13, "event"), _row("cam", 14, "event")]
    batch, cursors = outbox.choose({"cam": rows})
    assert [m.seq for m in batch if m.type == "estimate"] == [0, 4, 8]  # one per second of media time
    assert [m.seq for m in batch if m.type != "estimate"] == [13, 14]  # the summary is not wanted; events all
    assert cursors["cam"] == 14, "rows left out are decided: the cursor passes them"


def test_a_batch_is_bounded_and_live_messages_are_a_bounded_drop_oldest_queue() -> None:
    outbox = SinkOutbox(SinkSpec("jsonl:x", "jsonl:x", SinkKind.JSONL, frozenset({"event", "stats"})),
                        {"cam": -1}, {"cam": 10_000}, estimates_stored=True)
    batch, cursors = outbox.choose({"cam": [_row("cam", s) for s in range(BATCH * 2)]})
    assert len(batch) == BATCH and cursors["cam"] == BATCH - 1
    for seq in range(LIVE_LIMIT + 50):
        outbox.offer_live(Outbound("cam", seq, "stats", "{}"))
    assert len(outbox.live) == LIVE_LIMIT and outbox.live_dropped == 50
    assert outbox.live[0].seq == 50
    outbox.offer_live(Outbound("cam", 0, "estimate", "{}"))  # not a type this sink takes
    assert len(outbox.live) == LIVE_LIMIT


class _Flaky:
    """A transport that refuses while ``down`` is set, and keeps what it took."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.taken: list[Outbound] = []
        self.refused = 0

    def send(self, batch: Sequence[Outbound]) -> None:
        if self.down.is_set():
            self.refused += 1
            raise DeliveryError("down on purpose")
        self.taken.extend(batch)

    def close(self) -> None:
        pass


class _DirectAccess:
    """LogAccess over an EventLog used from one thread at a time (the test's lock)."""

    def __init__(self, log: EventLog) -> None:
        self.log, self.lock = log, threading.Lock()

    def since(self, stream: str, after_seq: int, limit: int) -> list[StoredMessage]:
        with self.lock:
            return self.log.since(stream, after_seq, limit)

    def cursors(self, sink: str) -> dict[str, int]:
        with self.lock:
            return self.log.cursors(sink)

    def save_cursors(self, sink: str, cursors: dict[str, int]) -> None:
        with self.lock:
            self.log.save_cursors(sink, cursors)

    def stored_heads(self) -> dict[str, int]:
        with self.lock:
            return self.log.heads()

    def count_since(self, stream: str, after_seq: int) -> int:
        with self.lock:
            return self.log.count_since(stream, after_seq)


def _events(stream: str, seqs: range) -> list[Record]:
    return [Event(stream=stream, seq=s, ts=s * 0.5, wall=int(time.time() * 1000), kind=EventKind.ONSET,
                  label="happiness", value=0.7) for s in seqs]


def _wait(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + scaled(seconds)
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_a_worker_holds_events_while_down_sends_them_in_order_when_back_and_its_cursor_survives(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    log = EventLog(EventLogConfig(path))
    access = _DirectAccess(log)
    spec = parse_sink("jsonl:unused")
    transport = _Flaky()
    worker = SinkWorker(spec, access, estimates_stored=False, transport_factory=lambda _: transport)
    worker.start()

    def publish(records: list[Record]) -> None:
        with access.lock:
            log.append(records)
        worker.on_messages([r for r in records if isinstance(r, Event)], [])

    publish(_events("cam", range(0, 5)))
    assert _wait(lambda: len(transport.taken) == 5, 5)
    transport.down.set()
    publish(_events("cam", range(5, 30)))
    assert _wait(lambda: transport.refused >= 2, 10)
    assert worker.status().state is SinkState.DOWN and worker.status().lag == 25
    transport.down.clear()
    assert _wait(lambda: len(transport.taken) == 30, 40), "back: everything that waited goes out"
    assert [m.seq for m in transport.taken] == list(range(30)), "in order, no gap, no duplicate"
    assert _wait(lambda: worker.status().lag == 0 and worker.status().state is SinkState.UP, 5)
    worker.close(2.0)
    assert log.cursors(spec.name) == {"cam": 29}
    log.close()

    # A restarted run with the same log: the sink goes on after its cursor.
    log = EventLog(EventLogConfig(path))
    log.append(_events("cam", range(30, 33)))
    again = _Flaky()
    worker = SinkWorker(spec, _DirectAccess(log), estimates_stored=False, transport_factory=lambda _: again)
    worker.start()
    assert _wait(lambda: len(again.taken) == 3, 10)
    worker.close(2.0)
    assert [m.seq for m in again.taken] == [30, 31, 32]
    log.close()


def test_estimates_the_log_does_not_keep_go_live_and_wait_in_a_bounded_queue_while_down(tmp_path: Path) -> None:
    log = EventLog(EventLogConfig(None))
    transport = _Flaky()
    spec = SinkSpec("jsonl:x", "jsonl:x", SinkKind.JSONL, frozenset({"estimate", "event"}))
    worker = SinkWorker(spec, _DirectAccess(log), estimates_stored=False, transport_factory=lambda _: transport)
    worker.start()
    estimates = [Estimate(stream="cam", seq=s, ts=s * 0.25, wall=0, scores={"happiness": 0.5}, sentiment=0.1,
                          state=EstimateState.OK, dominant="happiness") for s in range(6)]
    worker.on_messages([], estimates[:3])
    assert _wait(lambda: [m.seq for m in transport.taken] == [0, 1, 2], 5)
    transport.down.set()
    worker.on_messages([], estimates[3:])
    assert _wait(lambda: transport.refused >= 1, 5)
    transport.down.clear()
    assert _wait(lambda: [m.seq for m in transport.taken] == [0, 1, 2, 3, 4, 5], 10)
    worker.close(1.0)
    log.close()


def test_the_webhook_signature_is_hmac_sha256_of_the_body() -> None:
    import hashlib
    import hmac

    body = b'[{"type": "event"}]'
    assert signature(b"k", body) == hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert signature(b"k", body) != signature(b"other", body)


def test_nothing_stored_after_the_cursor_catches_up_only_to_the_heads_the_pages_were_read_at() -> None:
    outbox = SinkOutbox(parse_sink("jsonl:x"), {"cam": 2}, {"cam": 3})
    outbox.stored("cam", 7)  # stored after the (empty) page was read: must still be sent
    batch, cursors = outbox.choose({"cam": []}, {"cam": 3})
    assert batch == [] and cursors["cam"] == 3
    outbox.delivered(batch, cursors)
    assert outbox.behind() == ["cam"]
