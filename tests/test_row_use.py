"""Gather tables in the share stage: rows weighted by their lookups (passes.row_use)."""

import numpy as np
from graphs import make_inputs, transformer_encoder

from compressor import graph
from compressor.data import Dataset
from compressor.passes.row_use import RowUse, row_squares
from compressor.passes.share import share, shareable_weights
from compressor.search.ecq_budget import constant_mask, importance_of, share_by_rate
from compressor.search.layer_error import ROWS, capture_layers, variant_errors


def test_counts_and_the_unseen_rows_share_the_good_turing_mass():
    use = RowUse("ids", 6)
    use.accumulate(np.array([[0, 0, 1], [0, 2, -1]]))  # -1: the last row
    use.accumulate(np.array([7]))  # out of range: not a lookup
    assert use.counts.tolist() == [3, 1, 1, 0, 0, 1] and use.rows == 6
    once = 3  # rows 1, 2 and 5 were seen once
    p0 = once / (6 + once)
    assert np.isclose(use.unseen_mass(), p0)
    w = use.weights()
    assert np.isclose(w.sum(), 1.0)
    assert np.allclose(w[[3, 4]], p0 / 2)  # never seen, not zero
    assert np.allclose(w[[0, 1]], (1 - p0) * np.array([3, 1]) / 6)


def test_constant_indices_read_only_their_rows():
    use = RowUse("ids", 4, np.array([1, 1, 2]))
    assert use.constant and use.unseen_mass() == 0.0
    assert use.weights().tolist() == [0.0, 2 / 3, 1 / 3, 0.0]


def test_errors_weigh_rows_by_their_lookups():
    use = RowUse("ids", 20)  # 17 rows never looked up share the unseen mass
    use.accumulate(np.array([0] * 8 + [1, 2]))
    table = np.ones((20, 3), np.float32)
    frequent, rare, unseen = table.copy(), table.copy(), table.copy()
    frequent[0] += 0.1
    rare[1] += 0.1
    unseen[3] += 0.1
    e = variant_errors(table, [frequent, rare, unseen, table], use)
    assert e[0] > e[1] > e[2] > 0 and e[3] == 0
    w = use.weights()
    assert np.isclose(e[1], w[1] * 0.01 * 3 / 3, rtol=1e-5)  # Σ w = 1, each row's energy 3


def test_share_takes_gather_tables_and_the_model_still_runs():
    model = transformer_encoder(vocab=300)
    names = [w.name for w in shareable_weights(model)]
    assert "tok_emb" in names
    out, stats = share(model, bits_by_name={"tok_emb": 3}, bits_fc=8)
    table = {w.name: w for w in graph.weights(out)}["tok_emb"]
    assert table.role == "embedding" and np.unique(table.array()).size <= 8
    entry = next(t for t in stats["tensors"] if t["name"] == "tok_emb")
    assert entry["role"] == "embedding" and entry["bits"] == 3
    data = make_inputs(model, 4)
    from compressor.evaluate import run_model

    assert np.isfinite(run_model(out, data)[0]).all()


def test_one_capture_counts_the_lookups_of_the_calibration_ids():
    model = transformer_encoder(vocab=300)
    data = make_inputs(model, 8)
    ws = shareable_weights(model)
    layers, reasons, runs = capture_layers(model, ws, data, 1, tables=True)
    assert runs == 1
    use = layers["tok_emb"]
    assert isinstance(use, RowUse)
    ids = data.inputs["ids"].ravel()
    assert use.counts.tolist() == np.bincount(ids, minlength=300).tolist()
    # the uniform rounding weighs every row alike: no table row is sent to zero for being rare
    assert importance_of(use, (300, 64)) is None and constant_mask(use, (300, 64)) is None
    # without tables=True (the prune searches), a table keeps the weight proxy
    plain, reasons, _ = capture_layers(model, ws, data, 1)
    assert "tok_emb" not in plain and "tok_emb" in reasons


def test_the_rate_search_shares_the_table_by_its_rows():
    model = transformer_encoder(vocab=300)
    data = make_inputs(model, 16)
    shared, stats = share_by_rate(model, data, 2.0)
    search = stats["budget_search"]
    assert search["methods"]["tok_emb"] == ROWS
    chosen = search["chosen"]["tok_emb"]
    assert chosen["method"] in ("kmeans", "uniform")
    before = {w.name: w.array() for w in graph.weights(model)}["tok_emb"]
    after = {w.name: w.array() for w in graph.weights(shared)}["tok_emb"]
    assert np.unique(after).size < np.unique(before).size
    assert isinstance(data, Dataset)


def test_row_squares_in_blocks_are_the_whole_tables_sums_bit_for_bit():
    rng = np.random.default_rng(3)
    e = rng.standard_normal((1000, 37)).astype(np.float32)
    v = (e + 0.01 * rng.standard_normal(e.shape)).astype(np.float32)
    e64 = e.astype(np.float64)
    whole = np.einsum("ij,ij->i", e64, e64)
    delta = v.astype(np.float64) - e64
    for block in (1, 7, 256, 4096):
        assert row_squares(e, block=block).tobytes() == whole.tobytes()
        assert row_squares(e, v, block=block).tobytes() == np.einsum("ij,ij->i", delta, delta).tobytes()
