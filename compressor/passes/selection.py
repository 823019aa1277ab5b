"""Which weights the pruning passes act on: the selection options (exclude, min_params,
embeddings), their defaults and checks, and the tensors left out (with why)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from .. import graph
from ..errors import UsageError

# Smallest tensor (values) prune and share act on by default.
DEFAULT_MIN_PARAMS = 1024
EMBEDDING_ROLES = ("embedding",)
# Uses of a tied embedding (Gather + the output projection, possibly through a Transpose)
# that --include-embeddings prunes: zeroing values is the same change for every one of them.
_MIXED_OK_OPS = {"Gather", "MatMul", "Gemm", "Transpose"}


@dataclass
class Skipped:
    name: str
    role: str
    params: int
    reason: str

    def as_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "params": self.params, "reason": self.reason}


def compile_exclude(exclude: str | None) -> re.Pattern | None:
    """The `exclude` option (a regular expression over tensor names) compiled; None when unset."""
    if not exclude:
        return None
    try:
        return re.compile(exclude)
    except re.error as e:
        raise UsageError(f"exclude: invalid regular expression {exclude!r}: {e}")


def check_min_params(min_params) -> int:
    if isinstance(min_params, bool) or not isinstance(min_params, (int, np.integer)) or min_params < 0:
        raise UsageError(f"min_params must be a non-negative integer, got {min_params!r}")
    return int(min_params)


def _consumer_roles(w: graph.Weight) -> set[str]:
    return {c.role for c in w.consumers}  # graph.role_of, computed with each use's context


def _embedding_ok(w: graph.Weight) -> bool:
    if w.role == "embedding":
        return True
    return w.role == "mixed" and bool(w.consumers) and all(c.node.op_type in _MIXED_OK_OPS for c in w.consumers)


def prunable_weights(
    model: onnx.ModelProto,
    exclude: str | None = None,
    min_params: int = DEFAULT_MIN_PARAMS,
    include_embeddings: bool = False,
) -> tuple[list[graph.Weight], list[Skipped]]:
    """The weights prune acts on, in model order, and the matrix-like ones it leaves (with why).

    Biases, norm parameters, scales, shapes and other non-matrix tensors are not listed as
    skipped: they are never candidates.
    """
    if min_params is None:
        min_params = DEFAULT_MIN_PARAMS
    check_min_params(min_params)
    pattern = compile_exclude(exclude)
    selected: list[graph.Weight] = []
    skipped: list[Skipped] = []
    for w in graph.weights(model):
        roles = _consumer_roles(w) if w.role == "mixed" else {w.role}
        embedding = bool(roles & set(EMBEDDING_ROLES))
        if not w.is_matrix and not embedding:
            if roles & set(graph.MATRIX_ROLES):  # e.g. a MatMul weight also added elsewhere: say why it stays
                skipped.append(Skipped(w.name, w.role, w.size, f"mixed uses ({', '.join(w.ops)})"))
            continue
        if embedding:
            if not include_embeddings:
                skipped.append(Skipped(w.name, w.role, w.size, "embedding (use --include-embeddings)"))
                continue
            if not _embedding_ok(w):
                skipped.append(Skipped(w.name, w.role, w.size, f"mixed uses ({', '.join(w.ops)})"))
                continue
        if pattern is not None and pattern.search(w.name):
            skipped.append(Skipped(w.name, w.role, w.size, "matches --exclude"))
            continue
        if w.size < min_params:
            skipped.append(Skipped(w.name, w.role, w.size, f"fewer than --min-params {min_params} values"))
            continue
        values = w.array()
        if values.dtype.kind == "f" or values.dtype.name == "bfloat16":
            if not np.all(np.isfinite(values.astype(np.float32, copy=False))):
                skipped.append(Skipped(w.name, w.role, w.size, "non-finite values (NaN/inf)"))
                continue
        selected.append(w)
    return selected, skipped


def unique_names(selected: Sequence[graph.Weight], skipped: list) -> list[graph.Weight]:
    """Drop (into `skipped`) tensors whose name several selected tensors share: curves and
    ratios are keyed by name.  Rare (one name defined in two subgraphs)."""
    counts: dict[str, int] = {}
    for w in selected:
        counts[w.name] = counts.get(w.name, 0) + 1
    for w in selected:
        if counts[w.name] > 1:
            skipped.append(Skipped(w.name, w.role, w.size, "name defined more than once in the model"))
    return [w for w in selected if counts[w.name] == 1]
