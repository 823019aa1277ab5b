"""share's copy of the model: the weights it sets come without their data, the others as they were."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compressor import graph
from compressor.passes.share import share


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 32)).astype(np.float32)
    w2 = rng.normal(size=(32, 8)).astype(np.float32)
    w2[3, 4] = np.nan  # left unshared: its data must come back
    w3 = rng.normal(size=(8, 8)).astype(np.float32)  # fewer than min_params: not selected
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["g"]),
        helper.make_node("MatMul", ["g", "w3"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_share_sets_selected_weights_and_keeps_the_rest():
    model = _model()
    before = model.SerializeToString()
    out, stats = share(model, bits_fc=2, min_params=100)
    assert model.SerializeToString() == before  # the input is not changed
    arrays = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.unique(arrays["w1"]).size <= 4  # shared
    np.testing.assert_array_equal(arrays["w2"], original["w2"])  # non-finite: as it was, data back
    np.testing.assert_array_equal(arrays["w3"], original["w3"])  # too small: never stripped
    assert {s["name"] for s in stats["skipped"]} >= {"w2", "w3"}
    assert [t.name for t in out.graph.initializer] == ["w1", "w2", "w3"]
    assert graph.model_bytes(out) > 0
