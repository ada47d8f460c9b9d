"""The pipeline in process, with the tiny-random encoder: ordering, separation of streams, latency."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from affectstream.engine.heads import LstmHead
from affectstream.engine.lstm import TemporalConfig, TemporalLSTM
from affectstream.engine.runtime import Engine
from affectstream.errors import SourceOutcome
from affectstream.stream.batcher import BatchConfig
from affectstream.stream.frames import SourceState
from affectstream.stream.messages import Estimate, Event, EventKind, Stats, StreamRecord
from affectstream.stream.pipeline import Pipeline, PipelineConfig, StreamOutcome
from affectstream.stream.sinks import MemorySink
from tests.timeouts import scaled


def run_with_outcomes(sources: list[tuple[str, str]], engine: Engine, head: object | None = None,
                      **config: object) -> tuple[list[StreamRecord], dict[str, StreamOutcome]]:
    sink = MemorySink()
    pipeline = Pipeline(sources, engine.encoder, head or engine.head, sink, engine.labels,  # type: ignore[arg-type]
                        PipelineConfig(**config))  # type: ignore[arg-type]
    pipeline.start()
    finished = pipeline.wait(scaled(60))
    pipeline.stop()
    assert finished, "the pipeline did not finish its files in time"
    records = list(sink.messages)
    assert all(isinstance(record, StreamRecord) for record in records)
    return records, pipeline.outcomes  # type: ignore[return-value]


def run_pipeline(sources: list[tuple[str, str]], engine: Engine, head: object | None = None,
                 **config: object) -> list[StreamRecord]:
    return run_with_outcomes(sources, engine, head, **config)[0]


def by_stream(records: list[StreamRecord]) -> dict[str, list[StreamRecord]]:
    streams: dict[str, list[StreamRecord]] = defaultdict(list)
    for record in records:
        streams[record.stream].append(record)
    return streams


def estimates_of(records: list[StreamRecord]) -> list[Estimate]:
    return [record for record in records if isinstance(record, Estimate)]


def fresh_lstm_head(embed_dim: int) -> LstmHead:
    torch.manual_seed(7)
    return LstmHead(TemporalLSTM(TemporalConfig(input_dim=embed_dim, hidden=16)))


def test_one_file_in_causal_order(short_video: Path, tiny_engine: Engine) -> None:
    messages, outcomes = run_with_outcomes([("a", str(short_video))], tiny_engine, pace_files=False, rate_hz=5.0)
    kinds = [m.kind.value if isinstance(m, Event) else m.type.value for m in messages if not isinstance(m, Stats)]
    assert kinds[0] == "stream_started"
    assert "stream_ended" in kinds
    assert all(k != "estimate" for k in kinds[kinds.index("stream_ended"):])
    estimates = estimates_of(messages)
    # 4 s of media at 5 Hz: frames at 0.0, 0.2, ... 3.8 s
    assert len(estimates) == 20
    assert [m.ts for m in estimates] == sorted(m.ts for m in estimates)
    assert estimates[1].ts == pytest.approx(0.2, abs=1e-6)
    seqs = [m.seq for m in messages]
    assert seqs == list(range(len(seqs)))
    for estimate in estimates:
        assert set(estimate.scores) == set(tiny_engine.labels)
        assert all(0.0 <= v <= 1.0 for v in estimate.scores.values())
        assert -1.0 <= estimate.sentiment <= 1.0
        assert estimate.latency_ms is not None and {"queue", "encode", "head"} <= set(estimate.latency_ms)
    (ended,) = [m for m in messages if isinstance(m, Event) and m.kind is EventKind.STREAM_ENDED]
    assert ended.outcome is SourceOutcome.ENDED and ended.source is not None
    # What the exit status and the analyze report read: how the stream went, from the pipeline itself.
    outcome = outcomes["a"]
    assert outcome.started and outcome.ended and outcome.estimates == 20
    assert outcome.state is SourceState.ENDED and outcome.outcome is SourceOutcome.ENDED


def test_two_streams_keep_separate_lstm_state(short_video: Path, other_video: Path, tiny_engine: Engine) -> None:
    """Each stream's estimates with two streams batched together equal those of the stream alone."""
    dim = tiny_engine.encoder.embed_dim
    together = by_stream(run_pipeline([("a", str(short_video)), ("b", str(other_video))], tiny_engine,
                                      head=fresh_lstm_head(dim), pace_files=False, rate_hz=5.0,
                                      batch=BatchConfig(max_batch=8, max_wait_ms=20)))
    alone_a = by_stream(run_pipeline([("a", str(short_video))], tiny_engine, head=fresh_lstm_head(dim),
                                     pace_files=False, rate_hz=5.0))["a"]
    alone_b = by_stream(run_pipeline([("b", str(other_video))], tiny_engine, head=fresh_lstm_head(dim),
                                     pace_files=False, rate_hz=5.0))["b"]
    for stream, alone in (("a", alone_a), ("b", alone_b)):
        mixed = estimates_of(together[stream])
        solo = estimates_of(alone)
        assert len(mixed) == len(solo) > 5
        for x, y in zip(mixed, solo):
            assert x.ts == y.ts
            np.testing.assert_allclose(list(x.scores.values()), list(y.scores.values()), atol=2e-4)
        seqs = [m.seq for m in together[stream]]
        assert seqs == list(range(len(seqs)))
    # and the two streams really differ, so the comparison above means something
    a_scores = [list(m.scores.values()) for m in estimates_of(together["a"])]
    b_scores = [list(m.scores.values()) for m in estimates_of(together["b"])]
    assert not np.allclose(a_scores[:5], b_scores[:5], atol=1e-4)


def test_paced_file_keeps_estimates_fresh(short_video: Path, tiny_engine: Engine) -> None:
    """A file paced in real time: every estimate's frame age stays under a period plus encoder time."""
    rate = 5.0
    messages = run_pipeline([("a", str(short_video))], tiny_engine, pace_files=True, rate_hz=rate,
                            stats_interval_s=1.0)
    estimates = estimates_of(messages)
    assert len(estimates) == 20
    for estimate in estimates:
        assert estimate.latency_ms is not None and estimate.age_ms is not None
        encoder_ms = estimate.latency_ms["encode"]
        assert estimate.age_ms <= 1000.0 / rate + encoder_ms + scaled(50), estimate
    stats = [m for m in messages if isinstance(m, Stats)]
    assert stats, "a 4 s paced run reports stats"
    assert stats[-1].fields.latency_ms is not None and stats[-1].fields.latency_ms["p99"] > 0
    assert stats[-1].fields.frames_in == 40
