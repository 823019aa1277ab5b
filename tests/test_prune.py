"""prune: the numpy mask helpers, the pass on real graph shapes, the budget search, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import constant_and_if_net, make_model, vi
from graphs import laplace_weights as _w
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compressor import graph
from compressor.cli import main
from compressor.data import Dataset, load_dataset
from compressor.errors import UsageError
from compressor.evaluate import make_session, run_model
from compressor.passes.prune import (
    find_cut,
    global_magnitude_masks,
    layer_magnitude_mask,
    layer_magnitude_masks,
    magnitude_masks,
    prune,
    random_masks,
    target_zeros,
)
from compressor.search.prune_budget import MAX_FINAL_CHECKS, MAX_SEARCH_RUNS, allocate_ratios, prune_to_budget

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


# =========================================================================== pure numpy


def reference_global(arrays, sparsity):
    """The specification, slowly: a stable full sort of the concatenated float32 magnitudes."""
    flat = np.concatenate([np.abs(np.asarray(a, dtype=np.float32)).ravel() for a in arrays])
    k = int(round(sparsity * flat.size))
    chosen = np.zeros(flat.size, bool)
    chosen[np.argsort(flat, kind="stable")[:k]] = True
    chosen |= np.concatenate([np.asarray(a).ravel() == 0 for a in arrays])
    out, offset = [], 0
    for a in arrays:
        out.append(chosen[offset : offset + a.size].reshape(a.shape))
        offset += a.size
    return out


# Few distinct values (many ties, zeros included) or continuous values.
values = st.one_of(
    st.lists(st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.0, -2.0, 3.0]), min_size=0, max_size=40),
    st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=0, max_size=40),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(values, min_size=1, max_size=4), st.floats(0, 0.999))
def test_global_masks_equal_a_stable_sort_with_ties_by_concatenation_order(lists, sparsity):
    arrays = [np.array(v, dtype=np.float32) for v in lists]
    masks = global_magnitude_masks(arrays, sparsity)
    expected = reference_global(arrays, sparsity)
    for m, e in zip(masks, expected):
        assert m.shape == e.shape and np.array_equal(m, e)
    total = sum(a.size for a in arrays)
    zeros_before = sum(int(np.count_nonzero(a == 0)) for a in arrays)
    assert sum(int(m.sum()) for m in masks) == max(target_zeros(sparsity, total), zeros_before)


@settings(max_examples=200, deadline=None)
@given(values, st.floats(0, 1))
def test_layer_mask_is_exact_per_array(v, ratio):
    a = np.array(v, dtype=np.float32).reshape(-1, 1) if v else np.zeros((0, 1), np.float32)
    mask = layer_magnitude_mask(a, ratio)
    assert mask.shape == a.shape
    assert np.array_equal(mask, reference_global([a], ratio)[0])
    assert int(mask.sum()) == max(target_zeros(ratio, a.size), int(np.count_nonzero(a == 0)))


def test_find_cut_counts_ties_at_the_threshold():
    cut = find_cut(np.array([3, 1, 2, 2, 2, 5], np.float32), 3)
    assert (cut.threshold, cut.ties, cut.k) == (2.0, 2, 3)
    assert find_cut(np.array([1.0], np.float32), 0).k == 0
    assert find_cut(np.array([1.0, 1.0], np.float32), 5).k == 2  # capped at the size


def test_global_threshold_spans_arrays_and_breaks_ties_by_array_order():
    a = np.array([[1.0, 5.0], [2.0, 2.0]], np.float32)
    b = np.array([2.0, 0.5, 9.0], np.float32)
    ma, mb = global_magnitude_masks([a, b], 4 / 7)  # 4 zeros: 0.5, 1.0 and the first two 2.0s (both in a)
    assert ma.tolist() == [[True, False], [True, True]]
    assert mb.tolist() == [False, True, False]
    ma, mb = global_magnitude_masks([b, a], 4 / 7)  # the order of the list decides the ties
    assert ma.tolist() == [True, True, False] and mb.tolist() == [[True, False], [True, False]]


def test_layer_and_global_differ_the_global_cut_favours_large_small_weights():
    rng = np.random.default_rng(0)
    small_layer = rng.normal(0, 1.0, 100).astype(np.float32)  # few, large weights
    large_layer = rng.normal(0, 0.1, 10_000).astype(np.float32)  # many, small weights
    g = global_magnitude_masks([small_layer, large_layer], 0.8)
    assert g[0].mean() < 0.8 < g[1].mean()
    per_layer = layer_magnitude_masks([small_layer, large_layer], 0.8)
    assert [m.sum() for m in per_layer] == [80, 8000]
    assert [m.sum() for m in layer_magnitude_masks([small_layer, large_layer], [0.5, 0.25])] == [50, 2500]


def test_already_zero_weights_count_towards_the_target():
    a = np.arange(1, 101, dtype=np.float32)
    a[:30] = 0.0
    assert layer_magnitude_mask(a, 0.5).sum() == 50  # 30 existing + the 20 smallest nonzeros
    assert np.array_equal(np.flatnonzero(layer_magnitude_mask(a, 0.5)), np.arange(50))
    assert layer_magnitude_mask(a, 0.1).sum() == 30  # nothing is un-pruned
    assert random_masks([a], 0.5, seed=3)[0].sum() == 50
    assert random_masks([a], 0.5, seed=3)[0][:30].all()


def test_random_masks_are_seeded_exact_and_not_by_magnitude():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(64, 64)).astype(np.float32), rng.normal(size=1000).astype(np.float32)]
    m1 = random_masks(arrays, 0.7, seed=1)
    assert [int(m.sum()) for m in m1] == [target_zeros(0.7, 4096), 700]
    assert all(np.array_equal(a, b) for a, b in zip(m1, random_masks(arrays, 0.7, seed=1)))
    assert not np.array_equal(m1[0], random_masks(arrays, 0.7, seed=2)[0])
    # Not by magnitude: the pruned values are as large as the kept ones on average.
    pruned, kept = np.abs(arrays[0][m1[0]]).mean(), np.abs(arrays[0][~m1[0]]).mean()
    assert abs(pruned - kept) < 0.1


@pytest.mark.parametrize("dtype", [np.float16, np.float64, "bfloat16"])
def test_masks_accept_other_float_dtypes(dtype):
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        dtype = ml_dtypes.bfloat16
    a = np.random.default_rng(0).normal(size=(10, 30)).astype(dtype)
    for scope in ("global", "layer", "random"):
        (mask,) = magnitude_masks([a], 0.6, scope=scope)
        assert mask.shape == a.shape and mask.sum() == 180


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), True, "0.5", None])
def test_sparsity_outside_0_1_is_a_usage_error(bad):
    with pytest.raises(UsageError):
        global_magnitude_masks([np.ones(4, np.float32)], bad)


def test_unknown_scope_is_a_usage_error():
    with pytest.raises(UsageError, match="scope"):
        magnitude_masks([np.ones(4, np.float32)], 0.5, scope="channel")


def test_allocate_ratios_maximises_zeros_per_point_of_drop():
    cheap_big = {"name": "big", "params": 1000, "ratios": [0.5, 0.9], "drops": [0.0, 0.5]}
    costly_small = {"name": "small", "params": 100, "ratios": [0.5, 0.9], "drops": [0.5, 5.0]}
    assert allocate_ratios([cheap_big, costly_small], 0.0) == {"big": 0.5, "small": 0.0}
    r = allocate_ratios([cheap_big, costly_small], 0.5)
    assert r["big"] == pytest.approx(0.9) and r["small"] == 0.0
    r = allocate_ratios([cheap_big, costly_small], 0.75)  # half of the small tensor's first segment
    assert r["big"] == pytest.approx(0.9) and r["small"] == pytest.approx(0.25)
    assert allocate_ratios([cheap_big, costly_small], 100.0) == {"big": 0.9, "small": 0.9}
    # Noisy curves: negative and non-monotone drops do not make a higher ratio look free.
    noisy = {"name": "n", "params": 10, "ratios": [0.3, 0.5, 0.7], "drops": [-0.2, 1.0, 0.4]}
    assert allocate_ratios([noisy], 0.0) == {"n": 0.3}
    assert allocate_ratios([noisy], 1.0) == {"n": 0.7}  # 0.7 costs no more than 0.5 (monotone envelope)


# =========================================================================== the pass on ONNX models


def random_data(model, n=16, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    inputs = {}
    for v in graph.graph_inputs(model):
        shape = [n if not d.dim_value else d.dim_value for d in v.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
        inputs[v.name] = (
            rng.integers(0, 8, size=shape) if np.dtype(dtype).kind in "iu" else rng.normal(size=shape)
        ).astype(dtype)
    return Dataset(inputs, None)


def tensor_bytes(model) -> list[tuple[str, bytes]]:
    return [(r.name, r.proto.SerializeToString()) for r in graph.iter_tensors(model)]


def without_tensor_data(model, names) -> bytes:
    """The model's bytes with the data of the named tensors blanked: everything else must match."""
    m = graph.copy_model(model)
    for ref in graph.iter_tensors(m):
        if ref.name in names:
            dims, dtype, name = list(ref.proto.dims), ref.proto.data_type, ref.proto.name
            ref.proto.Clear()
            ref.proto.name, ref.proto.data_type = name, dtype
            ref.proto.dims.extend(dims)
    return m.SerializeToString()


