"""A graph out of topological order (a node placed before an If whose branch reads its output,
as ONNX Runtime's dynamic quantizer writes them) loads, is checked and runs; sorted graphs stay as
they were."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from compressor.errors import CompressorError
from compressor.graph import load_model
from compressor.node_order import sort_nodes


def _branch(name: str, reads: str) -> onnx.GraphProto:
    out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [2])
    return helper.make_graph([helper.make_node("Identity", [reads], [f"{name}_out"])], name, [], [out])


def _unsorted_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [
        # The If comes first, but its branches read "doubled", made by the node after it.
        helper.make_node("If", ["c"], ["y"], then_branch=_branch("then", "doubled"), else_branch=_branch("else", "x")),
        helper.make_node("Add", ["x", "x"], ["doubled"]),
    ]
    graph = helper.make_graph(nodes, "unsorted", [x, c], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def test_the_checker_refuses_the_unsorted_graph_as_written():
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(_unsorted_model())


def test_an_unsorted_graph_loads_sorted_and_computes_the_same(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_unsorted_model(), path)
    model = load_model(path)
    assert [n.op_type for n in model.graph.node] == ["Add", "If"]
    x = np.array([1.0, 2.0], np.float32)
    for cond, expected in ((True, 2 * x), (False, x)):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {"x": x, "c": np.array(cond)})
        np.testing.assert_array_equal(y, expected)


def test_a_sorted_graph_is_left_as_it_was():
    model = _unsorted_model()
    assert sort_nodes(model.graph)
    before = model.SerializeToString()
    assert not sort_nodes(model.graph)
    assert model.SerializeToString() == before


def test_a_cycle_is_left_for_the_checker(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])]
    model = helper.make_model(helper.make_graph(nodes, "cycle", [x], [y]))
    path = tmp_path / "cycle.onnx"
    onnx.save(model, path)
    with pytest.raises(CompressorError, match="invalid ONNX model"):
        load_model(path)
