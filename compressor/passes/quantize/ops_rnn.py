"""LSTM / GRU / RNN: float kernels with int8 weights (W and R, per channel along the gate axis).

ORT has no QDQ fusion for recurrent ops (DynamicQuantizeLSTM exists but not for GRU and
needs weights in its own layout), so they are deliberately left in float: the weights
shrink 4x, the compute does not change.
"""

from __future__ import annotations

from .registry import Plan, Skip, WeightUse, register


@register("LSTM", "GRU", "RNN")
def recurrent(node, ctx):
    uses = []
    for idx in (1, 2):
        w = ctx.weight_at(node, idx)
        if w is not None and w.role in ("rnn_w", "rnn_r"):
            uses.append(WeightUse(idx, w.out_axis if ctx.per_channel else None, w))
    if not uses:
        return Skip("weights are not constant float32 tensors")
    return Plan(node, "weight_only", weights=uses, note="no integer kernel for recurrent ops: float with int8 weights")
