"""Bench section d: the loop a user would write, against the pipeline, same video, model and head.

The naive loop, in one thread: read every frame of each stream with cv2 in turn, keep the sampled
ones (same media-time rate), preprocess each alone with open_clip's own PIL transform, encode it
alone with the open_clip model, advance that stream's LSTM by one step, serialise the estimate.
The pipeline does the same work with a grabber thread per stream, batches across streams and
batched preprocessing (stream/pipeline.py). Both run unpaced: the figure is sampled frames per second.
"""

from __future__ import annotations

import json
import time
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from affectstream.engine.lstm import LstmState, TemporalLSTM
from affectstream.engine.models import ModelSpec
from affectstream.stream.sampler import MediaTimeSampler


def open_clip_transform(spec: ModelSpec) -> Any:
    import open_clip

    return open_clip.image_transform(spec.image_size, is_train=False, mean=spec.mean, std=spec.std,
                                     resize_mode=spec.resize_mode, interpolation=spec.interpolation)


def naive_loop(video: str, streams: int, rate_hz: float, model: Any, transform: Any, lstm: TemporalLSTM
               ) -> dict[str, Any]:
    """Process ``streams`` copies of ``video`` to their end; return estimates and seconds."""
    started = time.monotonic()
    captures = [cv2.VideoCapture(video) for _ in range(streams)]
    fps = captures[0].get(cv2.CAP_PROP_FPS) or 25.0
    # The pipeline's own sampling rule (pure logic), so that both sides analyse the same frames.
    samplers = [MediaTimeSampler(rate_hz or None) for _ in range(streams)]
    index = [0] * streams
    states: list[LstmState | None] = [None] * streams
    active = list(range(streams))
    estimates = 0
    lines: list[str] = []
    spent = {"preprocess": 0.0, "encode": 0.0}
    while active:
        for stream in list(active):
            ok, bgr = captures[stream].read()
            if not ok:
                active.remove(stream)
                continue
            pts = index[stream] / fps
            index[stream] += 1
            if not samplers[stream].offer(pts):
                continue
            step_started = time.perf_counter()
            image = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            with torch.inference_mode():
                pixels = transform(image).unsqueeze(0)
                preprocessed = time.perf_counter()
                features = model.encode_image(pixels, normalize=True)
                encoded = time.perf_counter()
                scores, sentiment, states[stream] = lstm.step(features.float(), states[stream])
            spent["preprocess"] += preprocessed - step_started
            spent["encode"] += encoded - preprocessed
            lines.append(json.dumps({"stream": f"s{stream}", "ts": pts, "scores": scores[0].tolist(),
                                     "sentiment": float(sentiment[0])}))
            estimates += 1
    for capture in captures:
        capture.release()
    elapsed = time.monotonic() - started
    return {"streams": streams, "estimates": estimates, "seconds": round(elapsed, 2),
            "estimates_per_s": round(estimates / max(elapsed, 1e-9), 2),
            "mean_ms": {stage: round(total / max(estimates, 1) * 1e3, 2) for stage, total in spent.items()}}


def compare_rows(naive: dict[str, Any], pipeline: dict[str, Any]) -> dict[str, Any]:
    """Speed-up of the pipeline over the naive loop in sampled frames per second."""
    ratio = pipeline["estimates_per_s"] / max(naive["estimates_per_s"], 1e-9)
    return {"streams": naive["streams"], "naive": naive, "pipeline": pipeline,
            "pipeline_speedup": round(float(ratio), 3),
            "same_work": naive["estimates"] == pipeline["estimates"]}


def mean_speedup(rows: list[dict[str, Any]]) -> float:
    return float(np.mean([row["pipeline_speedup"] for row in rows])) if rows else float("nan")
