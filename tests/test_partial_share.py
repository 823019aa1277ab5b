"""The share ladder's partial rungs: a candidate's sharing kept on the tensors that fit, the rest unshared."""

import graphs
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from stage_contexts import measured_context, run_if_model

from compressor import graph
from compressor.data import Dataset
from compressor.report import partial_lines
from compressor.search.branch_use import untaken_branches, unused_weights
from compressor.search.share_subset import MAX_VERDICTS, grow, ranking
from compressor.stages.ladder import Attempt, Ladder, StageContext, run_ladder
from compressor.stages.partial_share import SEARCHED, UNUSED_ONLY, LastBuilt, partial_attempts
from compressor.variants import with_arrays

# --------------------------------------------------------------------------- grow (no model)


def counting(bad: set[int]):
    """fits(ranks): no rank of `bad` among them; the calls are recorded."""
    calls: list[list[int]] = []

    def fits(ranks: list[int]) -> bool:
        calls.append(list(ranks))
        return not bad & set(ranks)

    return fits, calls


def test_grow_drops_the_one_tensor_that_breaks_the_budget_among_many_with_a_handful_of_verdicts():
    fits, calls = counting({40})
    sel = grow(0, 200, fits)
    assert sel.kept == [i for i in range(200) if i != 40]
    assert set(sel.why) == {40} and "exceeded the budget" in sel.why[40]
    # a bisection (log2 200 < 8 verdicts) to the breaker, then the rest together in one
    assert len(calls) == len(sel.verdicts) <= MAX_VERDICTS
    assert calls[-1] == sel.kept and sel.verdicts[-1]["fits"]


def test_grow_keeps_the_free_tensors_without_a_verdict_and_tries_few_tensors_one_by_one():
    fits, calls = counting({3, 5})
    sel = grow(2, 7, fits)
    assert sel.kept == [0, 1, 2, 4, 6]
    assert all(c[:2] == [0, 1] for c in calls)  # the free ones are in every verdict, never alone
    # five pending tensors, one verdict each, except the last: with everything before it kept
    # it would not be the rejected candidate (3 was dropped), so it is measured
    assert [v["ranks"] for v in sel.verdicts] == [[3, 3], [4, 4], [5, 5], [6, 6], [7, 7]]
    assert sorted(sel.why) == [3, 5]


def test_grow_does_not_measure_the_candidate_the_ladder_rejected_and_bounds_its_verdicts():
    fits, calls = counting({4})
    sel = grow(4, 5, fits)  # one used tensor: all five together is the rejected candidate
    assert sel.kept == [0, 1, 2, 3] and calls == [] and "whole candidate" in sel.why[4]
    fits, calls = counting(set(range(1000)))  # nothing fits: still at most MAX_VERDICTS runs
    sel = grow(0, 1000, fits)
    assert sel.kept == [] and len(calls) == MAX_VERDICTS
    assert any("not tried" in w for w in sel.why.values())


def test_ranking_puts_the_unused_tensors_first_then_the_least_error_per_value():
    rng = np.random.default_rng(0)
    originals = {n: rng.standard_normal(size).astype(np.float32) for n, size in (("a", 100), ("b", 400), ("c", 100))}
    originals["same"] = rng.standard_normal(50).astype(np.float32)
    noise = {"a": 0.01, "b": 0.01, "c": 0.5}
    candidates = {
        n: v + noise.get(n, 0.0) * rng.standard_normal(v.shape).astype(np.float32) for n, v in originals.items()
    }
    candidates["same"] = originals["same"]  # unchanged: not a tensor to keep or leave
    rows = ranking(originals, candidates, {}, {"c": "if/else_branch"})
    assert [r["name"] for r in rows] == ["c", "b", "a"]  # b: same error as a, over four times the values
    assert rows[0]["unused"] == "if/else_branch" and rows[1]["method"] == "weight"


# --------------------------------------------------------------------------- untaken If branches


def test_an_if_branch_the_data_never_takes_is_found_and_its_own_weights_are_unused():
    model = graphs.if_subgraph_model()
    weights = graph.weights(model)
    for seed, untaken in ((0, "if/else_branch"), (1, "if/then_branch")):  # flags all True / all False
        found, runs = untaken_branches(model, graphs.make_inputs(model, 8, seed))
        assert found == [untaken] and runs == 1  # the condition is computed: one capture run
        unused = unused_weights(weights, found)
        side = untaken.split("/")[1].split("_")[0]
        assert set(unused) == {f"{side}.weight", f"{side}.bias"}  # head.weight: read in both branches
    assert unused_weights(weights, []) == {}


# --------------------------------------------------------------------------- the rungs in a ladder


