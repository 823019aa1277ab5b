"""What `compressor inspect` reports about an ONNX model: weights, totals, ops, MACs."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx

from . import graph
from .quant_math import sortable


def _distinct(values: np.ndarray) -> int:
    """Distinct values as np.unique counts them (NaNs as one), from one sorted copy."""
    if not values.size:
        return 0
    if values.dtype.kind not in "fiub":
        return int(np.unique(sortable(values)).size)
    ordered = np.sort(sortable(values), axis=None)  # NaNs sort last
    real = ordered.size - (int(np.count_nonzero(np.isnan(ordered))) if ordered.dtype.kind == "f" else 0)
    distinct = 1 + int(np.count_nonzero(ordered[1:real] != ordered[: real - 1])) if real else 0
    return distinct + (real < ordered.size)


def _array(w: graph.Weight, base_dir: Path | None) -> np.ndarray:
    """The weight's values; an external tensor's read from its file (one at a time)."""
    if base_dir is None or w.proto.data_location != onnx.TensorProto.EXTERNAL:
        return w.array()
    loaded = onnx.TensorProto()
    loaded.CopyFrom(w.proto)
    graph.inline_data(loaded, graph.read_external_data(w.proto, base_dir))
    return onnx.numpy_helper.to_array(loaded)


def describe_model(model: onnx.ModelProto, file_bytes: int | None = None, base_dir: Path | None = None) -> dict:
    """What inspect shows.  A model loaded with its external data left in its files
    (``base_dir``: their folder) is described reading one tensor at a time."""
    weights = graph.weights(model)
    rows = []
    for w in weights:
        arr = _array(w, base_dir)
        rows.append(
            {
                "name": w.name,
                "role": w.role,
                "ops": w.ops,
                "kind": w.ref.kind,
                "graph": w.ref.graph_path or "main",
                "shape": list(w.shape),
                "dtype": str(arr.dtype),
                "params": int(arr.size),
                "bytes": int(arr.nbytes),
                "sparsity": float(np.count_nonzero(arr == 0) / arr.size) if arr.size else 0.0,
                "distinct_values": _distinct(arr),
                "consumers": len(w.consumers),
            }
        )
        del arr
    bytes_by_dtype: dict[str, int] = collections.Counter()
    for ref in graph.iter_tensors(model):
        dt = (
            onnx.helper.tensor_dtype_to_np_dtype(ref.proto.data_type)
            if ref.proto.data_type != onnx.TensorProto.STRING
            else np.dtype(object)
        )
        n = int(np.prod(ref.proto.dims, dtype=np.int64)) if ref.proto.dims else 1
        bytes_by_dtype[str(dt)] += n * (dt.itemsize if dt != np.dtype(object) else 0)
    ops: dict[str, int] = collections.Counter()
    for _, g in graph.iter_graphs(model.graph):
        for node in g.node:
            ops[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"] += 1
    macs = graph.node_macs(model)

    def io(vis):
        out = []
        for vi in vis:
            tt = vi.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
            dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else "?"
            out.append({"name": vi.name, "dtype": dtype, "shape": dims})
        return out

    total_macs = sum(m["macs"] for m in macs if m["macs"] is not None)
    return {
        "opset": graph.opset_version(model),
        "ir_version": int(model.ir_version),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "file_bytes": file_bytes,
        "inputs": io(graph.graph_inputs(model)),
        "outputs": io(model.graph.output),
        "weights": rows,
        "totals": {
            "weights": len(rows),
            "float_params": int(sum(r["params"] for r in rows)),
            "float_bytes": int(sum(r["bytes"] for r in rows)),
            "zeros": int(sum(round(r["sparsity"] * r["params"]) for r in rows)),
            "bytes_by_dtype": dict(sorted(bytes_by_dtype.items())),
            "macs": int(total_macs),
            # Layers whose shapes inference could not tell (input-dependent reshapes, custom ops):
            # not in the total.
            "macs_unknown": sum(m["macs"] is None for m in macs),
            "dynamic_input_dims": graph.dynamic_input_dims(model),
        },
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "macs": macs,
    }
