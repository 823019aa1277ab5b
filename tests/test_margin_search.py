"""The margin-stepped allowance search, the run's shared layer covariances, and what they save."""

import math

import numpy as np
import onnx
import pytest

from compressor.measure import search_allowance
from compressor.passes.layers import Layer
from compressor.passes.selection import prunable_weights
from compressor.pipeline import run_pipeline
from compressor.search import layer_error, margin_search, prune_budget
from compressor.search.layer_error import capture_layers
from compressor.search.layer_inputs import LayerInputs
from compressor.search.margin_search import STOP_MARGIN_DB, margin_allowance
from compressor.search.prune_budget import prune_to_budget
from compressor.stages import share as share_stage
from tests.test_layer_error import _inputs, _mlp


def _noise_model(edge: float, slope: float = 1.0):
    """A candidate's SNR margin (dB) when its noise grows as allowance**slope: 0 at `edge`."""
    calls = []

    def measure(allowance):
        calls.append(allowance)
        margin = -10.0 * slope * math.log10(allowance / edge)
        return margin >= 0, margin

    return measure, calls


@pytest.mark.parametrize("edge", [0.003, 0.05, 0.6, 7.0])
@pytest.mark.parametrize("slope", [0.6, 1.0, 1.7])
def test_the_margin_search_reaches_the_edge_in_fewer_runs_than_fixed_steps(edge, slope):
    measure, calls = _noise_model(edge, slope)
    lo, hi = margin_allowance(measure, 0.1, 100.0, 1e-5, 4.0, 0.1, 8)
    assert lo is not None and lo <= edge
    # within the stop margin of the edge, or bracketed within the resolution
    assert -10 * slope * math.log10(lo / edge) <= STOP_MARGIN_DB + 1e-9 or (hi is not None and hi / lo < 1.1)
    fixed = []
    search_allowance(
        lambda a: fixed.append(a) or a <= edge,
        0.1,
        grow=lambda a: None if a >= 100 else min(a * 4, 100),
        shrink=lambda a: None if a <= 1e-5 else a / 4,
        geometric=True,
        resolution=0.1,
        max_steps=8,
    )
    assert len(calls) <= 4 and len(calls) <= len(fixed)


def test_a_near_miss_ends_the_search_at_the_next_candidate_that_fits():
    # A measure that wobbles by a dB near the edge: a candidate missing by less than the stop
    # margin is followed by one aimed that far inside, and the search ends when it fits.
    edge, calls, margins = 0.01, [], []
    wobble = [0.0, -0.8, 0.0]

    def measure(allowance):
        margin = -10.0 * math.log10(allowance / edge) + wobble[len(calls)]
        calls.append(allowance)
        margins.append(margin)
        return margin >= 0, margin

    lo, hi = margin_allowance(measure, 1.0, 100.0, 1e-5, 4.0, 0.1, 8)
    assert len(calls) == 3  # the start (-20 dB), a near miss, one that fits
    assert -STOP_MARGIN_DB <= margins[1] < 0 and (lo, hi) == (calls[2], calls[1])
    assert margins[2] > STOP_MARGIN_DB  # it ends the search though its margin is wider


def test_without_a_margin_the_search_steps_by_the_fixed_factor_and_bisects():
    calls = []

    def measure(allowance):
        calls.append(allowance)
        return allowance <= 0.9, None

    lo, hi = margin_allowance(measure, 0.1, 100.0, 1e-5, 4.0, 0.1, 20)
    assert calls[:3] == [0.1, 0.4, 1.6]
    assert lo <= 0.9 < hi and hi / lo < 1.1


def test_the_search_stops_at_the_lower_end_and_at_the_upper_end():
    # nothing fits: the first prediction is clamped to the lower end, which fails too
    calls = []
    lo, hi = margin_allowance(lambda a: calls.append(a) or (False, -300.0), 0.1, 100.0, 0.01, 4.0, 0.1, 8)
    assert (lo, hi) == (None, 0.01) and calls == [0.1, 0.01]
    # everything fits with room: grows to the upper end and stops there
    calls = []
    lo, hi = margin_allowance(lambda a: calls.append(a) or (True, 30.0), 0.1, 5.0, 0.01, 4.0, 0.1, 8)
    assert (lo, hi) == (5.0, None) and calls == [0.1, 5.0]
    # out of runs
    assert margin_allowance(lambda a: None, 0.1, 5.0, 0.01, 4.0, 0.1, 8) == (None, None)


def test_a_single_margin_predicts_at_slope_one_and_two_measure_the_slope():
    assert margin_search.next_allowance({1.0: (True, 10.0 + margin_search.AIM_DB)}, 1.0, None, 1e9, 0, 4, 0.1) == (
        pytest.approx(10.0)
    )
    # two points 10 dB of allowance apart, 20 dB of margin apart: slope 2
    points = {1.0: (True, 10.0), 10.0: (False, -10.0)}
    guess = margin_search.next_allowance(points, 1.0, 10.0, 1e9, 0, 4, 0.1)
    assert guess == pytest.approx(10 ** ((10.0 - margin_search.AIM_DB) / 20.0))