def check_pruned(original, pruned, stats, sparsity, scope):
    """The contract: exact counts, magnitude order, only selected tensors touched, valid and runnable."""
    graph.check_model(pruned)
    rows = stats["tensors"]
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names)), "a shared tensor is pruned (and reported) once"
    # Everything but the pruned tensors' values is bit-identical: graph, names, other tensors.
    assert without_tensor_data(original, names) == without_tensor_data(pruned, names)
    before = {w.name: w.array() for w in graph.weights(original) if w.name in names}
    after = {w.name: w.array() for w in graph.weights(pruned) if w.name in names}
    for r in rows:
        old, new = before[r["name"]].astype(np.float32), after[r["name"]].astype(np.float32)
        assert new.dtype == old.dtype and new.shape == old.shape
        assert np.all((new == old) | (new == 0)), "pruning only writes zeros"
        assert r["zeros_after"] == int(np.count_nonzero(new == 0)) and r["zeros_before"] == int(
            np.count_nonzero(old == 0)
        )
        if scope in ("layer", "random"):
            assert r["zeros_after"] == max(r["zeros_before"], target_zeros(sparsity, r["params"]))
        if scope == "layer":
            assert np.abs(old[new == 0]).max(initial=0) <= np.abs(old[new != 0]).min(initial=np.inf)
    totals = stats["totals"]
    if scope == "global":
        assert totals["zeros_after"] == max(totals["zeros_before"], target_zeros(sparsity, totals["params"]))
    if scope == "global" and names:  # nothing pruned (e.g. an already-quantized model): no threshold to check
        pruned_mags = np.concatenate([np.abs(before[n][after[n] == 0]).ravel() for n in names])
        kept_mags = np.concatenate([np.abs(before[n][after[n] != 0]).ravel() for n in names])
        assert pruned_mags.max(initial=0) <= kept_mags.min(initial=np.inf), "one threshold across tensors"
    assert totals["zeros_after"] == sum(r["zeros_after"] for r in rows)
    data = random_data(original, n=4)
    ref, got = run_model(original, data), run_model(pruned, data)
    assert [g.shape for g in got] == [r.shape for r in ref]
    assert all(np.isfinite(g).all() for g in got if g.dtype.kind == "f")


