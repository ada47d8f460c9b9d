"""Exporting the image encoder and the LSTM step to ONNX (dynamic batch, opset >= 17).

The visual graph takes preprocessed ``(N, 3, S, S)`` pixels and returns L2-normalised features, so
every backend that runs it (ONNX Runtime, TensorRT) only has to copy pixels in and features out.

fp16 graphs are written for TensorRT's strongly typed mode, which keeps the types of the graph as
they are: weights and matmuls in fp16, but LayerNorm and the attention softmax computed in fp32
between explicit casts. Letting a builder pick fp16 everywhere (plain ``--fp16``) is known to wreck
CLIP ViT features (NVIDIA/TensorRT#2709), so those casts must be in the graph itself.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from affectstream.engine.lstm import TemporalLSTM
from affectstream.errors import ConfigError, MissingExtraError, ModelError

log = logging.getLogger(__name__)

VISUAL_INPUT = "pixels"
VISUAL_OUTPUT = "features"
TEMPORAL_INPUTS = ("features", "h", "c")
TEMPORAL_OUTPUTS = ("scores", "sentiment", "h_out", "c_out")
MIN_OPSET = 17
EXPORT_PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class ExportConfig:
    opset: int = MIN_OPSET
    precision: str = "fp32"  # fp16: for TensorRT strongly typed engines (LayerNorm/softmax stay fp32)

    def __post_init__(self) -> None:
        if self.opset < MIN_OPSET:
            raise ConfigError(f"ONNX opset must be >= {MIN_OPSET} (LayerNormalization), got {self.opset}")
        if self.precision not in EXPORT_PRECISIONS:
            raise ConfigError(f"export precision {self.precision!r} is not one of {EXPORT_PRECISIONS}")


class NormalizedVisual(nn.Module):
    """open_clip's vision tower followed by the L2 normalisation the encoders apply."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(pixels).float(), dim=-1)


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm whose statistics are computed in fp32 whatever the input type (explicit casts)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class Fp32SoftmaxAttention(nn.Module):
    """Self-attention with the same weights as an ``nn.MultiheadAttention``, softmax in fp32."""

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        if attention.in_proj_weight is None:
            raise ModelError("attention with separate q/k/v projections is not supported by the fp16 export")
        self.in_proj_weight = attention.in_proj_weight
        self.in_proj_bias = attention.in_proj_bias
        self.out_proj = attention.out_proj
        self.heads = attention.num_heads
        self.batch_first = attention.batch_first

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None,
                **_: object) -> tuple[torch.Tensor, None]:
        x = query if self.batch_first else query.transpose(0, 1)
        batch, tokens, width = x.shape
        head_dim = width // self.heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(batch, tokens, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q * head_dim**-0.5) @ k.transpose(-2, -1)
        if attn_mask is not None:
            scores = scores + attn_mask
        probabilities = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        out = self.out_proj((probabilities @ v).transpose(1, 2).reshape(batch, tokens, width))
        return (out if self.batch_first else out.transpose(0, 1)), None


def strongly_typed_fp16(visual: nn.Module) -> nn.Module:
    """A copy of ``visual`` in fp16 with LayerNorm and softmax in fp32 (see the module docstring)."""
    model = copy.deepcopy(visual).half()
    for name, module in list(model.named_modules()):
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if isinstance(module, nn.LayerNorm):
            replacement = Fp32LayerNorm(module.normalized_shape, eps=module.eps,
                                        elementwise_affine=module.elementwise_affine)
            replacement.load_state_dict({k: v.float() for k, v in module.state_dict().items()})
            setattr(owner, leaf, replacement)
        elif isinstance(module, nn.MultiheadAttention):
            setattr(owner, leaf, Fp32SoftmaxAttention(module))
    return model


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise MissingExtraError("onnx", "onnx", "exporting to ONNX") from None


def export_visual(visual: nn.Module, image_size: int, path: Path, config: ExportConfig | None = None) -> Path:
    """Write the vision tower (+ normalisation) to ``path`` with a dynamic batch axis; check it."""
    config = config or ExportConfig()
    _require_onnx()
    # A copy: the caller's model may be on a GPU and in another precision, and stays as it is.
    visual = copy.deepcopy(visual).float().eval().cpu()
    model = NormalizedVisual(strongly_typed_fp16(visual) if config.precision == "fp16" else visual).eval()
    dtype = torch.float16 if config.precision == "fp16" else torch.float32
    example = torch.zeros((2, 3, image_size, image_size), dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    _export(model, (example,), path, [VISUAL_INPUT], [VISUAL_OUTPUT],
            {VISUAL_INPUT: {0: "batch"}, VISUAL_OUTPUT: {0: "batch"}}, config.opset)
    check_onnx(path)
    log.info("exported the image encoder to %s (%s, opset %d)", path, config.precision, config.opset)
    return path


class _LstmStep(nn.Module):
    """``TemporalLSTM.step`` with its state as explicit inputs and outputs (ONNX has no tuples)."""

    def __init__(self, module: TemporalLSTM) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        scores, sentiment, (h_out, c_out) = self.module.step(x, (h, c))
        return scores, sentiment, h_out, c_out


def export_temporal_step(module: TemporalLSTM, path: Path, opset: int = MIN_OPSET) -> Path:
    """Write one LSTM step (features, h, c → scores, sentiment, h', c') with a dynamic batch axis."""
    _require_onnx()
    config = module.config
    if config.bidirectional:
        raise ConfigError("a bidirectional temporal model has no streaming step to export")
    step = _LstmStep(copy.deepcopy(module).float().eval().cpu())
    batch = 2
    state_shape = (config.layers, batch, config.hidden)
    example = (torch.zeros(batch, config.input_dim), torch.zeros(state_shape), torch.zeros(state_shape))
    axes = {"features": {0: "batch"}, "h": {1: "batch"}, "c": {1: "batch"}, "scores": {0: "batch"},
            "sentiment": {0: "batch"}, "h_out": {1: "batch"}, "c_out": {1: "batch"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    _export(step, example, path, list(TEMPORAL_INPUTS), list(TEMPORAL_OUTPUTS), axes, opset)
    check_onnx(path)
    return path


def _export(model: nn.Module, example: tuple[torch.Tensor, ...], path: Path, inputs: list[str],
            outputs: list[str], axes: dict[str, dict[int, str]], opset: int) -> None:
    # Grad mode on: under no_grad, nn.MultiheadAttention takes a fused fast path that has no ONNX
    # export. The TorchScript exporter needs no onnxscript and handles open_clip's towers; torch
    # warns that it is the legacy path on every call.
    with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)


def check_onnx(path: Path) -> None:
    """``onnx.checker`` on the file (by path, so that models over 2 GB work too)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as error:
        raise ModelError(f"the exported graph {path} is not valid ONNX ({error}): report this with the model") from None


