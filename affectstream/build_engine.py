"""``affectstream build-engine BUNDLE``: export, quantise and build inference engines into a bundle.

The work is engine/build.py's; this module parses arguments and reads calibration footage through
stream's sources (the one place that handles odd media), which engine/ may not import.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from affectstream.errors import ExitStatus

log = logging.getLogger("affectstream")



def add_build_engine_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "build-engine", help="export the image encoder to ONNX, quantise it, or build a TensorRT engine or "
        "warm torch.compile, checked against torch fp32, into a bundle")
    parser.add_argument("bundle", help="model bundle directory (made by `bundle create` or `train`)")
    parser.add_argument("--backend", required=True, choices=["onnx", "tensorrt", "compile"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "int8"],
                        help="onnx: fp32 or int8 (static, calibrated); tensorrt: fp32, fp16 (strongly typed) "
                             "or int8; compile: fp32, fp16 or bf16")
    parser.add_argument("--batch", default="1,8,16", metavar="MIN,OPT,MAX",
                        help="TensorRT optimisation profile; compile: the batch buckets")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (tensorrt needs cuda)")
    parser.add_argument("--calibration", default=None, metavar="VIDEO",
                        help="int8: footage to calibrate activation ranges on (default: synthetic frames)")
    parser.add_argument("--calibration-frames", type=int, default=64, metavar="N",
                        help="int8: frames taken evenly from the calibration video")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument("-v", "--verbose", action="count", default=0)


def run_build_engine(args: argparse.Namespace) -> int:
    from affectstream.engine.build import BuildConfig, build_engine
    from affectstream.engine.tensorrt_backend import BatchProfile

    config = BuildConfig(backend=args.backend, precision=args.precision, profile=BatchProfile.parse(args.batch),
                         device=args.device, opset=args.opset)
    calibration = None
    if args.calibration:
        calibration = read_frames(args.calibration, args.calibration_frames)
    report = build_engine(Path(args.bundle), config, calibration)
    print(json.dumps(report, indent=2))
    return ExitStatus.OK


def read_frames(uri: str, count: int, stride: int = 0) -> list[np.ndarray]:
    """Up to ``count`` RGB frames of a video, every ``stride``-th (0: spread over a first pass)."""
    from affectstream.errors import ConfigError
    from affectstream.stream.sources import SourceConfig, open_source

    if count < 1:
        raise ConfigError(f"--calibration-frames must be >= 1, got {count}")
    frames: list[np.ndarray] = []
    source = open_source(uri, "calibration", SourceConfig())
    info = source.open()
    try:
        total = (info.duration_s or 0.0) * (info.nominal_fps or 0.0)
        step = stride or max(1, int(total) // count)
        index = 0
        while len(frames) < count:
            frame = source.read()
            if frame is None:
                break
            if index % step == 0:
                frames.append(frame.image)
            index += 1
    finally:
        source.close()
    if not frames:
        raise ConfigError(f"no frames could be read from {uri} for calibration")
    log.info("read %d calibration frames from %s", len(frames), uri)
    return frames
