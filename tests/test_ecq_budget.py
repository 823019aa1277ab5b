"""ecq_budget and share's uniform method: k-means or uniform grids per tensor, by estimated bytes."""

from __future__ import annotations

import graphs
import numpy as np
import pytest

from compressor import graph
from compressor.codec import rans
from compressor.data import Dataset
from compressor.ecq import step_ladder, uniform_quantize
from compressor.errors import CompressorError, UsageError
from compressor.evaluate import accuracy, run_model
from compressor.kmeans import share_array
from compressor.measure import Judge
from compressor.passes.layers import Layer
from compressor.passes.quantize import DEFAULT_SETTINGS, quantize
from compressor.passes.share import share
from compressor.search.candidates import decoded, kmeans_code, uniform_code
from compressor.search.ecq_budget import (
    STEP_EXPONENTS,
    allocated,
    backed_off,
    estimated_bytes,
    importance_of,
    knapsack_of,
    pareto,
    share_by_rate,
)
from compressor.stages.share import (
    SHARE_SEARCH_BUDGET_SHARE,
    SHARE_SEARCH_BUDGET_SHARE_FIDELITY,
    SHARE_SEARCH_BUDGET_SHARE_LABELED,
    share_search_budget_share,
)


def labeled(model, n=256, seed=0) -> Dataset:
    inputs = graphs.make_inputs(model, n, seed)
    labels = np.argmax(run_model(model, inputs)[0], axis=1)
    return Dataset(dict(inputs.inputs), labels)


@pytest.fixture(scope="module")
def searched():
    model = graphs.mlp()
    data = labeled(model)
    shared, stats = share_by_rate(model, data, 2.0, min_params=0)
    return model, data, shared, stats


