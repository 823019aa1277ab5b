"""Quantization parameters of activations: which tensors share them, and their values.

Tensors joined by a passthrough op (MaxPool, Reshape, Concat, ...) or a folded Relu /
Clip form one group with one (scale, zero point); a group's range is the union of its
members' calibrated ranges, except the input of a folded Relu / Clip (its negative part is
clamped away), so ``Conv -> Relu`` gets the Relu's range [0, max] and zero point 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import quant_math as qm
from .registry import Plan


@dataclass(frozen=True)
class QParams:
    scale: float  # a float32 value
    zero_point: int
    dtype: str  # "uint8" | "int8"


class Groups:
    def __init__(self):
        self.parent: dict[str, str] = {}
        self.clipped: set[str] = set()

    def add(self, name: str) -> None:
        self.parent.setdefault(name, name)

    def find(self, name: str) -> str:
        self.add(name)
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def members(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name in sorted(self.parent):
            out.setdefault(self.find(name), []).append(name)
        return out


def build_groups(plans: list[Plan]) -> Groups:
    groups = Groups()
    for plan in plans:
        if plan.kind == "weight_only":
            continue
        acts = [plan.node.input[i] for i in plan.activations]
        outs = [plan.node.output[i] for i in plan.outputs]
        for name in acts + outs:
            groups.add(name)
        if plan.kind in ("passthrough", "activation"):
            for name in acts:
                groups.union(name, outs[0])
            if plan.kind == "activation":
                groups.clipped.update(acts)
    return groups


def tensor_range(stats: qm.RangeCollector, method: str, percentile: float) -> tuple[float, float]:
    if method == "minmax":
        return stats.minmax()
    if method == "percentile":
        return stats.percentile(percentile)
    if method == "entropy":
        lo, hi = stats.minmax()
        return stats.entropy(levels=256 if lo >= 0 else 128)
    raise ValueError(f"unknown calibration method {method!r}")


def compute_params(
    groups: Groups,
    stats: dict[str, qm.RangeCollector],
    method: str,
    dtype: str,
    symmetric: bool,
    percentile: float = qm.DEFAULT_PERCENTILE,
    qrange: tuple[int, int] | None = None,
) -> dict[str, QParams]:
    qmin, qmax = qrange or qm.qrange(dtype, symmetric)
    result: dict[str, QParams] = {}
    for members in groups.members().values():
        ranged = [m for m in members if m not in groups.clipped] or members
        lo, hi = np.inf, -np.inf
        for m in ranged:
            s = stats.get(m)
            if s is None or s.count == 0:
                continue
            a, b = tensor_range(s, method, percentile)
            lo, hi = min(lo, a), max(hi, b)
        if not np.isfinite(lo) or not np.isfinite(hi):
            lo, hi = 0.0, 0.0
        scale, zp = qm.scale_zero_point(lo, hi, qmin, qmax, symmetric)
        p = QParams(float(scale), int(zp), dtype)
        for m in members:
            result[m] = p
    return result
