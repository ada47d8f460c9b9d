"""Read a TensorFlow Lite model file (a FlatBuffer) into plain records, without TensorFlow.

Only what a float graph of convolutions needs: tensors (shape, type, constant data), operators
(builtin code, inputs, outputs, options) and the graph's inputs and outputs. The field numbers are
those of TensorFlow Lite's ``schema.fbs``; a FlatBuffer table is a vtable of field offsets, so a
reader needs nothing but ``struct``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affectstream.errors import ModelError

# schema.fbs: enum TensorType
TENSOR_TYPES: dict[int, np.dtype] = {
    0: np.dtype(np.float32), 1: np.dtype(np.float16), 2: np.dtype(np.int32), 3: np.dtype(np.uint8),
    4: np.dtype(np.int64), 6: np.dtype(np.bool_), 7: np.dtype(np.int16), 9: np.dtype(np.int8),
}

# schema.fbs: enum BuiltinOperator (the ones face detectors use, and a few neighbours for messages)
BUILTIN_NAMES: dict[int, str] = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL", 19: "RELU",
    21: "RELU6", 22: "RESHAPE", 23: "RESIZE_BILINEAR", 25: "SOFTMAX", 28: "TANH", 34: "PAD",
    54: "PRELU", 97: "RESIZE_NEAREST_NEIGHBOR",
}


class _Table:
    """A FlatBuffer table at ``pos`` of ``buf``: fields by their slot number in the schema."""

    __slots__ = ("buf", "pos", "_vtable", "_vsize")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        (back,) = struct.unpack_from("<i", buf, pos)
        self._vtable = pos - back
        (self._vsize,) = struct.unpack_from("<H", buf, self._vtable)

    def _at(self, slot: int) -> int | None:
        entry = 4 + 2 * slot
        if entry >= self._vsize:
            return None
        (offset,) = struct.unpack_from("<H", self.buf, self._vtable + entry)
        return self.pos + offset if offset else None

    def _target(self, slot: int) -> int | None:
        at = self._at(slot)
        return None if at is None else at + struct.unpack_from("<I", self.buf, at)[0]

    def scalar(self, slot: int, fmt: str, default: int | float = 0) -> int | float:
        at = self._at(slot)
        return default if at is None else struct.unpack_from("<" + fmt, self.buf, at)[0]

    def table(self, slot: int) -> _Table | None:
        target = self._target(slot)
        return None if target is None else _Table(self.buf, target)

    def tables(self, slot: int) -> list[_Table]:
        target = self._target(slot)
        if target is None:
            return []
        (count,) = struct.unpack_from("<I", self.buf, target)
        items = []
        for k in range(count):
            at = target + 4 + 4 * k
            items.append(_Table(self.buf, at + struct.unpack_from("<I", self.buf, at)[0]))
        return items

    def array(self, slot: int, dtype: str) -> np.ndarray:
        target = self._target(slot)
        if target is None:
            return np.zeros(0, dtype)
        (count,) = struct.unpack_from("<I", self.buf, target)
        return np.frombuffer(self.buf, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=target + 4)

    def string(self, slot: int) -> str:
        return bytes(self.array(slot, "u1")).decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class TFLiteTensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data: np.ndarray | None  # constant data, shaped; None for activations


@dataclass(frozen=True, slots=True)
class TFLiteOperator:
    op: str  # builtin name, e.g. "CONV_2D" (or "BUILTIN_<n>" for ones not listed above)
    inputs: tuple[int, ...]  # tensor indices; -1 for an optional input left out
    outputs: tuple[int, ...]
    options: _Table | None  # the builtin options table; read with the op's own field numbers


@dataclass(frozen=True, slots=True)
class TFLiteGraph:
    tensors: tuple[TFLiteTensor, ...]
    operators: tuple[TFLiteOperator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def read_tflite(path: Path | str) -> TFLiteGraph:
    """The first subgraph of a ``.tflite`` file."""
    file = Path(path)
    try:
        buf = file.read_bytes()
    except OSError as error:
        raise ModelError(f"cannot read TFLite model {file}: {error}") from error
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ModelError(f"not a TFLite model (no TFL3 identifier): {file}")
    model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    codes = [max(int(c.scalar(0, "b")), int(c.scalar(3, "i"))) for c in model.tables(1)]
    buffers = model.tables(4)
    subgraphs = model.tables(2)
    if not subgraphs:
        raise ModelError(f"TFLite model without a subgraph: {file}")
    graph = subgraphs[0]
    tensors = tuple(_tensor(t, buffers) for t in graph.tables(0))
    operators = tuple(
        TFLiteOperator(
            BUILTIN_NAMES.get(codes[int(op.scalar(0, "I"))], f"BUILTIN_{codes[int(op.scalar(0, 'I'))]}"),
            tuple(int(i) for i in op.array(1, "i4")), tuple(int(i) for i in op.array(2, "i4")), op.table(4),
        )
        for op in graph.tables(3)
    )
    return TFLiteGraph(tensors, operators, tuple(int(i) for i in graph.array(1, "i4")),
                       tuple(int(i) for i in graph.array(2, "i4")))


def _tensor(table: _Table, buffers: list[_Table]) -> TFLiteTensor:
    shape = tuple(int(d) for d in table.array(0, "i4"))
    code = int(table.scalar(1, "b"))
    if code not in TENSOR_TYPES:
        raise ModelError(f"TFLite tensor {table.string(3)!r} has an unsupported type {code}")
    dtype = TENSOR_TYPES[code]
    if table.table(6) is not None:  # schema.fbs Tensor.sparsity
        raise ModelError(f"TFLite tensor {table.string(3)!r} is sparse, which this reader does not support")
    data = None
    index = int(table.scalar(2, "I"))
    if 0 < index < len(buffers):
        raw = buffers[index].array(0, "u1")
        if raw.size:
            data = np.frombuffer(raw.tobytes(), dtype=dtype.newbyteorder("<")).reshape(shape).astype(dtype)
    return TFLiteTensor(table.string(3), shape, dtype, data)
