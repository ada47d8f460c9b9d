from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from affectstream.errors import ConfigError, SourceOutcome
from affectstream.stream.eventlog import SEQ_RESERVE, EventLog, EventLogConfig
from affectstream.stream.messages import (
    Estimate,
    Event,
    EventKind,
    Hello,
    SeqCounter,
    StreamRecord,
    Subscribed,
    wall_ms,
)


def fill(log: EventLog, stream: str, count: int, wall: int | None = None) -> SeqCounter:
    wall = wall_ms() if wall is None else wall
    numbering = SeqCounter()
    for step in range(count):
        messages: list[StreamRecord] = [
            Estimate(stream=stream, seq=numbering.take(), ts=step, wall=wall, scores={}, sentiment=0.0,
                     dominant="fear"),
            Event(stream=stream, seq=numbering.take(), ts=step, wall=wall, kind=EventKind.PEAK, label="fear",
                  value=0.5),
        ]
        log.append(m for m in messages)
    return numbering


def event(stream: str, seq: int, kind: EventKind, **fields: Any) -> Event:
    return Event(stream=stream, seq=seq, ts=float(seq), wall=wall_ms(), kind=kind, **fields)


def test_stores_events_and_summaries_only_and_replays_after_a_seq() -> None:
    log = EventLog(EventLogConfig())
    fill(log, "a", 5)
    fill(log, "b", 2)
    rows = log.since("a", 4)
    assert [r.seq for r in rows] == [5, 7, 9]  # odd seqs are the events; estimates are not stored
    assert all(r.type == "event" and r.message()["stream"] == "a" for r in rows)
    assert [r.seq for r in log.since("a", -1, limit=2)] == [1, 3]
    assert log.streams() == ["a", "b"]
    assert log.next_seq("a") == 1 + SEQ_RESERVE + 1 and log.next_seq("nobody") == 0  # reserved past seq 1


def test_replayed_text_is_what_was_sent() -> None:
    log = EventLog(EventLogConfig())
    message = Event(stream="a", seq=0, ts=1.5, wall=wall_ms(), kind=EventKind.STREAM_ENDED,
                    outcome=SourceOutcome.CORRUPT, detail="bad packet", frames_read=12,
                    damage={"corrupt_packets": 2})
    log.append_message(message)
    (row,) = log.since("a", -1)
    assert row.text == message.text
    assert row.message() == message.to_wire()
    assert row.message()["damage"] == {"corrupt_packets": 2} and row.message()["outcome"] == "corrupt"


def test_per_client_messages_are_not_stored() -> None:
    log = EventLog(EventLogConfig())
    assert log.append([Hello(labels=("fear",), model={}, streams=("a",), wall=wall_ms()),
                       Subscribed(streams=None, types=None)]) == 0
    assert not log.stores(Subscribed(streams=("a",), types=None))
    assert log.streams() == []


def test_estimates_are_kept_when_asked() -> None:
    log = EventLog(EventLogConfig(estimate_retention_s=60))
    fill(log, "a", 3)
    assert [r.type for r in log.since("a", -1)] == ["estimate", "event"] * 3


def test_a_reused_seq_is_ignored_not_overwritten() -> None:
    log = EventLog(EventLogConfig())
    first = event("a", 0, EventKind.ONSET, label="fear", value=0.1)
    again = event("a", 0, EventKind.OFFSET, label="fear", value=0.2)
    log.append_message(first)
    assert log.append_message(again) == 0
    assert log.since("a", -1)[0].message()["kind"] == "onset"
    assert log.ignored_duplicates == 1


def test_retention_prunes_old_rows_and_remembers_how_far(tmp_path: Path) -> None:
    now = [50_000]
    log = EventLog(EventLogConfig(retention_s=10), clock_ms=lambda: now[0])
    fill(log, "a", 3, wall=50_000)  # seqs 1, 3, 5 stored
    fill(log, "b", 1, wall=95_000)
    now[0] = 100_000  # the "a" rows are now 50 s old
    assert log.prune() == 3
    assert log.since("a", -1) == [] and len(log.since("b", -1)) == 1
    assert log.pruned_through("a") == 5 and log.pruned_through("b") == -1
    assert log.pruned_through("a") < log.next_seq("a")  # numbering never reuses a pruned seq


def test_a_file_log_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "events.sqlite"
    log = EventLog(EventLogConfig(path=path))
    fill(log, "a", 4)
    log.close()
    reopened = EventLog(EventLogConfig(path=path))
    assert [r.seq for r in reopened.since("a", 2)] == [3, 5, 7]
    assert reopened.next_seq("a") == 1 + SEQ_RESERVE + 1  # reserved past the first batch


def test_bad_settings_and_paths_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="retention"):
        EventLogConfig(retention_s=0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises((ConfigError, OSError)):
        EventLog(EventLogConfig(path=blocker / "log.sqlite"))
