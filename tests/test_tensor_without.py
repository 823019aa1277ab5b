"""graph.tensor_without: a tensor's other fields, copied without reading its data."""

import numpy as np
import onnx
from onnx import numpy_helper

from compressor import graph


def test_tensor_without_copies_every_other_field():
    t = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    t.doc_string = "doc"
    t.metadata_props.add(key="k", value="v")
    stub = graph.tensor_without(t, ("raw_data",))
    expected = onnx.TensorProto()
    expected.CopyFrom(t)
    expected.ClearField("raw_data")
    assert stub == expected
    assert graph.model_bytes(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [t]))) > 0
