"""The analyze summary, from synthetic estimates and from the messages a real StreamSession emits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from affectstream.errors import ConfigError
from affectstream.stream.frames import SourceEvent, SourceState
from affectstream.stream.messages import EstimateState, EventKind
from affectstream.stream.report import FileReport, sample_weights, top_moments
from affectstream.stream.session import AnalyticsConfig, StreamSession

LABELS = ("anger", "happiness", "disgust", "fear", "sadness", "surprise")


def row(**values: float) -> list[float]:
    return [values.get(label, 0.0) for label in LABELS]


def test_shares_are_weighted_by_the_time_each_estimate_stands_for() -> None:
    report = FileReport(LABELS, threshold=0.5)
    # happiness at 0 and 1 (gaps 1 s and 1 s), anger at 2 (gap 3 s), happiness at 5 (median gap: 1 s).
    report.add_estimate(0.0, row(happiness=0.9), 0.5)
    report.add_estimate(1.0, row(happiness=0.8), 0.5)
    report.add_estimate(2.0, row(anger=0.7, happiness=0.2), -0.5)
    report.add_estimate(5.0, row(happiness=0.6), 0.5)
    summary = report.to_dict()
    assert summary["frames"] == 4 and summary["duration_s"] == 6.0
    # share: of the time each label was the dominant one; above_threshold: each score at or above 0.5
    assert summary["share"]["anger"] == 0.5 and summary["share"]["happiness"] == 0.5
    assert summary["above_threshold"]["happiness"] == 0.5 and summary["above_threshold"]["anger"] == 0.5
    assert summary["mean"]["happiness"] == pytest.approx((0.9 + 0.8 + 3 * 0.2 + 0.6) / 6, abs=1e-4)
    assert summary["dominant"] == "happiness"
    assert summary["sentiment"]["mean"] == 0.0
    assert summary["sentiment"]["min"] == -0.5 and summary["sentiment"]["max"] == 0.5


def test_sentiment_trend_is_per_minute() -> None:
    report = FileReport(LABELS)
    for i in range(10):
        report.add_estimate(i * 6.0, row(), -0.5 + 0.01 * i * 6.0)  # +0.01 per second
    assert report.to_dict()["sentiment"]["trend_per_min"] == pytest.approx(0.6)


def test_timeline_is_downsampled_and_keeps_order() -> None:
    report = FileReport(LABELS, timeline_points=10)
    for i in range(95):
        report.add_estimate(i * 0.25, row(fear=i / 100), 0.0)
    timeline = report.to_dict()["timeline"]
    assert len(timeline) == 10
    assert [p["ts"] for p in timeline] == sorted(p["ts"] for p in timeline)
    assert timeline[0]["scores"]["fear"] == pytest.approx(np.mean(np.arange(10)) / 100, abs=1e-4)
    short = FileReport(LABELS, timeline_points=10)
    short.add_estimate(0.0, row(), 0.0)
    assert len(short.to_dict()["timeline"]) == 1


def test_top_moments_are_separated_in_time() -> None:
    ts = np.arange(0.0, 30.0, 1.0)
    values = np.zeros_like(ts)
    values[[3, 4, 5]] = [0.8, 0.9, 0.85]  # one moment, not three
    values[20] = 0.7
    values[27] = 0.7
    moments = top_moments(ts, values, k=3, min_separation_s=5.0)
    assert moments == [{"ts": 4.0, "score": 0.9}, {"ts": 20.0, "score": 0.7}, {"ts": 27.0, "score": 0.7}]
    assert top_moments(ts, values, k=0, min_separation_s=5.0) == []


def test_sample_weights_edge_cases() -> None:
    assert sample_weights(np.array([3.0])).tolist() == [1.0]
    assert sample_weights(np.array([2.0, 2.0])).tolist() == [1.0, 1.0]
    assert sample_weights(np.array([0.0, 1.0, 3.0])).tolist() == [1.0, 2.0, 1.5]


def test_report_from_a_sessions_messages() -> None:
    config = AnalyticsConfig(windows_s=(5.0,), min_duration_s=0.5, min_gap_s=0.5)
    session = StreamSession("file", LABELS, config)
    messages = session.on_source_event(SourceEvent("file", SourceState.RUNNING, 0), 0.0)
    for i in range(40):
        happiness = 0.9 if 8 <= i < 20 else 0.1
        messages += session.on_estimate(i * 0.25, 0, row(happiness=happiness, sadness=0.2), 0.1)
    messages += session.on_source_event(SourceEvent("file", SourceState.ENDED, 0), 9.75)
    messages += session.finish(9.75, 0)
    report = FileReport(LABELS, top_k=2)
    for message in messages:
        report.add_record(message)
    summary = report.to_dict(source={"path": "x.avi"}, damage={"outcome": "ended"})
    assert summary["frames"] == 40 and summary["source"] == {"path": "x.avi"}
    assert summary["events"]["onset"] == summary["events"]["offset"] == 1
    assert summary["events"]["stream_started"] == summary["events"]["stream_ended"] == 1
    assert summary["onsets"]["happiness"] == 1 and summary["onsets"]["anger"] == 0
    assert summary["share"]["happiness"] == pytest.approx(12 / 40)
    assert summary["above_threshold"]["happiness"] == pytest.approx(12 / 40)
    assert summary["top_moments"]["happiness"][0] == {"ts": 2.0, "score": 0.9}
    assert summary["damage"] == {"outcome": "ended"}
    json.dumps(summary, allow_nan=False)


def test_events_are_counted_by_kind_and_onsets_by_label() -> None:
    report = FileReport(LABELS)
    report.add_event(EventKind.ONSET, "fear")
    report.add_event(EventKind.ONSET, "fear")
    report.add_event(EventKind.PEAK, "fear")
    report.add_event(EventKind.FRAMES_DROPPED)
    summary = report.to_dict()
    assert summary["events"]["onset"] == 2 and summary["events"]["peak"] == 1
    assert summary["events"]["frames_dropped"] == 1
    assert summary["onsets"]["fear"] == 2 and summary["onsets"]["anger"] == 0


def test_an_empty_report_is_valid_json() -> None:
    summary = FileReport(LABELS).to_dict(damage={"outcome": "missing"})
    assert summary["frames"] == 0 and set(summary["share"]) == set(LABELS)
    assert summary["timeline"] == [] and summary["damage"]["outcome"] == "missing"
    json.dumps(summary, allow_nan=False)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigError):
        FileReport(LABELS, threshold=2.0)
    with pytest.raises(ConfigError):
        FileReport(LABELS, timeline_points=0)
    with pytest.raises(ConfigError):
        FileReport(LABELS).add_estimate(0.0, [0.5], 0.0)


def test_the_arc_gives_each_window_the_label_dominant_for_most_of_it() -> None:
    from affectstream.stream.report import arc

    ts = np.arange(0.0, 12.0, 0.5)
    # 0-4 s: happiness with one-sample flickers of fear; 4-12 s: sadness.
    labels = ["fear" if t < 4 and i % 3 == 2 else "happiness" if t < 4 else "sadness" for i, t in enumerate(ts)]
    segments = arc(ts, sample_weights(ts), labels, window_s=2.0)
    assert [(s.label, s.start, s.end) for s in segments] == [("happiness", 0.0, 4.0), ("sadness", 4.0, 12.0)]
    assert arc(np.zeros(0), np.zeros(0), [], 2.0) == ()


def test_the_summary_has_the_arc_the_events_and_the_face_of_each_top_moment() -> None:
    from affectstream.stream.messages import Estimate, Event, FaceEstimate

    labels = (*LABELS, "neutral")
    report = FileReport(labels, top_k=1)
    for i in range(20):
        scores = {label: 0.1 for label in labels} | {"fear": 0.9 if i == 7 else 0.2}
        faces = tuple(FaceEstimate(id=face, box=(10.0 * face, 5.0, 40.0, 50.0), score=0.9, frame_scores=scores,
                                   scores=scores, dominant="fear", state=EstimateState.OK, sentiment=-0.3)
                      for face in (1, 2))
        report.add_record(Estimate(stream="file", seq=i, ts=i * 0.5, wall=0, scores=scores, sentiment=-0.3,
                                   dominant="fear", state=EstimateState.OK, faces=faces, primary=2))
    report.add_record(Event(stream="file", seq=20, ts=3.5, wall=0, kind=EventKind.PEAK, label="fear", value=0.9, face=2))
    summary = report.to_dict()
    assert summary["top_moments"]["fear"] == [{"ts": 3.5, "score": 0.9, "face": 2, "box": [20.0, 5.0, 40.0, 50.0]}]
    assert summary["segments"] == [{"start": 0.0, "end": 10.0, "label": "fear"}]
    assert summary["event_list"] == [{"ts": 3.5, "kind": "peak", "label": "fear", "face": 2, "value": 0.9}]
    assert [face["segments"] for face in summary["faces"]] == [[{"start": 0.0, "end": 10.0, "label": "fear"}]] * 2
    json.dumps(summary, allow_nan=False)


def test_memory_per_estimate_is_a_few_numbers() -> None:
    """An hour at 2 Hz is 7200 estimates, at every frame 100,000: each may cost only its numbers."""
    import tracemalloc

    report = FileReport((*LABELS, "neutral"))
    scores = np.full(7, 0.1)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(20_000):
        report.add_estimate(i * 0.04, scores, 0.0, "fear", EstimateState.OK, primary=1, box=(1.0, 2.0, 3.0, 4.0))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown / 20_000 < 160, f"{grown / 20_000:.0f} bytes per estimate"
    assert report.summary().frames == 20_000
