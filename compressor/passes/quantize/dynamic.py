"""Dynamic quantization: int8 weights, activation ranges computed at run time.

For a MatMul with a constant 2-D weight, or a Gemm (transA = 0):

    x -> DynamicQuantizeLinear -> (x_q uint8, x_scale, x_zp)     (one per x)
    MatMulInteger(x_q, W_q int8 [K, N], x_zp, w_zp) -> Cast(float) -> Mul(x_scale * w_scale)
    [-> Add(bias)]                                                   (Gemm's C, times beta)

which ORT fuses into DynamicQuantizeMatMul / MatMulIntegerToFloat.  Gemm's alpha goes
into the weight scale; transB = 1 weights are stored transposed ([K, N]).
Everything else planned (Conv, recurrent ops, ...) gets weight-only quantization.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .names import NameScope
from .registry import Plan
from .weights import WeightStore


def apply(model: onnx.ModelProto, plans: list[Plan], store: WeightStore, scope: NameScope) -> dict[str, str]:
    """Rewrite dynamic-capable plans; weight-only for the others. Returns node name -> status."""
    by_node = {id(p.node): p for p in plans}
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    dql: dict[str, tuple[str, str, str]] = {}
    status: dict[str, str] = {}
    for node in model.graph.node:
        plan = by_node.get(id(node))
        if plan is None:
            nodes.append(node)
            continue
        if not plan.dynamic:
            for use in plan.weights:
                node.input[use.index] = store.dq(use.weight, use.axis, integer=False)
            nodes.append(node)
            status[plan.name] = "weight_only"
            continue
        use = plan.weights[0]
        w = use.weight
        is_gemm = node.op_type == "Gemm"
        trans_b = is_gemm and any(a.name == "transB" and a.i for a in node.attribute)
        axis = None if use.axis is None else 1  # [K, N]: per output column
        names = store.tensors(w, axis, transpose=trans_b) if trans_b else store.tensors(w, axis)
        x = node.input[0]
        if x not in dql:
            dql[x] = (scope.new(f"{x}_quantized"), scope.new(f"{x}_scale"), scope.new(f"{x}_zero_point"))
            nodes.append(
                helper.make_node(
                    "DynamicQuantizeLinear", [x], list(dql[x]), name=scope.new(f"{x}_DynamicQuantizeLinear")
                )
            )
        xq, xs, xz = dql[x]
        scale_name = names["scale"]
        alpha = float(next((a.f for a in node.attribute if a.name == "alpha"), 1.0)) if is_gemm else 1.0
        if alpha != 1.0:
            scaled = numpy_helper.to_array(_find(store, names["scale"])) * np.float32(alpha)
            scale_name = scope.new(f"{w.name}_scale_alpha")
            inits.append(numpy_helper.from_array(scaled.astype(np.float32), scale_name))
        out = node.output[0]
        base = plan.name
        prod_scale = scope.new(f"{base}_scales_mul")
        mm = scope.new(f"{base}_MatMulInteger_output")
        cast = scope.new(f"{base}_cast_output")
        has_bias = is_gemm and len(node.input) > 2 and bool(node.input[2])
        mul_out = scope.new(f"{base}_MatMul_output") if has_bias else out
        nodes += [
            helper.make_node("Mul", [xs, scale_name], [prod_scale], name=scope.new(f"{base}_scales_Mul")),
            helper.make_node(
                "MatMulInteger",
                [xq, names["q"], xz, names["zero_point"]],
                [mm],
                name=scope.new(f"{base}_MatMulInteger"),
            ),
            helper.make_node("Cast", [mm], [cast], to=TensorProto.FLOAT, name=scope.new(f"{base}_Cast")),
            helper.make_node("Mul", [cast, prod_scale], [mul_out], name=scope.new(f"{base}_Mul")),
        ]
        if has_bias:
            bias = node.input[2]
            beta = float(next((a.f for a in node.attribute if a.name == "beta"), 1.0))
            if beta != 1.0:
                c = plan.bias_weight if plan.bias_weight is not None else None
                if c is None:
                    b_scaled = scope.new(f"{base}_beta")
                    inits.append(numpy_helper.from_array(np.asarray(beta, dtype=np.float32), b_scaled))
                    bias_mul = scope.new(f"{bias}_times_beta")
                    nodes.append(
                        helper.make_node("Mul", [bias, b_scaled], [bias_mul], name=scope.new(f"{base}_beta_Mul"))
                    )
                    bias = bias_mul
                else:
                    bias = scope.new(f"{bias}_times_beta")
                    inits.append(numpy_helper.from_array((c.array() * np.float32(beta)).astype(np.float32), bias))
            nodes.append(helper.make_node("Add", [mul_out, bias], [out], name=scope.new(f"{base}_bias_Add")))
        status[plan.name] = "dynamic"
    g = model.graph
    del g.node[:]
    g.node.extend(store.nodes + nodes)
    g.initializer.extend(store.initializers + inits)
    store.nodes, store.initializers = [], []
    return status


def _find(store: WeightStore, name: str) -> onnx.TensorProto:
    for t in store.initializers:
        if t.name == name:
            return t
    raise KeyError(name)
