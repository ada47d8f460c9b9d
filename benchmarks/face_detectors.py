"""Face detectors compared on real footage: recall, false positives and speed.

    python benchmarks/face_detectors.py --json face-detectors.json
    python benchmarks/face_detectors.py --quick                      # every 4th frame, fewer timings
    python benchmarks/face_detectors.py --yunet face_detection_yunet_2023mar.onnx

Media (Debian's opencv-doc): Megamind.avi (one talking face, sometimes a second one; the first
frame is black), the same beside its mirror image (two faces per frame, 1440x528) and vtest.avi
(pedestrians seen from above: its only faces are a few pixels high). Weights come from the model
cache (``affectstream models fetch``).

Figures:
- frames with a face (Megamind): share of its non-black frames (all 269) where the detector found
  at least one face: the main character is in every one of them;
- recall and false positives per frame against the faces annotated in every 10th frame
  (benchmarks/data/megamind_faces.json: 35 faces in 27 frames, checked by eye), on Megamind.avi
  and on the same frames beside their mirror image (70 faces); a detection finds a face when their
  IoU is at least 0.3 (detectors draw the box differently: Haar wider, BlazeFace lower);
- vtest per frame: every detection on vtest.avi per frame, and those at least 24 px wide (a face
  big enough to read an expression from); all of them are false positives or faces of a few pixels;
- ms per frame at batch 1 and at batch 8 on Megamind's 720x528 frames (median of repeats).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from affectstream.engine.faces import FaceBox, FaceDetector, HaarDetector, YuNetDetector

DATA = Path("/usr/share/doc/opencv-doc/examples/data")
ANNOTATION = Path(__file__).with_name("data") / "megamind_faces.json"
READABLE_PX = 24
MATCH_IOU = 0.3


@dataclass(frozen=True, slots=True)
class Result:
    detector: str
    frames_with_face_megamind: float
    recall_megamind: float
    false_per_frame_megamind: float
    recall_mirror: float
    false_per_frame_mirror: float
    vtest_per_frame: float
    vtest_readable_per_frame: float
    ms_batch1: float
    ms_batch8: float
    frames: dict[str, int]


@dataclass(frozen=True, slots=True)
class Annotated:
    """Frames with their faces known."""

    frames: list[np.ndarray]
    faces: list[list[FaceBox]]


def read(path: Path, every: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames, index = [], 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        if index % every == 0:
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        index += 1
    return frames


def annotated_megamind(all_frames: list[np.ndarray]) -> Annotated:
    annotation = json.loads(ANNOTATION.read_text())
    indices = sorted(int(k) for k in annotation["frames"])
    faces = [[FaceBox(*map(float, box), 1.0) for box in annotation["frames"][str(i)]] for i in indices]
    return Annotated([all_frames[i] for i in indices], faces)


def mirrored(data: Annotated) -> Annotated:
    frames, faces = [], []
    for frame, boxes in zip(data.frames, data.faces):
        width = frame.shape[1]
        frames.append(np.ascontiguousarray(np.hstack([frame, frame[:, ::-1]])))
        faces.append(boxes + [FaceBox(2 * width - b.x2, b.y, b.w, b.h, 1.0) for b in boxes])
    return Annotated(frames, faces)


def detect_all(detector: FaceDetector, frames: Sequence[np.ndarray], batch: int = 8) -> list[list[FaceBox]]:
    found: list[list[FaceBox]] = []
    for start in range(0, len(frames), batch):
        found.extend(detector.detect(frames[start:start + batch]))
    return found


def matched(truth: list[FaceBox], found: list[FaceBox]) -> int:
    """Faces found: greedy pairs by IoU, each truth and detection used once."""
    pairs = sorted(((t.iou(f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    used_t: set[int] = set()
    used_f: set[int] = set()
    for iou, i, j in pairs:
        if iou >= MATCH_IOU and i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
    return len(used_t)


def scores(detector: FaceDetector, data: Annotated) -> tuple[float, float]:
    """Recall over the annotated faces and unmatched detections per frame."""
    found = detect_all(detector, data.frames)
    hits = [matched(t, f) for t, f in zip(data.faces, found)]
    total = sum(len(t) for t in data.faces)
    false = sum(len(f) - h for f, h in zip(found, hits))
    return sum(hits) / total, false / len(data.frames)


def ms_per_frame(detector: FaceDetector, frames: Sequence[np.ndarray], batch: int, repeats: int) -> float:
    chunks = [list(frames[i:i + batch]) for i in range(0, len(frames) - batch + 1, batch)]
    for _ in range(2):  # warm-up: first calls pick kernels and allocate
        detector.detect(chunks[0])
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for chunk in chunks:
            detector.detect(chunk)
        timings.append((time.perf_counter() - start) * 1000 / (len(chunks) * batch))
    return statistics.median(timings)


def bench(name: str, detector: FaceDetector, media: dict[str, list[np.ndarray]], annotated: dict[str, Annotated],
          repeats: int, timing_frames: int) -> Result:
    mega, vtest = media["megamind"], media["vtest"]
    visible = [frame for frame in mega if frame.mean() >= 5.0]
    with_face = sum(1 for boxes in detect_all(detector, visible) if boxes) / len(visible)
    recall_m, false_m = scores(detector, annotated["megamind"])
    recall_p, false_p = scores(detector, annotated["mirror"])
    on_vtest = detect_all(detector, vtest)
    readable = sum(1 for boxes in on_vtest for box in boxes if box.w >= READABLE_PX)
    timed = visible[:timing_frames]
    return Result(
        name, with_face, recall_m, false_m, recall_p, false_p,
        sum(len(b) for b in on_vtest) / len(vtest), readable / len(vtest),
        ms_per_frame(detector, timed, 1, repeats), ms_per_frame(detector, timed, 8, repeats),
        {"megamind": len(visible), "annotated": len(annotated["megamind"].frames), "vtest": len(vtest)},
    )


def detectors(args: argparse.Namespace) -> dict[str, Callable[[], FaceDetector]]:
    from affectstream.engine.face_blaze import BlazeFaceDetector
    from affectstream.engine.face_mtcnn import MTCNNDetector

    made: dict[str, Callable[[], FaceDetector]] = {
        "mtcnn": lambda: MTCNNDetector.from_cache(device=args.device),
        "blazeface-front": lambda: BlazeFaceDetector.from_cache("front", device=args.device),
        "blazeface-back": lambda: BlazeFaceDetector.from_cache("back", device=args.device),
        "blazeface-full": lambda: BlazeFaceDetector.from_cache("full", device=args.device),
        "haar": HaarDetector.from_cv2,
    }
    if args.yunet:
        made["yunet"] = lambda: YuNetDetector(args.yunet)
    return {name: make for name, make in made.items() if not args.only or name in args.only}


def table(results: list[Result]) -> str:
    lines = [
        "| detector | frames with a face | recall (35 faces) | false/frame | recall mirror (70) | false/frame mirror "
        "| vtest dets/frame (>= 24 px) | ms/frame batch 1 | ms/frame batch 8 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.detector} | {r.frames_with_face_megamind:.1%} | {r.recall_megamind:.1%} "
            f"| {r.false_per_frame_megamind:.2f} | {r.recall_mirror:.1%} | {r.false_per_frame_mirror:.2f} "
            f"| {r.vtest_per_frame:.3f} ({r.vtest_readable_per_frame:.3f}) | {r.ms_batch1:.1f} | {r.ms_batch8:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("face-detectors.json"), help="where the figures go")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="every 4th frame, one timing repeat")
    parser.add_argument("--only", nargs="*", help="detector names to run (default: all)")
    parser.add_argument("--yunet", help="a YuNet ONNX file, to add YuNet to the comparison")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    all_frames = read(DATA / "Megamind.avi", 1)
    step = 4 if args.quick else 1
    media = {"megamind": all_frames[::step], "vtest": read(DATA / "vtest.avi", 5 * step)}
    annotated = {"megamind": annotated_megamind(all_frames)}
    annotated["mirror"] = mirrored(annotated["megamind"])
    repeats, timing_frames = (1, 16) if args.quick else (3, 32)
    results = []
    for name, make in detectors(args).items():
        started = time.perf_counter()
        results.append(bench(name, make(), media, annotated, repeats, timing_frames))
        print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    machine = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": torch.get_num_threads(), "torch": torch.__version__, "opencv": cv2.__version__,
        "device": args.device,
    }
    args.json.write_text(json.dumps({"machine": machine, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    print(table(results))
    print(f"\n(figures in {args.json}; torch threads: {torch.get_num_threads()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
