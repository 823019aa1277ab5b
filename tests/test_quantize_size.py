"""The quantize stage under objective "size": a bound packed before anything is measured
(passes.quantize.size_bound), and candidates packed before the judge runs them."""

from __future__ import annotations

import json

import graphs
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor import evaluate, graph
from compressor.cli import main
from compressor.container import pack_model
from compressor.data import Dataset
from compressor.errors import CompressorError
from compressor.passes.quantize import QuantizeSettings, calibrate, quantize, size_bound
from compressor.report import StageRow
from compressor.stages import quantize as quantize_stage
from compressor.stages.ladder import StageContext


def conv_mlp() -> onnx.ModelProto:
    """Conv(bias) -> Relu -> Flatten -> MatMul -> Add(bias): weights quantize in every mode."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(16, 3, 3, 3)).astype(np.float32) / 4, "w"),
        numpy_helper.from_array(rng.normal(size=16).astype(np.float32), "b"),
        numpy_helper.from_array(rng.laplace(size=(16 * 8 * 8, 32)).astype(np.float32) / 30, "m"),
        numpy_helper.from_array(rng.normal(size=32).astype(np.float32), "c"),
    ]
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["h"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Flatten", ["r"], ["f"]),
            helper.make_node("MatMul", ["f", "m"], ["y0"]),
            helper.make_node("Add", ["y0", "c"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def packed(model: onnx.ModelProto) -> int:
    return len(pack_model(model)[0])


def test_the_size_bound_packs_no_larger_than_any_build_and_runs_nothing():
    model = conv_mlp()
    calib = Dataset({"x": np.random.default_rng(1).normal(size=(16, 3, 8, 8)).astype(np.float32)}, None)
    before = evaluate.ort_counts()
    bound, stats = size_bound(model, QuantizeSettings(small_constants=True))
    assert evaluate.ort_counts() == before  # no calibration, no session
    assert stats["mode"] == "none" and stats["reduce_range"]
    assert graph.model_bytes(bound) < graph.model_bytes(model)
    builds = [
        quantize(model, calib, QuantizeSettings(activations="static", reduce_range=True, small_constants=True))[0],
        quantize(model, calib, QuantizeSettings(activations="static", reduce_range=False, small_constants=True))[0],
        quantize(model, None, QuantizeSettings(activations="none", small_constants=True))[0],
        quantize(model, calib, QuantizeSettings(activations="static", reduce_range=True))[0],
    ]
    assert all(packed(bound) <= packed(b) for b in builds)


def test_objective_size_skips_the_stage_unmeasured_when_its_bound_packs_larger(tmp_path):
    # 2-bit codebooks pack smaller than any int8 grid: no quantized model can win, and the
    # stage says so from one packed bound, before calibrating or measuring anything.
    model, data = graphs.two_layer_mlp_files(tmp_path)
    recipe = tmp_path / "r.toml"
    recipe.write_text("[prune]\nenabled = false\n[share]\nbits_fc = 2\nmin_params = 0\n")
    reports = {}
    for objective in ("size", "int8-kernels"):
        out, rep = tmp_path / f"{objective}.cmpz", tmp_path / f"{objective}.json"
        args = ["run", str(model), "-o", str(out), "--data", str(data), "--recipe", str(recipe), "--report", str(rep)]
        assert main(args + ["-q", "--objective", objective]) == 0
        reports[objective] = json.loads(rep.read_text())
    size, kernels = ({s["stage"]: s for s in reports[o]["stages"]} for o in ("size", "int8-kernels"))
    row = size["quantize"]
    assert not row["applied"] and row["attempts"] == [] and row["packed_bytes"] == size["share"]["packed_bytes"]
    (rejected,) = row["rejected_by"]
    assert rejected["measure"] == "packed_bytes" and rejected["limit"] == size["share"]["packed_bytes"]
    # the bound is below what the kept int8 build packs to, and above the share stage's container
    assert size["share"]["packed_bytes"] < rejected["value"] <= kernels["quantize"]["packed_bytes"]
    assert row["note"].startswith("skipped: cannot pack smaller than its input (objective size)")
    assert f"{rejected['value']:,} bytes > {rejected['limit']:,}" in row["note"]
    assert size["pack"]["bytes"] == size["share"]["packed_bytes"]
    # int8-kernels keeps the quantized model whatever it costs: no early check
    assert kernels["quantize"]["applied"] and kernels["quantize"]["attempts"]


class _Previous:
    metrics: dict = {}


def _ctx(model: onnx.ModelProto, sizes: dict, objective: str = "size") -> StageContext:
    def packed_size(m):
        sizes["packs"] = sizes.get("packs", 0) + 1
        return sizes["of"](m)

    def judge(m):  # the judge must never see a candidate that packs larger
        raise AssertionError("measured")

    row = StageRow("share", True, graph.model_bytes(model), {})
    return StageContext(model, judge, None, None, None, (row,), lambda m: None, packed_size, objective=objective)


def test_a_candidate_that_packs_larger_fails_before_it_is_measured():
    model = conv_mlp()
    small, _ = size_bound(model)
    sizes = {"of": lambda m: 100 if m is model else 150}
    ctx = _ctx(model, sizes)
    limit = quantize_stage.packed_limit(ctx)
    assert limit == 100
    over: list[int] = []
    build = quantize_stage.packs_within(lambda: (small, {}), ctx, limit, over)
    with pytest.raises(CompressorError, match=r"packs to 150 bytes > the input's 100 \(by 50\): not measured"):
        build()
    assert over == [150]
    sizes["of"] = lambda m: 100 if m is model else 90
    assert build()[0] is small
    # int8-kernels, or a model too large to pack early: no limit, the build as it is
    assert quantize_stage.packed_limit(_ctx(model, sizes, "int8-kernels")) is None
    assert quantize_stage.packs_within(build, ctx, None) is build


def test_a_folded_relus_input_is_not_captured_and_the_quantized_model_is_the_same(monkeypatch):
    model = conv_mlp()
    calib = Dataset({"x": np.random.default_rng(2).normal(size=(16, 3, 8, 8)).astype(np.float32)}, None)
    captured: list[list[str]] = []
    real_capture = evaluate.capture

    def capture(model, names, data, batch_size=None):
        captured.append(list(names))
        return real_capture(model, names, data, batch_size)

    monkeypatch.setattr(evaluate, "capture", capture)
    settings = QuantizeSettings(activations="static", reduce_range=True)
    folded, _ = quantize(model, calib, settings)
    assert "h" not in captured[-1] and "r" in captured[-1]  # the Conv's output: the Relu's statistics
    monkeypatch.setattr(calibrate, "folded_relus", lambda plans, groups: {})
    whole, _ = quantize(model, calib, settings)
    assert "h" in captured[-1]
    assert folded.SerializeToString() == whole.SerializeToString()
