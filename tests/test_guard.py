"""The run's guard: held-out verdict, the user task metric (--metric / gate.metric), the
KL companion of class scores and what the report says about them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import relu_mlp

from compressor.cli import main
from compressor.data import Dataset
from compressor.errors import UsageError
from compressor.measure import Judge, load_metric
from compressor.pipeline import calibration_data, run_pipeline, verdict_and_search

METRIC_MODULE = '''
import numpy as np

def within_tenth(outputs, arrays):
    """Share of samples whose score stays within 0.1 of the target."""
    return float(np.mean(np.abs(outputs[0][:, 0] - arrays["target"]) < 0.1))

def nan(outputs, arrays):
    return float("nan")

def text(outputs, arrays):
    return "good"

not_callable = 3
'''


@pytest.fixture()
def regressor(tmp_path):
    """A [N, 1] regressor and 64 inputs with its own outputs as the metric's targets."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 32)).astype(np.float32) / 4
    w2 = rng.normal(size=(32, 1)).astype(np.float32) / 6
    path = tmp_path / "reg.onnx"
    onnx.save(relu_mlp(w1, w2), path)
    x = rng.normal(size=(64, 16)).astype(np.float32)
    y = ort.InferenceSession(str(path)).run(None, {"x": x})[0][:, 0]
    np.savez(tmp_path / "in.npz", x=x, target=y)
    (tmp_path / "task_metric.py").write_text(METRIC_MODULE)
    return path, tmp_path / "in.npz", tmp_path / "task_metric.py"


FAST = ["--no-prune", "--no-share", "-q", "--json"]


def test_metric_from_the_cli_is_the_runs_loss(regressor, tmp_path, capsys):
    model, data, metric = regressor
    out = tmp_path / "m.cmpz"
    code = main(["run", str(model), "-o", str(out), "--calib", str(data), "--metric", f"{metric}:within_tenth", *FAST])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "metric" and report["guard"]["metric"] == f"{metric}:within_tenth"
    assert report["guard"]["reference_score"] == 1.0  # the targets are the original's outputs
    assert report["stages"][-1]["task_score"] >= 0.99
    assert report["recipe"]["gate"]["metric"] == f"{metric}:within_tenth"


