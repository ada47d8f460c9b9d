"""ONNX export and the ONNX Runtime backend: checker, parity with torch fp32, int8, the LSTM step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from affectstream.engine.encoder import TorchEncoder
from affectstream.engine.heads import LstmHead
from affectstream.engine.lstm import TemporalConfig, TemporalLSTM
from affectstream.engine.models import ModelSpec, build_clip
from affectstream.engine.onnx_export import ExportConfig, export_temporal_step, export_visual
from affectstream.engine.parity import FLOAT_BOUND, INT8_BOUND, compare, parity_frames, require
from affectstream.errors import ConfigError, ModelError

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from affectstream.engine.ort_backend import OrtEncoder, OrtLstmHead, quantize_int8  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> tuple[ModelSpec, TorchEncoder]:
    spec = ModelSpec.from_preset("tiny-random")
    return spec, TorchEncoder.from_model(build_clip(spec), spec, "cpu", "fp32")


@pytest.fixture(scope="module")
def tiny_onnx(tiny: tuple[ModelSpec, TorchEncoder], tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec, reference = tiny
    return export_visual(reference.visual, spec.image_size, tmp_path_factory.mktemp("onnx") / "visual.onnx")


def test_export_is_valid_onnx_with_dynamic_batch(tiny_onnx: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic, not fixed


def test_onnxruntime_matches_torch_on_the_same_frames(tiny: tuple[ModelSpec, TorchEncoder], tiny_onnx: Path) -> None:
    spec, reference = tiny
    encoder = OrtEncoder.from_file(tiny_onnx, spec)
    frames = parity_frames(9, seed=3)
    result = require(compare("onnxruntime", reference.encode(frames), encoder.encode(frames), FLOAT_BOUND))
    assert result.min_cosine > 0.9999
    # Batch sizes other than the export's example batch, and one frame alone, give the same rows.
    alone = encoder.encode(frames[4:5])
    np.testing.assert_allclose(alone[0], encoder.encode(frames)[4], atol=1e-5)
    assert encoder.encode([]).shape == (0, spec.embed_dim)
    assert set(encoder.last_stage_ms) == {"preprocess", "encode"}


def test_int8_static_quantisation_meets_its_own_bound(tiny: tuple[ModelSpec, TorchEncoder], tiny_onnx: Path,
                                                      tmp_path: Path) -> None:
    spec, reference = tiny
    with torch.inference_mode():
        calibration = [reference.preprocessor(parity_frames(8, seed=seed)).numpy() for seed in (20, 21)]
    path = quantize_int8(tiny_onnx, tmp_path / "visual.int8.onnx", calibration)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    frames = parity_frames(12, seed=5)  # not the calibration frames
    result = compare("int8", reference.encode(frames), OrtEncoder.from_file(path, spec, precision="int8")
                     .encode(frames), INT8_BOUND)
    assert result.passed, result
    assert result.mean_cosine < 1.0 - 1e-7  # it really is quantised, not the fp32 graph


def test_parity_check_rejects_another_model(tiny: tuple[ModelSpec, TorchEncoder]) -> None:
    _, reference = tiny
    frames = parity_frames(6, seed=1)
    features = reference.encode(frames)
    shuffled = features[::-1].copy()
    with pytest.raises(ModelError, match="does not match torch fp32"):
        require(compare("shuffled", features, shuffled))


def test_fp16_export_keeps_layernorm_and_softmax_in_fp32(tiny: tuple[ModelSpec, TorchEncoder], tmp_path: Path) -> None:
    spec, reference = tiny
    path = export_visual(reference.visual, spec.image_size, tmp_path / "visual.fp16.onnx",
                         ExportConfig(precision="fp16"))
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {value.name: value.type.tensor_type.elem_type
             for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    guarded = [node for node in model.graph.node if node.op_type in ("LayerNormalization", "Softmax")]
    assert guarded
    for node in guarded:
        assert types[node.input[0]] == onnx.TensorProto.FLOAT, node.name
    matmuls = [node for node in model.graph.node if node.op_type == "MatMul"]
    assert any(types.get(node.input[0]) == onnx.TensorProto.FLOAT16 for node in matmuls)


def test_ort_lstm_head_equals_torch_lstm_head_step_by_step(tmp_path: Path) -> None:
    torch.manual_seed(3)
    module = TemporalLSTM(TemporalConfig(input_dim=16, hidden=8, layers=2)).eval()
    path = export_temporal_step(module, tmp_path / "temporal.onnx")
    ours, reference = OrtLstmHead.from_file(path, module.config), LstmHead(module)
    rng = np.random.default_rng(0)
    schedule = [["a"], ["a", "b"], ["b", "c", "a"], ["c"], ["a", "c"]]
    for step, ids in enumerate(schedule):
        if step == 3:
            ours.reset("a")
            reference.reset("a")
        features = rng.normal(size=(len(ids), 16)).astype(np.float32) * 3
        want, got = reference.step(ids, features), ours.step(ids, features)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
        np.testing.assert_allclose(got.sentiment, want.sentiment, atol=1e-5)
    cell_ours, cell_ref = ours.cell_state("c"), reference.cell_state("c")
    assert cell_ours is not None and cell_ref is not None
    np.testing.assert_allclose(cell_ours, cell_ref, atol=1e-5)


def test_export_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="opset"):
        ExportConfig(opset=13)
    with pytest.raises(ConfigError, match="precision"):
        ExportConfig(precision="int4")


@pytest.mark.slow
def test_onnxruntime_matches_torch_on_vit_b32(tmp_path: Path) -> None:
    spec = ModelSpec.from_preset("vit-b32-random")
    reference = TorchEncoder.from_model(build_clip(spec), spec, "cpu", "fp32")
    path = export_visual(reference.visual, spec.image_size, tmp_path / "visual.onnx")
    frames = parity_frames(6, seed=9)
    result = compare("onnxruntime ViT-B-32", reference.encode(frames),
                     OrtEncoder.from_file(path, spec).encode(frames), FLOAT_BOUND)
    assert result.passed, result
