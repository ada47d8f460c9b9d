"""Bidirectional rescoring of whole files: the pure replay, and `affectstream analyze` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from affectstream.engine.labels import EMOTIONS
from affectstream.engine.lstm import TemporalConfig, TemporalLSTM
from affectstream.errors import PipelineError, SourceOutcome
from affectstream.stream.frames import SourceEvent, SourceState
from affectstream.stream.messages import (
    Estimate,
    Event,
    EventKind,
    Stats,
    StatsFields,
    StreamRecord,
    Summary,
    Wire,
)
from affectstream.stream.offline import RecordingHead, replay, rescore_sequence
from affectstream.stream.session import AnalyticsConfig, StreamSession
from tests.timeouts import scaled

ANALYTICS = AnalyticsConfig()


def first_pass(steps: int) -> list[StreamRecord]:
    """What the pipeline's session gives for a file: started, flat estimates, a stats, ended, finish."""
    session = StreamSession("file", EMOTIONS, ANALYTICS)
    flat = np.full(len(EMOTIONS), 0.1, np.float32)
    messages = session.on_source_event(SourceEvent("file", SourceState.RUNNING, 1000), 0.0)
    for step in range(steps):
        messages += session.on_estimate(step * 0.5, 1000 + step, flat, 0.0, latency_ms={"encode": 1.0})
    messages.append(session.stats(steps * 0.5, 2000, StatsFields(input_fps=10.0)))
    end = (steps - 1) * 0.5
    ended = SourceEvent("file", SourceState.ENDED, 3000, outcome=SourceOutcome.ENDED, frames_read=steps * 5,
                        damage={"frames": steps * 5, "missing_pts": 1})
    return messages + session.on_source_event(ended, end) + session.finish(end, 3000)


def test_replay_rescores_estimates_and_recomputes_events_and_summaries() -> None:
    steps = 40
    messages = first_pass(steps)
    assert not [m for m in messages if isinstance(m, Event) and m.kind is EventKind.ONSET]  # flat 0.1: nothing
    scores = np.full((steps, len(EMOTIONS)), 0.1, np.float32)
    scores[10:30, EMOTIONS.index("fear")] = 0.9  # ten seconds of fear, seen only by the rescoring model
    sentiment = np.linspace(-0.5, 0.5, steps).astype(np.float32)

    replayed = replay(messages, scores, sentiment, StreamSession("file", EMOTIONS, ANALYTICS))

    estimates = [m for m in replayed if isinstance(m, Estimate)]
    assert [m.scores["fear"] for m in estimates] == pytest.approx(list(scores[:, EMOTIONS.index("fear")]))
    assert [m.sentiment for m in estimates] == pytest.approx(list(sentiment), abs=1e-4)
    assert estimates[0].latency_ms == {"encode": 1.0}
    events = [m for m in replayed if isinstance(m, Event)]
    onsets = [m for m in events if m.kind is EventKind.ONSET]
    assert [m.label for m in onsets] == ["fear"] and 5.0 <= onsets[0].ts <= 7.0
    assert any(m.kind is EventKind.OFFSET and m.label == "fear" for m in events)
    assert [m.seq for m in replayed] == list(range(len(replayed)))
    assert not [m for m in replayed if isinstance(m, Stats)], "stats describe the first pass only"
    summaries = [m for m in replayed if isinstance(m, Summary)]
    assert summaries and max(s.mean["fear"] for s in summaries) > 0.5
    assert [m.kind for m in events if m.source is not None] == [EventKind.STREAM_STARTED, EventKind.STREAM_ENDED]
    ended = [m for m in events if m.kind is EventKind.STREAM_ENDED]
    assert ended and ended[0].damage == {"frames": 200, "missing_pts": 1} and ended[0].outcome is SourceOutcome.ENDED
    assert ended[0].to_wire()["outcome"] == "ended" and ended[0].frames_read == 200


def test_replay_refuses_a_sequence_of_another_length() -> None:
    messages = first_pass(6)
    for steps, match in ((5, "more estimates than rescored steps"), (7, "7 rescored steps for 6 estimates")):
        with pytest.raises(PipelineError, match=match):
            replay(messages, np.zeros((steps, 6), np.float32), np.zeros(steps, np.float32),
                   StreamSession("file", EMOTIONS, ANALYTICS))


