"""Gather tables (embeddings) seen by their rows: how often the model looks each row up.

A Gather's output is rows of its table, so what a change ΔE of a table [V, D] does to the
model is the error of the rows it reads: over the lookups of the data,
Σ_r p_r ||ΔE_r||² / Σ_r p_r ||E_r||², p_r the share of lookups that read row r.  That is a
layer's relative output error tr(ΔEᵀ C ΔE) / tr(Eᵀ C E) with the lookups' one-hot rows as
the inputs, C = diag(counts): ``RowUse`` keeps the counts (a vector, never the V x V matrix)
and is accumulated in the same capture run as the matrix layers' covariances
(``layers.accumulate_inputs`` calls ``row_count``, ``row_stride`` and ``accumulate``).

Rows calibration never looks up are read at test time (a vocabulary is far larger than any
calibration set), so they cannot weigh zero: they share the Good-Turing estimate of the
unseen mass (about the share of lookups that read a row seen only once) evenly.  Indices that are a constant of the graph read exactly those rows: no
unseen mass then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from .. import graph

KIND = "rows"


class RowUse:
    """The lookups of one Gather table [V, ...] along axis 0: counts per row, from captured indices."""

    kind = KIND

    def __init__(self, x_name: str, n_rows: int, constant_indices: np.ndarray | None = None):
        self.x_name, self.n_rows = x_name, int(n_rows)
        self.counts = np.zeros(self.n_rows, dtype=np.int64)
        self.rows = 0  # lookups seen
        self.stride = 1
        self.kept = None  # (what capture_layers clears on a matrix layer)
        self.constant = constant_indices is not None
        if constant_indices is not None:
            self.accumulate(constant_indices)

    def row_count(self, x: np.ndarray) -> int:
        return int(np.asarray(x).size)

    def row_stride(self, rows_per_sample: float, samples: int) -> int:
        return 1  # counting is one bincount per batch: every lookup is used

    def accumulate(self, x: np.ndarray) -> None:
        idx = np.asarray(x).astype(np.int64, copy=False).ravel()
        idx = np.where(idx < 0, idx + self.n_rows, idx)  # Gather's negative indices count from the end
        idx = idx[(idx >= 0) & (idx < self.n_rows)]
        self.counts += np.bincount(idx, minlength=self.n_rows)
        self.rows += int(idx.size)

    def unseen_mass(self) -> float:
        """The estimated share of lookups that read rows the counts never saw: N1 / (N + N1), N1
        the lookups of rows seen once (at least 1), N all lookups (Good-Turing's N1 / N, kept
        below one half); 0 for constant indices or when every row was seen."""
        if self.rows == 0:
            return 1.0
        if self.constant or not (self.counts == 0).any():
            return 0.0
        once = max(int(np.count_nonzero(self.counts == 1)), 1)
        return once / (self.rows + once)

    def weights(self) -> np.ndarray:
        """Each row's share of the lookups (seen rows by their counts, unseen rows the unseen mass
        evenly); sums to 1."""
        p0 = self.unseen_mass()
        unseen = self.counts == 0
        w = np.zeros(self.n_rows)
        if self.rows:
            w[~unseen] = (1.0 - p0) * self.counts[~unseen] / self.rows
        if unseen.any():
            w[unseen] = p0 / int(np.count_nonzero(unseen))
        return w

    def errors(self, values: np.ndarray, variants: Sequence[np.ndarray]) -> np.ndarray:
        """The lookup-weighted relative error Σ p_r ||ΔE_r||² / Σ p_r ||E_r||² of each variant."""
        w = self.weights()
        e = np.asarray(values).reshape(self.n_rows, -1)
        total = float(w @ row_squares(e))
        out = np.empty(len(variants))
        for i, v in enumerate(variants):
            out[i] = float(w @ row_squares(e, np.asarray(v).reshape(self.n_rows, -1)))
        return out / total if total > 0 else np.where(out > 0, np.inf, 0.0)


# Rows of a table taken together in ``row_squares`` (its float64 temporaries stay this size).
ROW_BLOCK = 1 << 12


def row_squares(e: np.ndarray, v: np.ndarray | None = None, block: int = ROW_BLOCK) -> np.ndarray:
    """Each row's sum of squares of `e` (of `v` - `e` when given) in float64, a block of rows at a
    time: no float64 copy of a whole table (a 30522 x 384 embedding's is 94 MB per operand).
    Each row's sum is the one the whole-table einsum gives (its own row, the same order)."""
    out = np.empty(e.shape[0])
    for s in range(0, e.shape[0], block):
        d = e[s : s + block].astype(np.float64)
        if v is not None:
            d = v[s : s + block].astype(np.float64) - d
        out[s : s + block] = np.einsum("ij,ij->i", d, d)
    return out


def is_table(w: graph.Weight) -> bool:
    """A table only Gather reads (the role "embedding": values looked up, not multiplied)."""
    return w.role == "embedding"


def row_use_for(w: graph.Weight, constants: Mapping[str, graph.Weight]) -> RowUse | str:
    """The RowUse of a table read by one Gather along axis 0 in the main graph, or why not.
    `constants`: the graph's initializers by name (``graph.weights(model, include_non_float=True)``);
    constant indices are counted here, others when ``accumulate_inputs`` captures them."""
    if len(w.consumers) != 1:
        return "several consumers" if w.consumers else "no consumers"
    cons = w.consumers[0]
    node = cons.node
    if cons.graph_path:
        return "consumer inside a subgraph"
    if node.op_type != "Gather" or cons.input_index != 0 or len(node.input) < 2:
        return f"{node.op_type} input {cons.input_index} not supported"
    axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
    if int(axis) % max(len(w.shape), 1) != 0:
        return "Gather along another axis than the rows"
    x_name = node.input[1]
    if x_name in constants:
        return RowUse(x_name, w.shape[0], constants[x_name].array())
    return RowUse(x_name, w.shape[0])