def test_the_search_stays_within_budget_and_rebuilds_what_it_measured(searched):
    model, data, shared, stats = searched
    search = stats["budget_search"]
    assert 100.0 - accuracy(run_model(shared, data)[0], data.labels) <= 2.0
    best = max((t for t in search["tried"] if t["within_budget"]), key=lambda t: t["saved_bytes"])
    assert 100.0 - accuracy(run_model(shared, data)[0], data.labels) == pytest.approx(best["drop"])
    assert set(search["chosen"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert search["whole_model_runs"] <= 10 and search["capture_runs"] == 1
    again, _ = share_by_rate(model, data, 2.0, min_params=0)
    assert again.SerializeToString() == shared.SerializeToString()
    by_name = {t["name"]: t for t in stats["tensors"]}
    for name, option in search["chosen"].items():
        assert by_name[name]["method"] == option["method"]
        values = graph.weights(shared)
        array = next(w.array() for w in values if w.name == name)
        if option["method"] == "uniform":
            levels = array / np.float32(by_name[name]["step"])
            assert np.allclose(levels, np.rint(levels), atol=1e-4)
        else:
            assert np.unique(array[array != 0]).size <= 2 ** option["bits"]


def test_auto_is_never_costlier_than_either_method_alone_in_its_estimates(searched):
    _, _, _, stats = searched
    for curve in stats["budget_search"]["curves"]:
        methods = {o["method"] for o in curve["options"]}
        assert methods == {"kmeans", "uniform"}
        front = [curve["options"][i] for i in curve["front"]]
        # the front: fewer bytes, more error, costliest first
        assert [o["bytes"] for o in front] == sorted((o["bytes"] for o in front), reverse=True)
        assert [o["error"] for o in front] == sorted(o["error"] for o in front)


@pytest.mark.parametrize("method", ["kmeans", "uniform"])
def test_one_method_alone(method):
    model = graphs.mlp()
    data = labeled(model, 128)
    # 7 runs: 4 allowance steps (this toy's quarter-octave front starts coarse) and 3 refinements
    shared, stats = share_by_rate(model, data, 3.0, method=method, min_params=0, max_evals=7)
    assert {t["method"] for t in stats["tensors"]} == {method}
    assert stats["budget_search"]["whole_model_runs"] <= 7


def test_pareto_keeps_only_the_undominated():
    options = [
        {"bytes": 100, "error": 0.0},
        {"bytes": 80, "error": 0.1},
        {"bytes": 90, "error": 0.2},  # dominated by the 80-byte one
        {"bytes": 50, "error": 0.3},
        {"bytes": 50, "error": 0.4},  # same bytes, more error
    ]
    assert [(o["bytes"], o["error"]) for o in pareto(options)] == [(100, 0.0), (80, 0.1), (50, 0.3)]


def test_the_allocation_snaps_to_the_front():
    curves = [
        {
            "name": "a",
            "options": [{"bytes": 100, "error": 0.0}, {"bytes": 40, "error": 0.1}, {"bytes": 10, "error": 1.0}],
            "front": [0, 1, 2],
        },
        {"name": "b", "options": [{"bytes": 10, "error": 0.0}, {"bytes": 5, "error": 0.5}], "front": [0, 1]},
    ]
    knapsack = knapsack_of(curves)
    assert knapsack[0]["params"] == 800 and knapsack[0]["ratios"] == [0.0, 0.6, 0.9]
    assert allocated(knapsack, 0.0) == {"a": 0, "b": 0}
    assert allocated(knapsack, 0.1) == {"a": 1, "b": 0}
    assert allocated(knapsack, 10.0) == {"a": 2, "b": 1}


def test_estimated_bytes_follow_the_rans_coder():
    rng = np.random.default_rng(0)
    levels = rng.integers(-3, 4, 5000) * (rng.random(5000) < 0.3)
    _, symbols = np.unique(levels, return_inverse=True)
    assert estimated_bytes(levels) == rans.estimated_size(symbols, int(symbols.max()) + 1)
    assert abs(estimated_bytes(levels) - len(rans.encode(symbols, int(symbols.max()) + 1))) < 64


def test_importance_follows_the_layer_inputs():
    layer = Layer("gemm", "x", 4, transpose_w=True)  # Gemm transB: weight [d_out, d_in]
    layer.accumulate(np.array([[1.0, 0.0, 2.0, 0.0], [1.0, 0.0, 2.0, 0.0]]))
    weights = importance_of(layer, (3, 4))
    assert weights.shape == (3, 4)
    assert np.allclose(weights[0], [0.4, 0.0, 1.6, 0.0])  # input variances over their mean (2.5)
    plain = Layer("gemm", "x", 4)  # weight [d_in, d_out]
    plain.accumulate(np.array([[1.0, 0.0, 2.0, 0.0]]))
    assert np.allclose(importance_of(plain, (4, 3))[:, 0], [0.4, 0.0, 1.6, 0.0])
    assert importance_of(None, (4, 3)) is None


def test_share_uniform_steps_and_quantize_meet_in_one_grid():
    model = graphs.mlp()
    shared, stats = share(model, steps_by_name={"fc1.weight": 0.05, "fc2.weight": 0.04}, min_params=0)
    methods = {t["name"]: t["method"] for t in stats["tensors"]}
    assert methods == {"fc1.weight": "uniform", "fc2.weight": "uniform", "fc3.weight": "kmeans"}
    assert stats["steps_by_name"] == {"fc1.weight": 0.05, "fc2.weight": 0.04}
    quantized, qstats = quantize(shared, None, DEFAULT_SETTINGS)
    rows = {r["name"]: r for r in qstats["weights"]}
    for name in ("fc1.weight", "fc2.weight"):
        assert rows[name]["scheme"] == "codebook" and rows[name]["rel_error"] == 0.0
    with pytest.raises(UsageError, match="step"):
        share(model, steps_by_name={"fc1.weight": 0.0})
    with pytest.raises(UsageError, match="no weight tensor"):
        share(model, steps_by_name={"nope": 0.1})


def test_an_all_zero_tensor_keeps_one_candidate_whatever_the_method():
    from compressor.search.ecq_budget import rate_curves

    originals = {
        "z": np.zeros((8, 8), np.float32),
        "w": np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32),
    }
    curves, arrays, _ = rate_curves(originals, {}, {}, method="uniform")
    z, w = curves
    assert [o["method"] for o in z["options"]] == ["kmeans"] and z["front"] == [0]
    assert np.array_equal(arrays[("z", 0)], originals["z"])
    assert {o["method"] for o in w["options"]} == {"uniform"}


def constant_columns(model, n=128, columns=10, value=0.7) -> Dataset:
    inputs = dict(graphs.make_inputs(model, n, 1).inputs)
    inputs["x"] = inputs["x"].copy()
    inputs["x"][:, :columns] = value  # a dead pixel after normalisation: constant, not zero
    return Dataset(inputs, None)


def test_constant_inputs_are_found_and_their_weights_folded_into_the_bias():
    from compressor.search.ecq_budget import constant_mask, fold_into_biases
    from compressor.search.layer_error import capture_layers

    model = graphs.mlp()
    calib = constant_columns(model)
    ws = [w for w in graph.weights(model) if w.name == "fc1.weight"]
    layers, _, _ = capture_layers(model, ws, calib, 1)
    layer = layers["fc1.weight"]
    assert layer.constant_inputs().tolist() == [True] * 10 + [False] * 54
    mask = constant_mask(layer, ws[0].shape)
    assert mask.shape == (128, 64) and mask[:, :10].all() and not mask[:, 10:].any()
    originals = {"fc1.weight": ws[0].array()}
    folded, stats = fold_into_biases(model, originals, {"fc1.weight": mask}, calib)
    assert stats["folded"] == [{"name": "fc1.weight", "weights": 1280}]
    w = next(x.array() for x in graph.weights(folded) if x.name == "fc1.weight")
    assert np.all(w[:, :10] == 0) and np.array_equal(w[:, 10:], originals["fc1.weight"][:, 10:])
    # the same outputs wherever those inputs keep their value
    assert np.allclose(run_model(folded, calib)[0], run_model(model, calib)[0], atol=1e-4)


def test_the_curves_pack_folded_weights_as_zeros_and_measure_them_as_they_were():
    from compressor.search.ecq_budget import rate_curves
    from compressor.search.layer_error import capture_layers

    model = graphs.mlp()
    calib = constant_columns(model)
    ws = [w for w in graph.weights(model) if w.name == "fc1.weight"]
    layers, reasons, _ = capture_layers(model, ws, calib, 1)
    originals = {"fc1.weight": ws[0].array()}
    folds = {}
    folded, arrays, _ = rate_curves(originals, layers, reasons, "uniform", fold_constants=True, folds=folds)
    plain, _, _ = rate_curves(originals, layers, reasons, "uniform")
    assert set(folds) == {"fc1.weight"}
    # every grid packs smaller with the constant columns folded, at no more layer error
    for a, b in zip(folded[0]["options"], plain[0]["options"]):
        assert a["bytes"] < b["bytes"] and a["error"] <= b["error"] + 1e-12
    for (name, _i), array in arrays.items():
        assert np.array_equal(array[:, :10], originals[name][:, :10])


def test_the_step_ladder_is_a_quarter_octave_apart():
    values = np.random.default_rng(0).normal(size=4096)
    steps = step_ladder(values, STEP_EXPONENTS)
    ratios = np.array(steps[1:]) / np.array(steps[:-1])
    assert np.allclose(ratios, 2**0.25)
    # the octave ladder of before is a subset: every step it tried is still a candidate
    assert set(np.round(step_ladder(values, tuple(range(-3, 9))), 12)) <= set(np.round(steps, 12))


def test_labeled_runs_let_the_share_search_take_more_of_the_budget():
    assert share_search_budget_share("accuracy") == SHARE_SEARCH_BUDGET_SHARE_LABELED > SHARE_SEARCH_BUDGET_SHARE
    assert share_search_budget_share("fidelity") == SHARE_SEARCH_BUDGET_SHARE_FIDELITY > SHARE_SEARCH_BUDGET_SHARE
    for mode in ("metric", "none"):
        assert share_search_budget_share(mode) == SHARE_SEARCH_BUDGET_SHARE


def test_candidate_codes_decode_to_exactly_the_arrays_measured():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(40, 30)).astype(np.float32)
    values[:5] = 0.0
    values[5:8] = -0.0  # a negative zero stays one
    for bits in (2, 8):
        shared = share_array(values, 2**bits)
        assert decoded(values, kmeans_code(shared)).tobytes() == shared.values.tobytes()
    fold = np.zeros(values.shape, bool)
    fold[:, :4] = True
    uniform = uniform_quantize(values, 0.05)
    code = uniform_code(uniform.levels, uniform.step, values.dtype, None)
    assert code[1].dtype == np.int8 and decoded(values, code).tobytes() == uniform.values.tobytes()
    folded = decoded(values, uniform_code(uniform.levels, uniform.step, values.dtype, fold))
    assert folded.tobytes() == np.where(fold, values, uniform.values).tobytes()