def shared_matmul_net(seed=0):
    """One weight used by two MatMuls (and reached once through an Identity)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.1, (64, 64)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 64).astype(np.float32), "b"),
    ]
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "w"], ["h"]),
        n("Add", ["h", "b"], ["hb"]),
        n("Relu", ["hb"], ["r"]),
        n("Identity", ["w"], ["w_alias"]),
        n("MatMul", ["r", "w_alias"], ["y"]),
    ]
    return make_model(nodes, [vi("x", ["N", 64])], [vi("y", ["N", 64])], inits)


def embedding_net(seed=0):
    """Gather embedding (tied with the output MatMul) + a Gemm."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.1, (100, 32)).astype(np.float32), "emb"),
        numpy_helper.from_array(rng.normal(0, 0.1, (32, 32)).astype(np.float32), "fc"),
        numpy_helper.from_array(rng.normal(0, 0.1, (100, 32)).astype(np.float32), "emb_only"),
    ]
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "ids"], ["e"]),
        n("Gather", ["emb_only", "ids"], ["e2"]),
        n("Add", ["e", "e2"], ["s"]),
        n("Gemm", ["s", "fc"], ["h"]),
        n("Transpose", ["emb"], ["embT"]),
        n("MatMul", ["h", "embT"], ["logits"]),
    ]
    return make_model(nodes, [vi("ids", ["N"], TensorProto.INT64)], [vi("logits", ["N", 100])], inits)


@pytest.mark.parametrize("scope", ["global", "layer", "random"])
def test_shared_weight_is_pruned_once_and_consistently(scope):
    model = shared_matmul_net()
    out, stats = prune(model, 0.6, scope=scope, min_params=16)
    assert [r["name"] for r in stats["tensors"]] == ["w"]
    check_pruned(model, out, stats, 0.6, scope)
    assert stats["tensors"][0]["zeros_after"] == target_zeros(0.6, 4096)


def test_input_model_is_not_modified_and_output_is_deterministic():
    model = shared_matmul_net()
    before = model.SerializeToString()
    a, _ = prune(model, 0.5, min_params=16)
    b, _ = prune(model, 0.5, min_params=16)
    assert model.SerializeToString() == before
    assert a.SerializeToString() == b.SerializeToString()
    r1, _ = prune(model, 0.5, scope="random", seed=7, min_params=16)
    r2, _ = prune(model, 0.5, scope="random", seed=7, min_params=16)
    r3, _ = prune(model, 0.5, scope="random", seed=8, min_params=16)
    assert r1.SerializeToString() == r2.SerializeToString() != r3.SerializeToString()


