"""The two temporal heads: zero-shot (prompt ensembles, smoothed) and the stateful LSTM.

Both implement ``engine.interfaces.TemporalHead``: numpy features in, ``HeadOutput`` out, state kept
per stream id, one step per sampled frame, many streams per call.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from affectstream.engine.interfaces import HeadKind, HeadOutput
from affectstream.engine.labels import EMOTIONS
from affectstream.engine.lstm import LstmState, TemporalLSTM
from affectstream.errors import ConfigError, ModelError, PipelineError

if TYPE_CHECKING:
    from affectstream.engine.bundle import ModelBundle

log = logging.getLogger(__name__)

OPENAI_LOGIT_SCALE = 100.0  # exp of OpenAI CLIP's learned temperature
SENTIMENT_POLES = 3  # negative, neutral, positive (engine/prompts.SENTIMENTS order)


class OutputMode(str, enum.Enum):
    PROBABILITY = "probability"  # softmax over the six classes: the seed's 0..1 CLIP scores, sum 1
    RELATIVE = "relative"  # divided by the frame's highest score: the dominant emotion reads 1.0


@dataclass(frozen=True)
class ZeroShotConfig:
    """How zero-shot scores are computed and smoothed."""

    logit_scale: float | None = None  # None: the model's own (the bundle's), else OpenAI's 100
    # The seed's "dynamic threshold": after smoothing, zero every score below this fraction of the
    # highest one (e.g. 0.5). None keeps all scores.
    dynamic_threshold: float | None = None
    alpha: float = 0.3  # EMA weight of the newest step; 1.0 turns smoothing off
    output: OutputMode = OutputMode.PROBABILITY

    def __post_init__(self) -> None:
        if self.logit_scale is not None and not self.logit_scale > 0:
            raise ConfigError(f"logit_scale must be positive, got {self.logit_scale!r}")
        if self.dynamic_threshold is not None and not 0.0 <= self.dynamic_threshold <= 1.0:
            raise ConfigError(
                f"dynamic threshold must be a fraction of the top score in [0, 1] (e.g. 0.5), "
                f"got {self.dynamic_threshold!r}"
            )
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"smoothing alpha must be in (0, 1] (1 = no smoothing), got {self.alpha!r}")
        try:
            object.__setattr__(self, "output", OutputMode(self.output))
        except ValueError:
            raise ConfigError(f"output mode {self.output!r} is not one of {[m.value for m in OutputMode]}") from None


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def apply_dynamic_threshold(scores: np.ndarray, ratio: float) -> np.ndarray:
    """Zero every score below ``ratio`` times the highest score of its row (the seed's rule)."""
    pivots = scores.max(axis=-1, keepdims=True)
    return np.where(scores >= ratio * pivots, scores, 0.0).astype(np.float32)


def check_step_input(stream_ids: Sequence[str], features: np.ndarray, embed_dim: int) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] != len(stream_ids):
        raise PipelineError(f"features must be (N, D) with one row per stream id; got {features.shape} "
                            f"for {len(stream_ids)} ids")
    if len(set(stream_ids)) != len(stream_ids):
        raise PipelineError(f"a stream id may appear once per step; got {list(stream_ids)}")
    if features.shape[1] != embed_dim:
        raise ModelError(f"features have {features.shape[1]} dims but the head expects {embed_dim}: "
                         f"the encoder and the bundle come from different backbones")
    return features


