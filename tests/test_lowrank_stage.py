"""The run's lowrank stage (compressor/stages/lowrank.py): kept only when the container shrinks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from graphs import make_model, vi
from onnx import helper, numpy_helper
from stage_contexts import measured_context, self_labeled

from compressor.container import pack_model, unpack_file
from compressor.data import load_dataset
from compressor.evaluate import accuracy, run_model
from compressor.graph import load_model, weight_by_name
from compressor.options import LowRankOptions, Recipe
from compressor.pipeline import run_pipeline
from compressor.stages import STAGES
from compressor.stages import lowrank as stage
from compressor.stages.ladder import StageContext

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def _mlp(seed: int = 0):
    """x (192) -> Gemm transB 256 (rank 6 + a little noise) -> Relu -> MatMul 16: the factors of
    the first layer (192 x 6, 6 x 256) are large enough for share's default min_params."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(256, 6)) @ rng.normal(size=(6, 192)) / 14 + 0.001 * rng.normal(size=(256, 192))
    w2 = rng.normal(size=(256, 16)) / 16
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    inits = [
        numpy_helper.from_array(w1.astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(256, np.float32), "b1"),
        numpy_helper.from_array(w2.astype(np.float32), "w2"),
    ]
    return make_model(nodes, [vi("x", ["N", 192])], [vi("y", ["N", 16])], inits)


def _context(model, budget: float = 1.0) -> StageContext:
    data = self_labeled(model, np.random.default_rng(1).normal(size=(200, 192)).astype(np.float32))
    return measured_context(model, data, "accuracy", budget, lambda m: len(pack_model(m)[0]))


def test_the_stage_runs_before_share_and_is_opt_in():
    names = [s.NAME for s in STAGES]
    assert names.index("lowrank") == names.index("share") - 1
    assert not any(Recipe.for_mode(mode).lowrank.enabled for mode in ("accuracy", "fidelity", "none"))


def test_kept_when_the_container_shrinks_within_the_budget():
    model = _mlp()
    ctx = _context(model)
    result = stage.run(LowRankOptions(enabled=True, min_params=5000), ctx)
    row = result.row
    assert row.applied and row.stage == "lowrank"
    assert ctx.measure.loss(row.metrics) <= 1.0
    assert row.packed_bytes < ctx.packed_size(model)
    assert "w1" not in weight_by_name(result.model)
    assert "after a plain share" in row.note


def test_a_pruned_layer_is_not_replaced_by_larger_dense_factors():
    model = _mlp()
    w1 = weight_by_name(model)["w1"]
    values = w1.array()
    keep = np.abs(values) >= np.quantile(np.abs(values), 0.995)  # 0.5 % of the weights left
    w1.set_array(np.where(keep, values, 0).astype(np.float32))
    result = stage.run(LowRankOptions(enabled=True, min_params=5000), _context(model))
    assert not result.row.applied
    assert result.model is model


def test_fixed_rank_ratio_is_applied_as_asked():
    model = _mlp()
    result = stage.run(LowRankOptions(enabled=True, rank_ratio=0.1, min_params=5000), _context(model))
    assert result.row.applied and result.row.options["setting"] == "rank ratio 0.1"


def test_search_plan_counts_runs():
    assert stage.search_runs(0.0) == 8
    assert stage.search_runs(1e9) == stage.MIN_SEARCH_RUNS


def test_run_with_the_stage_on_lenet300(tmp_path):
    out = tmp_path / "m.cmpz"
    report = run_pipeline(
        str(SAMPLES / "lenet300.onnx"),
        str(out),
        {"lowrank": {"enabled": True}, "prune": {"enabled": False}},
        data_path=str(SAMPLES / "lenet300_test.npz"),
        calib_path=str(SAMPLES / "lenet300_calib.npz"),
    )
    stages = [s["stage"] for s in report["stages"]]
    assert stages[:3] == ["original", "prune", "lowrank"]
    row = report["stages"][2]
    assert row["applied"] and row["packed_bytes"] < report["stages"][1]["packed_bytes"]
    assert report["recipe"]["lowrank"]["enabled"] is True
    # The per-layer rows show the factors of the weights they replaced, and their bytes.
    fc1 = next(layer for layer in report["layers"] if layer["name"] == "fc1.weight")
    assert fc1["lowrank_rank"] >= 1 and fc1["factored_params"] == fc1["lowrank_rank"] * (300 + 784)
    assert 0 < fc1["container_bytes"] < fc1["factored_params"]
    # The container unpacks to the factorised model, with the run's accuracy.
    unpacked = tmp_path / "u.onnx"
    unpack_file(out, unpacked, verify=True)
    model = load_model(unpacked)
    assert any("lowrank_a" in t.name for t in model.graph.initializer), [t.name for t in model.graph.initializer]
    data = load_dataset(SAMPLES / "lenet300_test.npz", model)
    acc = accuracy(run_model(model, data)[0], data.labels)
    assert acc == pytest.approx(report["stages"][-1]["accuracy"])
    assert report["stages"][0]["accuracy"] - acc <= 1.0
