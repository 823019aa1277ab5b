"""A model's large weights handed to ONNX Runtime as arrays instead of serialized with it.

ORT builds a session from the model's skeleton, in which every large main-graph initializer
is a stub naming external data, and takes those initializers as arrays
(``SessionOptions.add_external_initializers``), whose memory it uses in place.  Serializing
the whole model, and ORT parsing that copy into its own, cost a pass over every weight byte and
two transient copies per session; the session is the same (the stubs are constant
initializers to ORT's optimizers, with the same values), so its outputs are too.
"""

from __future__ import annotations

from dataclasses import dataclass

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
