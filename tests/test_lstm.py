"""TemporalLSTM: training forward over padded sequences, streaming step, configuration."""

from __future__ import annotations

import pytest
import torch

from affectstream.engine.lstm import TemporalConfig, TemporalLSTM
from affectstream.errors import ConfigError

DIM = 24


def model(**overrides: object) -> TemporalLSTM:
    torch.manual_seed(3)
    return TemporalLSTM(TemporalConfig(input_dim=DIM, hidden=12, **overrides)).eval()  # type: ignore[arg-type]


def test_defaults_are_the_seeds() -> None:
    config = TemporalConfig()
    assert (config.input_dim, config.hidden, config.n_labels, config.layers) == (512, 128, 6, 1)
    assert not config.bidirectional


def test_config_round_trips_and_validates() -> None:
    config = TemporalConfig(input_dim=64, hidden=32, layers=2, dropout=0.1, cell_clip=10.0)
    assert TemporalConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown"):
        TemporalConfig.from_dict({**config.to_dict(), "heads": 3})
    with pytest.raises(ConfigError, match="hidden"):
        TemporalConfig(hidden=0)
    with pytest.raises(ConfigError, match="dropout"):
        TemporalConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="cell_clip"):
        TemporalConfig(cell_clip=0.0)


def test_forward_gives_an_output_per_step() -> None:
    net = model()
    logits, sentiment, (h, c) = net(torch.randn(3, 7, DIM))
    assert logits.shape == (3, 7, 6)
    assert sentiment.shape == (3, 7)
    assert h.shape == c.shape == (1, 3, 12)
    assert sentiment.abs().max() <= 1.0


def test_padding_changes_neither_valid_outputs_nor_final_state() -> None:
    net = model()
    long, short = torch.randn(1, 6, DIM), torch.randn(1, 3, DIM)
    padded = torch.zeros(2, 6, DIM)
    padded[0], padded[1, :3] = long[0], short[0]
    logits, sentiment, (h, c) = net(padded, lengths=torch.tensor([6, 3]))
    alone_logits, alone_sentiment, (alone_h, alone_c) = net(short)
    torch.testing.assert_close(logits[1, :3], alone_logits[0])
    torch.testing.assert_close(sentiment[1, :3], alone_sentiment[0])
    torch.testing.assert_close(h[:, 1], alone_h[:, 0])
    torch.testing.assert_close(c[:, 1], alone_c[:, 0])
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    masked_logits, _, _ = net(padded, mask=mask)
    torch.testing.assert_close(masked_logits, logits)


def test_streaming_steps_equal_the_training_forward() -> None:
    net = model(layers=2)
    sequence = torch.randn(2, 9, DIM)
    logits, sentiment, _ = net(sequence)
    state = None
    with torch.no_grad():
        for t in range(sequence.shape[1]):
            probabilities, step_sentiment, state = net.step(sequence[:, t], state)
            torch.testing.assert_close(probabilities, torch.sigmoid(logits[:, t]))
            torch.testing.assert_close(step_sentiment, sentiment[:, t])


def test_step_clamps_the_cell_state() -> None:
    net = model(cell_clip=0.05)
    state = net.initial_state(4)
    with torch.no_grad():
        for _ in range(20):
            _, _, state = net.step(torch.randn(4, DIM) * 10, state)
    assert state[1].abs().max() <= 0.05


def test_bidirectional_runs_whole_sequences_but_cannot_step() -> None:
    net = model(bidirectional=True)
    padded = torch.randn(2, 5, DIM)
    logits, _, (h, _) = net(padded, lengths=torch.tensor([5, 2]))
    assert logits.shape == (2, 5, 6)
    assert h.shape == (2, 2, 12)
    # the backward direction starts at each sequence's own end, so padding cannot leak in
    alone, _, _ = net(padded[1:, :2])
    torch.testing.assert_close(logits[1, :2], alone[0])
    with pytest.raises(ConfigError, match="bidirectional"):
        net.step(torch.randn(2, DIM))


def test_without_sentiment_head_sentiment_is_zero() -> None:
    net = model(sentiment=False)
    _, sentiment, _ = net(torch.randn(2, 3, DIM))
    assert torch.count_nonzero(sentiment) == 0
    assert net.sentiment_head is None


def test_training_reduces_the_loss() -> None:
    torch.manual_seed(0)
    net = TemporalLSTM(TemporalConfig(input_dim=DIM, hidden=16))
    features = torch.randn(8, 5, DIM)
    targets = (features[..., :6] > 0).float()  # learnable from the current frame
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        logits, _, _ = net(features)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_forward_rejects_wrong_feature_width() -> None:
    with pytest.raises(ConfigError, match=str(DIM)):
        model()(torch.randn(1, 2, DIM + 1))
