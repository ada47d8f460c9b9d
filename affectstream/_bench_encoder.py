"""Bench section a: encoder throughput and latency per backend variant and batch size.

Variants are measured interleaved (every repetition runs each variant once per batch size in turn),
so that load from other work on a shared machine falls on all of them alike and their ratios hold.
Each variant is first checked against torch fp32 on the same frames (engine/parity.py).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affectstream.engine.backends import Backend, BackendChoice, build_encoder
from affectstream.engine.files import VISUAL_INT8_ONNX
from affectstream.engine.interfaces import ImageEncoder
from affectstream.engine.models import ModelSpec, build_clip
from affectstream.engine.parity import FLOAT_BOUND, INT8_BOUND, compare, parity_frames
from affectstream.errors import ConfigError

log = logging.getLogger("affectstream.bench")

VARIANTS = ("torch-fp32", "torch-fp16", "torch-bf16", "onnx-fp32", "onnx-int8", "compile-fp32", "compile-fp16",
            "compile-bf16")  # fp16: CUDA only (the CPU has no fast fp16 kernels)
REFERENCE = "torch-fp32"


def parse_variants(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise ConfigError(f"unknown encoder variants {unknown}: pick from {', '.join(VARIANTS)}")
    return names if REFERENCE in names else (REFERENCE, *names)


def build_variant(name: str, spec: ModelSpec, device: str, calibration: Sequence[np.ndarray],
                  scratch: Path, threads: int = 0) -> ImageEncoder:
    """One encoder variant on a fresh model (torch variants cast the model they are given)."""
    from affectstream.engine.ort_backend import OrtConfig

    backend_name, precision = name.split("-")
    backend = Backend(backend_name)
    if name == "onnx-int8":
        return _int8_encoder(spec, device, calibration, scratch, OrtConfig(threads=threads))
    choice = BackendChoice(backend, precision, "bench")
    return build_encoder(choice, spec, device, model=build_clip(spec, device=device),
                         ort_config=OrtConfig(threads=threads))


def _int8_encoder(spec: ModelSpec, device: str, calibration: Sequence[np.ndarray], scratch: Path,
                  config: Any) -> ImageEncoder:
    from affectstream.engine.encoder import TorchEncoder
    from affectstream.engine.onnx_export import export_visual
    from affectstream.engine.ort_backend import OrtEncoder, quantize_int8

    reference = TorchEncoder.from_model(build_clip(spec), spec, "cpu", "fp32")
    fp32 = export_visual(reference.visual, spec.image_size, scratch / "visual.onnx")
    with torch.inference_mode():
        batches = [reference.preprocessor(calibration[i : i + 8]).numpy() for i in range(0, len(calibration), 8)]
    path = quantize_int8(fp32, scratch / VISUAL_INT8_ONNX, batches)
    return OrtEncoder.from_file(path, spec, device, "int8", config)


def build_variants(names: Sequence[str], spec: ModelSpec, device: str, calibration: Sequence[np.ndarray],
                   threads: int = 0) -> tuple[dict[str, ImageEncoder], dict[str, Any]]:
    """The encoders, and each one's parity against torch fp32 (variants that fail to build are noted)."""
    scratch = Path(tempfile.mkdtemp(prefix="affectstream-bench-"))
    encoders: dict[str, ImageEncoder] = {}
    parity: dict[str, Any] = {}
    frames = parity_frames(8, seed=11)
    for name in names:
        started = time.perf_counter()
        try:
            encoders[name] = build_variant(name, spec, device, calibration, scratch, threads)
        except Exception as error:  # a missing extra or an unsupported op: report it, bench the rest
            log.warning("encoder variant %s unavailable: %s", name, error)
            parity[name] = {"error": str(error)}
            continue
        log.info("built %s in %.1f s", name, time.perf_counter() - started)
    expected = encoders[REFERENCE].encode(frames)
    for name, encoder in encoders.items():
        bound = INT8_BOUND if name.endswith("int8") else FLOAT_BOUND
        parity[name] = compare(name, expected, encoder.encode(frames), bound).to_dict()
    return encoders, parity


def measure(encoders: dict[str, ImageEncoder], frames: Sequence[np.ndarray], batches: Sequence[int],
            repeats: int) -> list[dict[str, Any]]:
    """Per variant and batch size: latency of one ``encode`` call (uint8 frames in, features out)."""
    rows: list[dict[str, Any]] = []
    for batch in batches:
        images = [frames[i % len(frames)] for i in range(batch)]
        times: dict[str, list[float]] = {name: [] for name in encoders}
        for encoder in encoders.values():
            encoder.encode(images)  # warm-up: allocations, lazy init, caches
        for _ in range(repeats):
            for name, encoder in encoders.items():
                started = time.perf_counter()
                encoder.encode(images)
                times[name].append((time.perf_counter() - started) * 1e3)
        for name, samples in times.items():
            p50 = float(np.percentile(samples, 50))
            rows.append({"variant": name, "batch": batch, "repeats": repeats, "p50_ms": round(p50, 2),
                         "p95_ms": round(float(np.percentile(samples, 95)), 2),
                         "frames_per_s": round(batch * 1e3 / p50, 2)})
        log.info("batch %d: %s", batch, {n: round(float(np.median(t)), 1) for n, t in times.items()})
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Throughput of each variant over torch fp32's, per batch size (same run, same frames)."""
    reference = {row["batch"]: row["frames_per_s"] for row in rows if row["variant"] == REFERENCE}
    return [{"variant": row["variant"], "batch": row["batch"],
             "throughput_vs_torch_fp32": round(row["frames_per_s"] / reference[row["batch"]], 3)}
            for row in rows if row["variant"] != REFERENCE and row["batch"] in reference]


def batch1_latency_ms(rows: list[dict[str, Any]], variant: str) -> float | None:
    for row in rows:
        if row["variant"] == variant and row["batch"] == 1:
            return float(row["p50_ms"])
    return None