def test_embeddings_only_when_asked_and_tied_embeddings_stay_consistent():
    model = embedding_net()
    _, stats = prune(model, 0.5, min_params=16)
    assert [r["name"] for r in stats["tensors"]] == ["fc"]
    assert {s["name"]: s["reason"] for s in stats["skipped"]}.keys() == {"emb", "emb_only"}
    out, stats = prune(model, 0.5, min_params=16, include_embeddings=True)
    assert sorted(r["name"] for r in stats["tensors"]) == ["emb", "emb_only", "fc"]
    check_pruned(model, out, stats, 0.5, "global")


def test_exclude_min_params_and_skipped_reasons():
    model = embedding_net()
    _, stats = prune(model, 0.5, min_params=16, exclude="^f", include_embeddings=True)
    assert sorted(r["name"] for r in stats["tensors"]) == ["emb", "emb_only"]
    assert {"name": "fc", "role": "gemm_b", "params": 1024, "reason": "matches --exclude"} in stats["skipped"]
    _, stats = prune(model, 0.5)  # default min_params 1024: fc (32x32) qualifies exactly
    assert [r["name"] for r in stats["tensors"]] == ["fc"]
    _, stats = prune(model, 0.5, min_params=1025)
    assert stats["tensors"] == [] and "nothing to prune" in stats["warnings"][0]
    with pytest.raises(UsageError, match="regular expression"):
        prune(model, 0.5, exclude="(")
    with pytest.raises(UsageError):
        prune(model, 0.5, min_params=-1)


def test_nothing_prunable_returns_the_model_unchanged_with_a_warning():
    model = shared_matmul_net()
    out, stats = prune(model, 0.9, min_params=10**6)
    assert out.SerializeToString() == model.SerializeToString()
    assert stats["totals"]["params"] == 0 and stats["warnings"]


def test_non_finite_tensors_are_skipped():
    model = shared_matmul_net()
    w = graph.weight_by_name(model)["w"]
    values = w.array().copy()
    values[0, 0] = np.nan
    w.set_array(values)
    out, stats = prune(model, 0.5, min_params=16)
    assert stats["tensors"] == [] and stats["skipped"][0]["reason"].startswith("non-finite")


@pytest.mark.parametrize("scope", ["global", "layer", "random"])
def test_pruning_a_pruned_model_further_prunes_only_the_difference(scope):
    model = shared_matmul_net()
    half, _ = prune(model, 0.5, scope=scope, min_params=16, seed=1)
    more, stats = prune(half, 0.8, scope=scope, min_params=16, seed=1)
    w_half, w_more = graph.weight_by_name(half)["w"].array(), graph.weight_by_name(more)["w"].array()
    assert np.all(w_more[w_half == 0] == 0), "earlier zeros stay"
    assert stats["tensors"][0]["zeros_before"] == target_zeros(0.5, 4096)
    assert stats["tensors"][0]["zeros_after"] == target_zeros(0.8, 4096)
    less, stats = prune(more, 0.3, scope=scope, min_params=16)
    assert stats["tensors"][0]["zeros_after"] == target_zeros(0.8, 4096) and stats["warnings"]


def test_sample_models_exact_sparsity_macs_and_json_stats():
    model = graph.load_model(SAMPLES / "lenet5.onnx")
    out, stats = prune(model, 0.9)
    check_pruned(model, out, stats, 0.9, "global")
    assert [r["name"] for r in stats["tensors"]] == ["conv2.weight", "fc1.weight", "fc2.weight"]
    assert stats["skipped"][0]["name"] == "conv1.weight"  # 500 < 1024
    by_weight = {n["weight"]: n for n in stats["macs"]["nodes"]}
    density = {r["name"]: 1 - r["sparsity"] for r in stats["tensors"]}
    assert by_weight["conv2.weight"]["macs"] == 8 * 8 * 50 * 20 * 25
    for name, d in density.items():
        assert by_weight[name]["nonzero_macs"] == round(by_weight[name]["macs"] * d)
    assert by_weight["conv1.weight"]["density"] == 1.0
    json.dumps(stats)  # JSON-able as is


# =========================================================================== budget


def sample(name, split="test"):
    model = graph.load_model(SAMPLES / f"{name}.onnx")
    return model, load_dataset(SAMPLES / f"{name}_{split}.npz", model)


