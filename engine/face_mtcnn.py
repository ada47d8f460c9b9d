"""MTCNN (Zhang et al. 2016) in our own torch modules, batched across frames.

The networks have the layout of facenet-pytorch 2.6.0, so its P/R/O-Net state dicts (``pnet.pt``,
``rnet.pt``, ``onet.pt`` in its wheel) load as they are, and the cascade is calibrated as there: an
image pyramid from ``min_face_size`` with ``factor`` 0.709, P-Net proposals kept at 0.6 with NMS 0.5
per level and 0.7 per frame, R-Net at 0.7 and O-Net at 0.7, O-Net's final NMS on the smaller area.

Batching: P-Net runs once per pyramid level on every frame of one size (frames of different sizes
form separate groups); R-Net and O-Net each run once on the candidates of every frame together.
Crops for R-Net and O-Net are cut with ``torchvision.ops.roi_align`` (an averaging resize like the
reference's per-crop ``interpolate(mode="area")``, but one call for all crops).

On CUDA the networks run in fp16 by default (``half``); box arithmetic stays in fp32 because fp16
has a 1-pixel step above 1024 and a 2-pixel step above 2048.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from affectstream.engine.faces import FaceBox, by_score, check_frames, clip_box
from affectstream.errors import ModelError

log = logging.getLogger(__name__)

WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
# P-Net is a 12x12 window with stride 2 on each pyramid level.
PNET_CELL = 12
PNET_STRIDE = 2
# facenet-pytorch's NMS thresholds: within a pyramid level, across levels, after R-Net, after O-Net.
NMS_LEVEL, NMS_FRAME, NMS_RNET, NMS_ONET = 0.5, 0.7, 0.7, 0.7
# Bilinear samples per crop pixel and axis: 2x2 averaged samples stay within 0.6/255 of an area resize
# of the same box (mean absolute difference, measured on Megamind.avi) at a tenth of the cost of
# roi_align's adaptive count, which samples a 300-pixel box 13x13 times per output pixel.
CROP_SAMPLES = 2


class PNet(nn.Module):
    """Proposal network: fully convolutional, 12x12 windows → face probability and box offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3, H, W)`` → offsets ``(N, 4, h, w)`` and face probability ``(N, h, w)``."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        probability = torch.softmax(self.conv4_1(x), dim=1)[:, 1]
        return self.conv4_2(x), probability


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3, 24, 24)`` → offsets ``(N, 4)`` and face probability ``(N,)``."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The weights were converted from Caffe's (W, H, C) flattening order: keep it.
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output network on 48x48 crops: final score, box offsets and five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(N, 3, 48, 48)`` → offsets ``(N, 4)``, landmarks ``(N, 10)`` (5 x then 5 y), probability."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


@dataclass(frozen=True, slots=True)
class MTCNNSettings:
    """The cascade's calibration; the defaults are facenet-pytorch's."""

    min_face_size: int = 20
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709


@dataclass(frozen=True, slots=True)
class MTCNNBatching:
    """How much goes into one network call.

    On a GPU a call is a launch, so everything goes at once (the crop limit only bounds memory). On
    the CPU a bigger batch spills the caches and is slower per frame: measured on 2 cores with
    720x528 frames, P-Net took 6.3 ms a frame alone and 9.4 ms a frame in a batch of 8, R-Net
    0.03 ms a crop in batches of 128 and 0.07 ms in batches of 1024.
    """

    frames_per_call: int  # P-Net, per pyramid level, frames of one size
    crops_per_call: int  # R-Net and O-Net

    @classmethod
    def for_device(cls, device: str) -> MTCNNBatching:
        if torch.device(device).type == "cpu":
            return cls(frames_per_call=1, crops_per_call=256)
        return cls(frames_per_call=64, crops_per_call=8192)


class _Frames:
    """The input frames on the device, in batches of one size, and where each frame went."""

    def __init__(self, batches: list[tuple[list[int], torch.Tensor]], count: int, device: torch.device) -> None:
        self.batches = batches  # (frame indices, pixels (B, 3, H, W))
        self.device = device
        batch_of, position, sizes = [0] * count, [0] * count, [(0, 0)] * count
        for number, (indices, pixels) in enumerate(batches):
            for place, index in enumerate(indices):
                batch_of[index], position[index] = number, place
                sizes[index] = (int(pixels.shape[3]), int(pixels.shape[2]))
        self.batch_of = torch.tensor(batch_of, device=device)
        self.position = torch.tensor(position, device=device)
        self.sizes = torch.tensor(sizes, dtype=torch.float32, device=device)  # (N, 2) width, height


