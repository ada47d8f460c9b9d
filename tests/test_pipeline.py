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
from affectstream.stream.batcher import BatchConfig
from affectstream.stream.messages import Message
from affectstream.stream.pipeline import Pipeline, PipelineConfig
from affectstream.stream.sinks import MemorySink
from tests.timeouts import scaled


def run_pipeline(sources: list[tuple[str, str]], engine: Engine, head: object | None = None,
                 **config: object) -> list[Message]:
    sink = MemorySink()
    pipeline = Pipeline(sources, engine.encoder, head or engine.head, sink, engine.labels,  # type: ignore[arg-type]
                        PipelineConfig(**config))  # type: ignore[arg-type]
    pipeline.start()
    finished = pipeline.wait(scaled(60))
    pipeline.stop()
    assert finished, "the pipeline did not finish its files in time"
    return list(sink.messages)


def by_stream(messages: list[Message]) -> dict[str, list[Message]]:
    streams: dict[str, list[Message]] = defaultdict(list)
    for message in messages:
        streams[message["stream"]].append(message)
    return streams


def fresh_lstm_head(embed_dim: int) -> LstmHead:
    torch.manual_seed(7)
    return LstmHead(TemporalLSTM(TemporalConfig(input_dim=embed_dim, hidden=16)))


def test_one_file_in_causal_order(short_video: Path, tiny_engine: Engine) -> None:
    messages = run_pipeline([("a", str(short_video))], tiny_engine, pace_files=False, rate_hz=5.0)
    kinds = [m.get("kind", m["type"]) for m in messages if m["type"] != "stats"]
    assert kinds[0] == "stream_started"
    assert "stream_ended" in kinds
    assert all(k != "estimate" for k in kinds[kinds.index("stream_ended"):])
    estimates = [m for m in messages if m["type"] == "estimate"]
    # 4 s of media at 5 Hz: frames at 0.0, 0.2, ... 3.8 s
    assert len(estimates) == 20
    assert [m["ts"] for m in estimates] == sorted(m["ts"] for m in estimates)
    assert estimates[1]["ts"] == pytest.approx(0.2, abs=1e-6)
    seqs = [m["seq"] for m in messages]
    assert seqs == list(range(len(seqs)))
    for estimate in estimates:
        assert set(estimate["scores"]) == set(tiny_engine.labels)
        assert all(0.0 <= v <= 1.0 for v in estimate["scores"].values())
        assert -1.0 <= estimate["sentiment"] <= 1.0
        assert {"queue", "encode", "head"} <= set(estimate["latency_ms"])


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
        mixed = [m for m in together[stream] if m["type"] == "estimate"]
        solo = [m for m in alone if m["type"] == "estimate"]
        assert len(mixed) == len(solo) > 5
        for x, y in zip(mixed, solo):
            assert x["ts"] == y["ts"]
            np.testing.assert_allclose(list(x["scores"].values()), list(y["scores"].values()), atol=2e-4)
        seqs = [m["seq"] for m in together[stream]]
        assert seqs == list(range(len(seqs)))
    # and the two streams really differ, so the comparison above means something
    a_scores = [list(m["scores"].values()) for m in together["a"] if m["type"] == "estimate"]
    b_scores = [list(m["scores"].values()) for m in together["b"] if m["type"] == "estimate"]
    assert not np.allclose(a_scores[:5], b_scores[:5], atol=1e-4)


def test_paced_file_keeps_estimates_fresh(short_video: Path, tiny_engine: Engine) -> None:
    """A file paced in real time: every estimate's frame age stays under a period plus encoder time."""
    rate = 5.0
    messages = run_pipeline([("a", str(short_video))], tiny_engine, pace_files=True, rate_hz=rate,
                            stats_interval_s=1.0)
    estimates = [m for m in messages if m["type"] == "estimate"]
    assert len(estimates) == 20
    for estimate in estimates:
        encoder_ms = estimate["latency_ms"]["encode"]
        assert estimate["age_ms"] <= 1000.0 / rate + encoder_ms + scaled(50), estimate
    stats = [m for m in messages if m["type"] == "stats"]
    assert stats, "a 4 s paced run reports stats"
    assert stats[-1]["latency_ms"]["p99"] > 0
    assert stats[-1]["frames_in"] == 40
