"""Which Conv / Gemm / MatMul work ORT runs with integer kernels, read from the optimised
graph ORT itself writes (``SessionOptions.optimized_model_filepath``)."""

from __future__ import annotations

import os
import tempfile
from collections import Counter

import onnx

from ... import evaluate, graph

INTEGER_OPS = (
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "MatMulInteger",
    "ConvInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
    "QAttention",
    "NhwcQLinearConv",
)
FLOAT_OPS = (
    "Conv",
    "Gemm",
    "MatMul",
    "FusedConv",
    "FusedGemm",
    "FusedMatMul",
    "NhwcFusedConv",
    "NhwcConv",
    "ConvTranspose",
    "FusedMatMulActivation",
    "TransposeMatMul",
)


def optimized_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph ORT runs after all its optimisations (CPU provider)."""
    with tempfile.TemporaryDirectory(prefix="compressor-ort-") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        evaluate.make_session(model, optimized_path=path)
        return onnx.load(path, load_external_data=False)  # the ops are what is read


def count_ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for _, g in graph.iter_graphs(model.graph) for n in g.node)


def integer_kernel_coverage(model: onnx.ModelProto) -> dict:
    """Fraction of Conv/Gemm/MatMul-type ops that ORT executes with integer kernels."""
    ops = count_ops(optimized_graph(model))
    integer = {k: v for k, v in sorted(ops.items()) if k in INTEGER_OPS}
    floating = {k: v for k, v in sorted(ops.items()) if k in FLOAT_OPS}
    n_int, n_float = sum(integer.values()), sum(floating.values())
    return {
        "integer_ops": n_int,
        "float_ops": n_float,
        "fraction": (n_int / (n_int + n_float)) if (n_int + n_float) else None,
        "integer": integer,
        "float": floating,
        "optimized_ops": dict(sorted(ops.items())),
    }