@dataclass(slots=True)
class _Candidates:
    """Boxes of one stage for all frames: ``boxes`` (K, 4) x1 y1 x2 y2, ``scores`` (K,), ``frame`` (K,)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    frame: torch.Tensor

    def take(self, keep: torch.Tensor) -> _Candidates:
        return _Candidates(self.boxes[keep], self.scores[keep], self.frame[keep])

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def _load_state(module: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"MTCNN weights not found: {path} (run `affectstream models fetch` or pass the directory "
                         "holding pnet.pt, rnet.pt and onet.pt from the facenet-pytorch wheel)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except Exception as error:  # a truncated file, another network's weights, a pickle we refuse to run
        raise ModelError(f"cannot load MTCNN weights {path}: {error}") from error


def _nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    from torchvision.ops import batched_nms

    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return batched_nms(boxes, scores, groups, threshold)


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS where overlap is intersection over the smaller box (MTCNN's final "Min" NMS).

    It removes a small box inside a bigger one, which IoU would keep. Few boxes reach this point,
    so a plain loop over a pairwise matrix is cheap; boxes of different frames never suppress.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    b = boxes.double().cpu()
    # facenet-pytorch (after the original MATLAB code) counts both end pixels: +1 in widths.
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = (torch.minimum(b[:, None, 2], b[None, :, 2]) - torch.maximum(b[:, None, 0], b[None, :, 0]) + 1).clamp(min=0)
    ih = (torch.minimum(b[:, None, 3], b[None, :, 3]) - torch.maximum(b[:, None, 1], b[None, :, 1]) + 1).clamp(min=0)
    overlap = iw * ih / torch.minimum(area[:, None], area[None, :])
    same_frame = groups.cpu()[:, None] == groups.cpu()[None, :]
    suppress = (overlap > threshold) & same_frame
    order = torch.argsort(scores.float().cpu(), descending=True, stable=True).tolist()
    removed = torch.zeros(len(order), dtype=torch.bool)
    keep: list[int] = []
    for index in order:
        if removed[index]:
            continue
        keep.append(index)
        removed |= suppress[index]
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Each box grown to a square around its centre (the next network sees square crops)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Apply a network's box offsets (fractions of the box size, +1 pixel convention)."""
    size = torch.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1] * 2, dim=1)
    return boxes + offsets * size


