"""Node order: a graph whose nodes are not in topological order, put in it.

ONNX requires every node to come after the producers of its inputs, counting the names a
node's subgraphs (If/Loop/Scan bodies) read from the enclosing graph.  ONNX Runtime sorts a
graph itself and runs such models; some tools write them (ONNX Runtime's own dynamic quantizer
places a node after an If whose branch reads its output).  Reordering nodes changes nothing a
model computes, so a model is sorted once at load, before onnx's checker judges it, and only
when it needs it: a sorted model is left byte for byte as it was.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """The names `graph` reads from the graphs around it (neither its inputs, initializers nor
    its nodes' outputs)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    reads: set[str] = set()
    for node in graph.node:
        reads.update(n for n in node.input if n)
        for sub in _subgraphs(node):
            reads |= _outer_reads(sub)
        defined.update(n for n in node.output if n)
    reads.update(o.name for o in graph.output)
    return reads - defined


def _node_reads(node: onnx.NodeProto) -> set[str]:
    reads = {n for n in node.input if n}
    for sub in _subgraphs(node):
        reads |= _outer_reads(sub)
    return reads


def _sorted_order(graph: onnx.GraphProto) -> list[int] | None:
    """Node indices in a topological order that keeps the given order wherever it can; None
    when the graph is already sorted or cannot be (a cycle: left for the checker to report)."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    deps = [{producer[n] for n in _node_reads(node) if n in producer} - {i} for i, node in enumerate(graph.node)]
    if all(d < i for i, ds in enumerate(deps) for d in ds):
        return None
    users: list[list[int]] = [[] for _ in graph.node]
    for i, ds in enumerate(deps):
        for d in ds:
            users[d].append(i)
    waiting = [len(ds) for ds in deps]
    order: list[int] = []
    ready = sorted(i for i, w in enumerate(waiting) if w == 0)
    while ready:
        i = ready.pop(0)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
        ready.sort()
    return order if len(order) == len(deps) else None


def sort_nodes(graph: onnx.GraphProto) -> bool:
    """Put `graph`'s nodes (and its subgraphs' nodes) in topological order, in place.  Returns
    whether any order changed."""
    changed = False
    order = _sorted_order(graph)
    if order is not None:
        nodes = [onnx.NodeProto() for _ in order]
        for new, old in zip(nodes, order):
            new.CopyFrom(graph.node[old])
        del graph.node[:]
        graph.node.extend(nodes)
        changed = True
    for node in graph.node:
        for sub in _subgraphs(node):
            changed |= sort_nodes(sub)
    return changed
