"""The share ladder's fine rungs: wider k-means codebooks on the weights only a subgraph reads."""

import graphs
import numpy as np
from stage_contexts import measured_context, run_if_model
from test_partial_share import chain_model

from compressor import graph
from compressor.data import Dataset
from compressor.report import fine_lines
from compressor.stages import fine_share
from compressor.stages.fine_share import (
    FINE_CENTROIDS,
    MIXED_CENTROIDS,
    PROBE_CENTROIDS,
    fine_attempts,
    fine_shared,
    mixed_widths,
    packed_bytes,
    subgraph_weights,
)
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
    # the gentlest candidate: every weight on a coarse grid (its then branch is what the rung
    # keeps: it packs smaller than the original)
    last = LastBuilt()
    arrays = {w.name: (np.round(w.array() * 64) / 64).astype(np.float32) for w in weights}
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
    assert len(attempts) == 1 + 2 * len(FINE_CENTROIDS)  # a mixed rung before each uniform one
    row = run_ladder(Ladder("share", attempts, True), ctx).row
    assert row.applied and row.attempts[0]["rejected_by"]
    # two used weights in subgraphs (else.weight, head.weight): the mixed rung comes first and fits
    assert row.options["setting"].startswith(
        f"k-means per weight at the output noise of {FINE_CENTROIDS[0]} centroids (9.0 bits) on the weights read"
    )
    # the other rungs are not built once one fit
    assert len(row.attempts) == 2


def test_mixed_widths_keep_the_estimated_noise_and_give_the_quiet_weights_narrower_codebooks():
    counts = {"loud": 10_000, "quiet": 60_000, "mid": 20_000}
    noise = {"loud": 8e-5, "quiet": 3e-6, "mid": 1e-5}
    for k in FINE_CENTROIDS:
        widths = mixed_widths(noise, counts, k)
        assert set(widths.values()) <= set(MIXED_CENTROIDS)
        total = sum(noise[n] * (PROBE_CENTROIDS / widths[n]) ** 2 for n in noise)
        assert total <= sum(noise.values()) * (PROBE_CENTROIDS / k) ** 2 * (1 + 1e-9)
        assert widths["quiet"] <= widths["mid"] <= widths["loud"]
    # the bytes a weight costs grow by a bit a value per doubling: fewer than the uniform rung's
    widths = mixed_widths(noise, counts, 724)
    bits = sum(counts[n] * np.log2(widths[n]) for n in counts)
    assert bits < sum(counts.values()) * np.log2(724)
    # equal noise per value: every weight at the uniform size; no noise at all: the narrowest
    assert mixed_widths({"a": 1e-5, "b": 2e-5}, {"a": 1000, "b": 2000}, 724) == {"a": 724, "b": 724}
    assert mixed_widths({"a": 0.0}, {"a": 1000}, 724) == {"a": MIXED_CENTROIDS[0]}


def test_a_per_weight_rung_shares_each_weight_at_its_own_size_and_names_them():
    model = graphs.if_subgraph_model()
    inner = subgraph_weights(model, matrices(model))
    shared, stats = fine_shared(model, inner, {"else.weight": 16, "head.weight": 64}, {}, LastBuilt(), nominal=32)
    got = {w.name: w.array() for w in graph.weights(shared)}
    before = {w.name: w.array() for w in inner}
    assert np.unique(got["else.weight"]).size <= 16 < np.unique(got["head.weight"]).size <= 64
    np.testing.assert_array_equal(got["then.weight"], before["then.weight"])  # not named: as it was
    assert stats["fine"]["per_weight"] and stats["fine"]["centroids"] == 32
    lines = fine_lines(stats["fine"])
    assert lines[0].startswith("share: k-means 16-64 centroids per weight (the output noise of 32 for all)")


def test_an_untaken_weight_that_packs_smaller_as_it_was_keeps_its_values():
    model = graphs.if_subgraph_model()
    weights = matrices(model)
    inner = subgraph_weights(model, weights)
    before = {w.name: w.array() for w in weights}
    # the gentlest candidate: the then branch's weight noisier (more bytes) than the original
    noisy = before["then.weight"] + np.random.default_rng(0).normal(scale=1e-2, size=before["then.weight"].shape)
    last = LastBuilt()
    gentle = with_arrays(model, weights, {"then.weight": noisy.astype(np.float32)})
    last.wrap("k-means 8 bits", lambda: (gentle, {}))()
    assert packed_bytes(noisy.astype(np.float32)) >= packed_bytes(before["then.weight"])
    shared, stats = fine_shared(model, inner, 32, {"then.weight": "if/then_branch"}, last)
    got = {w.name: w.array() for w in graph.weights(shared)}
    np.testing.assert_array_equal(got["then.weight"], before["then.weight"])
    assert "then.weight" not in {r["name"] for r in stats["fine"]["tensors"]}


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


def test_past_the_weight_cap_the_mixed_rungs_are_not_measured(monkeypatch):
    monkeypatch.setattr(fine_share, "MIXED_MAX_WEIGHTS", 1)
    model = graphs.if_subgraph_model()
    data = if_data(model)
    ctx = context(model, data)
    attempts = fine_attempts(matrices(model), ctx, LastBuilt(), "linear", 0)
    row = run_ladder(Ladder("share", attempts, True), ctx).row
    assert "more than 1 to measure one by one" in row.attempts[0]["error"]
    assert row.options["setting"].startswith(f"k-means {FINE_CENTROIDS[0]} centroids")