class MTCNNDetector:
    """MTCNN face detector; see the module docstring for what is batched and how it is calibrated."""

    name = "mtcnn"

    def __init__(self, pnet: PNet, rnet: RNet, onet: ONet, *, device: str = "cpu", half: bool | None = None,
                 settings: MTCNNSettings | None = None, batching: MTCNNBatching | None = None) -> None:
        self.device = device
        self.settings = settings or MTCNNSettings()
        self.batching = batching or MTCNNBatching.for_device(device)
        # fp16 only where it is fast and supported: CUDA. The CPU path stays fp32.
        self.half = torch.device(device).type == "cuda" if half is None else half
        self.dtype = torch.float16 if self.half else torch.float32
        self._pnet, self._rnet, self._onet = (
            net.to(device=device, dtype=self.dtype).to(memory_format=torch.channels_last).eval()
            for net in (pnet, rnet, onet)
        )

    @classmethod
    def from_dir(cls, path: Path | str, **options: Any) -> MTCNNDetector:
        """Load ``pnet.pt``, ``rnet.pt``, ``onet.pt`` (facenet-pytorch state dicts) from ``path``."""
        folder = Path(path)
        nets = (PNet(), RNet(), ONet())
        for net, file in zip(nets, WEIGHT_FILES):
            _load_state(net, folder / file)
        return cls(*nets, **options)

    @classmethod
    def from_cache(cls, **options: Any) -> MTCNNDetector:
        """The weights in the model cache (``affectstream models fetch`` puts them there)."""
        from affectstream.engine.model_files import path_of

        return cls.from_dir(path_of("mtcnn"), **options)

    # --- the cascade ---

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceBox]]:
        check_frames(images)
        if not images:
            return []
        frames = self._stack(images)
        candidates = self._propose(frames)
        candidates = self._refine(frames, candidates)
        final, landmarks = self._output(frames, candidates)
        return self._to_records(images, final, landmarks)

    def _stack(self, images: Sequence[np.ndarray]) -> _Frames:
        """Frames of one size stacked ``frames_per_call`` at a time, on the device in the model dtype.

        Pixels cross to the device as uint8 (4x less to copy) and are converted there.
        """
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(image.shape[:2], []).append(index)
        step = self.batching.frames_per_call
        batches = []
        for indices in groups.values():
            for start in range(0, len(indices), step):
                chunk = indices[start:start + step]
                pixels = torch.from_numpy(np.stack([images[i] for i in chunk])).to(self.device, non_blocking=True)
                batches.append((chunk, pixels.permute(0, 3, 1, 2).to(self.dtype)))
        return _Frames(batches, len(images), torch.device(self.device))

    def _scales(self, height: int, width: int) -> list[float]:
        """Pyramid scales: the smallest face maps to P-Net's 12 pixels, then shrink by ``factor``."""
        scale = PNET_CELL / self.settings.min_face_size
        side = min(height, width) * scale
        scales = []
        while side >= PNET_CELL:
            scales.append(scale)
            scale *= self.settings.factor
            side *= self.settings.factor
        return scales

    def _propose(self, frames: _Frames) -> _Candidates:
        """Stage 1: P-Net over each batch's pyramid, NMS per level and per frame."""
        found: list[tuple[_Candidates, torch.Tensor]] = []
        for chunk, pixels in frames.batches:
            frame_of = torch.tensor(chunk, device=frames.device)
            for scale in self._scales(int(pixels.shape[2]), int(pixels.shape[3])):
                found.append(self._pnet_level(pixels, frame_of, scale))
        windows = _cat([part for part, _ in found], frames.device)
        offsets = torch.cat([o for _, o in found]) if found else torch.zeros(0, 4, device=frames.device)
        # As the reference: NMS across levels on the windows themselves, then P-Net's offsets, which
        # are fractions of the window without the +1.
        keep = _nms(windows.boxes, windows.scores, windows.frame, NMS_FRAME)
        windows, offsets = windows.take(keep), offsets[keep]
        boxes = windows.boxes
        size_wh = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, dim=1)
        return _Candidates(boxes + offsets * size_wh, windows.scores, windows.frame)

    def _pnet_level(self, batch: torch.Tensor, frame_of: torch.Tensor,
                    scale: float) -> tuple[_Candidates, torch.Tensor]:
        """P-Net's windows above threshold on one pyramid level (NMS within the level) and their offsets."""
        height, width = batch.shape[2:]
        size = (int(height * scale + 1), int(width * scale + 1))
        pyramid = _normalise(F.interpolate(batch, size=size, mode="area"))
        offsets, probability = self._pnet(pyramid.contiguous(memory_format=torch.channels_last))
        offsets, probability = offsets.float(), probability.float()
        mask = probability >= self.settings.thresholds[0]
        where = mask.nonzero()  # (K, 3): batch index, row, column
        scores = probability[mask]
        cell_offsets = offsets.permute(0, 2, 3, 1)[mask]  # (K, 4)
        # Window corners back in source pixels, as in the reference (floor after the +1 shift).
        xy = where[:, 1:].float().flip(1)
        top_left = ((PNET_STRIDE * xy + 1) / scale).floor()
        bottom_right = ((PNET_STRIDE * xy + PNET_CELL) / scale).floor()
        windows = torch.cat([top_left, bottom_right], dim=1)
        frame = frame_of[where[:, 0]]
        keep = _nms(windows, scores, frame, NMS_LEVEL)
        return _Candidates(windows[keep], scores[keep], frame[keep]), cell_offsets[keep]

    def _refine(self, frames: _Frames, candidates: _Candidates) -> _Candidates:
        """Stage 2: R-Net on 24x24 crops of all frames' proposals at once."""
        candidates = _Candidates(_square(candidates.boxes), candidates.scores, candidates.frame)
        candidates = candidates.take(_croppable(frames, candidates))
        if len(candidates) == 0:
            return candidates
        crops = _crops(frames, candidates, 24, self.dtype)
        offsets, probability = _run_chunked(self._rnet, crops, self.batching.crops_per_call)
        keep = probability > self.settings.thresholds[1]
        passed = _Candidates(candidates.boxes[keep], probability[keep], candidates.frame[keep])
        offsets = offsets[keep]
        pick = _nms(passed.boxes, passed.scores, passed.frame, NMS_RNET)
        passed, offsets = passed.take(pick), offsets[pick]
        return _Candidates(_square(_regress(passed.boxes, offsets)), passed.scores, passed.frame)

    def _output(self, frames: _Frames, candidates: _Candidates) -> tuple[_Candidates, torch.Tensor]:
        """Stage 3: O-Net on 48x48 crops; final boxes and landmarks ``(K, 5, 2)``."""
        candidates = candidates.take(_croppable(frames, candidates))
        if len(candidates) == 0:
            return candidates, torch.zeros(0, 5, 2)
        crops = _crops(frames, candidates, 48, self.dtype)
        offsets, points, probability = _run_chunked(self._onet, crops, self.batching.crops_per_call)
        keep = probability > self.settings.thresholds[2]
        boxes, frame, offsets, points = candidates.boxes[keep], candidates.frame[keep], offsets[keep], points[keep]
        scores = probability[keep]
        # Landmarks are fractions of the (+1) box before its regression, as O-Net was trained.
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        xs = w * points[:, :5] + boxes[:, :1] - 1
        ys = h * points[:, 5:] + boxes[:, 1:2] - 1
        landmarks = torch.stack([xs, ys], dim=2)
        final = _Candidates(_regress(boxes, offsets), scores, frame)
        pick = _nms_min(final.boxes, final.scores, final.frame, NMS_ONET)
        return final.take(pick), landmarks[pick]

    def _to_records(self, images: Sequence[np.ndarray], final: _Candidates,
                    landmarks: torch.Tensor) -> list[list[FaceBox]]:
        per_frame: list[list[FaceBox]] = [[] for _ in images]
        boxes = final.boxes.double().cpu().numpy()
        scores = final.scores.double().cpu().numpy()
        frames = final.frame.cpu().numpy()
        points = landmarks.double().cpu().numpy()
        for box, score, frame, marks in zip(boxes, scores, frames, points):
            height, width = images[int(frame)].shape[:2]
            x1, y1, x2, y2 = (float(v) for v in box)
            x, y, w, h = clip_box(x1, y1, x2, y2, width, height)
            if w <= 0 or h <= 0:
                continue
            per_frame[int(frame)].append(
                FaceBox(x, y, w, h, float(score), tuple((float(px), float(py)) for px, py in marks))
            )
        return [by_score(found) for found in per_frame]


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    """MTCNN's input scaling: [0, 255] → about [-1, 1]."""
    return (pixels - 127.5) * 0.0078125


