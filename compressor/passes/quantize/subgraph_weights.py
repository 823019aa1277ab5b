"""The weights quantize leaves float because a subgraph reads them (an If/Loop body: the
planner only rewrites the main graph), counted so a stage can say what it did not touch."""

from __future__ import annotations

import onnx

from ... import graph
from .names import read_in_subgraphs


def weights_left_in_subgraphs(model: onnx.ModelProto) -> tuple[int, int]:
    """(tensors, bytes) of the float matrix weights that live in or are read by a subgraph."""
    inner = read_in_subgraphs(model.graph)
    count = size = 0
    for w in graph.weights(model):
        if not w.is_matrix or w.proto.data_type not in graph.FLOAT_TYPES:
            continue
        if w.ref.graph_path != "" or w.name in inner or any(c.graph_path != "" for c in w.consumers):
            count += 1
            size += w.size * onnx.helper.tensor_dtype_to_np_dtype(w.proto.data_type).itemsize
    return count, size
