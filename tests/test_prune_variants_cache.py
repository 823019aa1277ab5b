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


def test_the_weight_proxy_of_a_large_tensor_by_partition_is_the_sorted_ones(monkeypatch):
    from compressor.search import layer_error

    rng = np.random.default_rng(1)
    values = rng.laplace(size=(300, 200)).astype(np.float32)
    values[:, :20] = 0
    ratios = [0.0, 0.05, 0.1, 0.25, 0.5, 0.5, 0.9, 1.0]
    expected = layer_error.weight_errors(values, ratios)
    monkeypatch.setattr(layer_error, "PARTITION_ABOVE", 1000)
    got = layer_error.weight_errors(values, ratios)
    assert np.allclose(got, expected, rtol=1e-10, atol=1e-15)
    assert got[0] == 0.0 and got[-1] == 1.0
