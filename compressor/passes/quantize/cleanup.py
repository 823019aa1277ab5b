"""Remove what quantization left unused: float initializers replaced by int8 ones, and
Constant / Identity nodes whose outputs nobody reads (main graph only)."""

from __future__ import annotations

import onnx

from ... import graph


def _used_names(model: onnx.ModelProto) -> set[str]:
    used = {o.name for o in model.graph.output}
    for _, g in graph.iter_graphs(model.graph):
        for n in g.node:
            used.update(n.input)
        if g is not model.graph:
            used.update(o.name for o in g.output)
    return used


def remove_unused(model: onnx.ModelProto) -> int:
    g = model.graph
    removed = 0
    while True:
        used = _used_names(model)
        dead = [
            n
            for n in g.node
            if n.op_type in ("Constant", "Identity", "DequantizeLinear", "QuantizeLinear")
            and n.output
            and not any(o in used for o in n.output)
        ]
        for n in dead:
            g.node.remove(n)
        if not dead:
            break
        removed += len(dead)
    used = _used_names(model)
    keep = [t for t in g.initializer if t.name in used]
    if len(keep) != len(g.initializer):
        removed += len(g.initializer) - len(keep)
        names = {t.name for t in keep}
        inits = {t.name for t in g.initializer}
        del g.initializer[:]
        g.initializer.extend(keep)
        stale = [i for i in g.input if i.name in inits and i.name not in names]
        for i in stale:
            g.input.remove(i)
    return removed
