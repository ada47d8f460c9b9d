"""Whole-file rescoring with a bidirectional temporal model, for ``affectstream analyze``.

A bidirectional LSTM reads a sequence in both directions, so it cannot step frame by frame as the
live pipeline does. ``analyze`` therefore decodes and encodes the file once, through the ordinary
pipeline, with a ``RecordingHead`` that serves the pass with the bundle's zero-shot head and keeps
every sampled frame's features. When the file is done, the model runs over the whole sequence
(``rescore_sequence``) and ``replay`` feeds the first pass's records through a fresh
``StreamSession`` with the new scores, so the estimates, summaries and events a user gets all come
from the bidirectional model. Everything here is pure: data in, messages out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from affectstream.engine.interfaces import HeadOutput, TemporalHead
from affectstream.engine.lstm import TemporalLSTM
from affectstream.errors import PipelineError
from affectstream.stream.messages import Estimate, Event, EventKind, StreamRecord
from affectstream.stream.session import StreamSession


class RecordingHead:
    """Delegates to ``inner`` and keeps each stream's features in step order."""

    def __init__(self, inner: TemporalHead) -> None:
        self.inner = inner
        self.name = inner.name
        self._features: dict[str, list[np.ndarray]] = defaultdict(list)

    def step(self, stream_ids: Sequence[str], features: np.ndarray) -> HeadOutput:
        for row, stream_id in enumerate(stream_ids):
            self._features[stream_id].append(np.array(features[row], dtype=np.float32))
        return self.inner.step(stream_ids, features)

    def reset(self, stream_id: str) -> None:
        self.inner.reset(stream_id)

    def features(self, stream_id: str) -> np.ndarray:
        """``(T, D)`` features of every step of ``stream_id`` so far (``(0, 0)`` before the first)."""
        rows = self._features.get(stream_id)
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def rescore_sequence(module: TemporalLSTM, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``(T, n_labels)`` in [0, 1] and sentiment ``(T,)`` of one whole sequence."""
    if len(features) == 0:
        return np.zeros((0, module.config.n_labels), np.float32), np.zeros(0, np.float32)
    with torch.inference_mode():
        logits, sentiment, _ = module.eval()(torch.from_numpy(np.asarray(features, np.float32))[None])
    return torch.sigmoid(logits)[0].float().numpy(), sentiment[0].float().numpy()


def replay(records: Sequence[StreamRecord], scores: np.ndarray, sentiment: np.ndarray,
           session: StreamSession) -> list[StreamRecord]:
    """One stream's records again, with the estimates rescored and what derives from them recomputed.

    Estimates and lifecycle events are replayed in order (a lifecycle event through the
    ``SourceEvent`` it came from); summaries and onset/offset/peak/shift events are recomputed by
    ``session``; ``stats`` are left out (they describe the first pass's timing).
    """
    out: list[StreamRecord] = []
    step = 0
    for record in records:
        if record.stream != session.stream_id:
            continue
        if isinstance(record, Estimate):
            if step >= len(scores):
                raise PipelineError(f"stream {session.stream_id}: more estimates than rescored steps")
            out += session.on_estimate(record.ts, record.wall, scores[step], float(sentiment[step]),
                                       latency_ms=record.latency_ms, age_ms=record.age_ms)
            step += 1
        elif isinstance(record, Event) and record.source is not None:
            out += session.on_source_event(record.source, record.ts)
            if record.source.terminal:
                out += session.finish(record.ts, record.wall)
        elif isinstance(record, Event) and record.kind is EventKind.FRAMES_DROPPED and record.total is not None:
            out += session.on_drops(record.ts, record.wall, record.total)
    if step != len(scores):
        raise PipelineError(f"stream {session.stream_id}: {len(scores)} rescored steps for {step} estimates")
    return out
