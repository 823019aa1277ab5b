"""prune_budget's candidates: only the arrays a refit changed are cached (memory of large tensors)."""

from __future__ import annotations

import numpy as np

from compressor.search.prune_budget import _PrunedVariants


class Runner:
    def __init__(self, originals):
        self.originals = originals


class OnlyA:
    """A compensator covering tensor "a" (its refit: the pruned array plus one)."""

    def __contains__(self, name):
        return name == "a"

    def __call__(self, name, pruned):
        return pruned + 1 if name == "a" else pruned


def test_only_refit_tensors_are_cached_per_zero_count():
    rng = np.random.default_rng(0)
    originals = {"a": rng.normal(size=100).astype(np.float32), "b": rng.normal(size=1000).astype(np.float32)}
    variants = _PrunedVariants(Runner(originals), OnlyA())
    for ratio in (0.1, 0.2, 0.3, 0.2):
        a, b = variants.pruned("a", ratio), variants.pruned("b", ratio)
        assert np.count_nonzero(b == 0) == round(ratio * 1000)
        assert np.count_nonzero(a == 1) == round(ratio * 100)  # refit applied
    assert sorted(variants.cache) == [("a", 10), ("a", 20), ("a", 30)]
