"""Low-rank factorisation math (compressor/lowrank_math.py), pure numpy."""

from __future__ import annotations

import numpy as np
import pytest

from compressor import lowrank_math as lm


def _low_rank(m: int, n: int, rank: int, seed: int = 0, noise: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(m, rank)) @ rng.normal(size=(rank, n))
    return w + noise * rng.normal(size=(m, n))


def test_plain_svd_recovers_an_exact_low_rank_matrix():
    w = _low_rank(40, 30, 5)
    f = lm.factorize(w)
    a, b = f.factors(5)
    assert a.shape == (40, 5) and b.shape == (5, 30)
    np.testing.assert_allclose(a @ b, w, atol=1e-9)
    assert f.method == "weight"
    assert f.errors[0] == pytest.approx(1.0)
    assert f.errors[5] < 1e-20
    assert np.all(np.diff(f.errors) <= 1e-15)  # more rank, never more error
    assert f.rank_for_error(1e-12) == 5


def test_plain_errors_are_the_weight_errors():
    w = _low_rank(20, 24, 20, noise=0.1)
    f = lm.factorize(w)
    for r in (1, 3, 10):
        a, b = f.factors(r)
        assert f.errors[r] == pytest.approx(lm.output_error(w, a @ b), rel=1e-9)


def test_whitened_svd_minimises_output_error_not_weight_error():
    rng = np.random.default_rng(1)
    m, n = 30, 25
    w = rng.normal(size=(m, n))
    # Inputs that vary in a few directions only: the output cares about those.
    x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, m)) + 0.01 * rng.normal(size=(500, m))
    cov = x.T @ x
    aware = lm.factorize(w, cov)
    plain = lm.factorize(w)
    assert aware.method == "covariance"
    for r in (2, 6, 10):
        a, b = aware.factors(r)
        pa, pb = plain.factors(r)
        e_aware, e_plain = lm.output_error(w, a @ b, cov), lm.output_error(w, pa @ pb, cov)
        assert e_aware <= e_plain + 1e-12
        assert aware.errors[r] == pytest.approx(e_aware, rel=1e-6, abs=1e-12)
    # Six input directions: rank 6 leaves almost nothing of the output error.
    assert aware.errors[6] < 1e-3 < plain.errors[6]


def test_refit_right_is_least_squares_for_a_fixed_left_factor():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(16, 12))
    x = rng.normal(size=(200, 16))
    cov = x.T @ x
    a, b = lm.factorize(w).factors(4)
    refit = lm.refit_right(w, a, cov, damp=0.0)
    expected = np.linalg.lstsq(x @ a, x @ w, rcond=None)[0]
    np.testing.assert_allclose(refit, expected, atol=1e-8)
    assert lm.output_error(w, a @ refit, cov) <= lm.output_error(w, a @ b, cov) + 1e-12


def test_rank_bookkeeping():
    assert lm.factored_params(100, 50, 10) == 1500
    assert lm.max_rank(100, 50, 0.8) == 26  # 0.8 * 5000 / 150
    assert lm.worthwhile(100, 50, 26) and not lm.worthwhile(100, 50, 27) and not lm.worthwhile(100, 50, 0)
    assert lm.rank_for_ratio(100, 50, 0.1) == 5
    assert lm.rank_for_ratio(100, 50, 0.0) == 1


def test_choose_ranks_trades_error_for_values():
    exact = lm.factorize(_low_rank(64, 64, 3))
    full = lm.factorize(np.random.default_rng(3).normal(size=(64, 64)))
    few = lm.choose_ranks({"exact": exact, "full": full}, 1e-3)
    assert few["exact"] == 3  # free: no error at rank 3
    assert few["full"] == 0  # a full-rank matrix stays dense at a small weight
    many = lm.choose_ranks({"exact": exact, "full": full}, 100.0)
    assert many["full"] >= 1
    assert all(r <= lm.max_rank(64, 64) for r in many.values())


def test_factorize_rejects_a_tensor():
    with pytest.raises(ValueError):
        lm.factorize(np.zeros((2, 2, 2)))


def test_choose_ranks_weighs_a_sparse_layer_by_its_nonzeros():
    f = lm.factorize(_low_rank(64, 64, 3, noise=0.01))
    assert lm.choose_ranks({"w": f}, 1.0)["w"] >= 3
    # Pruned to 1 % nonzeros: no rank's factors are smaller than what is left.
    assert lm.choose_ranks({"w": f}, 1.0, dense_values={"w": lm.sparse_values(40, 4096)})["w"] == 0


def test_sparse_values_count_the_nonzeros_and_where_they_are():
    assert lm.sparse_values(100, 100) == 100
    assert lm.sparse_values(0, 100) == 0
    # Half dense: one bit of mask per value, a fifth of a 5-bit value.
    assert lm.sparse_values(50, 100) == pytest.approx(50 + 100 / 5)
    assert 10 < lm.sparse_values(10, 100) < 50
