"""Weights that only an If branch reads stay float in quantize (the planner rewrites the main
graph); the run's quantize row says so instead of reporting "int8 weights only" as if done."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compressor.cli import main
from compressor.passes.quantize.subgraph_weights import weights_left_in_subgraphs


def _if_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])

    def branch(name: str, weight: str) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["N", 32])
        return helper.make_graph([helper.make_node("MatMul", ["h", weight], [f"{name}_y"])], name, [], [out])

    inits = [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), n) for n in ("A", "T", "E")]
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["h"]),
        helper.make_node("If", ["c"], ["y"], then_branch=branch("then", "T"), else_branch=branch("else", "E")),
    ]
    graph = helper.make_graph(nodes, "if_weights", [x, c], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_weights_read_in_branches_are_counted():
    assert weights_left_in_subgraphs(_if_model()) == (2, 2 * 32 * 32 * 4)


def test_the_quantize_row_says_what_stayed_float(tmp_path):
    path, box, report = tmp_path / "m.onnx", tmp_path / "m.cmpz", tmp_path / "r.json"
    onnx.save(_if_model(), path)
    assert main(["run", str(path), "-o", str(box), "--report", str(report), "-q"]) == 0
    row = next(r for r in json.loads(report.read_text())["stages"] if r["stage"] == "quantize")
    assert "2 weight tensors read inside subgraphs (If/Loop bodies) left float" in row["note"]