def measured_drop(model, pruned, data, reference_accuracy=None):
    """Accuracy drop in points, measured independently of the pass (fresh sessions)."""
    from compressor.evaluate import accuracy

    if reference_accuracy is None:
        reference_accuracy = accuracy(run_model(model, data)[0], data.labels)
    return reference_accuracy - accuracy(run_model(pruned, data)[0], data.labels)


def test_budget_on_lenet5_beats_every_global_ratio_within_the_same_drop():
    model, data = sample("lenet5")
    out, stats = prune_to_budget(model, data, 1.0, max_evals=20)
    check_pruned(model, out, stats, None, "budget")
    drop = measured_drop(model, out, data)
    assert drop <= 1.0 + 1e-9
    assert stats["budget"]["final"]["drop"] == pytest.approx(drop)
    assert stats["budget"]["metric"] == "accuracy" and stats["budget"]["evaluations"] <= 20
    reference = stats["budget"]["baseline"]["accuracy"]
    ratios = [float(s) for s in np.arange(0.70, 0.905, 0.01)]
    zeros = [prune(model, s)[1]["totals"]["zeros_after"] for s in ratios]  # no model run
    assert zeros == sorted(set(zeros)), "zeros grow with the ratio"
    fits = lambda s: measured_drop(model, prune(model, s)[0], data, reference) <= 1.0 + 1e-9
    # The global ratios with at least the budget's zeros all miss the budget, and some ratio
    # fits it: the best fitting global ratio has fewer zeros (each is measured only as needed).
    assert not any(fits(s) for s, z in zip(ratios, zeros) if z >= stats["totals"]["zeros_after"])
    assert any(fits(s) for s in ratios), "some global ratio fits the budget"
    assert stats["totals"]["sparsity"] > 0.85  # 0.88 when written; the best global ratio is ~0.78


def test_budget_on_lenet300_stays_within_the_budget():
    model, data = sample("lenet300")
    out, stats = prune_to_budget(model, data, 1.0)
    assert measured_drop(model, out, data) <= 1.0 + 1e-9
    # At least as many zeros as the best global ratio within the same drop (measured here).
    reference = stats["budget"]["baseline"]["accuracy"]
    for s in np.arange(0.50, 0.805, 0.02)[::-1]:
        g, g_stats = prune(model, float(s))
        if measured_drop(model, g, data, reference) <= 1.0 + 1e-9:
            break
    assert stats["totals"]["zeros_after"] >= g_stats["totals"]["zeros_after"]
    assert stats["totals"]["sparsity"] > 0.6
    # layer-local curves for both tensors, and a handful of whole-model runs
    assert {c["method"] for c in stats["layer_errors"]["curves"]} == {"covariance"}
    assert stats["budget"]["whole_model_runs"] <= MAX_SEARCH_RUNS + MAX_FINAL_CHECKS
    assert set(stats["budget"]["ratios"]) == {"fc1.weight", "fc2.weight"}


def test_budget_without_labels_uses_top1_agreement():
    from compressor.evaluate import fidelity

    model, data = sample("lenet300", "calib")
    assert data.labels is None
    out, stats = prune_to_budget(model, data, 2.0, max_evals=12)
    assert stats["budget"]["metric"] == "fidelity"
    agreement = fidelity(run_model(model, data), run_model(out, data))["top1_agreement"]
    assert 100.0 - agreement <= 2.0 + 1e-9
    assert stats["budget"]["final"]["top1_agreement"] == pytest.approx(agreement)
    assert stats["totals"]["sparsity"] > 0.5
    assert stats["budget"]["evaluations"] <= 12


def test_budget_zero_keeps_predictions_and_reuses_given_curves():
    model = shared_matmul_net()
    data = random_data(model, n=64)
    _, first = prune_to_budget(model, data, 0.0, min_params=16, ratios=[0.2, 0.5], max_evals=6)
    curves = first["layer_errors"]
    out, stats = prune_to_budget(model, data, 0.0, min_params=16, layer_errors=curves, max_evals=6)
    assert stats["layer_errors"] is curves
    assert stats["budget"]["final"]["drop"] == 0.0
    assert stats["budget"]["evaluations"] <= 6
    check_pruned(model, out, stats, None, "budget")


def test_budget_bad_arguments_and_nothing_prunable():
    model = shared_matmul_net()
    data = random_data(model, n=8)
    for bad in (-1, float("nan"), "1", True):
        with pytest.raises(UsageError):
            prune_to_budget(model, data, bad)
    with pytest.raises(UsageError):
        prune_to_budget(model, data, 1.0, max_evals=0)
    out, stats = prune_to_budget(model, data, 1.0, min_params=10**6)
    assert out.SerializeToString() == model.SerializeToString() and stats["warnings"]