def test_recording_head_keeps_features_in_step_order_and_serves_with_its_inner_head() -> None:
    class Echo:
        name = "echo"

        def step(self, stream_ids: list[str], features: np.ndarray) -> object:
            return ("served", list(stream_ids))

        def reset(self, stream_id: str) -> None:
            pass

    head = RecordingHead(Echo())  # type: ignore[arg-type]
    assert head.step(["a", "b"], np.array([[1.0, 0.0], [0.0, 1.0]])) == ("served", ["a", "b"])
    head.step(["a"], np.array([[2.0, 2.0]]))
    assert head.features("a").tolist() == [[1.0, 0.0], [2.0, 2.0]]
    assert head.features("b").tolist() == [[0.0, 1.0]]
    assert head.features("never").shape == (0, 0)


def test_rescore_sequence_sees_the_future() -> None:
    torch.manual_seed(0)
    module = TemporalLSTM(TemporalConfig(input_dim=8, hidden=8, bidirectional=True))
    features = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32)
    whole, _ = rescore_sequence(module, features)
    first_half, _ = rescore_sequence(module, features[:6])
    assert whole.shape == (12, 6) and ((whole >= 0) & (whole <= 1)).all()
    assert not np.allclose(whole[:6], first_half, atol=1e-6), "a bidirectional step depends on later frames"


def make_bidirectional_bundle(path: Path) -> Path:
    from affectstream.engine.bundle import save_bundle
    from affectstream.engine.models import ModelSpec, build_clip
    from affectstream.engine.runtime import zero_shot_texts

    spec = ModelSpec.from_preset("tiny-random")
    torch.manual_seed(3)
    module = TemporalLSTM(TemporalConfig(input_dim=spec.embed_dim, hidden=16, bidirectional=True))
    return save_bundle(path, backbone=spec.to_manifest(), temporal=module,
                       **zero_shot_texts(build_clip(spec), spec))


def analyze(video: Path, bundle: Path, cwd: Path, name: str) -> tuple[dict[str, object], list[Wire]]:
    result = subprocess.run([sys.executable, "-m", "affectstream", "analyze", str(video), "--bundle", str(bundle),
                             "--summary", f"{name}.json", "--out", f"{name}.jsonl", "--rate", "5"],
                            cwd=cwd, capture_output=True, text=True, timeout=scaled(240))
    assert result.returncode == 0, result.stderr[-3000:]
    messages = [json.loads(line) for line in (cwd / f"{name}.jsonl").read_text().splitlines()]
    return json.loads((cwd / f"{name}.json").read_text()), messages


@pytest.mark.slow
def test_analyze_rescores_the_whole_file_with_a_bidirectional_bundle(tmp_path: Path) -> None:
    from tests.media import make_video

    bundle = make_bidirectional_bundle(tmp_path / "bidirectional")
    long = make_video(tmp_path / "long.avi", seconds=4.0, fps=10)
    short = make_video(tmp_path / "short.avi", seconds=2.0, fps=10)  # the same first two seconds
    long_summary, long_messages = analyze(long, bundle, tmp_path, "long")
    short_summary, _ = analyze(short, bundle, tmp_path, "short")

    assert long_summary["source"]["model"]["head"] == "lstm-bidirectional"  # type: ignore[index]
    assert long_summary["frames"] == 20 and short_summary["frames"] == 10
    long_rows, short_rows = long_summary["timeline"][:10], short_summary["timeline"]  # type: ignore[index]
    assert [r["ts"] for r in long_rows] == [r["ts"] for r in short_rows]
    # Same frames, different futures: a bidirectional model scores the shared seconds differently.
    assert any(abs(a["scores"][label] - b["scores"][label]) > 1e-4
               for a, b in zip(long_rows, short_rows, strict=True) for label in EMOTIONS)
    estimates = [m for m in long_messages if m["type"] == "estimate"]
    assert [m["scores"] for m in estimates] == [r["scores"] for r in long_summary["timeline"]]  # type: ignore[index]
    assert [m["seq"] for m in long_messages] == list(range(len(long_messages)))
    assert any(m.get("kind") == "stream_ended" for m in long_messages)
    refused = subprocess.run([sys.executable, "-m", "affectstream", "run", str(long), "--bundle", str(bundle),
                              "--no-serve", "--quiet", "--fast"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=scaled(120))
    assert refused.returncode == 2 and "bidirectional" in refused.stderr, "a live run cannot read the future"
    assert "affectstream analyze FILE --bundle" in refused.stderr and "encoder backend" not in refused.stderr  # before the model loads
