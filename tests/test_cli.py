"""The CLI contract: JSON on stdout, one-line errors, exit codes (0 ok, 1 failure, 2 usage)."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor.cli import main


@pytest.fixture()
def gemm_model(tmp_path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(10, 20)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.normal(size=(10,)).astype(np.float32), "B")
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [w, b],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = rng.normal(size=(300, 20)).astype(np.float32)
    y = rng.integers(0, 10, 300)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return path, tmp_path / "d.npz", x, y


def test_inspect_json_counts_params_and_macs(gemm_model, capsys):
    path, *_ = gemm_model
    assert main(["inspect", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["float_params"] == 210
    assert out["totals"]["macs"] == 200
    roles = {w["name"]: w["role"] for w in out["weights"]}
    assert roles == {"W": "gemm_b", "B": "bias"}
    assert out["opset"] == 17


def test_eval_accuracy_matches_onnxruntime(gemm_model, capsys):
    path, data, x, y = gemm_model
    assert main(["eval", str(path), "--data", str(data), "--reference", str(path), "--json", "--no-latency"]) == 0
    out = json.loads(capsys.readouterr().out)
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert out["accuracy"] == pytest.approx(float(np.mean(logits.argmax(1) == y) * 100))
    assert out["top1_agreement"] == 100.0
    assert out["max_abs_error"] == 0.0


@pytest.mark.parametrize(
    "content, code",
    [(None, 2), (b"", 1), (b"\x00garbage\xff" * 10, 1)],
)
def test_bad_model_files_give_one_line_error(tmp_path, capsys, content, code):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    assert main(["inspect", str(path)]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err


def test_truncated_model_is_refused(gemm_model, tmp_path, capsys):
    path, *_ = gemm_model
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(path.read_bytes()[:-40])
    assert main(["inspect", str(cut)]) == 1
    assert capsys.readouterr().err.startswith("error:")


def test_eval_with_mismatched_data_fails_cleanly(gemm_model, tmp_path, capsys):
    path, *_ = gemm_model
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 7), np.float32))
    assert main(["eval", str(path), "--data", str(tmp_path / "bad.npz")]) == 1
    err = capsys.readouterr().err
    assert "expects" in err and err.count("\n") == 1


def test_missing_option_is_usage_error(gemm_model, capsys):
    path, *_ = gemm_model
    assert main(["eval", str(path)]) == 2


def test_run_quiet_silences_progress_but_prints_the_result(gemm_model, tmp_path, capsys):
    model, data, _, _ = gemm_model
    model, out = str(model), tmp_path / "m.cmpz"
    # --verbose would print progress lines; --quiet wins and leaves stderr empty.
    assert main(["run", model, "-o", str(out), "--data", str(data), "-q", "-v"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "stage" in captured.out and "container:" in captured.out and str(out) in captured.out
    assert main(["run", model, "-o", str(out), "--no-prune", "--no-share", "--verbose"]) == 0
    assert "pack: writing the container" in capsys.readouterr().err
