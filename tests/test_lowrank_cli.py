"""`compressor lowrank` and the budget search (search/lowrank_budget.py)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import make_model, vi
from onnx import helper, numpy_helper

from compressor.cli import main
from compressor.data import Dataset
from compressor.search.lowrank_budget import lowrank_to_budget


def _mlp(seed: int = 0) -> onnx.ModelProto:
    """x (64) -> Gemm transB 96 -> Relu -> MatMul 10, with a low-rank-ish first layer."""
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(96, 6)) @ rng.normal(size=(6, 64)) / 8 + 0.001 * rng.normal(size=(96, 64))).astype(
        np.float32
    )
    w2 = (rng.normal(size=(96, 16)) / 10).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(np.zeros(96, np.float32), "b1"),
        numpy_helper.from_array(w2, "w2"),
    ]
    return make_model(nodes, [vi("x", ["N", 64])], [vi("y", ["N", 16])], inits)


@pytest.fixture()
def files(tmp_path):
    model = _mlp()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(1).normal(size=(200, 64)).astype(np.float32)
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.savez(tmp_path / "d.npz", x=x, y=logits.argmax(1))
    np.savez(tmp_path / "c.npz", x=x[:100])
    return path, tmp_path / "d.npz", tmp_path / "c.npz", x


def test_budget_search_fits_and_factorises_the_low_rank_layer(files):
    path, _, _, x = files
    model = onnx.load(path)
    labels = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].argmax(1)
    data = Dataset({"x": x}, labels)
    out, stats = lowrank_to_budget(model, data, 1.0, min_params=2000)
    budget = stats["budget"]
    assert budget["final"]["drop"] <= 1.0
    assert 1 <= budget["whole_model_runs"] <= 8
    names = {t["name"]: t for t in stats["tensors"]}
    assert "w1" in names and names["w1"]["rank"] < 30  # its full rank is 64
    onnx.checker.check_model(out, full_check=True)
    session = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    agree = np.mean(session.run(None, {"x": x})[0].argmax(1) == labels) * 100
    assert 100 - agree == pytest.approx(budget["final"]["drop"], abs=1e-6)


def test_budget_zero_on_a_full_rank_model_changes_nothing():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(64, 64)).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    model = make_model([node], [vi("x", ["N", 64])], [vi("y", ["N", 64])], [numpy_helper.from_array(w, "w")])
    x = rng.normal(size=(100, 64)).astype(np.float32)
    data = Dataset({"x": x}, (x @ w).argmax(1))
    out, stats = lowrank_to_budget(model, data, 0.0)
    assert stats["totals"]["factored_tensors"] == 0
    assert [n.op_type for n in out.graph.node] == ["MatMul"]


def test_cli_budget_json(files, capsys, tmp_path):
    path, data, calib, _ = files
    out = tmp_path / "o.onnx"
    code = main(
        ["lowrank", str(path), "-o", str(out), "--budget", "1", "--data", str(data), "--calib", str(calib)]
        + ["--min-params", "2000", "--json"]
    )
    assert code == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["budget"]["final"]["drop"] <= 1.0
    assert stats["totals"]["model_params_after"] < stats["totals"]["model_params_before"]
    onnx.checker.check_model(onnx.load(out))


def test_cli_rank_ratio_table(files, capsys, tmp_path):
    path, *_ = files
    out = tmp_path / "o.onnx"
    assert main(["lowrank", str(path), "-o", str(out), "--rank-ratio", "0.1", "--min-params", "0"]) == 0
    text = capsys.readouterr().out
    assert "w1" in text and "factorised 2 tensors" in text


@pytest.mark.parametrize(
    "args",
    [
        ["--budget", "1"],  # no data
        ["--budget", "1", "--rank-ratio", "0.5", "--data", "d.npz"],
        ["--rank-ratio", "1.5"],
        ["--rank-ratio", "0.2", "--refit"],  # refit without calibration inputs
    ],
)
def test_cli_usage_errors(files, args, capsys, tmp_path):
    path, *_ = files
    args = [str(tmp_path / a) if a.endswith(".npz") else a for a in args]
    assert main(["lowrank", str(path), "-o", str(tmp_path / "o.onnx"), *args]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_cli_refuses_to_overwrite_its_input(files, capsys):
    path, *_ = files
    assert main(["lowrank", str(path), "-o", str(path), "--rank-ratio", "0.5"]) != 0