def test_metric_from_a_recipe_with_a_module_path(regressor, tmp_path, monkeypatch):
    model, data, metric = regressor
    monkeypatch.syspath_prepend(str(metric.parent))
    report = run_pipeline(
        str(model),
        str(tmp_path / "m.cmpz"),
        overrides={"gate": {"metric": "task_metric:within_tenth"}, "prune": {"enabled": False}},
        calib_path=str(data),
    )
    assert report["mode"] == "metric" and report["stages"][-1]["task_score"] >= 0.99
    # The metric sees the verdict's samples only: the held-out half of the 64.
    assert report["guard"]["verdict_samples"] == 32 and report["guard"]["held_out"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nocolon", "MODULE:FUNCTION"),
        ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
        ("{metric}:missing", "has no 'missing'"),
        ("{metric}:not_callable", "is not callable"),
        ("{metric}:nan", "returned nan for the original model"),
        ("{metric}:text", "returned str, not a number"),
        ("{dir}/absent.py:f", "no such file"),
    ],
)
def test_a_bad_metric_is_one_usage_error_line(regressor, tmp_path, capsys, spec, message):
    model, data, metric = regressor
    spec = spec.format(metric=metric, dir=tmp_path)
    code = main(["run", str(model), "-o", str(tmp_path / "m.cmpz"), "--calib", str(data), "--metric", spec, *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.cmpz").exists()


def test_load_metric_wraps_the_callable(regressor):
    _, _, metric = regressor
    func = load_metric(f"{metric}:within_tenth")
    out = [np.array([[1.0], [2.0]], np.float32)]
    assert func(out, {"target": np.array([1.0, 2.5])}) == 0.5
    with pytest.raises(UsageError):
        load_metric(f"{metric}:text")(out, {})


def test_one_unlabeled_set_is_split_for_a_held_out_verdict():
    data = Dataset({"x": np.arange(10, dtype=np.float32)[:, None]}, None)
    verdict, search, index = verdict_and_search(None, data)
    assert verdict.inputs["x"][:, 0].tolist() == [1, 3, 5, 7, 9] and search.inputs["x"][:, 0].tolist() == [
        0,
        2,
        4,
        6,
        8,
    ]
    assert index.tolist() == [1, 3, 5, 7, 9]
    assert verdict_and_search(None, data, hold_out=False)[0] is data
    other = Dataset({"x": np.zeros((4, 1), np.float32)}, None)
    assert verdict_and_search(data, other)[:2] == (data, other)  # --data is the verdict, --calib searched
    labeled = Dataset({"x": np.zeros((4, 1), np.float32)}, np.zeros(4, np.int64))
    assert verdict_and_search(labeled, other)[:2] == (labeled, labeled)  # labels: the task's own measure


def test_calibration_never_reads_the_verdicts_samples():
    calib = Dataset({"x": np.arange(10, dtype=np.float32)[:, None]}, None)
    verdict, search, _ = verdict_and_search(None, calib)
    used = calibration_data(None, calib, search)  # --calib alone: the verdict is split from it
    assert used is search and not set(used.inputs["x"][:, 0]) & set(verdict.inputs["x"][:, 0])
    data = Dataset({"x": np.zeros((4, 1), np.float32)}, None)
    assert calibration_data(data, calib, verdict_and_search(data, calib)[1]) is calib  # --data is the verdict
    assert calibration_data(data, None, data) is data


def test_the_report_states_both_sample_counts_and_the_resolution(regressor, tmp_path):
    model, data, _ = regressor
    report = run_pipeline(
        str(model), str(tmp_path / "m.cmpz"), calib_path=str(data), overrides={"prune": {"enabled": False}}
    )
    guard = report["guard"]
    assert guard["verdict_samples"] == 32 and guard["search_samples"] == 32 and guard["held_out"]
    assert guard["resolution_points"] == pytest.approx(100 / 32, abs=1e-3)
    assert guard["output_kinds"] == ["regressor"] and guard["min_snr_db"] == 20.0
    assert report["stages"][-1]["snr_db"] >= 20.0


def test_class_scores_are_gated_by_kl_besides_agreement():
    rng = np.random.default_rng(1)
    data = Dataset({"x": np.zeros((30, 1), np.float32)}, None)
    judge = Judge(data, "fidelity", 1.0, max_kl=0.3)
    judge.reference_outputs = [(rng.normal(size=(30, 10)) * 3).astype(np.float32)]
    judge.kl_gated = True
    flat = judge.scores([judge.reference_outputs[0] * np.float32(0.2)])
    assert flat["top1_agreement"] == 100.0 and flat["kl"] > 0.3
    assert not judge.within({**flat, "accuracy_drop": None})
    close = judge.scores([judge.reference_outputs[0] * np.float32(0.98)])
    assert judge.within({**close, "accuracy_drop": None})


def test_batch_takes_the_metric_too(regressor, tmp_path, capsys):
    model, data, metric = regressor
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "reg.onnx").write_bytes(model.read_bytes())
    (zoo / "reg_calib.npz").write_bytes(data.read_bytes())
    out = tmp_path / "out"
    code = main(["batch", str(zoo), "-o", str(out), "--metric", f"{metric}:within_tenth", *FAST])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert [m["mode"] for m in summary["models"]] == ["metric"]
    report = json.loads((out / "reg.report.json").read_text())
    assert report["guard"]["metric"] == f"{metric}:within_tenth"
    code = main(["batch", str(zoo), "-o", str(tmp_path / "out2"), "--metric", "nocolon", *FAST])
    assert code == 2 and "MODULE:FUNCTION" in capsys.readouterr().err


def test_the_resolution_counts_output_rows_when_a_sample_holds_a_batch():
    # Per-sample data (steps of 4 sequences): one sample's run gives 4 decisions, so one
    # flipped decision is 100 / (8 x 4) points, not 100 / 8.
    data = Dataset({"x": np.zeros((8, 4, 1), np.float32)}, None, per_sample=True)
    judge = Judge(data, "fidelity", budget=1.0)
    judge.reference_outputs = [np.zeros((32, 1), np.float32)]
    guard = judge.describe()
    assert guard["verdict_samples"] == 8 and guard["verdict_rows"] == 32
    assert guard["resolution_points"] == pytest.approx(100 / 32, abs=1e-3)