def chain_model() -> onnx.ModelProto:
    """x[N,16] -> MatMul a -> MatMul b -> MatMul c -> y[N,16] (class scores)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(0, 0.25, (16, 16)).astype(np.float32), n) for n in "abc"]
    nodes = [
        helper.make_node("MatMul", ["x", "a"], ["ha"]),
        helper.make_node("MatMul", ["ha", "b"], ["hb"]),
        helper.make_node("MatMul", ["hb", "c"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def context(model, data) -> StageContext:
    return measured_context(
        model, data, "fidelity", 1.0, graph.model_bytes, search_data=data, original_bytes=graph.model_bytes(model)
    )


def test_a_tensor_whose_sharing_breaks_the_output_is_left_unshared_and_the_others_kept():
    model = chain_model()
    data = Dataset({"x": np.random.default_rng(4).standard_normal((64, 16)).astype(np.float32)}, None)
    ctx = context(model, data)
    weights = graph.weights(model)
    rng = np.random.default_rng(5)
    # the candidate: a and c barely moved, b's sign flipped (every decision moves)
    arrays = {w.name: w.array() * (1 + 1e-4 * rng.standard_normal(w.shape)).astype(np.float32) for w in weights}
    arrays["b"] = -weights[1].array()
    candidate = with_arrays(model, weights, arrays)
    last = LastBuilt()
    full = Attempt("every tensor", last.wrap("every tensor", lambda: (candidate, {"tensors": []})))
    result = run_ladder(Ladder("share", [full, *partial_attempts(weights, ctx, last, 0.7)], True), ctx)
    row = result.row
    assert row.applied and row.options["setting"] == SEARCHED
    assert [a["option"] for a in row.attempts][:2] == ["every tensor", SEARCHED] and row.attempts[0]["rejected_by"]
    partial = row.stats["partial"]
    assert sorted(partial["kept"]) == ["a", "c"]
    assert [t["name"] for t in partial["left_unshared"]] == ["b"]
    assert "exceeded the budget" in partial["left_unshared"][0]["why"]
    assert len(partial["verdicts"]) <= MAX_VERDICTS and partial["untaken_branches"] == []
    kept = {w.name: w.array() for w in graph.weights(result.model)}
    np.testing.assert_array_equal(kept["b"], weights[1].array())
    np.testing.assert_array_equal(kept["a"], arrays["a"])


def test_the_partial_rungs_are_not_tried_when_an_earlier_setting_fits():
    model = chain_model()
    data = Dataset({"x": np.random.default_rng(4).standard_normal((16, 16)).astype(np.float32)}, None)
    ctx = context(model, data)
    last = LastBuilt()
    same = Attempt("nothing changed", last.wrap("nothing changed", lambda: (with_arrays(model, [], {}), {})))
    result = run_ladder(Ladder("share", [same, *partial_attempts(graph.weights(model), ctx, last, 0.7)], True), ctx)
    assert result.row.options["setting"] == "nothing changed" and len(result.row.attempts) == 1


def test_run_shares_only_the_weights_of_the_branch_the_calibration_data_never_takes(tmp_path):
    report = run_if_model(tmp_path, 300.0)  # an SNR floor no change to a weight the data uses can pass
    share = next(s for s in report["stages"] if s["stage"] == "share")
    assert share["applied"] and share["setting"] in (SEARCHED, UNUSED_ONLY)
    partial = report["share_partial"]
    assert partial["untaken_branches"] == ["if/then_branch"] and partial["kept"] == ["then.weight"]
    # one run for the branch condition; the covariances are the per-tensor search's, not captured again
    assert partial["capture_runs"] == 1
    left = {t["name"]: t["why"] for t in partial["left_unshared"]}
    assert set(left) == {"trunk.weight", "else.weight"}  # head.weight: below min_params, never shared
    assert all("exceeded the budget" in why or "untaken" in why for why in left.values())
    assert report["stages"][-1]["bytes"] < report["original_bytes"]


def test_a_constant_condition_needs_no_capture_run_and_the_report_says_what_was_left_unshared():
    model = graphs.if_subgraph_model()
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "always"))
    for node in model.graph.node:
        if node.op_type == "If":
            node.input[0] = "always"
    found, runs = untaken_branches(model, graphs.make_inputs(model, 4, 1))
    assert found == ["if/else_branch"] and runs == 0
    lines = partial_lines(
        {"from": "k-means 8 bits", "kept": ["a"], "left_unshared": [{"name": "b", "why": "it exceeded the budget"}]}
    )
    assert lines == [
        "share kept 1 of 2 tensors of k-means 8 bits shared; left unshared:",
        "  b: it exceeded the budget",
    ]
