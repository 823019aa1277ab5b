"""A model's large weights handed to ONNX Runtime as arrays instead of serialized with it.

ORT builds a session from the model's skeleton, in which every large main-graph initializer
is a stub naming external data, and takes those initializers as arrays
(``SessionOptions.add_external_initializers``), whose memory it uses in place.  Serializing
the whole model, and ORT parsing that copy into its own, cost a pass over every weight byte and
two transient copies per session; the session is the same (the stubs are constant
initializers to ORT's optimizers, with the same values), so its outputs are too.

ORT (1.32 here) copies the arrays it is given into its own buffers while it builds the session
(then pre-packs the MatMul / Gemm weights from its copy and frees that copy): the arrays are
needed only until the session is built.  Whether this ORT copies is probed once per process
(``ort_copies_arrays``: a one-value session whose array is changed after it is built); an ORT
that reads them in place keeps them alive with the session.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import onnx
from onnx import numpy_helper

from . import graph

# Main-graph initializers of at least this many bytes are handed over as arrays.
ARRAY_MIN_BYTES = 1 << 20
# The external-data location the stubs name: never read (ORT takes the arrays given instead).
STUB_LOCATION = "compressor-session-array"
# The element types of weights (float, or int8 / uint8 quantized), which ORT takes from numpy
# as they are; never the int64 / int32 tensors that shapes are read from (ORT's shape
# inference reads those from the model, not from the arrays).
_ARRAY_TYPES = frozenset(getattr(onnx.TensorProto, name) for name in ("FLOAT", "FLOAT16", "DOUBLE", "INT8", "UINT8"))


@dataclass
class SessionParts:
    """What a session is built from: the skeleton (serialized for ORT) and the arrays by name."""

    skeleton: onnx.ModelProto
    arrays: dict[str, np.ndarray]


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes of a tensor's values, from its type and dims (0 for a type not handed over)."""
    if tensor.data_type not in _ARRAY_TYPES:
        return 0
    return int(np.prod(tensor.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def split_large_initializers(model: onnx.ModelProto, min_bytes: int | None = None) -> SessionParts | None:
    """The model as a skeleton plus its main-graph initializers of at least `min_bytes` (None:
    ARRAY_MIN_BYTES, read when called; held in the model, not in external files) as arrays;
    None when it has none."""
    min_bytes = ARRAY_MIN_BYTES if min_bytes is None else min_bytes
    picked = {
        i: ref
        for i, ref in enumerate(graph.iter_tensors(model))
        if ref.kind == "initializer"
        and ref.graph_path == ""
        and ref.proto.data_location != onnx.TensorProto.EXTERNAL
        and tensor_bytes(ref.proto) >= min_bytes
    }
    if not picked:
        return None
    skeleton = graph.copy_without_data(model, set(picked))
    for i, ref in enumerate(graph.iter_tensors(skeleton)):
        if i in picked:
            ref.proto.data_location = onnx.TensorProto.EXTERNAL
            entry = ref.proto.external_data.add()
            entry.key, entry.value = "location", STUB_LOCATION
    return SessionParts(skeleton, {ref.name: numpy_helper.to_array(ref.proto) for ref in picked.values()})


@cache
def ort_copies_arrays() -> bool:
    """Whether ORT copies the arrays given with ``add_external_initializers`` while it builds a
    session (then they may be freed once it is built): a session of ``y = x + w`` with w given
    as a one-value array, run after w was changed; once per process."""
    import onnxruntime as ort  # loaded by the sessions that ask, as evaluate does

    w = np.zeros(1, np.float32)
    stub = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[1])
    stub.data_location = onnx.TensorProto.EXTERNAL
    entry = stub.external_data.add()
    entry.key, entry.value = "location", STUB_LOCATION
    value = onnx.helper.make_tensor_value_info
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Add", ["x", "w"], ["y"])],
            "probe",
            [value("x", onnx.TensorProto.FLOAT, [1])],
            [value("y", onnx.TensorProto.FLOAT, [1])],
            [stub],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_external_initializers(["w"], [ort.OrtValue.ortvalue_from_numpy(w)])
    session = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    w[0] = 1.0
    (y,) = session.run(None, {"x": np.zeros(1, np.float32)})
    return bool(y[0] == 0.0)