def _cat(parts: list[_Candidates], device: torch.device) -> _Candidates:
    if not parts:
        empty = torch.zeros(0, 4, device=device)
        return _Candidates(empty, torch.zeros(0, device=device), torch.zeros(0, dtype=torch.long, device=device))
    return _Candidates(torch.cat([p.boxes for p in parts]), torch.cat([p.scores for p in parts]),
                       torch.cat([p.frame for p in parts]))


def _crop_bounds(frames: _Frames, candidates: _Candidates) -> torch.Tensor:
    """Each box truncated to whole pixels and limited to its frame, as ``x1 y1 x2 y2`` (pixel edges).

    The reference crops rows ``y-1 .. ey`` of the box limited to the frame and stretches that part to
    the network's input: a box sticking out of the frame is not padded.
    """
    wh = frames.sizes[candidates.frame]
    corners = candidates.boxes.trunc()
    x1 = corners[:, 0].clamp(min=1) - 1
    y1 = corners[:, 1].clamp(min=1) - 1
    x2 = torch.minimum(corners[:, 2], wh[:, 0])
    y2 = torch.minimum(corners[:, 3], wh[:, 1])
    return torch.stack([x1, y1, x2, y2], dim=1)


def _croppable(frames: _Frames, candidates: _Candidates) -> torch.Tensor:
    """Boxes that still cover at least one pixel of their frame."""
    bounds = _crop_bounds(frames, candidates)
    return ((bounds[:, 2] > bounds[:, 0]) & (bounds[:, 3] > bounds[:, 1])).nonzero().flatten()


def _crops(frames: _Frames, candidates: _Candidates, size: int, dtype: torch.dtype) -> torch.Tensor:
    """``(K, 3, size, size)`` normalised crops of every candidate, in candidate order."""
    from torchvision.ops import roi_align

    bounds = _crop_bounds(frames, candidates)
    batch_of = frames.batch_of[candidates.frame]
    out = torch.empty(len(candidates), 3, size, size, device=bounds.device, dtype=dtype)
    # roi_align reads one tensor per call: one call per batch of frames (one, on a GPU).
    for number, (_, pixels) in enumerate(frames.batches):
        rows = (batch_of == number).nonzero().flatten()
        if rows.numel() == 0:
            continue
        position = frames.position[candidates.frame[rows]].to(bounds.dtype)
        rois = torch.cat([position[:, None], bounds[rows]], dim=1).to(pixels.dtype)
        # aligned=True: pixel k spans [k, k+1], so a bin's samples average the pixels under it.
        out[rows] = roi_align(pixels, rois, (size, size), spatial_scale=1.0, sampling_ratio=CROP_SAMPLES,
                              aligned=True)
    return _normalise(out)


def _run_chunked(net: nn.Module, crops: torch.Tensor, step: int) -> tuple[torch.Tensor, ...]:
    """Run ``net`` on all crops, ``step`` at a time; outputs back in fp32."""
    # channels_last: oneDNN's and cuDNN's fast layout for these small convolutions (3x on the CPU).
    crops = crops.contiguous(memory_format=torch.channels_last)
    outputs = [net(crops[start:start + step]) for start in range(0, len(crops), step)]
    return tuple(torch.cat(parts).float() for parts in zip(*outputs))
