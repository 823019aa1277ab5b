"""stages/retry: pruning's gain without packing, and the later stages it stood in the way of."""

from __future__ import annotations

import numpy as np
from graphs import make_model, vi
from onnx import helper, numpy_helper
from test_embedding_similarity import encoder

from compressor.data import Dataset
from compressor.measure import RUN_KEYS, Judge
from compressor.report import StageRow
from compressor.stages.retry import blocked_by_pruning, first_rung_rejected, zeroed_share


def two_weights(a: np.ndarray, b: np.ndarray):
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h"]), helper.make_node("MatMul", ["h", "b"], ["y"])]
    inits = [numpy_helper.from_array(a, "a"), numpy_helper.from_array(b, "b")]
    return make_model(nodes, [vi("x", ["N", 4])], [vi("y", ["N", 2])], inits)


def test_zeroed_share_counts_the_bytes_pruning_zeroed():
    a, b = np.ones((4, 4), np.float32), np.ones((4, 2), np.float32)
    a[0, 0] = 0.0  # already zero: not pruning's
    pruned_a = a.copy()
    pruned_a[1:3] = 0.0
    assert zeroed_share(two_weights(a, b), two_weights(a, b)) == 0.0
    assert zeroed_share(two_weights(a, b), two_weights(pruned_a, b)) == 8 / 24


def metrics(points: float, snr: float = 15.0) -> dict:
    return {**dict.fromkeys(RUN_KEYS), "similarity_points": points, "embedding_snr_db": snr}


def test_a_stage_that_fell_back_by_less_than_pruning_spent_is_blocked():
    rng = np.random.default_rng(4)
    judge = Judge(Dataset({"x": rng.normal(size=(20, 16)).astype(np.float32)}, None), "fidelity", budget=1.0)
    judge.start(encoder(rng.normal(size=(16, 8)).astype(np.float32)))
    pruned = StageRow("prune", True, 100, metrics(0.4))
    rejected = {"measure": "loss_points", "value": 0.8, "limit": 0.7, "by": 0.1}
    first = {"option": "searched", **metrics(0.8), "rejected_by": [rejected]}
    fell_back = StageRow("share", True, 50, metrics(0.9), attempts=[first, {"option": "5 bits", **metrics(0.9)}])
    assert first_rung_rejected(fell_back) == metrics(0.8)
    assert blocked_by_pruning(judge, fell_back, pruned)
    # Its first rung fitted: nothing pruning stood in the way of.
    fitted = StageRow("share", True, 50, metrics(0.5), attempts=[{"option": "searched", **metrics(0.5)}])
    assert first_rung_rejected(fitted) is None and not blocked_by_pruning(judge, fitted, pruned)
    # Rejected by more than pruning spent, or below the sanity floor: pruning is not what blocked it.
    far = {"option": "searched", **metrics(1.6), "rejected_by": [rejected]}
    assert not blocked_by_pruning(judge, StageRow("share", True, 50, metrics(0.9), attempts=[far]), pruned)
    floor = {"option": "searched", **metrics(0.5, snr=5.0), "rejected_by": [rejected]}
    assert not blocked_by_pruning(judge, StageRow("share", True, 50, metrics(0.9), attempts=[floor]), pruned)
    # Only its packed size rejected it: not a budget matter.
    packed = {**first, "rejected_by": [{"measure": "packed_bytes", "value": 2, "limit": 1, "by": 1}]}
    assert not blocked_by_pruning(judge, StageRow("share", True, 50, metrics(0.9), attempts=[packed]), pruned)
    # Not applied at all: the gentlest rejected attempt, as before.
    skipped = StageRow("quantize", False, 50, metrics(0.4), rejected_by=[rejected], rejected_metrics=metrics(0.8))
    assert blocked_by_pruning(judge, skipped, pruned)
