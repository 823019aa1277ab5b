"""Objective size: the mixed-precision rungs quantize only layers whose int8 form packs smaller
(stages/mixed_bytes.py)."""

from __future__ import annotations

import re

import pytest
from onnx import TensorProto, helper

from compressor.errors import CompressorError
from compressor.stages.mixed_bytes import (
    ShrinkingLayers,
    consumer_outputs,
    exclude_pattern,
    growing_weights,
    int8_bytes,
    tensor_bytes,
)


def pack_stats(sizes: dict) -> dict:
    return {"tensors": [{"name": n, "bytes_after": b} for n, b in sizes.items()]}


def two_matmuls():
    nodes = [
        helper.make_node("MatMul", ["x", "a.w"], ["h"], name="fa"),
        helper.make_node("MatMul", ["h", "b.w"], ["y"], name="fb"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    return helper.make_model(g)


def test_int8_bytes_sums_a_weights_int8_tensors_only():
    q = {"a.w_quantized": 100, "a.w_scale": 8, "a.w_T_zero_point": 2, "a.w0_quantized": 999, "a.b_quantized": 5}
    assert int8_bytes("a.w", q) == 110
    assert int8_bytes("b.w", q) is None


def test_tensors_in_the_graph_section_are_undecided():
    stats = {"tensors": [{"name": "a", "bytes_after": 10}, {"name": "small", "bytes_after": None}]}
    assert tensor_bytes(stats) == {"a": 10}


def test_growing_weights_compares_int8_with_the_input_form():
    floats = {"a.w": 100, "b.w": 100}
    q = {"a.w_quantized": 150, "a.w_scale": 4, "b.w_quantized": 60, "b.w_scale": 4}
    assert growing_weights(floats, q, ["a.w", "b.w", "c.w"]) == {"a.w"}


def test_exclude_pattern_matches_exactly_and_keeps_the_users():
    pat = re.compile(exclude_pattern("^head", ["h", "y.1"]))
    assert pat.search("h") and pat.search("y.1") and pat.search("head_x")
    assert not pat.search("hh") and not pat.search("yx1")
    assert exclude_pattern(None, []) is None and exclude_pattern("u", []) == "u"


def test_shrinking_layers_excludes_the_growing_and_refuses_when_all_grow():
    model = two_matmuls()
    assert consumer_outputs(model, {"b.w"}) == ["fb"]
    layers = ShrinkingLayers(model, pack_stats({"a.w": 100, "b.w": 100}), None)
    assert layers.exclude() is None  # nothing learnt yet: as before
    layers.note(
        {"weights": [{"name": "a.w"}, {"name": "b.w"}]}, pack_stats({"a.w_quantized": 50, "b.w_quantized": 200})
    )
    assert re.compile(layers.exclude()).search("fb") and not re.compile(layers.exclude()).search("fa")
    assert "1 of 2 weights" in layers.summary()
    every = ShrinkingLayers(model, pack_stats({"a.w": 10, "b.w": 10}), None)
    every.note({"weights": [{"name": "a.w"}, {"name": "b.w"}]}, pack_stats({"a.w_quantized": 50, "b.w_quantized": 50}))
    with pytest.raises(CompressorError, match="nothing to quantize smaller"):
        every.exclude()
