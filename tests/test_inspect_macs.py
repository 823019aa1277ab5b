"""MACs per layer (batch 1) in `compressor inspect`: graph.node_macs against counts by hand."""

from __future__ import annotations

import json

import numpy as np
import onnx
from graphs import make_model, vi
from onnx import TensorProto, helper, numpy_helper

from compressor.cli import main
from compressor.graph import node_macs
from compressor.inspect_model import describe_model

# x [N,1,8,8] -> conv1 3x3 (4 out)            [1,4,6,6]: 4*6*6 outputs x 1*3*3 taps     = 1296
#             -> conv2 3x3 pad 1, group 2      [1,4,6,6]: 144 outputs x (4/2)*3*3 taps   = 2592
#             -> deconv 2x2 stride 2 (2 out)   [1,2,12,12]: 144 inputs x 2*2*2 each      = 1152
#             -> Flatten [1,288] -> fc Gemm 10 [1,10]: 10 outputs x 288                  = 2880
#             -> MatMul by [10,6]              [1,6]:  6 outputs x 10                    =   60
# and a MatMul whose input a Reshape to a shape fed at run time makes unknown: no count.
BY_HAND = {"conv1": 1296, "conv2": 2592, "deconv": 1152, "fc": 2880, "head": 60, "free": None}


def _net() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2),
        helper.make_node("ConvTranspose", ["c2", "w3"], ["d"], name="deconv", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["d"], ["f"], name="flat", axis=1),
        helper.make_node("Gemm", ["f", "w4", "b4"], ["g"], name="fc", transB=1),
        helper.make_node("MatMul", ["g", "w5"], ["y"], name="head"),
        helper.make_node("Reshape", ["g", "shape"], ["r"], name="reshape"),
        helper.make_node("MatMul", ["r", "w6"], ["z"], name="free"),
    ]
    inits = [
        w("w1", 4, 1, 3, 3),
        w("w2", 4, 2, 3, 3),
        w("w3", 4, 2, 2, 2),
        w("w4", 10, 288),
        w("b4", 10),
        w("w5", 10, 6),
        w("w6", 10, 3),
    ]
    inputs = [vi("x", ["N", 1, 8, 8]), vi("shape", [2], TensorProto.INT64)]
    return make_model(nodes, inputs, [vi("y", ["N", 6]), vi("z", ["a", "b"])], inits)


def test_node_macs_match_the_hand_counts():
    rows = {r["node"]: r for r in node_macs(_net())}
    assert {name: r["macs"] for name, r in rows.items()} == BY_HAND
    assert rows["conv2"]["op"] == "Conv" and rows["conv2"]["weight"] == "w2"


def test_inspect_prints_macs_per_layer_and_the_total(tmp_path, capsys):
    path = tmp_path / "net.onnx"
    onnx.save(_net(), path)
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    known = sum(v for v in BY_HAND.values() if v is not None)
    assert f"total MACs (batch 1): {known:,}" in text
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.split()}
    assert lines["conv2"][:4] == ["conv2", "Conv", "w2", "2592"]
    assert lines["free"][3] == "-"  # unknown shape: no count
    assert "1 layer(s) of unknown shape not counted" in text
    assert main(["inspect", str(path), "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["totals"]["macs"] == known and desc["totals"]["macs_unknown"] == 1
    assert desc == json.loads(json.dumps(describe_model(_net(), path.stat().st_size)))


def _dynamic_net() -> onnx.ModelProto:
    """x [N,1,H,W] -> conv 3x3 pad 1 (4 out) -> global average pool -> Flatten -> fc 4 -> 2."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat", axis=1),
        helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc", transB=1),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(2, 4)).astype(np.float32), "w2"),
    ]
    return make_model(nodes, [vi("x", ["N", 1, "H", "W"])], [vi("y", ["N", 2])], inits)


def test_macs_of_a_layer_on_dynamic_height_and_width_are_unknown_without_sample_shapes():
    # Counting H = W = 1 would say 36 for the conv; its count depends on the image size.
    rows = {r["node"]: r["macs"] for r in node_macs(_dynamic_net())}
    assert rows == {"conv": None, "fc": 8}
    # With one sample's shape (the data's), the conv is 4*48*192 outputs x 9 taps.
    rows = {r["node"]: r["macs"] for r in node_macs(_dynamic_net(), {"x": (1, 1, 48, 192)})}
    assert rows == {"conv": 4 * 48 * 192 * 9, "fc": 8}


def test_inspect_says_the_inputs_dynamic_dims_leave_layers_uncounted(tmp_path, capsys):
    path = tmp_path / "dyn.onnx"
    onnx.save(_dynamic_net(), path)
    assert main(["inspect", str(path)]) == 0
    assert "1 layer(s) of unknown shape not counted; the inputs have dynamic dims" in capsys.readouterr().out
