"""The per-stream analytics core, driven by synthetic score sequences (no threads, no video)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affectstream.errors import ConfigError, PipelineError, SourceOutcome
from affectstream.stream.frames import SourceEvent, SourceState
from affectstream.stream.messages import (
    Estimate,
    Event,
    EventKind,
    MessageType,
    StatsFields,
    StreamRecord,
    Summary,
)
from affectstream.stream.session import AnalyticsConfig, StreamSession

LABELS = ("anger", "happiness", "disgust", "fear", "sadness", "surprise")
WALL = 1_767_225_600_000
STEP = 0.25  # 4 Hz: exact in binary, so window boundaries are hit exactly
SCHEMAS = Path(__file__).resolve().parent.parent / "stream" / "schemas"

# Only the happiness episode logic matters in most tests: shifts and windows out of the way.
QUIET = AnalyticsConfig(windows_s=(1000.0,), shift_min_dwell_s=1e6)


def scores(happiness: float = 0.0, **others: float) -> list[float]:
    values = {label: 0.05 for label in LABELS} | {"happiness": happiness} | others
    return [values[label] for label in LABELS]


def feed(session: StreamSession, series: Iterable[Sequence[float]], start: float = 0.0,
         sentiment: float = 0.0) -> list[StreamRecord]:
    out: list[StreamRecord] = []
    for i, row in enumerate(series):
        out += session.on_estimate(start + i * STEP, WALL, row, sentiment)
    return out


def happiness_run(values: Sequence[float],
                  config: AnalyticsConfig = QUIET) -> tuple[StreamSession, list[StreamRecord]]:
    session = StreamSession("cam", LABELS, config)
    return session, feed(session, [scores(v) for v in values])


def events(records: list[StreamRecord], *kinds: EventKind) -> list[Event]:
    return [r for r in records if isinstance(r, Event) and (not kinds or r.kind in kinds)]


def summaries_of(records: list[StreamRecord]) -> list[Summary]:
    return [r for r in records if isinstance(r, Summary)]


def validate(records: list[StreamRecord]) -> None:
    for record in records:
        schema = json.loads((SCHEMAS / f"{record.type.value}.json").read_text())
        jsonschema.validate(json.loads(record.text), schema)


# -- episodes --------------------------------------------------------------------------------------


def test_onset_after_min_duration_carries_the_start() -> None:
    # Above 0.6 from ts 1.0 on; min_duration 1.0 s is reached at ts 2.0.
    _, out = happiness_run([0.1] * 4 + [0.7, 0.8, 0.75, 0.7, 0.72, 0.7])
    (onset,) = events(out, EventKind.ONSET)
    assert onset.label == "happiness" and onset.ts == 1.0 and onset.started == 1.0
    assert onset.value == 0.7 and onset.confirmed == 2.0
    # Emitted right after the estimate that confirmed it.
    index = out.index(onset)
    assert isinstance(out[index - 1], Estimate) and out[index - 1].ts == 2.0


def test_a_short_blip_is_no_episode() -> None:
    _, out = happiness_run([0.1, 0.9, 0.9, 0.9, 0.3, 0.1, 0.9, 0.1] + [0.1] * 8)
    assert events(out) == []


def test_hysteresis_does_not_flap_between_thresholds() -> None:
    flapping = [0.45, 0.65] * 20
    session, out = happiness_run([0.7] * 5 + flapping)
    assert [e.kind for e in events(out)] == [EventKind.ONSET]
    assert [e.kind for e in events(session.finish(20.0, WALL))] == [EventKind.PEAK, EventKind.OFFSET]


def test_offset_after_min_gap_then_one_peak() -> None:
    values = [0.1] * 2 + [0.7, 0.9, 0.95, 0.8, 0.7, 0.5] + [0.3] * 6
    _, out = happiness_run(values)
    onset, peak, offset = events(out)
    assert onset.kind is EventKind.ONSET and onset.ts == 0.5
    # Fell below 0.4 at ts 2.0 (index 8) and stayed there 1 s: offset confirmed at ts 3.0, dated 2.0.
    assert offset.kind is EventKind.OFFSET and offset.ts == 2.0 and offset.duration == 1.5
    assert offset.started == 0.5 and offset.value == 0.3 and offset.forced is False
    assert "forced" not in offset.to_wire()
    assert peak.kind is EventKind.PEAK and peak.value == 0.95 and peak.ts == 1.0
    assert peak.seq < offset.seq


def test_a_dip_shorter_than_min_gap_keeps_the_episode() -> None:
    values = [0.8] * 6 + [0.2] * 3 + [0.8] * 6
    session, out = happiness_run(values)
    assert [e.kind for e in events(out)] == [EventKind.ONSET]
    assert [e.kind for e in events(session.finish(4.0, WALL))] == [EventKind.PEAK, EventKind.OFFSET]


def test_zero_durations_react_at_once() -> None:
    config = AnalyticsConfig(windows_s=(1000.0,), shift_min_dwell_s=1e6, min_duration_s=0.0, min_gap_s=0.0)
    _, out = happiness_run([0.1, 0.7, 0.3], config)
    assert [(e.kind, e.ts) for e in events(out)] == [
        (EventKind.ONSET, 0.25), (EventKind.PEAK, 0.25), (EventKind.OFFSET, 0.5)]


def test_finish_closes_open_episodes_as_forced() -> None:
    session, _ = happiness_run([0.9] * 10)
    closing = session.finish(2.25, WALL)
    peak, offset = events(closing)
    assert offset.forced is True and offset.ts == 2.25 and offset.duration == 2.25
    assert offset.to_wire()["forced"] is True
    assert peak.value == 0.9
    assert events(session.finish(2.25, WALL)) == []  # nothing left open


# -- shifts ----------------------------------------------------------------------------------------


def test_shift_when_a_new_label_leads_for_the_dwell_time() -> None:
    config = AnalyticsConfig(windows_s=(1000.0,), shift_smoothing_s=0.0, shift_min_dwell_s=2.0)
    session = StreamSession("cam", LABELS, config)
    series = [scores(0.7, anger=0.1)] * 8 + [scores(0.2, anger=0.6)] * 12
    (shift,) = events(feed(session, series), EventKind.SHIFT)
    assert shift.label == "anger" and shift.previous == "happiness"
    assert shift.ts == 2.0 and shift.confirmed == 4.0 and shift.value == 0.6


def test_no_shift_without_the_margin_or_the_dwell() -> None:
    config = AnalyticsConfig(windows_s=(1000.0,), shift_smoothing_s=0.0, shift_margin=0.1)
    session = StreamSession("cam", LABELS, config)
    close_race = [scores(0.5, anger=0.45), scores(0.45, anger=0.53)] * 20  # anger leads by 0.08 < margin
    short_lead = [scores(0.2, anger=0.9)] * 7 + [scores(0.9)] * 4  # 1.5 s < dwell
    assert events(feed(session, close_race + short_lead), EventKind.SHIFT) == []


def test_smoothing_delays_a_shift() -> None:
    raw = StreamSession("a", LABELS, AnalyticsConfig(windows_s=(1000.0,), shift_smoothing_s=0.0))
    smooth = StreamSession("b", LABELS, AnalyticsConfig(windows_s=(1000.0,), shift_smoothing_s=2.0))
    series = [scores(0.8)] * 8 + [scores(0.1, fear=0.8)] * 40
    (raw_shift,) = events(feed(raw, series), EventKind.SHIFT)
    (smooth_shift,) = events(feed(smooth, series), EventKind.SHIFT)
    assert smooth_shift.label == raw_shift.label == "fear"
    assert smooth_shift.ts > raw_shift.ts


# -- summaries -------------------------------------------------------------------------------------


def test_summaries_at_exact_window_boundaries() -> None:
    session = StreamSession("cam", LABELS, AnalyticsConfig(windows_s=(5.0,), shift_min_dwell_s=1e6))
    # 0..4.75: happiness dominant 3/4 of the frames, sadness 1/4; 5..9.75: all fear.
    first = [scores(0.8) if i % 4 else scores(0.1, sadness=0.9) for i in range(20)]
    second = [scores(0.0, fear=0.5)] * 20
    out = feed(session, first + second + [scores(0.1)])
    summaries = summaries_of(out)
    assert [(s.ts, s.start, s.end, s.frames) for s in summaries] == [
        (5.0, 0.0, 5.0, 20), (10.0, 5.0, 10.0, 20)]
    one, two = summaries
    assert one.window_s == 5.0 and one.partial is False and "partial" not in one.to_wire()
    assert one.mean["happiness"] == pytest.approx(0.75 * 0.8 + 0.25 * 0.1, abs=1e-4)
    assert one.share["happiness"] == 0.75 and one.share["sadness"] == 0.25
    assert one.dominant == "happiness" and two.dominant == "fear" and two.share["fear"] == 1.0
    # The summary of [0, 5) comes right after the estimate at 5.0 that completed it.
    index = out.index(one)
    assert isinstance(out[index - 1], Estimate) and out[index - 1].ts == 5.0
    validate(list(summaries))


def test_sentiment_mean_and_trend_per_second() -> None:
    session = StreamSession("cam", LABELS, AnalyticsConfig(windows_s=(5.0,)))
    out: list[StreamRecord] = []
    for i in range(21):
        ts = i * STEP
        out += session.on_estimate(ts, WALL, scores(0.5), -0.5 + 0.1 * ts)
    (summary,) = summaries_of(out)
    assert summary.sentiment_trend == pytest.approx(0.1)
    assert summary.sentiment_mean == pytest.approx(-0.5 + 0.1 * 2.375)


def test_overlapping_windows_with_a_hop() -> None:
    config = AnalyticsConfig(windows_s=(2.0,), hops_s=(1.0,))
    session = StreamSession("cam", LABELS, config)
    out = feed(session, [scores(0.5)] * 17)  # 0 .. 4.0
    summaries = [(s.start, s.end, s.frames) for s in summaries_of(out)]
    assert summaries == [(0.0, 1.0, 4), (0.0, 2.0, 8), (1.0, 3.0, 8), (2.0, 4.0, 8)]


def test_gap_skips_empty_windows_and_finish_flushes_partial() -> None:
    session = StreamSession("cam", LABELS, AnalyticsConfig(windows_s=(5.0,)))
    out = feed(session, [scores(0.5)] * 4)  # 0 .. 0.75
    out += session.on_estimate(23.0, WALL, scores(0.5), 0.0)
    out += session.on_estimate(23.5, WALL, scores(0.5), 0.0)
    assert [(s.start, s.end, s.frames) for s in summaries_of(out)] == [(0.0, 5.0, 4)]
    (partial,) = summaries_of(session.finish(24.0, WALL))
    assert partial.partial is True and partial.frames == 2 and partial.to_wire()["partial"] is True
    assert (partial.start, partial.end, partial.ts) == (20.0, 24.0, 24.0)


def test_media_time_going_back_restarts_cleanly() -> None:
    session = StreamSession("cam", LABELS, AnalyticsConfig(windows_s=(5.0,), shift_min_dwell_s=1e6))
    out = feed(session, [scores(0.9)] * 12, start=100.0)
    restarted = session.on_estimate(0.0, WALL, scores(0.1), 0.0)
    kinds = [m.kind.value if isinstance(m, Event) else m.type.value for m in restarted]
    assert kinds == ["peak", "offset", "summary", "estimate"]
    summary = restarted[2]
    assert isinstance(summary, Summary) and summary.partial is True and summary.frames == 12
    assert len(events(out, EventKind.ONSET)) == 1


# -- numbering, lifecycle, drops -------------------------------------------------------------------


def test_seq_is_one_counter_for_all_types_and_streams_are_independent() -> None:
    a = StreamSession("a", LABELS, AnalyticsConfig(windows_s=(1.0,), min_duration_s=0.0))
    b = StreamSession("b", LABELS, AnalyticsConfig(windows_s=(1.0,)))
    out_a = a.on_source_event(SourceEvent("a", SourceState.RUNNING, WALL), 0.0)
    out_a += feed(a, [scores(0.9 if i % 8 < 4 else 0.1) for i in range(30)])
    out_a.append(a.stats(7.5, WALL, StatsFields(input_fps=4.0, sampled_fps=4.0, drops=0,
                                                latency_ms={"p50": 1.0, "p95": 2.0, "p99": 3.0})))
    out_a += a.on_drops(7.5, WALL, 3)
    out_a += a.finish(7.5, WALL)
    out_b = feed(b, [scores(0.2)] * 3)
    assert {m.type for m in out_a} == {MessageType.ESTIMATE, MessageType.SUMMARY, MessageType.EVENT,
                                       MessageType.STATS}
    assert [m.seq for m in out_a] == list(range(len(out_a)))
    assert [m.seq for m in out_b] == [0, 1, 2] and {m.stream for m in out_b} == {"b"}
    assert [m.to_wire()["seq"] for m in out_a] == list(range(len(out_a)))
    assert a.next_seq == len(out_a)
    validate(out_a + out_b)


def test_first_seq_continues_a_stored_log() -> None:
    session = StreamSession("cam", LABELS, QUIET, first_seq=41)
    assert feed(session, [scores(0.2)])[0].seq == 41


def test_estimate_message_fields() -> None:
    session = StreamSession("cam", LABELS, QUIET)
    (estimate,) = session.on_estimate(1.5, WALL, [0.123456, 0.7, 0, 0, 0, 1.0000001], 0.42,
                                      latency_ms={"encode": 9.8}, age_ms=38.5)
    assert isinstance(estimate, Estimate)
    assert estimate.scores["anger"] == 0.1235 and estimate.scores["surprise"] == 1.0
    assert estimate.dominant == "surprise" and estimate.sentiment == 0.42
    assert estimate.latency_ms == {"encode": 9.8} and estimate.age_ms == 38.5
    wire = estimate.to_wire()
    assert wire["latency_ms"] == {"encode": 9.8} and wire["age_ms"] == 38.5
    # Whole-frame mode: no face stage, so no state and no faces (tests/test_face_session.py has those).
    assert estimate.state is None and estimate.faces is None
    assert "state" not in wire and "faces" not in wire
    (plain,) = session.on_estimate(1.75, WALL, scores(0.2), 0.0)
    assert isinstance(plain, Estimate)
    assert plain.age_ms is None and plain.faces is None and plain.latency_ms is None
    plain_wire = plain.to_wire()
    assert "age_ms" not in plain_wire and "faces" not in plain_wire and "latency_ms" not in plain_wire
    validate([estimate, plain])


def test_wrong_or_non_finite_scores_are_refused() -> None:
    session = StreamSession("cam", LABELS, QUIET)
    with pytest.raises(PipelineError, match="same label set"):
        session.on_estimate(0.0, WALL, [0.5, 0.5], 0.0)
    with pytest.raises(PipelineError, match="non-finite"):
        session.on_estimate(0.0, WALL, scores(float("nan")), 0.0)


def test_lifecycle_mapping_closes_episodes() -> None:
    session, out = happiness_run([0.9] * 8)
    started = events(session.on_source_event(
        SourceEvent("cam", SourceState.RUNNING, WALL + 1, detail="file.avi"), 0.0))
    assert [(m.kind, m.detail, m.wall) for m in started] == [(EventKind.STREAM_STARTED, "file.avi", WALL + 1)]
    assert session.on_source_event(SourceEvent("cam", SourceState.OPENING, WALL), 0.0) == []
    reconnecting = events(session.on_source_event(
        SourceEvent("cam", SourceState.RECONNECTING, WALL, attempt=2), 1.75))
    assert [m.kind for m in reconnecting] == [EventKind.PEAK, EventKind.OFFSET, EventKind.STREAM_RECONNECTING]
    assert reconnecting[-1].attempt == 2
    ended = events(session.on_source_event(
        SourceEvent("cam", SourceState.ENDED, WALL, outcome=SourceOutcome.STOPPED, frames_read=99), 2.0))
    assert [(m.kind, m.outcome, m.frames_read) for m in ended] == [
        (EventKind.STREAM_ENDED, SourceOutcome.STOPPED, 99)]
    assert (ended[0].to_wire()["outcome"], ended[0].to_wire()["frames_read"]) == ("stopped", 99)
    failed = events(session.on_source_event(
        SourceEvent("cam", SourceState.FAILED, WALL, outcome=SourceOutcome.CORRUPT, detail="bad packet"), 2.0))
    assert [(m.kind, m.outcome, m.detail) for m in failed] == [
        (EventKind.STREAM_ERROR, SourceOutcome.CORRUPT, "bad packet")]
    assert failed[0].to_wire()["outcome"] == "corrupt"
    default_end = events(session.on_source_event(SourceEvent("cam", SourceState.ENDED, WALL), 2.0))
    assert default_end[0].outcome is SourceOutcome.ENDED and default_end[0].to_wire()["outcome"] == "ended"
    # The record keeps the lifecycle change it came from (a replay feeds it to a fresh session).
    assert ended[0].source is not None and ended[0].source.state is SourceState.ENDED
    validate(out + started + reconnecting + ended + failed)


def test_drops_are_reported_only_when_the_count_rises() -> None:
    session = StreamSession("cam", LABELS, QUIET)
    assert session.on_drops(1.0, WALL, 0) == []
    (first,) = events(session.on_drops(1.0, WALL, 5))
    assert (first.kind, first.value, first.new, first.total) == (EventKind.FRAMES_DROPPED, 5, 5, 5)
    assert session.on_drops(2.0, WALL, 5) == []
    (second,) = events(session.on_drops(3.0, WALL, 12))
    assert (second.value, second.new) == (12, 7)


@pytest.mark.parametrize("bad", [
    {"windows_s": ()}, {"windows_s": (0.0,)}, {"windows_s": (5.0, 5.0)}, {"windows_s": (float("inf"),)},
    {"hops_s": (1.0,)}, {"hops_s": (6.0, 10.0)}, {"onset_threshold": 0.3, "offset_threshold": 0.4},
    {"onset_threshold": 1.5}, {"min_duration_s": -1.0}, {"shift_margin": float("nan")},
])
def test_config_validation(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        AnalyticsConfig(**bad)


# -- properties ------------------------------------------------------------------------------------

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.lists(unit, min_size=3, max_size=3), min_size=1, max_size=120),
       gaps=st.lists(st.sampled_from([0.1, 0.25, 0.5, 1.0, 3.0]), min_size=120, max_size=120),
       min_duration=st.sampled_from([0.0, 0.5, 1.0]), min_gap=st.sampled_from([0.0, 0.5, 1.0]))
def test_random_sequences_keep_the_invariants(rows: list[list[float]], gaps: list[float],
                                              min_duration: float, min_gap: float) -> None:
    labels = ("a", "b", "c")
    config = AnalyticsConfig(windows_s=(2.0, 7.0), hops_s=(1.0, 7.0), min_duration_s=min_duration,
                             min_gap_s=min_gap, shift_min_dwell_s=0.5)
    session = StreamSession("s", labels, config)
    out: list[StreamRecord] = []
    ts = 0.0
    for row, gap in zip(rows, gaps):
        out += session.on_estimate(ts, WALL, row, 2 * row[0] - 1)
        ts += gap
    out += session.finish(ts, WALL)
    for record in out:
        assert record.text  # JSON, no NaN
    assert [m.seq for m in out] == list(range(len(out)))
    for label in labels:
        kinds = [m.kind for m in events(out, EventKind.ONSET, EventKind.OFFSET, EventKind.PEAK) if m.label == label]
        assert kinds == [EventKind.ONSET, EventKind.PEAK, EventKind.OFFSET] * (len(kinds) // 3)
    for m in events(out, EventKind.ONSET, EventKind.PEAK):
        assert m.value is not None and config.onset_threshold <= m.value <= 1.0
    for m in events(out, EventKind.OFFSET):
        assert m.value is not None and m.duration is not None
        assert 0.0 <= m.value <= 1.0 and m.duration >= min_duration
    for s in summaries_of(out):
        assert s.frames > 0 and abs(sum(s.share.values()) - 1.0) < 1e-3
        assert all(0.0 <= v <= 1.0 for v in s.mean.values())
        assert -1.0 <= s.sentiment_mean <= 1.0
    assert sum(isinstance(m, Estimate) for m in out) == len(rows)
