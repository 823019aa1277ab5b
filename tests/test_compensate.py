"""Data-aware error compensation for pruning (passes/compensate.py)."""

from __future__ import annotations

import graphs
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor import evaluate, graph
from compressor.passes.compensate import BLAS, Compensator, one_blas_thread, refit_kept
from compressor.passes.prune import layer_magnitude_mask, prunable_weights, prune_with_ratios
from compressor.search.prune_budget import prune_to_budget


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), d_in=st.integers(2, 24), d_out=st.integers(1, 12), keep=st.floats(0.1, 1.0))
def test_refit_is_the_least_squares_solution_on_the_kept_weights(seed, d_in, d_out, keep):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4 * d_in, d_in))
    w0 = rng.standard_normal((d_in, d_out))
    mask = rng.random((d_in, d_out)) < keep
    fitted = refit_kept(w0, mask, x.T @ x, damp=0.0)
    assert np.all(fitted[~mask] == 0)
    for j in range(d_out):
        kept = np.flatnonzero(mask[:, j])
        if kept.size == d_in:
            np.testing.assert_array_equal(fitted[:, j], w0[:, j])  # nothing pruned: unchanged
        elif kept.size:
            best, *_ = np.linalg.lstsq(x[:, kept], x @ w0[:, j], rcond=None)
            np.testing.assert_allclose(fitted[kept, j], best, rtol=1e-6, atol=1e-8)
            plain = np.linalg.norm(x[:, kept] @ w0[kept, j] - x @ w0[:, j])
            assert np.linalg.norm(x[:, kept] @ fitted[kept, j] - x @ w0[:, j]) <= plain + 1e-9


def test_refit_in_small_groups_of_columns_solves_the_same_systems(monkeypatch):
    # Columns are solved on their kept inputs only, grouped by kept count and padded: groups of
    # one or two columns (a tiny chunk) give the one-system-per-column least squares.
    rng = np.random.default_rng(3)
    d_in, d_out = 20, 9
    x = rng.standard_normal((80, d_in))
    w0 = rng.standard_normal((d_in, d_out))
    mask = rng.random((d_in, d_out)) < np.linspace(0.05, 1.0, d_out)[None, :]
    mask[:, 0] = False  # a column with nothing kept comes back 0
    whole = refit_kept(w0, mask, x.T @ x, damp=0.0)
    monkeypatch.setattr("compressor.passes.compensate.CHUNK_ELEMENTS", 2 * d_in * d_in)
    np.testing.assert_allclose(refit_kept(w0, mask, x.T @ x, damp=0.0), whole, rtol=1e-9, atol=1e-12)
    assert np.all(whole[:, 0] == 0)
    for j in range(1, d_out):
        kept = np.flatnonzero(mask[:, j])
        if 0 < kept.size < d_in:
            best, *_ = np.linalg.lstsq(x[:, kept], x @ w0[:, j], rcond=None)
            np.testing.assert_allclose(whole[kept, j], best, rtol=1e-6, atol=1e-8)


def test_ridge_keeps_a_fully_kept_column_exact_and_a_rank_deficient_one_finite():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8))  # fewer samples than inputs: X^T X is singular
    w0 = rng.standard_normal((8, 2))
    mask = np.ones((8, 2), bool)
    mask[:4, 1] = False
    fitted = refit_kept(w0, mask, x.T @ x)
    np.testing.assert_allclose(fitted[:, 0], w0[:, 0], rtol=1e-12)
    assert np.all(np.isfinite(fitted)) and np.all(fitted[:4, 1] == 0)


def _output_error(model, reference, data):
    out = evaluate.run_model(model, data)[0]
    return float(np.linalg.norm(out - reference) / np.linalg.norm(reference))


def test_compensated_pruning_reproduces_the_model_better_and_keeps_the_zeros():
    model = graphs.conv_net()
    calib, test = graphs.make_inputs(model, 64, 0), graphs.make_inputs(model, 64, 1)
    weights, _ = prunable_weights(model, min_params=0)
    comp = Compensator(model, weights, calib)
    assert {"conv2.weight", "fc1.weight", "fc2.weight"} <= set(comp.layers)
    ratios = {w.name: 0.6 for w in weights}
    plain, _ = prune_with_ratios(model, ratios, min_params=0)
    fitted, stats = prune_with_ratios(model, ratios, min_params=0, compensate=comp)
    reference = evaluate.run_model(model, test)[0]
    assert _output_error(fitted, reference, test) < 0.7 * _output_error(plain, reference, test)
    plain_w = {w.name: w.array() for w in graph.weights(plain)}
    for w in graph.weights(fitted):
        if w.name in ratios:
            np.testing.assert_array_equal(w.array() == 0, plain_w[w.name] == 0)  # same masks
    assert all(row.get("compensated") for row in stats["tensors"] if row["name"] in comp.layers)


def test_depthwise_and_unsupported_tensors_are_left_to_plain_pruning():
    model = graphs.depthwise_resnet(c=16)
    weights, _ = prunable_weights(model, min_params=0)
    comp = Compensator(model, weights, graphs.make_inputs(model, 16, 0))
    assert "grouped/depthwise" in comp.skipped["dw.weight"]
    values = next(w for w in weights if w.name == "dw.weight").array()
    pruned = np.where(layer_magnitude_mask(values, 0.5), 0, values)
    assert comp("dw.weight", pruned) is pruned


def test_the_budget_search_with_compensation_stays_within_its_budget():
    model = graphs.conv_net()
    data = graphs.make_inputs(model, 64, 0)
    pruned, stats = prune_to_budget(model, data, 2.0, min_params=0, compensate=graphs.make_inputs(model, 64, 3))
    budget = stats["budget"]
    assert budget["compensated"] and budget["final"]["drop"] <= 2.0 + 1e-9
    assert (
        evaluate.fidelity(evaluate.run_model(model, data), evaluate.run_model(pruned, data))["top1_agreement"] >= 98.0
    )


def test_the_refit_and_the_prune_stage_run_numpy_on_one_blas_thread():
    with one_blas_thread():
        assert all(lib["num_threads"] == 1 for lib in BLAS.info() if lib["user_api"] == "blas")