def test_an_snr_gated_pruning_search_measures_fewer_candidates_with_margin_steps(monkeypatch):
    model = _mlp([16, 64, 64, 8], laplace=[False, True, False], seed=3)
    data = _inputs(96, 16, 5)
    _, stepped = prune_to_budget(model, data, 100.0, min_params=0, min_snr_db=25.0)
    monkeypatch.setattr(prune_budget, "MARGIN_STEPS", False)
    _, fixed = prune_to_budget(model, data, 100.0, min_params=0, min_snr_db=25.0)
    s, f = stepped["budget"], fixed["budget"]
    assert s["final"]["snr_db"] >= 25.0 and s["evaluations"] < f["evaluations"], (s["attempts"], f["attempts"])
    zeros = lambda b: max(a["zeros"] for a in b["attempts"] if a["within_budget"])  # noqa: E731
    assert zeros(s) >= 0.9 * zeros(f)


def test_unverified_pruning_returns_the_best_candidate_without_another_run():
    model = _mlp([16, 64, 64, 8], laplace=[False, True, False], seed=3)
    data = _inputs(96, 16, 5)
    _, verified = prune_to_budget(model, data, 100.0, min_params=0, min_snr_db=25.0)
    out, unverified = prune_to_budget(model, data, 100.0, min_params=0, min_snr_db=25.0, verify=False)
    v, u = verified["budget"], unverified["budget"]
    assert u["whole_model_runs"] == v["whole_model_runs"] - 1 == u["evaluations"]
    assert u["ratios"] == v["ratios"]


def test_kept_layers_are_handed_out_for_the_same_weights_and_data_only():
    model = _mlp([8, 16, 4], seed=1)
    other = _mlp([8, 16, 4], seed=2)
    data, more = _inputs(32, 8, 1), _inputs(32, 8, 2)
    weights, _ = prunable_weights(model, min_params=0)
    layers, _, runs = capture_layers(model, weights, data, 4)
    assert runs == 1
    kept = LayerInputs()
    kept.keep(model, data, layers)
    assert kept.layers(model, data) == layers
    assert kept.layers(other, data) == {} and kept.layers(model, more) == {}
    assert kept.layers(other, data, approximate=True) == layers
    kept.same_weights(model, other)
    assert kept.layers(other, data) == layers
    # a second capture reuses them all: no run
    again, _, runs = capture_layers(model, weights, data, 4, shared=kept.layers(model, data))
    assert runs == 0 and all(again[n] is layers[n] for n in layers)
    # a layer reading another input is not taken for this one
    wrong = {n: Layer("matmul", "elsewhere", layer.d_in) for n, layer in layers.items()}
    _, _, runs = capture_layers(model, weights, data, 4, shared=wrong)
    assert runs == 1
    kept.release()
    assert kept.layers(model, data) == {}


def test_a_run_captures_the_layer_inputs_once_when_pruning_keeps_nothing(tmp_path, monkeypatch):
    # Every allocation zeros nothing: pruning keeps the weights, and share's search reads prune's capture.
    monkeypatch.setattr(prune_budget, "allocate_ratios", lambda curves, allowance: {c["name"]: 0.0 for c in curves})
    captures = []
    real = layer_error.accumulate_inputs
    monkeypatch.setattr(layer_error, "accumulate_inputs", lambda *a, **k: captures.append(1) or real(*a, **k))
    model = _mlp([16, 64, 64, 8], laplace=[False, True, False], seed=3)
    path, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    onnx.save(model, path)
    np.savez(calib, x=np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32))
    report = run_pipeline(str(path), str(tmp_path / "m.cmpz"), None, calib_path=str(calib))
    assert "1 capture run(s)" in report["prune_search"]
    share_row = next(r for r in report["stages"] if r["stage"] == "share")
    assert "per tensor" in share_row["attempts"][0]["option"]  # the search ran (and captured nothing)
    assert len(captures) == 1, (report["prune_search"], report["share_search"])


def test_a_kmeans_rung_beyond_the_bits_reach_of_a_measured_miss_is_not_measured():
    class Gated:
        snr_gated, min_snr_db, kl_gated, max_kl, kl_allowance = True, 20.0, False, 0.3, 0.0

    rungs = {"k-means 4 / 4": (4, 4), "k-means 6 / 5": (6, 5)}
    missed = [{"option": "k-means 4 / 4", "snr_db": 9.0, "rejected_by": [{"measure": "snr_db"}]}]
    # 11 dB short: one more bit (6 dB + 3 slack) cannot make it, two bits (12 + 3) may
    assert "11.0 dB" in share_stage.beyond_reach(missed, rungs, (4, 5), Gated())
    assert share_stage.beyond_reach(missed, rungs, (6, 5), Gated()) is None
    # a kind the model lacks does not count; an attempt that is no rung says nothing
    assert share_stage.beyond_reach(missed, rungs, (4, None), Gated()) is not None
    assert share_stage.beyond_reach([{**missed[0], "option": "search"}], rungs, (4, 5), Gated()) is None
    # class scores: the KL of their probabilities, 4.8 against 0.3, is 12 dB short
    Gated.snr_gated, Gated.kl_gated = False, True
    assert share_stage.beyond_reach(missed, rungs, (4, 5), Gated()) is None
    kl = [{"option": "k-means 4 / 4", "snr_db": 9.0, "kl": 4.8}]
    assert "12.0 dB" in share_stage.beyond_reach(kl, rungs, (4, 5), Gated())
    assert share_stage.beyond_reach(kl, rungs, (6, 5), Gated()) is None