class ZeroShotHead:
    """CLIP zero-shot scoring against class text embeddings, smoothed over time per stream."""

    name = HeadKind.ZERO_SHOT.value

    def __init__(
        self,
        class_embeddings: np.ndarray,
        sentiment_embeddings: np.ndarray,
        config: ZeroShotConfig | None = None,
        model_logit_scale: float = OPENAI_LOGIT_SCALE,
    ) -> None:
        self.config = config or ZeroShotConfig()
        self.classes = unit_rows(class_embeddings)
        self.sentiments = unit_rows(sentiment_embeddings)
        if self.classes.shape[0] != len(EMOTIONS) or self.sentiments.shape[0] != SENTIMENT_POLES:
            raise ModelError(f"need {len(EMOTIONS)} class and {SENTIMENT_POLES} sentiment embeddings, "
                             f"got {self.classes.shape} and {self.sentiments.shape}: rebuild the bundle")
        if self.classes.shape[1] != self.sentiments.shape[1]:
            raise ModelError("class and sentiment embeddings differ in width: rebuild the bundle")
        self.embed_dim = int(self.classes.shape[1])
        self.logit_scale = float(self.config.logit_scale or model_logit_scale)
        # per stream: (smoothed class probabilities (6,), smoothed sentiment)
        self._state: dict[str, tuple[np.ndarray, float]] = {}

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, config: ZeroShotConfig | None = None) -> ZeroShotHead:
        return cls(bundle.emotion_embeddings, bundle.sentiment_embeddings, config, bundle.logit_scale)

    def step(self, stream_ids: Sequence[str], features: np.ndarray) -> HeadOutput:
        features = unit_rows(check_step_input(stream_ids, features, self.embed_dim))
        probabilities = softmax(self.logit_scale * features @ self.classes.T)
        poles = softmax(self.logit_scale * features @ self.sentiments.T)
        sentiments = poles[:, 2] - poles[:, 0]
        smoothed = np.empty_like(probabilities)
        smoothed_sentiment = np.empty(len(stream_ids), dtype=np.float32)
        alpha = self.config.alpha
        for row, stream_id in enumerate(stream_ids):
            previous = self._state.get(stream_id)
            if previous is None:  # a new stream starts from its first frame, not from zeros
                scores, sentiment = probabilities[row], float(sentiments[row])
            else:
                scores = alpha * probabilities[row] + (1 - alpha) * previous[0]
                sentiment = alpha * float(sentiments[row]) + (1 - alpha) * previous[1]
            self._state[stream_id] = (scores, sentiment)
            smoothed[row], smoothed_sentiment[row] = scores, sentiment
        return HeadOutput(self._present(smoothed), smoothed_sentiment)

    def reset(self, stream_id: str) -> None:
        self._state.pop(stream_id, None)

    def _present(self, scores: np.ndarray) -> np.ndarray:
        """Threshold after smoothing, as the seed thresholded scores averaged over a segment."""
        if self.config.dynamic_threshold is not None:
            scores = apply_dynamic_threshold(scores, self.config.dynamic_threshold)
        if self.config.output is OutputMode.RELATIVE:
            scores = scores / np.maximum(scores.max(axis=-1, keepdims=True), 1e-12)
        return np.clip(scores, 0.0, 1.0).astype(np.float32)


class LstmHead:
    """A trained ``TemporalLSTM`` advanced one frame per step, its (h, c) kept per stream.

    All streams of a call advance in one batched LSTM step: their states are gathered into one
    batch, stepped, and scattered back. A new (or reset) stream starts from zeros.
    """

    name = HeadKind.LSTM.value

    def __init__(self, module: TemporalLSTM, device: str = "cpu") -> None:
        if module.config.bidirectional:
            raise ConfigError("a bidirectional temporal model reads whole files, not a stream as it comes: "
                              "`affectstream analyze FILE --bundle ...` runs it; `run` needs --head zero-shot "
                              "or a bundle trained without --bidirectional")
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.embed_dim = module.config.input_dim
        self._states: dict[str, LstmState] = {}  # each (layers, hidden) on device

    def step(self, stream_ids: Sequence[str], features: np.ndarray) -> HeadOutput:
        features = check_step_input(stream_ids, features, self.embed_dim)
        h, c = self._gather(stream_ids)
        with torch.inference_mode():
            x = torch.from_numpy(features).to(self.device)
            probabilities, sentiment, (h, c) = self.module.step(x, (h, c))
        for row, stream_id in enumerate(stream_ids):
            self._states[stream_id] = (h[:, row].clone(), c[:, row].clone())
        return HeadOutput(
            probabilities.float().cpu().numpy(), sentiment.float().cpu().numpy().astype(np.float32)
        )

    def reset(self, stream_id: str) -> None:
        self._states.pop(stream_id, None)

    def cell_state(self, stream_id: str) -> np.ndarray | None:
        """The stream's cell state ``(layers, hidden)``, or None before its first step (for monitoring)."""
        state = self._states.get(stream_id)
        return None if state is None else state[1].cpu().numpy()

    def _gather(self, stream_ids: Sequence[str]) -> LstmState:
        zeros = self.module.initial_state(1, self.device)
        pairs = [self._states.get(stream_id, (zeros[0][:, 0], zeros[1][:, 0])) for stream_id in stream_ids]
        return torch.stack([h for h, _ in pairs], dim=1), torch.stack([c for _, c in pairs], dim=1)
