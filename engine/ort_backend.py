"""ONNX Runtime backend: the exported image encoder and LSTM step, plus int8 static quantisation.

Preprocessing is the same ``Preprocessor`` every backend uses (open_clip's transform, on the
encoder's torch device), so only the model differs between backends. On CPU the pixels are handed
to ONNX Runtime as a numpy view (no copy); with the CUDA provider they stay on the GPU and are bound
by pointer (IO binding).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from affectstream.engine.heads import check_step_input
from affectstream.engine.interfaces import HeadKind, HeadOutput
from affectstream.engine.lstm import TemporalConfig
from affectstream.engine.models import ModelSpec
from affectstream.engine.onnx_export import TEMPORAL_INPUTS, VISUAL_INPUT, VISUAL_OUTPUT
from affectstream.engine.precisions import SUPPORTED, Backend
from affectstream.engine.preprocess import Preprocessor, TensorEncoder
from affectstream.errors import ConfigError, MissingExtraError, ModelError

log = logging.getLogger(__name__)

ORT_PRECISIONS = SUPPORTED[Backend.ONNX]


def require_onnxruntime() -> ModuleType:
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError("onnxruntime", "onnx", "the ONNX Runtime backend") from None
    return onnxruntime


def cuda_provider_available() -> bool:
    try:
        return "CUDAExecutionProvider" in require_onnxruntime().get_available_providers()
    except MissingExtraError:
        return False


@dataclass(frozen=True)
class OrtConfig:
    """Session settings. ``threads`` 0 lets ONNX Runtime use one thread per core."""

    threads: int = 0
    # Spinning keeps idle worker threads busy-waiting for the next call. On a small CPU that also
    # decodes video it steals the cores the decoders need, so it is off unless asked for.
    spin: bool = False

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ConfigError(f"ONNX Runtime threads must be >= 0, got {self.threads}")


def make_session(path: Path, device: str = "cpu", config: OrtConfig | None = None) -> Any:
    """An ``InferenceSession`` for ``path``: the CUDA provider on a CUDA device, else the CPU one."""
    ort = require_onnxruntime()
    config = config or OrtConfig()
    if not Path(path).is_file():
        raise ModelError(f"no ONNX model at {path}: build it with `affectstream build-engine BUNDLE --backend onnx`")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = config.threads
    spin = "1" if config.spin else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if not cuda_provider_available():
            raise ConfigError("ONNX Runtime has no CUDA provider here: install onnxruntime-gpu, or pick "
                              "--backend torch/compile/tensorrt on the GPU, or --device cpu")
        index = int(device.partition(":")[2] or 0)
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


class OrtEncoder(TensorEncoder):
    """``ImageEncoder`` running an exported visual graph (fp32 or int8) with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, session: Any, preprocessor: Preprocessor, spec: ModelSpec, device: str,
                 precision: str, path: Path) -> None:
        super().__init__(preprocessor, spec, device)
        self.session = session
        self.precision = precision
        self.path = path

    @classmethod
    def from_file(cls, path: Path, spec: ModelSpec, device: str = "cpu", precision: str = "fp32",
                  config: OrtConfig | None = None) -> OrtEncoder:
        if precision not in ORT_PRECISIONS:
            raise ConfigError(f"ONNX Runtime precision {precision!r} is not one of {ORT_PRECISIONS}")
        session = make_session(path, device, config)
        preprocessor = Preprocessor.from_spec(spec, device=device, dtype=torch.float32)
        log.info("onnxruntime encoder: %s (%s) on %s via %s", spec.name, precision, device,
                 session.get_providers()[0])
        return cls(session, preprocessor, spec, device, precision, Path(path))

    def encode_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        """Features of an already preprocessed ``(N, 3, S, S)`` float32 batch on the device."""
        pixels = pixels.contiguous()
        if pixels.device.type == "cpu":
            output = self.session.run([VISUAL_OUTPUT], {VISUAL_INPUT: pixels.numpy()})[0]
            return torch.from_numpy(output)
        return self._run_bound(pixels)

    def _run_bound(self, pixels: torch.Tensor) -> torch.Tensor:
        # ONNX Runtime runs on its own CUDA stream: the preprocessing kernels queued on torch's
        # stream must finish before it reads the pixels.
        torch.cuda.current_stream(pixels.device).synchronize()
        output = torch.empty((pixels.shape[0], self.embed_dim), dtype=torch.float32, device=pixels.device)
        binding = self.session.io_binding()
        index = pixels.device.index or 0
        binding.bind_input(VISUAL_INPUT, "cuda", index, np.float32, list(pixels.shape), pixels.data_ptr())
        binding.bind_output(VISUAL_OUTPUT, "cuda", index, np.float32, list(output.shape), output.data_ptr())
        self.session.run_with_iobinding(binding)
        return output

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.spec.name, "device": self.device,
                "precision": self.precision, "embed_dim": self.embed_dim, "file": self.path.name}


def quantize_int8(fp32_path: Path, out_path: Path, calibration: Sequence[np.ndarray]) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on preprocessed batches.

    ``calibration`` holds ``(N, 3, S, S)`` float32 batches, preprocessed exactly as at run time, from
    footage like the one the model will see: the activation ranges are measured on them.
    """
    require_onnxruntime()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ConfigError("int8 quantisation needs calibration frames")

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {VISUAL_INPUT: np.ascontiguousarray(batch, dtype=np.float32)}

    with tempfile.TemporaryDirectory(prefix="affectstream-quant-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Symbolic shape inference fails on open_clip's reshape of the dynamic batch; ONNX's own
        # shape inference and the graph optimisation are what quantisation needs.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out_path), _Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=["MatMul", "Gemm", "Conv"])
    log.info("int8 image encoder written to %s (%d calibration batches)", out_path, len(calibration))
    return out_path


class OrtLstmHead:
    """``TemporalHead`` running the exported LSTM step; (h, c) kept per stream like ``LstmHead``."""

    name = HeadKind.LSTM.value

    def __init__(self, session: Any, config: TemporalConfig) -> None:
        self.session = session
        self.config = config
        self.embed_dim = config.input_dim
        self._states: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # each (layers, hidden)

    @classmethod
    def from_file(cls, path: Path, config: TemporalConfig, device: str = "cpu",
                  ort_config: OrtConfig | None = None) -> OrtLstmHead:
        return cls(make_session(path, device, ort_config or OrtConfig(threads=1)), config)

    def step(self, stream_ids: Sequence[str], features: np.ndarray) -> HeadOutput:
        features = check_step_input(stream_ids, features, self.embed_dim)
        zeros = np.zeros((self.config.layers, self.config.hidden), np.float32)
        pairs = [self._states.get(stream_id, (zeros, zeros)) for stream_id in stream_ids]
        h = np.stack([pair[0] for pair in pairs], axis=1)
        c = np.stack([pair[1] for pair in pairs], axis=1)
        feeds = dict(zip(TEMPORAL_INPUTS, (features, h, c)))
        scores, sentiment, h_out, c_out = self.session.run(None, feeds)
        for row, stream_id in enumerate(stream_ids):
            self._states[stream_id] = (h_out[:, row].copy(), c_out[:, row].copy())
        return HeadOutput(scores.astype(np.float32), sentiment.astype(np.float32))

    def reset(self, stream_id: str) -> None:
        self._states.pop(stream_id, None)

    def cell_state(self, stream_id: str) -> np.ndarray | None:
        state = self._states.get(stream_id)
        return None if state is None else state[1]
