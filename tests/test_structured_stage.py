"""The run's structured stage (compressor/stages/structured.py): opt-in, first, kept when it pays."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import conv_net
from stage_contexts import measured_context

from compressor.container import unpack_file
from compressor.data import Dataset, load_dataset
from compressor.evaluate import run_model
from compressor.graph import load_model, node_macs
from compressor.options import Recipe, StructuredOptions
from compressor.pipeline import run_pipeline
from compressor.report import format_report
from compressor.stages import STAGES
from compressor.stages import structured as stage
from compressor.stages.ladder import StageContext

# A random net has no margin to spare: a budget of points a few samples can flip.
BUDGET = 10.0


def _files(tmp_path, n: int = 200):
    """conv_net saved, and n inputs labeled by its own top-1 (accuracy 100 %)."""
    model = conv_net()
    x = np.random.default_rng(3).normal(size=(n, 1, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"x": x})[0].argmax(1)
    path, data = tmp_path / "net.onnx", tmp_path / "data.npz"
    onnx.save(model, path)
    np.savez(data, x=x, y=labels)
    return model, path, data, x, labels


def _context(model, x, labels, budget: float = BUDGET) -> StageContext:
    return measured_context(model, Dataset({"x": x}, labels), "accuracy", budget, lambda m: len(m.SerializeToString()))


def _macs(model) -> int:
    return sum(r["macs"] or 0 for r in node_macs(model))


def test_the_stage_runs_first_and_is_opt_in():
    assert STAGES[0].NAME == "structured" and STAGES[1].NAME == "prune"
    assert stage.OPTIONAL
    assert not any(Recipe.for_mode(mode).structured.enabled for mode in ("accuracy", "fidelity", "none"))


def test_search_plan_counts_runs():
    assert stage.search_runs(0.0) == 8
    assert stage.search_runs(1e9) == stage.MIN_SEARCH_RUNS


def test_kept_when_smaller_within_the_budget(tmp_path):
    model, _path, _data, x, labels = _files(tmp_path)
    ctx = _context(model, x, labels)
    result = stage.run(StructuredOptions(enabled=True, align=1), ctx)
    row = result.row
    assert row.applied and row.stage == "structured", (row.note, row.attempts)
    assert ctx.measure.loss(row.metrics) <= BUDGET
    assert row.packed_bytes < ctx.packed_size(model)
    totals = row.stats["totals"]
    assert totals["macs_after"] < totals["macs_before"] == _macs(model)
    assert totals["macs_after"] == _macs(result.model)
    assert totals["params_after"] < totals["params_before"]
    assert "kept_channels" not in row.stats


def test_speed_objective_says_what_the_container_cost(tmp_path):
    model, _path, _data, x, labels = _files(tmp_path)
    ctx = _context(model, x, labels)
    # A container that grows as the model shrinks: the cost is in the row, the model kept.
    ctx = StageContext(
        *[getattr(ctx, f) for f in ("model", "measure", "eval_data", "calib_data", "outputs", "rows", "log")],
        lambda m: 10**6 - len(m.SerializeToString()),
    )
    result = stage.run(StructuredOptions(enabled=True, align=1, objective="speed"), ctx)
    row = result.row
    assert row.applied and "kept for speed: MACs" in row.note
    assert row.cost_bytes == ctx.packed_size(result.model) - ctx.packed_size(model) > 0


def test_size_objective_rejects_a_larger_container(tmp_path):
    model, _path, _data, x, labels = _files(tmp_path)
    ctx = _context(model, x, labels)
    ctx = StageContext(
        *[getattr(ctx, f) for f in ("model", "measure", "eval_data", "calib_data", "outputs", "rows", "log")],
        lambda m: 10**6 - len(m.SerializeToString()),
    )
    result = stage.run(StructuredOptions(enabled=True, align=1), ctx)
    assert not result.row.applied and result.model is model


def test_without_data_the_stage_is_skipped(tmp_path):
    model, _path, _data, x, labels = _files(tmp_path)
    ctx = _context(model, x, labels)
    ctx = StageContext(ctx.model, ctx.measure, None, None, ctx.outputs, ctx.rows, ctx.log, ctx.packed_size)
    result = stage.run(StructuredOptions(enabled=True), ctx)
    assert not result.row.applied and "needs data" in result.row.note


def test_run_with_the_stage_unpacks_and_runs(tmp_path):
    model, path, data, _x, _labels = _files(tmp_path)
    out = tmp_path / "m.cmpz"
    report = run_pipeline(
        str(path),
        str(out),
        # Objective speed: kept whatever the later stages make of it (size: see the next test).
        {"structured": {"enabled": True, "align": 1, "objective": "speed"}, "gate": {"budget": BUDGET}},
        data_path=str(data),
        calib_path=str(data),
    )
    assert "structured_compare" not in report
    stages = [s["stage"] for s in report["stages"]]
    assert stages[:3] == ["original", "structured", "prune"]
    row = report["stages"][1]
    assert row["applied"], (row["note"], row["attempts"])
    assert row["structured"]["macs_after"] < row["structured"]["macs_before"] == _macs(model)
    assert row["structured"]["params_after"] < row["structured"]["params_before"]
    assert report["recipe"]["structured"]["enabled"] is True
    # Every row has its model's MACs (batch 1): the original's, fewer from structured on (the
    # later stages zero or quantize weights, they remove no layer), the container's on pack's row.
    macs = {s["stage"]: s["macs"] for s in report["stages"]}
    assert macs["original"] == _macs(model)
    assert macs["structured"] == row["structured"]["macs_after"]
    assert all(s["macs"] == macs["structured"] for s in report["stages"][1:]), report["stages"]
    ratio = _macs(model) / macs["structured"]
    assert f"MACs (batch 1): {_macs(model):,} -> {macs['structured']:,} ({ratio:.1f}x fewer" in format_report(report)
    # Shapes shrank, so the run measured the latency it buys (values are timings: only their form is tested).
    speed = report["speed"]
    assert set(speed) == {"threads", "batch1", "batch64"} and speed["threads"] == 1
    assert all(speed[b]["before_ms"] > 0 and speed[b]["after_ms"] > 0 for b in ("batch1", "batch64"))
    assert "ORT latency, 1 thread(s): batch 1 " in format_report(report)
    unpacked = tmp_path / "u.onnx"
    unpack_file(out, unpacked, verify=True)
    final = load_model(unpacked)
    onnx.checker.check_model(final)
    dataset = load_dataset(data, final)
    logits = run_model(final, dataset)[0]
    assert logits.shape == (dataset.size, 10)
    # Fewer channels in the container's model than in the original.
    assert _macs(final) < _macs(model)
    assert report["stages"][-1]["accuracy"] == pytest.approx(100.0 * np.mean(logits.argmax(1) == dataset.labels))


def test_size_objective_keeps_the_smaller_final_container(tmp_path):
    _model, path, data, _x, _labels = _files(tmp_path)
    report = run_pipeline(
        str(path),
        str(tmp_path / "m.cmpz"),
        {"structured": {"enabled": True, "align": 1}, "gate": {"budget": BUDGET}},
        data_path=str(data),
        calib_path=str(data),
    )
    compared = report["structured_compare"]
    smaller = min(compared["packed_bytes_with"], compared["packed_bytes_without"])
    assert report["container"]["bytes"] == smaller
    row = report["stages"][1]
    assert row["stage"] == "structured"
    assert row["applied"] == (compared["kept"] == "with structured pruning")
    assert row["applied"] == (compared["packed_bytes_with"] <= compared["packed_bytes_without"])
    assert compared["other_way"][0]["stage"] == "structured"
    if not row["applied"]:
        assert row["note"].startswith("undone: the later stages give a smaller container without it")
    else:
        assert compared["other_way"][0]["note"] == "the later stages run without it"
    assert "later stages run with and without structured pruning" in format_report(report)


def test_off_the_report_has_no_row(tmp_path):
    _model, path, data, _x, _labels = _files(tmp_path)
    common = dict(data_path=str(data), calib_path=str(data))
    off = run_pipeline(str(path), str(tmp_path / "a.cmpz"), {"prune": {"enabled": False}}, **common)
    assert "structured" not in [s["stage"] for s in off["stages"]]
    assert not any("structured" in s for s in off["stages"])
    assert all(s["macs"] == off["stages"][0]["macs"] for s in off["stages"])
    assert "MACs (batch 1)" not in format_report(off)
    assert "speed" not in off and "ORT latency" not in format_report(off)
