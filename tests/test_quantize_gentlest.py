"""The quantize stage under objective "size": a static rung that packs no smaller than int8
weights only (the gentlest mode) is dominated and not measured."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from stage_contexts import measured_context, self_labeled

from compressor import evaluate, graph
from compressor.container import pack_model
from compressor.data import Dataset
from compressor.errors import CompressorError
from compressor.options import QuantizeOptions
from compressor.passes.quantize import QuantizeSettings, quantize
from compressor.report import StageRow
from compressor.stages import quantize as quantize_stage
from compressor.stages.ladder import StageContext


def conv_relu_fc(seed: int = 0, c: int = 8) -> onnx.ModelProto:
    """Conv(c channels, bias) -> Relu -> Flatten -> Gemm: static activations add Q/DQ pairs the
    weights do not need."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (c, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, c).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(0, 0.05, (c * 6 * 6, 5)).astype(np.float32), "fc"),
    ]
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Flatten", ["r"], ["f"]),
            helper.make_node("Gemm", ["f", "fc"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_build_packing_no_smaller_than_weight_only_fails_unmeasured():
    model = conv_relu_fc()
    weight_only = graph.copy_model(model)
    del weight_only.graph.initializer[2:]  # any model smaller in ONNX bytes than the input
    sizes = {id(weight_only): 90}

    def judge(m):
        raise AssertionError("measured")

    row = StageRow("share", True, graph.model_bytes(model), {})
    ctx = StageContext(model, judge, None, None, None, (row,), lambda m: None, lambda m: sizes.get(id(m), 100))
    gentlest = quantize_stage.WeightOnlyPacked(lambda: (weight_only, {"mode": "none"}), ctx)
    assert gentlest.size == 90 and gentlest.built()[0] is weight_only
    other = graph.copy_model(weight_only)
    build = gentlest.dominates(lambda: (other, {}))
    with pytest.raises(CompressorError, match=r"packs to 100 bytes, not smaller than int8 weights only's 90"):
        build()
    sizes[id(other)] = 80
    assert build()[0] is other


def test_the_stage_keeps_weight_only_when_static_packs_larger():
    model = conv_relu_fc()
    x = np.random.default_rng(1).normal(size=(64, 3, 8, 8)).astype(np.float32)
    ctx = measured_context(model, self_labeled(model, x), "accuracy", 5.0, lambda m: len(pack_model(m)[0]))
    result = quantize_stage.run(QuantizeOptions(), ctx)
    static = next(a for a in result.row.attempts if a["option"] == quantize_stage.LABELS["static"])
    assert "not smaller than int8 weights only" in static["error"]  # built and packed, never measured
    assert result.row.applied and result.row.options["setting"] == quantize_stage.LABELS["none"]
    assert not [n for n in result.model.graph.node if n.op_type == "QuantizeLinear"]


def dequantized_inputs(model: onnx.ModelProto) -> set[str]:
    return {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}


def test_a_conv_bias_is_int8_in_weight_only_mode_with_small_constants():
    model = conv_relu_fc(c=64)  # a bias of 64 values: worth its DequantizeLinear
    with_small, _ = quantize(model, None, QuantizeSettings(activations="none", small_constants=True))
    assert "b_quantized" in dequantized_inputs(with_small)
    without, _ = quantize(model, None, QuantizeSettings(activations="none"))
    assert "b_quantized" not in dequantized_inputs(without)
    assert graph.model_bytes(with_small) < graph.model_bytes(without)
    x = np.random.default_rng(1).normal(size=(8, 3, 8, 8)).astype(np.float32)
    outputs = [evaluate.run_model(m, Dataset({"x": x}, None))[0] for m in (with_small, without)]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=0.05)


def test_the_stage_tries_weight_only_with_int8_biases_before_float_ones():
    model = conv_relu_fc(c=64)
    x = np.random.default_rng(1).normal(size=(64, 3, 8, 8)).astype(np.float32)
    ctx = measured_context(model, self_labeled(model, x), "accuracy", 5.0, lambda m: len(pack_model(m)[0]))
    result = quantize_stage.run(QuantizeOptions(), ctx)
    tried = [a["option"] for a in result.row.attempts]
    small = f"{quantize_stage.LABELS['none']}, small constants int8"
    assert tried[0] == quantize_stage.LABELS["static"] and tried[-1] == small  # fits: the float one not tried
    assert result.row.options["setting"] == small and "b_quantized" in dequantized_inputs(result.model)
