"""The temporal model: an LSTM over CLIP image features, with six emotion outputs and a sentiment.

The seed (000) trained a 128-unit LSTM on 512-d CLIP features with six sigmoid outputs. Here the
same network serves two ways: ``forward`` runs whole padded sequences for training (an output at
every step, so that a model trained on segments also reads well mid-segment), and ``step`` advances
a batch of live streams by one frame each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError

LstmState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (layers * directions, B, hidden)


@dataclass(frozen=True)
class TemporalConfig:
    """Shape of the temporal model; saved in the bundle's manifest next to its weights."""

    input_dim: int = 512  # CLIP ViT-B/32 image features
    hidden: int = 128  # the seed's
    layers: int = 1
    bidirectional: bool = False  # the seed's future work; offline files only (no streaming step)
    n_labels: int = len(EMOTIONS)
    sentiment: bool = True
    dropout: float = 0.0
    cell_clip: float = 50.0  # streaming only: bound on |c|, see TemporalLSTM.step

    def __post_init__(self) -> None:
        for name in ("input_dim", "hidden", "layers", "n_labels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"temporal {name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"temporal dropout must be in [0, 1), got {self.dropout!r}")
        if not self.cell_clip > 0.0:
            raise ConfigError(f"temporal cell_clip must be positive, got {self.cell_clip!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemporalConfig:
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown temporal settings {unknown}; known ones are {sorted(known)}")
        return cls(**data)


class TemporalLSTM(nn.Module):
    """LSTM over feature sequences → per-step emotion logits (sigmoid applied by callers) and sentiment."""

    def __init__(self, config: TemporalConfig) -> None:
        super().__init__()
        self.config = config
        self.lstm = nn.LSTM(
            config.input_dim,
            config.hidden,
            num_layers=config.layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            # torch warns about dropout with one layer: it only applies between layers
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        width = config.hidden * (2 if config.bidirectional else 1)
        self.dropout = nn.Dropout(config.dropout)
        self.emotion_head = nn.Linear(width, config.n_labels)
        self.sentiment_head = nn.Linear(width, 1) if config.sentiment else None

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        state: LstmState | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, LstmState]:
        """Run padded sequences ``x`` ``(B, T, D)``; return logits ``(B, T, n_labels)``, sentiment ``(B, T)``.

        ``lengths`` (B,) or a prefix ``mask`` (B, T) mark the valid steps; padded steps are packed
        away, so they neither change the returned state nor (bidirectional) the backward pass, and
        their outputs are the heads' value at zero (ignore them in the loss).
        """
        if x.dim() != 3 or x.shape[-1] != self.config.input_dim:
            raise ConfigError(f"expected features (B, T, {self.config.input_dim}), got {tuple(x.shape)}")
        if lengths is None and mask is not None:
            lengths = mask.sum(dim=1)
        if lengths is None:
            sequence, final = self.lstm(x, state)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(
                x, lengths.detach().cpu().long(), batch_first=True, enforce_sorted=False
            )
            packed_out, final = self.lstm(packed, state)
            sequence, _ = nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True, total_length=x.shape[1])
        logits, sentiment = self._heads(self.dropout(sequence))
        return logits, sentiment, final

    def step(self, x: torch.Tensor, state: LstmState | None = None) -> tuple[torch.Tensor, torch.Tensor, LstmState]:
        """Advance ``B`` streams by one frame: ``x`` ``(B, D)`` → probabilities ``(B, n_labels)``, sentiment ``(B,)``.

        The cell state is clamped to ``±cell_clip`` afterwards. ``h = o·tanh(c)`` is already bounded,
        but ``c`` is not: on a long steady input with a forget gate near 1 it can grow for hours, and a
        cell at 1e6 takes ~1e6 / |input| steps to come back once the scene changes — the stream would
        look stuck. At |c| = 50, tanh is saturated (1 - tanh(50) < 1e-40), so the clamp leaves the
        outputs unchanged while bounding how long any state takes to recover.
        """
        if self.config.bidirectional:
            raise ConfigError(
                "a bidirectional temporal model needs whole sequences: use it on files (forward), "
                "or train a unidirectional one for live streams"
            )
        sequence, (h, c) = self.lstm(x.unsqueeze(1), state)
        clip = self.config.cell_clip
        logits, sentiment = self._heads(self.dropout(sequence[:, 0]))
        return torch.sigmoid(logits), sentiment, (h, c.clamp(-clip, clip))

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> LstmState:
        directions = 2 if self.config.bidirectional else 1
        shape = (self.config.layers * directions, batch, self.config.hidden)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def _heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.emotion_head(features)
        if self.sentiment_head is None:
            return logits, torch.zeros(features.shape[:-1], device=features.device, dtype=features.dtype)
        return logits, torch.tanh(self.sentiment_head(features)).squeeze(-1)
