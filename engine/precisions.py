"""The names of the encoder backends and precisions, and which backend runs which: one table that
the backend chooser, each backend and build-engine check against."""

from __future__ import annotations

import enum


class Backend(str, enum.Enum):
    AUTO = "auto"
    TORCH = "torch"
    COMPILE = "compile"
    ONNX = "onnx"
    TENSORRT = "tensorrt"


PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
# What each backend can run. fp16 on the CPU has no fast kernels; ONNX Runtime's CPU fp16 and bf16
# kernels cover few operators, so it runs fp32 or int8 graphs.
# The expression classifier's runners (engine/expression.py): torch on CPU/CUDA, ONNX Runtime.
CLASSIFIER_BACKENDS: tuple[str, ...] = (Backend.AUTO.value, Backend.TORCH.value, Backend.ONNX.value)
CLASSIFIER_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16")  # fp16: CUDA, where parity holds
SUPPORTED: dict[Backend, tuple[str, ...]] = {
    Backend.TORCH: ("fp32", "fp16", "bf16"),
    Backend.COMPILE: ("fp32", "fp16", "bf16"),
    Backend.ONNX: ("fp32", "int8"),
    Backend.TENSORRT: ("fp32", "fp16", "int8"),
}