def test_a_search_whose_most_precise_candidate_overshoots_stops_after_two_runs():
    # An SNR floor no shared model reaches: the start overshoots, then the floor (every tensor
    # at its most precise option) does too, and the search ends there instead of shrinking.
    model = graphs.mlp()
    data = graphs.make_inputs(model, 64, 0)
    judge = Judge.of_model(model, data)
    judge.explicit_snr = True  # the floor gates the class scores too
    with pytest.raises(CompressorError, match=r"tried 2\)"):
        share_by_rate(model, data, 100.0, min_snr_db=300.0, min_params=0, judge=judge)
    assert judge.runs == 2


@pytest.mark.parametrize("floor_db", [25.0, 35.0])
def test_when_the_floor_fits_the_search_goes_on_from_the_start(floor_db):
    # The start misses both floors, the most precise allocation fits both: measured second, then
    # the search goes on as without it (at 35 dB it reaches allowance 0 itself: no run more).
    model = graphs.mlp()
    data = graphs.make_inputs(model, 64, 0)
    judge = Judge.of_model(model, data)
    judge.explicit_snr = True
    _, stats = share_by_rate(model, data, 100.0, min_snr_db=floor_db, min_params=0, judge=judge)
    tried = stats["budget_search"]["tried"]
    assert not tried[0]["within_budget"] and tried[1]["allowance"] == 0.0 and tried[1]["within_budget"]
    assert tried[2]["allowance"] == pytest.approx(tried[0]["allowance"] / 4)  # the search's own shrink step
    assert judge.runs == len(tried) <= 11


def test_the_search_hands_over_its_fronts_and_builds_gentler_allocations_as_its_own():
    model = graphs.mlp()
    data = labeled(model)
    kept = []
    shared, stats = share_by_rate(model, data, 2.0, min_params=0, keep_search=kept.append)
    (state,) = kept
    rebuilt, _ = state.build(state.choice)
    assert rebuilt.SerializeToString() == shared.SerializeToString()
    assert state.accepted == stats["budget_search"]["allowance"]["accepted"]
    assert backed_off(state, 1.0) is None  # not gentler
    gentle = backed_off(state, 1e9)  # near allowance 0: every tensor's most precise candidate
    assert gentle == allocated(state.knapsack, state.accepted / 1e9)
    fronts = {k["name"]: k["choices"] for k in state.knapsack}
    assert all(fronts[n].index(i) <= fronts[n].index(state.choice[n]) for n, i in gentle.items())
    built, _ = state.build(gentle)
    assert run_model(built, data)[0].shape == run_model(shared, data)[0].shape
