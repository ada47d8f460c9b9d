"""LSTM training: masking, the split by video, determinism, checkpoints, scaling folded into the weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from affectstream.engine.heads import LstmHead
from affectstream.engine.lstm import TemporalConfig, TemporalLSTM
from affectstream.errors import ConfigError
from affectstream.training.baselines import FrameClassifier, FrameClassifierConfig
from affectstream.training.batching import (
    Context,
    Pool,
    Target,
    make_batch,
    make_tracks,
    segment_scores,
    split_by_video,
    step_targets,
)
from affectstream.training.checkpoint import load_checkpoint, plot_history, save_checkpoint
from affectstream.training.metrics import multilabel_metrics
from affectstream.training.scaling import FeatureScaler, fold_into_lstm
from affectstream.training.train import TrainConfig, predict, sequence_loss, train
from tests._training_helpers import DIM, make_sequence, toy_featureset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


FAST = TrainConfig(epochs=3, batch_size=8, hidden=16, patience=3)


def _module(bidirectional: bool = False) -> TemporalLSTM:
    torch.manual_seed(0)
    return TemporalLSTM(TemporalConfig(input_dim=DIM, hidden=8, bidirectional=bidirectional))


def test_padding_changes_neither_the_loss_nor_a_sequences_share_of_it() -> None:
    module = _module()
    short = make_sequence("a/0", "a", 3, labels=np.eye(6)[0], seed=1, sentiment=0.5)
    long = make_sequence("b/0", "b", 9, labels=np.eye(6)[2], seed=2, sentiment=None)
    batch = make_batch(make_tracks([short, long], Target.SEGMENT, Context.SEGMENT))
    loss, _, _ = sequence_loss(module, batch)
    garbage = batch.features.clone()
    garbage[0, 3:] = 1e3  # padded steps of the short sequence
    noisy, _, _ = sequence_loss(module, dataclasses.replace(batch, features=garbage))
    assert torch.allclose(loss, noisy)
    # each track counts once, whatever its length (sentiment left out: it averages over rated steps)
    short, long = (dataclasses.replace(s, sentiment=None) for s in (short, long))
    loss, _, _ = sequence_loss(module, make_batch(make_tracks([short, long], Target.SEGMENT, Context.SEGMENT)))
    alone = [sequence_loss(module, make_batch(make_tracks([s], Target.SEGMENT, Context.SEGMENT)))[0]
             for s in (short, long)]
    assert torch.allclose(loss, (alone[0] + alone[1]) / 2, atol=1e-6)


def test_step_targets_follow_the_target_mode() -> None:
    frames = np.zeros((4, 6), np.float32)
    frames[1, 3] = 1  # fear at the second step only
    sequence = make_sequence("a/0", "a", 4, labels=np.eye(6)[3], frame_labels=frames)
    assert step_targets(sequence, Target.SEGMENT)[:, 3].tolist() == [1, 1, 1, 1]
    assert step_targets(sequence, Target.FRAMES)[:, 3].tolist() == [0, 1, 0, 0]
    assert step_targets(sequence, Target.PREFIX)[:, 3].tolist() == [0, 1, 1, 1]
    no_truth = make_sequence("b/0", "b", 2, labels=np.eye(6)[1])
    assert step_targets(no_truth, Target.FRAMES)[:, 1].tolist() == [1, 1]  # falls back to the segment's


def test_video_context_runs_segments_in_time_order_and_pools_each_on_its_own_steps() -> None:
    late = dataclasses.replace(make_sequence("v/1", "v", 2, seed=1), times=np.array([4.0, 4.5]))
    early = make_sequence("v/0", "v", 3, seed=2)
    tracks = make_tracks([late, early], Target.SEGMENT, Context.VIDEO)
    assert len(tracks) == 1 and [s.key for s in tracks[0].segments] == ["v/0", "v/1"]
    assert tracks[0].owner.tolist() == [0, 0, 0, 1, 1]
    batch = make_batch(tracks)
    steps = torch.arange(5, dtype=torch.float32).reshape(1, 5, 1)
    assert segment_scores(steps, batch, Pool.LAST)[:, 0].tolist() == [2.0, 4.0]
    assert segment_scores(steps, batch, Pool.MEAN)[:, 0].tolist() == [1.0, 3.5]
    assert segment_scores(steps, batch, Pool.MAX)[:, 0].tolist() == [2.0, 4.0]


def test_split_keeps_each_video_on_one_side_and_depends_on_the_seed() -> None:
    sequences = toy_featureset(n_videos=20, per_video=3).sequences
    split = split_by_video(sequences, seed=1)
    sides = [{s.video_id for s in side} for side in (split.train, split.val, split.test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert len(split.train) + len(split.val) + len(split.test) == len(sequences)
    assert 0.55 < len(split.train) / len(sequences) < 0.85
    assert split_by_video(sequences, seed=1) == split
    assert split_by_video(sequences, seed=2).video_ids() != split.video_ids()
    with pytest.raises(ConfigError):
        split_by_video(sequences, fractions=(0.5, 0.5, 0.5))


def test_training_is_deterministic_for_a_seed() -> None:
    featureset = toy_featureset(n_videos=8, per_video=2)
    split = split_by_video(featureset.sequences)
    first, second = (train(split.train, split.val, FAST) for _ in range(2))
    assert json.dumps(first.history) == json.dumps(second.history)  # NaN-safe comparison
    for key, value in first.module.state_dict().items():
        assert torch.equal(value, second.module.state_dict()[key])
    other = train(split.train, split.val, dataclasses.replace(FAST, seed=1))
    assert not torch.equal(other.module.lstm.weight_ih_l0, first.module.lstm.weight_ih_l0)


def test_early_stopping_keeps_the_best_epoch() -> None:
    featureset = toy_featureset(n_videos=8, per_video=2)
    split = split_by_video(featureset.sequences)
    result = train(split.train, split.val, dataclasses.replace(FAST, epochs=12, patience=1, learning_rate=1e-4))
    scores = [record["val"]["macro_auc"] for record in result.history]
    assert result.best_epoch == int(np.nanargmax(scores)) + 1
    assert result.stopped_early == (len(result.history) < 12)
    kept = predict(result.module, split.val, FAST.segment_pool)
    assert multilabel_metrics(kept.labels, kept.probabilities)["macro_auc"] == pytest.approx(max(scores))


def test_checkpoint_round_trip_and_history_plot(tmp_path: Path) -> None:
    featureset = toy_featureset(n_videos=6, per_video=2)
    split = split_by_video(featureset.sequences)
    config = dataclasses.replace(FAST, bidirectional=True, target=Target.FRAMES, context=Context.VIDEO)
    result = train(split.train, split.val, config)
    save_checkpoint(tmp_path, result)
    module, loaded_config, document = load_checkpoint(tmp_path)
    assert loaded_config == config and document["best_epoch"] == result.best_epoch
    before = predict(result.module, split.val, config.segment_pool, config.target, config.context)
    after = predict(module, split.val, loaded_config.segment_pool, loaded_config.target, loaded_config.context)
    np.testing.assert_array_equal(before.probabilities, after.probabilities)
    png = plot_history(result.history, tmp_path / "history.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("bidirectional", [False, True])
def test_scaling_folded_into_the_lstm_is_exact(bidirectional: bool) -> None:
    sequences = toy_featureset(n_videos=4, per_video=2).sequences
    scaler = FeatureScaler.fit(sequences)
    module = _module(bidirectional)
    scaled = predict(module, scaler.apply(sequences), Pool.MEAN).probabilities
    raw = predict(fold_into_lstm(module, scaler), sequences, Pool.MEAN).probabilities
    np.testing.assert_allclose(raw, scaled, atol=1e-5)


def test_the_runtime_head_stepping_frame_by_frame_matches_training_forward() -> None:
    sequence = toy_featureset(n_videos=1, per_video=1).sequences[0]
    module = _module()
    logits, _, _ = module(torch.from_numpy(sequence.features)[None])
    head = LstmHead(module)
    stepped = np.stack([head.step(["s"], row[None]).scores[0] for row in sequence.features])
    np.testing.assert_allclose(stepped, torch.sigmoid(logits[0]).detach().numpy(), atol=1e-5)


def test_lstm_beats_the_per_frame_classifier_when_labels_need_time() -> None:
    """Flickers look like held expressions frame by frame; only the held ones are labelled."""
    featureset = toy_featureset(n_videos=40, per_video=3, n=14)
    split = split_by_video(featureset.sequences, seed=0)
    config = TrainConfig(epochs=30, batch_size=8, hidden=32, target=Target.FRAMES, learning_rate=1e-2, patience=8)
    result = train(split.train, split.val, config)
    lstm = predict(result.module, split.test, config.segment_pool, config.target)
    labels = np.stack([s.labels for s in split.test])
    frames = FrameClassifier.fit(split.train, FrameClassifierConfig(target=Target.FRAMES, epochs=20), split.val)
    lstm_auc = multilabel_metrics(labels, lstm.probabilities)["macro_auc"]
    frame_auc = multilabel_metrics(labels, frames.segment_scores(split.test))["macro_auc"]
    assert lstm_auc > frame_auc + 0.05, (lstm_auc, frame_auc)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError):
        TrainConfig(target="sometimes")
    with pytest.raises(ConfigError):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError):
        train([], [], FAST)


def test_sentiment_report_skips_unrated_segments() -> None:
    from affectstream.training.evaluate import sentiment_report

    sequences = [make_sequence(f"v{i}/0", f"v{i}", 2, sentiment=value)
                 for i, value in enumerate([-0.5, None, 0.5, 1.0])]
    perfect = sentiment_report(sequences, np.array([-0.5, 9.0, 0.5, 1.0]))
    assert perfect["n"] == 3 and perfect["mae"] == pytest.approx(0.0) and perfect["pearson"] == pytest.approx(1.0)
    assert sentiment_report(sequences, np.array([0.5, 0.0, -0.5, -1.0]))["pearson"] == pytest.approx(-1.0)
