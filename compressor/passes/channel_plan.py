"""Which channels structured pruning removes: pure numpy, no model.

* ``channel_norms``: each output channel's L1 or L2 norm of a filter (any layout: the channel
  axis is given), optionally scaled by the BatchNorm that follows (|gamma| / sqrt(var + eps)).
* ``group_scores``: one score per channel of a group from its sources' norms, each normalised
  by its mean so that layers of different scale compare.
* ``global_keep``: one ranking over every group's scores; the lowest `ratio` of all channels go,
  at most `max_ratio` of any group (and the same count from each block of a grouped conv).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NORMS = ("l1", "l2")
DEFAULT_MAX_RATIO = 0.75  # no group loses more than this fraction of its channels
# Kept channel counts are rounded to a multiple of this (in groups of at least twice as many):
# ONNX Runtime's CPU convolutions run blocked layouts of 8 channels, and a count off the block
# can make a pruned model slower than the original (benchmarks/README.md).
DEFAULT_ALIGN = 8


def channel_norms(weight: np.ndarray, axis: int, norm: str = "l2") -> np.ndarray:
    """Per channel along `axis`: the L1 or L2 norm of everything else, in float64."""
    moved = np.moveaxis(np.asarray(weight, dtype=np.float64), axis, 0).reshape(weight.shape[axis], -1)
    if norm == "l1":
        return np.abs(moved).sum(axis=1)
    return np.sqrt(np.einsum("ij,ij->i", moved, moved))


def batchnorm_scale(gamma: np.ndarray, var: np.ndarray, eps: float) -> np.ndarray:
    """How much a BatchNorm multiplies each channel by: |gamma| / sqrt(var + eps)."""
    return np.abs(np.asarray(gamma, np.float64)) / np.sqrt(np.asarray(var, np.float64) + eps)


def group_scores(norms: Sequence[np.ndarray]) -> np.ndarray:
    """The mean over sources of each source's norms divided by their mean (a source with all
    zeros contributes zeros)."""
    total = np.zeros(len(norms[0]), np.float64)
    for n in norms:
        mean = float(np.mean(n))
        total += n / mean if mean > 0 else n
    return total / len(norms)


def group_cap(size: int, blocks: int, max_ratio: float) -> int:
    """Most channels a group may lose: max_ratio of them, a multiple of `blocks`, and at least
    one channel per block left."""
    per_block = size // blocks
    return blocks * min(int(np.floor(max_ratio * per_block)), per_block - 1)


def aligned_kept(size: int, kept: int, blocks: int = 1, align: int = 1) -> int:
    """`kept` rounded to the nearest multiple of `align` (and of `blocks`), at least one such
    step; groups smaller than two steps of `align` only round to `blocks`."""
    step = math.lcm(max(align, 1), blocks) if size >= 2 * max(align, 1) else blocks
    return min(size, max(step, int(round(kept / step)) * step))


def global_keep(
    scores: Sequence[np.ndarray],
    ratio: float,
    max_ratio: float = DEFAULT_MAX_RATIO,
    blocks: Sequence[int] = (),
    align: int = 1,
) -> list[np.ndarray]:
    """Sorted kept channel indices per group: ``round(ratio * total)`` channels with the lowest
    scores over all groups removed (ties: group order, then channel), each group within its
    ``group_cap``; a group that loses some then keeps ``aligned_kept`` channels (a grouped
    conv the lowest of each block)."""
    blocks = list(blocks) or [1] * len(scores)
    sizes = np.array([len(s) for s in scores], np.int64)
    total = int(sizes.sum())
    target = int(round(min(max(ratio, 0.0), 1.0) * total))
    if target == 0 or total == 0:
        return [np.arange(n) for n in sizes]
    caps = np.array([group_cap(int(n), b, max_ratio) for n, b in zip(sizes, blocks)], np.int64)
    # Within a group, its lowest `cap` channels are the only ones it can lose; among those
    # candidates of all groups, the lowest `target` scores go.
    cand_group, cand_channel, cand_score = [], [], []
    for gid, (s, cap) in enumerate(zip(scores, caps)):
        order = np.argsort(np.asarray(s, np.float64), kind="stable")[:cap]
        cand_group.append(np.full(len(order), gid))
        cand_channel.append(order)
        cand_score.append(np.asarray(s, np.float64)[order])
    g = np.concatenate(cand_group)
    c = np.concatenate(cand_channel)
    v = np.concatenate(cand_score)
    chosen = np.lexsort((c, g, v))[:target]
    counts = np.bincount(g[chosen], minlength=len(scores))
    keep = []
    for gid, s in enumerate(scores):
        removed = int(counts[gid])
        if removed:
            size = int(sizes[gid])
            removed = size - aligned_kept(size, size - removed, blocks[gid], align)
        keep.append(_kept(np.asarray(s, np.float64), removed, blocks[gid]))
    return keep


def _kept(score: np.ndarray, removed: int, blocks: int) -> np.ndarray:
    """Kept indices when `removed` channels go, the same number from each of `blocks` blocks."""
    n = len(score)
    per_block = removed // blocks
    if per_block == 0:
        return np.arange(n)
    size = n // blocks
    gone = []
    for b in range(blocks):
        order = np.argsort(score[b * size : (b + 1) * size], kind="stable")[:per_block]
        gone.append(order + b * size)
    mask = np.ones(n, bool)
    mask[np.concatenate(gone)] = False
    return np.flatnonzero(mask)
