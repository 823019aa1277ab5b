"""A model whose weights hold NaN (its outputs NaN where the model computes them): a run with
data keeps those outputs as they are and verifies its container (NaN == NaN bit for bit), and
quantize leaves a NaN tensor float instead of coding NaN as an int8 level."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from compressor.cli import main
from compressor.passes.quantize import quantize


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    good = rng.standard_normal((16, 16)).astype(np.float32)
    bad = rng.standard_normal((16, 4)).astype(np.float32)
    bad[0, 0] = np.nan  # one column of the output turns NaN
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("MatMul", ["x", "A"], ["h"]), helper.make_node("MatMul", ["h", "B"], ["y"])]
    inits = [numpy_helper.from_array(good, "A"), numpy_helper.from_array(bad, "B")]
    return helper.make_model(
        helper.make_graph(nodes, "nan", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )


def test_quantize_leaves_a_nan_tensor_float():
    quantized, _ = quantize(_model())
    names = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    assert names["B"].dtype == np.float32 and np.isnan(names["B"][0, 0])


def test_a_run_with_data_keeps_nan_outputs_and_verifies(tmp_path):
    model_path, data_path = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(_model(), model_path)
    x = np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32)
    np.savez(data_path, x=x)
    box, out = tmp_path / "m.cmpz", tmp_path / "u.onnx"
    assert main(["run", str(model_path), "-o", str(box), "--calib", str(data_path), "-q"]) == 0
    assert main(["unpack", str(box), "-o", str(out)]) == 0
    want = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(want).any() and np.isfinite(want[:, 1:]).all()
