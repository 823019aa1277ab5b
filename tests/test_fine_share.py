"""The share ladder's fine rungs: wider k-means codebooks on the weights only a subgraph reads."""

import graphs
import numpy as np
from stage_contexts import measured_context, run_if_model
from test_partial_share import chain_model

from compressor import graph
from compressor.data import Dataset
from compressor.report import fine_lines
from compressor.stages.fine_share import FINE_CENTROIDS, fine_attempts, fine_shared, subgraph_weights
from compressor.stages.ladder import Attempt, Ladder, run_ladder
from compressor.stages.partial_share import LastBuilt
from compressor.variants import with_arrays


def context(model, data):
    return measured_context(
        model, data, "fidelity", 1.0, graph.model_bytes, search_data=data, original_bytes=graph.model_bytes(model)
    )


def matrices(model):
    return [w for w in graph.weights(model) if w.is_matrix]


def if_data(model, n: int = 32) -> Dataset:
    return graphs.make_inputs(model, n, 1)  # flags False: the then branch never runs


def test_a_model_without_subgraphs_gets_no_fine_rung():
    model = chain_model()
    data = Dataset({"x": np.random.default_rng(4).standard_normal((16, 16)).astype(np.float32)}, None)
    assert subgraph_weights(model, matrices(model)) == []
    assert fine_attempts(matrices(model), context(model, data), LastBuilt(), "linear", 0) == []


def test_the_used_subgraph_weights_get_a_wider_codebook_the_untaken_branch_keeps_the_gentlest_sharing():
    model = graphs.if_subgraph_model()
    weights = matrices(model)
    inner = subgraph_weights(model, weights)
    assert {w.name for w in inner} == {"then.weight", "else.weight", "head.weight"}  # trunk: main graph only
    # the gentlest candidate: every weight moved a little (its then branch is what the rung keeps)
    last = LastBuilt()
    arrays = {w.name: w.array() + np.float32(1e-3) for w in weights}
    gentle = with_arrays(model, weights, arrays)
    last.wrap("k-means 8 bits", lambda: (gentle, {}))()
    k = 32
    shared, stats = fine_shared(model, inner, k, {"then.weight": "if/then_branch"}, last)
    got = {w.name: w.array() for w in graph.weights(shared)}
    before = {w.name: w.array() for w in weights}
    np.testing.assert_array_equal(got["then.weight"], arrays["then.weight"])
    np.testing.assert_array_equal(got["trunk.weight"], before["trunk.weight"])
    for name in ("else.weight", "head.weight"):
        assert np.unique(got[name][got[name] != 0]).size <= k
        assert 0 < np.linalg.norm(got[name] - before[name]) < 0.2 * np.linalg.norm(before[name])
    rows = {r["name"]: r for r in stats["fine"]["tensors"]}
    assert rows["then.weight"]["centroids"] is None and rows["then.weight"]["unused"] == "if/then_branch"
    assert rows["else.weight"]["centroids"] == k and stats["fine"]["centroids"] == k


def test_the_ladder_applies_the_narrowest_fine_rung_that_fits_after_every_setting_missed():
    model = graphs.if_subgraph_model()
    data = if_data(model)
    ctx = context(model, data)
    weights = matrices(model)
    last = LastBuilt()
    # a setting that misses: the else branch's weight negated (every output moves)
    broken = with_arrays(
        model, weights, {"else.weight": -weights[[w.name for w in weights].index("else.weight")].array()}
    )
    missed = Attempt("k-means 8 bits", last.wrap("k-means 8 bits", lambda: (broken, {})))
    attempts = [missed, *fine_attempts(weights, ctx, last, "linear", 0)]
    assert len(attempts) == 1 + len(FINE_CENTROIDS)
    row = run_ladder(Ladder("share", attempts, True), ctx).row
    assert row.applied and row.attempts[0]["rejected_by"]
    assert row.options["setting"].startswith(f"k-means {FINE_CENTROIDS[0]} centroids (9.0 bits) on the weights read")
    # the wider rungs are not built once one fit
    assert len(row.attempts) == 2


def test_the_report_names_the_codebook_the_untaken_branches_and_what_stayed_as_it_was():
    fine = {
        "centroids": 724,
        "tensors": [
            {"name": "a", "centroids": 724},
            {"name": "b", "centroids": None, "unused": "if/else_branch", "from": "k-means 8 bits"},
            {"name": "basis", "centroids": None, "unused": None, "packed": 47068, "unshared": 42628},
        ],
    }
    assert fine_lines(fine) == [
        "share: k-means 724 centroids on 1 weights read in subgraphs; 1 of untaken If branches as k-means 8 bits",
        "  basis: left as it was (shared it would pack to 47,068 bytes, unshared 42,628)",
    ]


def test_run_shares_the_subgraph_weights_finely_when_the_eight_bit_rungs_miss_the_floor(tmp_path):
    # a floor k-means 8 bits misses (about 40 dB here) and 512 centroids pass (about 50 dB)
    report = run_if_model(tmp_path, 44.0)
    share = next(s for s in report["stages"] if s["stage"] == "share")
    assert share["applied"] and share["setting"].startswith(f"k-means {FINE_CENTROIDS[0]} centroids")
    rows = {t["name"]: t for t in report["share_fine"]["tensors"]}
    assert "trunk.weight" not in rows  # the main graph's weight is quantize's
    assert rows["then.weight"]["unused"] == "if/then_branch" and rows["then.weight"]["centroids"] is None
    assert rows["else.weight"]["centroids"] == FINE_CENTROIDS[0]
    assert report["stages"][-1]["bytes"] < report["original_bytes"]
