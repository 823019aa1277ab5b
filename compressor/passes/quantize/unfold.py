"""A Conv that stays float gets back the filter prepare folded its BatchNorm into.

``prepare.fold_batchnorm`` folds every ``Conv -> BatchNormalization`` before planning, so that an
integer Conv includes its BatchNorm.  A Conv that is not quantized (mixed precision keeps it
float, or ``exclude``) then holds W * f: after share, a codebook's few values times a factor per
output channel, i.e. nearly every weight distinct, and the container grows by the filter's
float bytes.  Here such a Conv reads its own filter W again (bit-identical to the input's) and
the factor becomes a Mul after it:  Conv(x, W, B' / f) * f  =  Conv(x, W * f, B')."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ... import graph
from .prepare import _constant_tensors, _unique


def unfold_float_convs(model: onnx.ModelProto, factors: dict) -> int:
    """In place: each Conv still reading a float filter of `factors` ({filter: (unfolded,
    factor)}, prepare.fold_batchnorm's; a quantized Conv reads a DequantizeLinear's output or is
    a QLinearConv) reads the unfolded filter and its bias divided by the factor, and a Mul by the
    factor follows.  Returns how many."""
    g = model.graph
    consts = _constant_tensors(g)
    count = 0
    for node in list(g.node):
        if node.op_type != "Conv" or len(node.input) < 3 or not node.output:
            continue
        if node.input[1] not in factors:
            continue
        w_t, b_t = consts.get(node.input[1]), consts.get(node.input[2])
        unfolded, factor = factors[node.input[1]]
        if w_t is None or b_t is None or not np.all(np.isfinite(factor)) or np.any(factor == 0):
            continue
        bias = numpy_helper.to_array(b_t).astype(np.float64)
        graph.set_tensor_values(w_t, np.asarray(unfolded, dtype=np.float32))
        graph.set_tensor_values(b_t, (bias / factor).astype(np.float32))
        shape = (1, factor.size) + (1,) * max(unfolded.ndim - 2, 0)
        f_name = _unique(g, node.input[1] + "_bn_factor")
        g.initializer.append(numpy_helper.from_array(factor.astype(np.float32).reshape(shape), f_name))
        out = node.output[0]
        node.output[0] = _unique(g, out + "_unscaled")
        mul = helper.make_node("Mul", [node.output[0], f_name], [out], name=_unique(g, out + "_bn_scale"))
        g.node.insert(list(g.node).index(node) + 1, mul)
        count += 1
    return count
