"""Unique value / node names for inserted tensors and nodes."""

from __future__ import annotations

import onnx

from ... import graph


class NameScope:
    def __init__(self, model: onnx.ModelProto):
        self.used: set[str] = set()
        for _, g in graph.iter_graphs(model.graph):
            self.used.update(t.name for t in g.initializer)
            self.used.update(i.name for i in g.input)
            self.used.update(o.name for o in g.output)
            for n in g.node:
                self.used.update(n.input)
                self.used.update(n.output)
                if n.name:
                    self.used.add(n.name)

    def new(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name = f"{base}_{i}"
            i += 1
        self.used.add(name)
        return name


def read_in_subgraphs(g: onnx.GraphProto) -> set[str]:
    """Every value name read by a node inside a subgraph of `g` (outer-scope reads included)."""
    names: set[str] = set()
    for path, sub in graph.iter_graphs(g):
        if path:
            for n in sub.node:
                names.update(n.input)
    return names
