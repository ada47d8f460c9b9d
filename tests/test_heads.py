"""The two temporal heads: zero-shot scoring and smoothing, the LSTM's per-stream state and stability."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from affectstream.engine.heads import (
    LstmHead,
    OutputMode,
    ZeroShotConfig,
    ZeroShotHead,
    apply_dynamic_threshold,
    softmax,
)
from affectstream.engine.interfaces import TemporalHead
from affectstream.engine.lstm import TemporalConfig, TemporalLSTM
from affectstream.errors import ConfigError, ModelError, PipelineError

DIM = 32


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    vectors = rng.normal(size=(*shape, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


def zero_shot(rng: np.random.Generator, **config: object) -> ZeroShotHead:
    return ZeroShotHead(unit(rng, 6), unit(rng, 3), ZeroShotConfig(**config))  # type: ignore[arg-type]


# --- zero-shot ---------------------------------------------------------------------------------------


def test_heads_satisfy_the_protocol(rng: np.random.Generator) -> None:
    assert isinstance(zero_shot(rng), TemporalHead)
    assert isinstance(LstmHead(TemporalLSTM(TemporalConfig(input_dim=DIM, hidden=8))), TemporalHead)


def test_scores_are_clip_softmax_and_sum_to_one(rng: np.random.Generator) -> None:
    head = zero_shot(rng, alpha=1.0)
    features = unit(rng, 4)
    out = head.step(["a", "b", "c", "d"], features)
    assert out.scores.shape == (4, 6) and out.scores.dtype == np.float32
    np.testing.assert_allclose(out.scores.sum(axis=1), 1.0, rtol=1e-5)
    expected = softmax(100.0 * features @ head.classes.T)
    np.testing.assert_allclose(out.scores, expected, rtol=1e-5, atol=1e-7)
    assert out.sentiment.shape == (4,)
    assert np.all(np.abs(out.sentiment) <= 1.0)


def test_a_feature_on_a_class_embedding_scores_that_class(rng: np.random.Generator) -> None:
    head = zero_shot(rng, alpha=1.0)
    out = head.step(["a", "b"], np.stack([head.classes[3], head.classes[0]]))
    assert out.scores[0].argmax() == 3 and out.scores[1].argmax() == 0
    sentiment = head.step(["p", "n"], np.stack([head.sentiments[2], head.sentiments[0]])).sentiment
    assert sentiment[0] > 0.5 and sentiment[1] < -0.5


def test_dynamic_threshold_zeros_scores_below_the_fraction_of_the_top() -> None:
    scores = np.array([[0.40, 0.30, 0.19, 0.05, 0.04, 0.02]], dtype=np.float32)
    thresholded = apply_dynamic_threshold(scores, 0.5)
    np.testing.assert_array_equal(thresholded, np.array([[0.40, 0.30, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32))
    np.testing.assert_array_equal(apply_dynamic_threshold(scores, 0.0), scores)
    np.testing.assert_array_equal(apply_dynamic_threshold(scores, 1.0), np.array([[0.40, 0, 0, 0, 0, 0]], dtype=np.float32))


def test_head_applies_the_dynamic_threshold(rng: np.random.Generator) -> None:
    plain = zero_shot(rng, alpha=1.0, logit_scale=10.0)
    thresholded = ZeroShotHead(plain.classes, plain.sentiments, ZeroShotConfig(
        alpha=1.0, logit_scale=10.0, dynamic_threshold=0.6))
    features = unit(rng, 5)
    raw = plain.step(list("abcde"), features).scores
    out = thresholded.step(list("abcde"), features).scores
    keep = raw >= 0.6 * raw.max(axis=1, keepdims=True)
    np.testing.assert_allclose(out[keep], raw[keep], rtol=1e-6)
    assert np.all(out[~keep] == 0.0)
    assert np.all(keep.sum(axis=1) >= 1)


def test_relative_output_puts_the_top_emotion_at_one(rng: np.random.Generator) -> None:
    out = zero_shot(rng, output="relative", logit_scale=10.0).step(["a", "b"], unit(rng, 2)).scores
    np.testing.assert_allclose(out.max(axis=1), 1.0)
    assert ZeroShotConfig(output="relative").output is OutputMode.RELATIVE  # type: ignore[arg-type]


def test_ema_smooths_each_stream_over_time(rng: np.random.Generator) -> None:
    head = zero_shot(rng, alpha=0.3)
    raw = zero_shot(np.random.default_rng(11), alpha=1.0)  # same embeddings, no smoothing
    frames = unit(rng, 3)
    expected_scores = raw.step(["x"], frames[:1]).scores[0]
    expected_sentiment = raw.step(["y"], frames[:1]).sentiment[0]
    first = head.step(["s"], frames[:1])
    np.testing.assert_allclose(first.scores[0], expected_scores, rtol=1e-6)  # starts at its first frame
    for frame in frames[1:]:
        fresh = raw.step(["z"], frame[None])
        raw.reset("z")
        expected_scores = 0.3 * fresh.scores[0] + 0.7 * expected_scores
        expected_sentiment = 0.3 * fresh.sentiment[0] + 0.7 * expected_sentiment
        out = head.step(["s"], frame[None])
        np.testing.assert_allclose(out.scores[0], expected_scores, rtol=1e-5)
        np.testing.assert_allclose(out.sentiment[0], expected_sentiment, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(out.scores.sum(), 1.0, rtol=1e-5)


def test_streams_are_independent_and_reset_forgets(rng: np.random.Generator) -> None:
    frames_a, frames_b = unit(rng, 5), unit(rng, 5)
    together = zero_shot(np.random.default_rng(1))
    alone = zero_shot(np.random.default_rng(1))
    mixed = [together.step(["a", "b"], np.stack([fa, fb])) for fa, fb in zip(frames_a, frames_b)]
    only_a = [alone.step(["a"], fa[None]) for fa in frames_a]
    for both, single in zip(mixed, only_a):
        np.testing.assert_allclose(both.scores[0], single.scores[0], atol=1e-6)
    together.reset("a")
    restarted = together.step(["a"], frames_a[:1])
    np.testing.assert_allclose(restarted.scores[0], only_a[0].scores[0], atol=1e-6)


def test_zero_shot_rejects_bad_input(rng: np.random.Generator) -> None:
    head = zero_shot(rng)
    with pytest.raises(PipelineError, match="once"):
        head.step(["a", "a"], unit(rng, 2))
    with pytest.raises(PipelineError):
        head.step(["a"], unit(rng, 2))
    with pytest.raises(ModelError, match="backbones"):
        head.step(["a"], np.ones((1, DIM + 1), dtype=np.float32))
    with pytest.raises(ModelError):
        ZeroShotHead(unit(rng, 5), unit(rng, 3))


@pytest.mark.parametrize("settings", [
    {"dynamic_threshold": 1.5}, {"alpha": 0.0}, {"alpha": 1.2}, {"logit_scale": -1.0}, {"output": "loud"},
])
def test_zero_shot_config_is_validated(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ZeroShotConfig(**settings)  # type: ignore[arg-type]


def test_logit_scale_comes_from_the_model_unless_configured(rng: np.random.Generator) -> None:
    classes, sentiments = unit(rng, 6), unit(rng, 3)
    assert ZeroShotHead(classes, sentiments).logit_scale == 100.0
    assert ZeroShotHead(classes, sentiments, model_logit_scale=14.3).logit_scale == pytest.approx(14.3)
    configured = ZeroShotHead(classes, sentiments, ZeroShotConfig(logit_scale=50.0), model_logit_scale=14.3)
    assert configured.logit_scale == 50.0


# --- LSTM ----------------------------------------------------------------------------------------------

HIDDEN = 16


def random_module(seed: int = 0) -> TemporalLSTM:
    torch.manual_seed(seed)
    return TemporalLSTM(TemporalConfig(input_dim=DIM, hidden=HIDDEN))


def large_recurrent_module(seed: int = 0) -> TemporalLSTM:
    """Every weight x20: saturated gates; a constant input may settle into a bounded limit cycle."""
    module = random_module(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(20.0)
    return module


def integrating_module(seed: int = 0) -> TemporalLSTM:
    """Large input weights, forget and input gates held open: the cell integrates its input, so without
    the clip |c| grows by about one per step forever (the endless-stream failure the clip prevents)."""
    module = random_module(seed)
    with torch.no_grad():
        module.lstm.weight_ih_l0.mul_(8.0)
        module.lstm.weight_hh_l0.mul_(0.5)
        module.lstm.bias_ih_l0[0:HIDDEN] += 4.0  # input gate
        module.lstm.bias_ih_l0[HIDDEN : 2 * HIDDEN] += 8.0  # forget gate
        module.emotion_head.weight.mul_(10.0)
        assert module.sentiment_head is not None
        module.sentiment_head.weight.mul_(10.0)
    return module


def endless_inputs(rng: np.random.Generator, steps: int) -> Callable[[int], np.ndarray]:
    """Rows: constant, slowly varying (a random direction rotating over ~3000 steps), fresh noise."""
    constant = unit(rng, 1)[0]
    start, end = unit(rng, 2)

    def at(t: int) -> np.ndarray:
        angle = 2 * np.pi * t / 3000
        slow = np.cos(angle) * start + np.sin(angle) * end
        noise = rng.normal(size=DIM).astype(np.float32)
        rows = np.stack([constant, slow, noise])
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    return at


STREAMS = ["constant", "slow", "noise"]


@pytest.mark.parametrize("build", [random_module, large_recurrent_module, integrating_module])
def test_lstm_head_stays_bounded_on_endless_streams(build: Callable[[int], TemporalLSTM]) -> None:
    head = LstmHead(build(0))
    steps = 10_000
    inputs = endless_inputs(np.random.default_rng(5), steps)
    constant_tail: list[np.ndarray] = []
    max_cell = 0.0
    for t in range(steps):
        out = head.step(STREAMS, inputs(t))
        assert np.all(np.isfinite(out.scores)) and np.all(np.isfinite(out.sentiment))
        assert out.scores.min() >= 0.0 and out.scores.max() <= 1.0
        assert np.abs(out.sentiment).max() <= 1.0
        if t >= steps - 1000:
            constant_tail.append(np.concatenate([out.scores[0], out.sentiment[:1]]))
        if t % 100 == 0 or t == steps - 1:
            max_cell = max(max_cell, *(float(np.abs(head.cell_state(s)).max()) for s in STREAMS))  # type: ignore[arg-type]
    assert max_cell <= head.module.config.cell_clip
    if build is not large_recurrent_module:  # (that one may cycle; bounded is all it promises)
        tail = np.stack(constant_tail)
        assert float((tail.max(axis=0) - tail.min(axis=0)).max()) < 1e-4


def test_cell_clip_lets_a_saturated_stream_recover() -> None:
    """After hours on one scene the estimates must still follow a change within a few dozen steps."""
    head = LstmHead(integrating_module(0))
    scene = unit(np.random.default_rng(2), 1)
    for _ in range(5000):
        before = head.step(["s"], scene)
    state = head.cell_state("s")
    assert state is not None and np.abs(state).max() == pytest.approx(50.0)
    for recovery in range(1, 501):  # noqa: B007 (read after the loop)
        after = head.step(["s"], -scene)
        if np.abs(after.scores - before.scores).max() > 0.5:
            break
    # clipped: ~50 steps; unclipped: ~400 here, growing with how long the scene lasted
    assert recovery < 200


def test_interleaved_streams_keep_separate_states() -> None:
    rng = np.random.default_rng(9)
    frames_a, frames_b = unit(rng, 30), unit(rng, 20)
    shared = LstmHead(random_module(1))
    alone_a, alone_b = LstmHead(random_module(1)), LstmHead(random_module(1))
    for t in range(30):  # b joins late and leaves early, a is sometimes stepped with b, sometimes alone
        if 5 <= t < 25:
            both = shared.step(["b", "a"], np.stack([frames_b[t - 5], frames_a[t]]))
            expected_b = alone_b.step(["b"], frames_b[t - 5][None])
            np.testing.assert_allclose(both.scores[0], expected_b.scores[0], atol=1e-5)
            got_a = both.scores[1]
        else:
            got_a = shared.step(["a"], frames_a[t][None]).scores[0]
        np.testing.assert_allclose(got_a, alone_a.step(["a"], frames_a[t][None]).scores[0], atol=1e-5)


def test_batched_step_equals_per_stream_steps_and_reset_restarts() -> None:
    rng = np.random.default_rng(4)
    ids = ["s0", "s1", "s2", "s3"]
    batched, single = LstmHead(random_module(2)), LstmHead(random_module(2))
    for _ in range(6):
        frames = unit(rng, 4)
        out = batched.step(ids, frames)
        for row, stream_id in enumerate(ids):
            one = single.step([stream_id], frames[row][None])
            np.testing.assert_allclose(out.scores[row], one.scores[0], atol=1e-5)
            np.testing.assert_allclose(out.sentiment[row], one.sentiment[0], atol=1e-5)
    frame = unit(rng, 1)
    batched.reset("s1")
    fresh = LstmHead(random_module(2)).step(["new"], frame)
    np.testing.assert_allclose(batched.step(["s1"], frame).scores, fresh.scores, atol=1e-6)
    assert batched.cell_state("never-seen") is None


def test_lstm_head_rejects_bidirectional_and_bad_input() -> None:
    with pytest.raises(ConfigError, match="bidirectional"):
        LstmHead(TemporalLSTM(TemporalConfig(input_dim=DIM, hidden=8, bidirectional=True)))
    head = LstmHead(random_module())
    with pytest.raises(PipelineError):
        head.step(["a", "a"], np.zeros((2, DIM), dtype=np.float32))
    with pytest.raises(ModelError):
        head.step(["a"], np.zeros((1, DIM * 2), dtype=np.float32))