# =========================================================================== CLI


@pytest.fixture()
def lenet300_path(tmp_path):
    return SAMPLES / "lenet300.onnx"


def test_cli_prune_json_and_table(tmp_path, capsys, lenet300_path):
    out = tmp_path / "p.onnx"
    assert main(["prune", str(lenet300_path), "-o", str(out), "--sparsity", "0.8", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["totals"]["zeros_after"] == target_zeros(0.8, stats["totals"]["params"])
    assert stats["scope"] == "global" and stats["macs"]["total_macs"] == 266200
    pruned = graph.load_model(out)  # runs the checker
    make_session(pruned)
    assert (
        main(
            [
                "prune",
                str(lenet300_path),
                "-o",
                str(tmp_path / "q.onnx"),
                "--scope",
                "layer",
                "--sparsity",
                "0.5",
                "--exclude",
                "fc2",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "fc1.weight" in text and "matches --exclude" in text and "50.00" in text


def test_cli_prune_budget_json(tmp_path, capsys, lenet300_path):
    out = tmp_path / "b.onnx"
    code = main(
        [
            "prune",
            str(lenet300_path),
            "-o",
            str(out),
            "--budget",
            "1",
            "--data",
            str(SAMPLES / "lenet300_test.npz"),
            "--max-evals",
            "10",
            "--json",
        ]
    )
    assert code == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["scope"] == "budget" and stats["budget"]["final"]["drop"] <= 1.0 + 1e-9
    assert stats["budget"]["evaluations"] <= 10
    assert out.exists()


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--sparsity", "1"], 2, "sparsity must be in [0, 1)"),
        (["--sparsity", "-0.1"], 2, "sparsity"),
        (["--sparsity", "0.5", "--scope", "channel"], 2, "channel"),
        (["--budget", "1"], 2, "--budget needs --data"),
        (["--budget", "1", "--sparsity", "0.5", "--data", "d.npz"], 2, "not both"),
        (["--budget", "-1", "--data", "d.npz"], 2, "non-negative"),
        (["--sparsity", "0.5", "--exclude", "("], 2, "regular expression"),
    ],
)
def test_cli_prune_usage_errors_write_nothing(tmp_path, capsys, lenet300_path, args, code, message):
    out = tmp_path / "p.onnx"
    assert main(["prune", str(lenet300_path), "-o", str(out), *args]) == code
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_prune_refuses_its_input_and_bad_data(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    src.write_bytes((SAMPLES / "lenet300.onnx").read_bytes())
    assert main(["prune", str(src), "-o", str(src), "--sparsity", "0.5"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    out = tmp_path / "p.onnx"
    assert main(["prune", str(src), "-o", str(out), "--budget", "1", "--data", str(SAMPLES / "lenet5_test.npz")]) == 1
    assert "model expects" in capsys.readouterr().err
    assert not out.exists()
    assert main(["prune", str(tmp_path / "missing.onnx"), "-o", str(out)]) == 2
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp files left"


def test_cli_nothing_to_prune_warns_and_writes_the_model_unchanged(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(shared_matmul_net(), src)
    out = tmp_path / "p.onnx"
    assert main(["prune", str(src), "-o", str(out), "--sparsity", "0.5", "--min-params", "5000"]) == 0
    assert "nothing to prune" in capsys.readouterr().err
    assert onnx.load(out).SerializeToString() == onnx.load(src).SerializeToString()


# =========================================================================== graph zoo
# Local builders of the graph shapes the issue names, so these tests do not depend on
# another module; tests/graphs.py (the shared zoo) is exercised too when it is present.


def transformer_encoder(d=64, heads=4, seq=6, vocab=50, seed=0):
    """Token embedding (Gather) + one encoder block: attention, LayerNorm, FFN, int shape tensors."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_w(rng, (vocab, d)), "tok_emb")]
    inits += [numpy_helper.from_array(_w(rng, (d, d)), name) for name in ("wq", "wk", "wv", "wo")]
    inits += [
        numpy_helper.from_array(_w(rng, (d, 4 * d)), "w_ff1"),
        numpy_helper.from_array(_w(rng, (4 * d,)), "b_ff1"),
        numpy_helper.from_array(_w(rng, (4 * d, d)), "w_ff2"),
        numpy_helper.from_array(np.ones(d, np.float32), "ln_g"),
        numpy_helper.from_array(np.zeros(d, np.float32), "ln_b"),
        numpy_helper.from_array(np.array([0, 0, heads, d // heads], np.int64), "split_shape"),
        numpy_helper.from_array(np.array([0, 0, d], np.int64), "merge_shape"),
        numpy_helper.from_array(np.array(1 / np.sqrt(d // heads), np.float32), "scale"),
    ]
    n = helper.make_node
    nodes = [n("Gather", ["tok_emb", "ids"], ["x"])]
    nodes += [n("MatMul", ["x", w], [o]) for w, o in (("wq", "q0"), ("wk", "k0"), ("wv", "v0"))]
    for t in ("q", "k", "v"):
        nodes += [
            n("Reshape", [f"{t}0", "split_shape"], [f"{t}1"]),
            n("Transpose", [f"{t}1"], [f"{t}2"], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        n("Transpose", ["k2"], ["kt"], perm=[0, 1, 3, 2]),
        n("MatMul", ["q2", "kt"], ["s0"]),
        n("Mul", ["s0", "scale"], ["s1"]),
        n("Softmax", ["s1"], ["p"], axis=-1),
        n("MatMul", ["p", "v2"], ["a0"]),
        n("Transpose", ["a0"], ["a1"], perm=[0, 2, 1, 3]),
        n("Reshape", ["a1", "merge_shape"], ["a2"]),
        n("MatMul", ["a2", "wo"], ["a3"]),
        n("Add", ["x", "a3"], ["r0"]),
        n("LayerNormalization", ["r0", "ln_g", "ln_b"], ["h0"], axis=-1),
        n("MatMul", ["h0", "w_ff1"], ["f0"]),
        n("Add", ["f0", "b_ff1"], ["f0b"]),
        n("Relu", ["f0b"], ["f1"]),
        n("MatMul", ["f1", "w_ff2"], ["f2"]),
        n("Add", ["h0", "f2"], ["y"]),
    ]
    return make_model(nodes, [vi("ids", ["N", seq], TensorProto.INT64)], [vi("y", ["N", seq, d])], inits)


def depthwise_resnet(c=32, seed=0):
    """Stem conv, depthwise conv (group=c) + BatchNorm, pointwise conv, residual Add, Gemm head."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, (c, 3, 3, 3)), "stem"),
        numpy_helper.from_array(_w(rng, (c, 1, 3, 3)), "dw"),
        numpy_helper.from_array(_w(rng, (c, c, 1, 1)), "pw"),
        numpy_helper.from_array(_w(rng, (c,)), "pw_bias"),
        numpy_helper.from_array(_w(rng, (10, c)), "fc"),
        numpy_helper.from_array(_w(rng, (10,)), "fc_bias"),
    ]
    for name, val in (
        ("bn_s", 1 + rng.normal(0, 0.1, c)),
        ("bn_b", rng.normal(0, 0.1, c)),
        ("bn_m", rng.normal(0, 0.1, c)),
        ("bn_v", 1 + rng.random(c)),
    ):
        inits.append(numpy_helper.from_array(val.astype(np.float32), name))
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "stem"], ["s"], pads=[1, 1, 1, 1]),
        n("Conv", ["s", "dw"], ["d"], group=c, pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["d", "bn_s", "bn_b", "bn_m", "bn_v"], ["b"]),
        n("Relu", ["b"], ["r"]),
        n("Conv", ["r", "pw", "pw_bias"], ["p"]),
        n("Add", ["s", "p"], ["res"]),
        n("GlobalAveragePool", ["res"], ["g"]),
        n("Flatten", ["g"], ["f"]),
        n("Gemm", ["f", "fc", "fc_bias"], ["y"], transB=1),
    ]
    return make_model(nodes, [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 10])], inits)


def recurrent_net(op="GRU", d_in=24, hidden=32, seq=5, seed=0):
    rng = np.random.default_rng(seed)
    gates = {"GRU": 3, "LSTM": 4, "RNN": 1}[op]
    inits = [
        numpy_helper.from_array(_w(rng, (1, gates * hidden, d_in)), "W"),
        numpy_helper.from_array(_w(rng, (1, gates * hidden, hidden)), "R"),
        numpy_helper.from_array(_w(rng, (1, 2 * gates * hidden)), "B"),
    ]
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, ["x", "W", "R", "B"], outputs, hidden_size=hidden)
    outs = [vi("Y", [seq, 1, "N", hidden]), vi("Y_h", [1, "N", hidden])] + (
        [vi("Y_c", [1, "N", hidden])] if op == "LSTM" else []
    )
    return make_model([node], [vi("x", [seq, "N", d_in])], outs, inits)


