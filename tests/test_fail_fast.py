"""stages/fail_fast: a ladder rung's verdict stops once the SNR floor is out of reach."""

from __future__ import annotations

import numpy as np
from graphs import relu_mlp
from stage_contexts import measured_context

from compressor import evaluate, graph, output_kinds
from compressor.data import Dataset
from compressor.stages import fail_fast
from compressor.variants import with_arrays


def regressor(batch: int = 8):
    """A regressor's measured context (64 verdict samples run `batch` at a time) and a builder
    of its weights with relative noise `level`."""
    rng = np.random.default_rng(0)
    model = relu_mlp(rng.normal(size=(16, 32)).astype(np.float32) / 4, rng.normal(size=(32, 1)).astype(np.float32))
    data = Dataset({"x": rng.normal(size=(64, 16)).astype(np.float32)}, None)
    ctx = measured_context(model, data, "fidelity", 1.0, graph.model_bytes, original_bytes=graph.model_bytes(model))
    ctx.measure.batch_size = batch
    weights = graph.weights(model)

    def noisy(level: float):
        arrays = {w.name: w.array() * (1 + level * rng.normal(size=w.shape)).astype(np.float32) for w in weights}
        return with_arrays(model, weights, arrays)

    return ctx, noisy


def test_a_rung_far_under_the_floor_stops_after_a_few_samples():
    ctx, noisy = regressor()
    candidate = noisy(1.0)
    full, _ = ctx.measure(candidate)
    before = evaluate.ort_counts()["runs"]
    metrics, outputs = fail_fast.verdict(ctx.measure, candidate)
    runs = evaluate.ort_counts()["runs"] - before
    stopped = metrics["stopped_after"]
    assert outputs is None and stopped["of"] == 64 and stopped["samples"] == 8 * runs < 64
    # the bound is what the full run can reach at most, and it is under the floor
    assert full["snr_db"] <= metrics["snr_db"] < ctx.measure.min_snr_db
    assert not ctx.measure.within(metrics)


def test_a_rung_that_fits_is_judged_on_every_sample_as_the_measure_judges_it():
    ctx, noisy = regressor()
    candidate = noisy(0.001)
    expected, expected_outputs = ctx.measure(candidate)
    metrics, outputs = fail_fast.verdict(ctx.measure, candidate)
    assert metrics == expected and ctx.measure.within(metrics)
    assert all(np.array_equal(a, b) for a, b in zip(outputs, expected_outputs))


def test_a_margin_keeps_running_until_the_miss_is_that_large():
    ctx, noisy = regressor()
    candidate = noisy(0.1)
    full, _ = ctx.measure(candidate)
    miss = ctx.measure.min_snr_db - full["snr_db"]
    assert miss > 0
    metrics, outputs = fail_fast.verdict(ctx.measure, candidate, margin_db=miss + 1.0)
    assert outputs is not None and metrics == full  # never that far under: run to the end


def test_no_early_stop_in_one_batch_or_without_an_snr_floor():
    ctx, noisy = regressor(batch=64)
    metrics, outputs = fail_fast.verdict(ctx.measure, noisy(1.0))
    assert outputs is not None and "stopped_after" not in metrics
    ctx, noisy = regressor()
    ctx.measure.snr_gated = False
    assert fail_fast.gated_outputs(ctx.measure) is None


def test_the_noise_bound_of_the_samples_run_never_exceeds_the_full_runs():
    # A regressor's full noise (at its upper confidence bound) is at least the bound from any
    # first k samples, whatever the others are.
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(2, 40))
        ref = rng.normal(size=(n, 3))
        out = ref + rng.normal(size=(n, 3)) * rng.exponential(size=(n, 1)) ** 2
        per_row = np.square(out - ref).sum(axis=1)
        full = output_kinds.regressor_noise_bound(ref, out)
        for k in range(1, n + 1):
            assert fail_fast.noise_lower_bound(per_row[:k], n, True) <= full * (1 + 1e-12)
            assert fail_fast.noise_lower_bound(per_row[:k], n, False) <= full * (1 + 1e-12)
