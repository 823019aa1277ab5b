"""Variants of a model that differ only in some weights, run without rebuilding the model.

The weights that vary become main-graph *inputs* (their initializer or Constant node removed;
a tensor inside an If/Loop body is then an outer-scope value), so one ONNX Runtime session
is built once and fed a different version of them per variant, while every other weight
stays a constant that ORT can pre-pack and fold.  A weight whose name is defined more than
once in the model cannot be fed that way (``feedable``); its variants are rebuilt as models.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from . import graph


def weight_key(w: graph.Weight) -> tuple[str, str, str]:
    """Where a weight lives: (graph path, "initializer"/"constant", name), unique in a model."""
    return (w.ref.graph_path, w.ref.kind, w.name)


def _definition_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many times each name is defined anywhere (inputs, initializers, node outputs, all graphs)."""
    counts: dict[str, int] = {}
    for _, g in graph.iter_graphs(model.graph):
        names = [i.name for i in g.input] + [t.name for t in g.initializer] + [o for n in g.node for o in n.output if o]
        inits = {t.name for t in g.initializer}
        for name in names:
            counts[name] = counts.get(name, 0) + 1
        for i in g.input:  # old IR: an initializer also listed as an input is one definition
            if i.name in inits:
                counts[i.name] -= 1
    return counts


def feedable(model: onnx.ModelProto, weights: Sequence[graph.Weight]) -> list[graph.Weight]:
    """The weights that can be fed as inputs: their name is defined once in the model."""
    counts = _definition_counts(model)
    return [w for w in weights if counts.get(w.name, 0) == 1]


def weights_as_inputs(model: onnx.ModelProto, weights: Sequence[graph.Weight]) -> onnx.ModelProto:
    """A copy of `model` where each weight (found by name) is a main-graph input instead of a constant."""
    names = {w.name: w for w in weights}
    # The weights leave the copy: their data is not copied.
    m = graph.copy_without_data(model, {i for i, ref in enumerate(graph.iter_tensors(model)) if ref.name in names})
    main_inputs = {i.name for i in m.graph.input}
    for _, g in graph.iter_graphs(m.graph):
        keep = [t for t in g.initializer if t.name not in names]
        if len(keep) != len(g.initializer):
            g.ClearField("initializer")
            g.initializer.extend(keep)
        nodes = [n for n in g.node if not (n.op_type == "Constant" and n.output and n.output[0] in names)]
        if len(nodes) != len(g.node):
            g.ClearField("node")
            g.node.extend(nodes)
    for name, w in names.items():
        if name in main_inputs:
            continue  # old IR: the initializer was already declared as an input
        m.graph.input.append(onnx.helper.make_tensor_value_info(name, w.proto.data_type, list(w.shape)))
    return m


def with_arrays(model: onnx.ModelProto, weights: Sequence[graph.Weight], arrays: dict) -> onnx.ModelProto:
    """A copy of `model` where the given weights (of `model`) named in `arrays` hold those values;
    each is found by where it lives (``weight_key``), so a name defined twice is no problem."""
    candidate = graph.copy_model(model)
    by_key = {weight_key(x): x for x in graph.weights(candidate)}
    for w in weights:
        if w.name in arrays:
            by_key[weight_key(w)].set_array(arrays[w.name])
    return candidate
