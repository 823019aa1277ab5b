"""Models with external data of any size, written tensor by tensor (never whole in memory).

``write_external_model(folder, layers, width)``: a chain of ``layers`` MatMuls of
``width x width`` float32 weights (``4 * width**2`` bytes each), the weights in
``model.onnx.data``: each row block is drawn, snapped to a 256-value codebook (like a
pruned and shared model), and written straight to the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROWS_PER_BLOCK = 512


def write_external_model(folder: str | Path, layers: int, width: int, seed: int = 0, name: str = "model.onnx") -> Path:
    folder = Path(folder)
    data_name = name + ".data"
    rng = np.random.default_rng(seed)
    codebook = (rng.laplace(0, 1 / np.sqrt(width), 256)).astype(np.float32)
    codebook[0] = 0.0
    nodes, inits = [], []
    offset = 0
    with open(folder / data_name, "wb") as f:
        for layer in range(layers):
            for start in range(0, width, ROWS_PER_BLOCK):
                rows = min(ROWS_PER_BLOCK, width - start)
                index = rng.integers(0, 256, size=(rows, width), dtype=np.uint8)
                index[rng.random((rows, width)) < 0.5] = 0  # half the weights pruned
                f.write(codebook[index].tobytes())
            length = 4 * width * width
            t = TensorProto(name=f"w{layer}", data_type=TensorProto.FLOAT, dims=[width, width])
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                e = t.external_data.add()
                e.key, e.value = k, v
            offset += length
            inits.append(t)
            nodes.append(helper.make_node("MatMul", [f"h{layer}", f"w{layer}"], [f"h{layer + 1}"], name=f"mm{layer}"))
    # A small inline bias and a Relu at the end: not every tensor is external.
    bias = rng.standard_normal(width).astype(np.float32)
    inits.append(onnx.numpy_helper.from_array(bias, "bias"))
    nodes.append(helper.make_node("Add", [f"h{layers}", "bias"], ["sum"], name="add"))
    nodes.append(helper.make_node("Relu", ["sum"], ["y"], name="relu"))
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests/big_models.py")
    model.ir_version = 8
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path