def qdq_net(seed=0):
    """int8 weight + DequantizeLinear: nothing float to prune."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, (64, 64)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
    ]
    n = helper.make_node
    nodes = [n("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"]), n("MatMul", ["x", "w"], ["y"])]
    return make_model(nodes, [vi("x", ["N", 64])], [vi("y", ["N", 64])], inits)


ZOO = {
    "transformer_encoder": (transformer_encoder, {"wq", "wk", "wv", "wo", "w_ff1", "w_ff2"}),
    "depthwise_resnet": (depthwise_resnet, {"stem", "dw", "pw", "fc"}),
    "gru": (lambda: recurrent_net("GRU"), {"W", "R"}),
    "lstm": (lambda: recurrent_net("LSTM"), {"W", "R"}),
    "mlp_shared_weight": (shared_matmul_net, {"w"}),
    "constant_and_if": (constant_and_if_net, {"cw", "proj", "outer_w", "then_w"}),
}


@pytest.mark.parametrize("scope", ["global", "layer", "random"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_exact_sparsity_untouched_non_weights_and_runs(name, scope):
    build, expected = ZOO[name]
    model = build()
    for sparsity in (0.5, 0.83):
        out, stats = prune(model, sparsity, scope=scope, min_params=200, seed=3)
        assert {r["name"] for r in stats["tensors"]} == expected
        check_pruned(model, out, stats, sparsity, scope)
        if scope == "global":
            assert stats["totals"]["zeros_after"] == target_zeros(sparsity, stats["totals"]["params"])
    if name == "constant_and_if":
        assert [r.get("graph") for r in stats["tensors"] if r["name"] == "then_w"] == ["If_8/then_branch"]


def test_zoo_embedding_on_request_and_qdq_has_nothing_to_prune():
    model = transformer_encoder()
    out, stats = prune(model, 0.7, min_params=200, include_embeddings=True)
    assert "tok_emb" in {r["name"] for r in stats["tensors"]}
    check_pruned(model, out, stats, 0.7, "global")
    model = qdq_net()
    out, stats = prune(model, 0.7, min_params=0)
    assert stats["tensors"] == [] and stats["warnings"]
    assert out.SerializeToString() == model.SerializeToString()


def test_zoo_sensitivity_and_budget_without_labels():
    model = depthwise_resnet()
    data = random_data(model, n=64, seed=2)
    out, stats = prune_to_budget(model, data, 5.0, min_params=200, ratios=[0.5, 0.9], max_evals=10)
    assert stats["budget"]["final"]["drop"] <= 5.0
    check_pruned(model, out, stats, None, "budget")


SHARED_ZOO = [
    "mlp",
    "mlp_matmul_shared",
    "mlp_with_preprocessing",
    "conv_net",
    "depthwise_resnet",
    "transformer_encoder",
    "gru_model",
    "lstm_model",
    "constant_weights_conv",
    "if_subgraph_model",
    "quantized_qdq_model",
]


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("name", SHARED_ZOO)
def test_shared_graph_zoo(name, scope):
    graphs = pytest.importorskip("graphs", reason="tests/graphs.py (the shared zoo) is not there yet")
    build = getattr(graphs, name, None)
    if build is None:
        pytest.skip(f"tests/graphs.py has no {name}")
    model = build()
    out, stats = prune(model, 0.75, scope=scope, min_params=64)
    if name == "quantized_qdq_model":
        assert stats["tensors"] == [] or all(
            r["role"] in ("conv_filter", "gemm_b", "matmul_const") for r in stats["tensors"]
        )
    check_pruned(model, out, stats, 0.75, scope)
    data = graphs.make_inputs(model, 4, 0) if hasattr(graphs, "make_inputs") else None
    if data is not None:
        feed = data.inputs if isinstance(data, Dataset) else data
        session = make_session(out)
        session.run(None, feed)


def test_a_matrix_weight_with_a_non_matrix_use_is_skipped_with_its_reason():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(64, 64)).astype(np.float32), "w")
    n = helper.make_node
    model = make_model(
        [n("MatMul", ["x", "w"], ["h"]), n("Add", ["h", "w"], ["y"])], [vi("x", [64, 64])], [vi("y", [64, 64])], [w]
    )
    out, stats = prune(model, 0.5, min_params=16)
    assert stats["tensors"] == []
    assert stats["skipped"] == [{"name": "w", "role": "mixed", "params": 4096, "reason": "mixed uses (Add, MatMul)"}]


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes_keep_their_dtype(dtype):
    rng = np.random.default_rng(0)
    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    w = numpy_helper.from_array(rng.normal(size=(64, 64)).astype(dtype), "w")
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [vi("x", ["N", 64], onnx_type)],
        [vi("y", ["N", 64], onnx_type)],
        [w],
    )
    out, stats = prune(model, 0.7, min_params=16)
    assert stats["tensors"][0]["zeros_after"] == target_zeros(0.7, 4096)
    tensor = out.graph.initializer[0]
    assert tensor.data_type == onnx_type
    check_pruned(model, out, stats, 0.7, "global")
