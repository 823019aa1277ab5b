"""search/capture_reference: a search's reference taken from the layers' capture run; share's
ladder keeps the gentlest rung's early verdict (one run, not two)."""

from __future__ import annotations

import numpy as np
from graphs import conv_net, make_inputs

from compressor import evaluate, graph
from compressor.passes.layers import accumulate_inputs, layers_for
from compressor.search.capture_reference import reference_from_capture, rows_in
from compressor.stages.ladder import Attempt
from compressor.stages.partial_share import LastBuilt
from compressor.stages.share import tracked


def _captured(model, whole):
    known = {w.name for w in graph.weights(model, include_non_float=True)}
    layers = [found[0] for w in graph.weights(model) if isinstance(found := layers_for(w, 1, known), list)]
    outputs: list[list[np.ndarray]] = []
    accumulate_inputs(model, layers, whole, outputs)
    return outputs


def test_rows_in_finds_each_sample_of_a_split_and_misses_a_foreign_one():
    whole = make_inputs(conv_net(), 6)
    assert rows_in(whole.select(np.arange(6)[0::2]), whole).tolist() == [0, 2, 4]
    assert rows_in(whole.select(np.array([5, 1])), whole).tolist() == [5, 1]
    other = make_inputs(conv_net(), 2, seed=7)
    assert rows_in(other, whole) is None


def test_the_capture_runs_outputs_are_the_judges_reference_bit_for_bit(monkeypatch):
    # One sample per batch (as for a model with large activations): the capture's outputs
    # are what the judge's own run gives, and no run is needed for them.
    monkeypatch.setattr(evaluate, "CAPTURE_BYTES", 1)
    model = conv_net()
    whole = make_inputs(model, 6)
    part = whole.select(np.arange(6)[0::2])
    before = evaluate.ort_counts()["runs"]
    outputs = _captured(model, whole)
    assert evaluate.ort_counts()["runs"] - before == whole.size  # the capture run only
    kept = reference_from_capture(model, outputs, whole, part)
    expected = evaluate.run_model(model, part)
    assert kept is not None and all(np.array_equal(a, b) for a, b in zip(kept, expected))


def test_batched_captures_are_not_taken_for_a_reference():
    model = conv_net()
    whole = make_inputs(model, 6)
    outputs = _captured(model, whole)  # the rest in one batch after the first sample
    assert len(outputs) < whole.size
    assert reference_from_capture(model, outputs, whole, whole.select(np.arange(3))) is None


def test_share_ladder_keeps_an_early_verdict():
    early = ({"snr_db": 30.0}, None)
    built = (object(), {})
    attempts = [Attempt("a", lambda: built, measured=lambda candidate: early if candidate is built[0] else None)]
    last = LastBuilt()
    (kept,) = tracked(attempts, last)
    candidate, _ = kept.build()
    assert last.label == "a" and last.model is candidate
    assert kept.measured(candidate) is early
