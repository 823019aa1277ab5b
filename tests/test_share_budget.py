"""share_budget: k-means widths chosen per tensor under a measured budget."""

from __future__ import annotations

import graphs
import numpy as np
import pytest

from compressor import graph
from compressor.data import Dataset
from compressor.errors import CompressorError
from compressor.evaluate import accuracy, run_model
from compressor.passes.share import share
from compressor.search.share_budget import BITS, share_to_budget


def labeled(model, n=256, seed=0) -> Dataset:
    inputs = graphs.make_inputs(model, n, seed)
    labels = np.argmax(run_model(model, inputs)[0], axis=1)  # the float model scores 100 %
    return Dataset(dict(inputs.inputs), labels)


@pytest.fixture(scope="module")
def searched():
    model = graphs.mlp()
    data = labeled(model)
    shared, stats = share_to_budget(model, data, 2.0, min_params=0)
    return model, data, shared, stats


def test_widths_differ_per_tensor_and_the_result_is_within_budget(searched):
    model, data, shared, stats = searched
    chosen = stats["budget_search"]["chosen"]
    assert set(chosen) == {"fc1.weight", "fc2.weight", "fc3.weight"} and set(chosen.values()) <= set(BITS)
    assert 100.0 - accuracy(run_model(shared, data)[0], data.labels) <= 2.0
    # Not one width for all (the small output layer is the sensitive one here), and each
    # tensor really holds at most 2^bits values (plus zero).
    assert len(set(chosen.values())) > 1 and min(chosen.values()) < 8
    for w in graph.weights(shared):
        if w.name in chosen:
            assert np.unique(w.array()[w.array() != 0]).size <= 2 ** chosen[w.name]


def test_the_model_built_is_the_one_measured_and_is_deterministic(searched):
    model, data, shared, stats = searched
    best = max((t for t in stats["budget_search"]["tried"] if t["within_budget"]), key=lambda t: t["saved_bits"])
    assert best["bits"] == stats["budget_search"]["chosen"]
    assert 100.0 - accuracy(run_model(shared, data)[0], data.labels) == pytest.approx(best["drop"])
    again, _ = share_to_budget(model, data, 2.0, min_params=0)
    assert again.SerializeToString() == shared.SerializeToString()
    same, _ = share(model, bits_by_name=best["bits"], min_params=0)
    assert same.SerializeToString() == shared.SerializeToString()


def test_curves_stop_once_a_tensor_is_far_past_the_budget(searched):
    _, _, _, stats = searched
    for curve in stats["budget_search"]["curves"]:
        drops = [p["drop"] for p in curve["points"]]
        assert all(d <= 2 * 2.0 for d in drops[:-1])  # every point but the last is within 2 budgets
        assert [p["bits"] for p in curve["points"]] == list(BITS[: len(drops)])


def test_no_fitting_widths_is_an_error_and_no_tensors_is_an_error():
    model = graphs.mlp()
    data = labeled(model, 64)
    with pytest.raises(CompressorError):
        share_to_budget(model, data, -1.0, min_params=0)  # nothing can have a negative drop
    with pytest.raises(CompressorError, match="no tensor"):
        share_to_budget(model, data, 1.0, min_params=10**9)
