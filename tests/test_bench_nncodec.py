"""The pure helpers of benchmarks/bench_nncodec.py and the torchvision stub of nncodec_child.py
(NNCodec itself runs only in its own venv, from `make bench-nncodec`)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import zstandard
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_nncodec  # noqa: E402
import nncodec_child  # noqa: E402


def _model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    b = numpy_helper.from_array(np.ones(3, dtype=np.float32), "b")
    shape = numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["a"]),
        helper.make_node("Reshape", ["a", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [w, b, shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_float_initializers_are_the_coded_tensors():
    assert [t.name for t in bench_nncodec.float_initializers(_model())] == ["w", "b"]


def test_graph_without_drops_only_the_coded_tensors():
    model = _model()
    packed = bench_nncodec.graph_without(model, {"w", "b"})
    rest = onnx.ModelProto.FromString(zstandard.ZstdDecompressor().decompress(packed))
    assert [t.name for t in rest.graph.initializer] == ["shape"]
    assert len(model.graph.initializer) == 3  # the model itself is left alone


def test_with_weights_writes_the_decoded_arrays_back():
    new = np.full((2, 3), 0.5, dtype=np.float32)
    model = onnx.ModelProto.FromString(bench_nncodec.with_weights(_model(), {"w": new}))
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(arrays["w"], new)
    np.testing.assert_array_equal(arrays["b"], np.ones(3, dtype=np.float32))


def test_best_is_the_smallest_point_within_the_limit():
    points = [
        {"use_dq": True, "opt_qp": False, "qp": -16, "drop": 0.2, "total_bytes": 300},
        {"use_dq": True, "opt_qp": False, "qp": -14, "drop": 0.9, "total_bytes": 200},
        {"use_dq": False, "opt_qp": False, "qp": -12, "drop": 4.0, "total_bytes": 100},
        {"use_dq": False, "opt_qp": False, "qp": -10, "error": "boom"},
    ]
    assert bench_nncodec._best(points, 1.0)["total_bytes"] == 200
    assert bench_nncodec._best(points, 0.5)["total_bytes"] == 300
    assert bench_nncodec._best(points, 1.0, {"use_dq": False, "opt_qp": False}) is None


def test_torchvision_stub_lets_module_level_uses_import(monkeypatch):
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    nncodec_child.stub_torchvision()
    try:
        from torchvision import datasets, transforms

        class Folder(datasets.ImageFolder):  # what NNCodec's dataset helpers do at import
            pass

        pipeline = transforms.Compose([transforms.Resize(256), transforms.ToTensor()])
        assert Folder("root") is not None and pipeline(None) is pipeline
        assert not hasattr(transforms, "__file__")
    finally:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
