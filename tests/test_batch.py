"""`compressor batch`: a zoo with a corrupt file, resumability, summaries."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from compressor.cli import main

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


@pytest.fixture()
def zoo(tmp_path):
    models = tmp_path / "zoo"
    models.mkdir()
    shutil.copy(SAMPLES / "lenet300.onnx", models / "lenet300.onnx")
    shutil.copy(SAMPLES / "lenet300_test.npz", models / "lenet300_test.npz")
    shutil.copy(SAMPLES / "lenet5.onnx", models / "lenet5.onnx")
    (models / "broken.onnx").write_bytes(b"\x08\x07garbage that is not a model")
    return models


def test_a_corrupt_model_is_recorded_and_the_rest_go_on(zoo, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["batch", str(zoo), "-o", str(out), "-q"]) == 1
    assert (out / "lenet300.cmpz").stat().st_size > 0 and (out / "lenet5.cmpz").stat().st_size > 0
    assert not (out / "broken.cmpz").exists()
    summary = json.loads((out / "summary.json").read_text())
    status = {Path(m["model"]).name: m for m in summary["models"]}
    assert status["broken.onnx"]["status"] == "failed" and "not an ONNX model" in status["broken.onnx"]["error"]
    assert status["lenet300.onnx"]["status"] == "ok" and status["lenet300.onnx"]["mode"] == "accuracy"
    assert status["lenet5.onnx"]["mode"] == "none"  # no data beside it: data-free steps only
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [Path(r["model"]).name for r in rows] == [Path(m["model"]).name for m in summary["models"]]
    assert "1 of 3 models failed" in capsys.readouterr().err


def test_rerun_skips_complete_models(zoo, tmp_path):
    out = tmp_path / "out"
    (zoo / "broken.onnx").unlink()
    assert main(["batch", str(zoo / "*.onnx"), "-o", str(out), "-q"]) == 0
    before = (out / "lenet300.cmpz").stat().st_mtime_ns
    assert main(["batch", str(zoo), "-o", str(out), "--json"]) == 0
    assert (out / "lenet300.cmpz").stat().st_mtime_ns == before
    summary = json.loads((out / "summary.json").read_text())
    assert {m["status"] for m in summary["models"]} == {"skipped"}


def test_parallel_jobs_give_the_same_containers(zoo, tmp_path):
    (zoo / "broken.onnx").unlink()
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert main(["batch", str(zoo), "-o", str(serial), "-q"]) == 0
    assert main(["batch", str(zoo), "-o", str(parallel), "-j", "2", "-q"]) == 0
    for name in ("lenet300.cmpz", "lenet5.cmpz"):
        assert (serial / name).read_bytes() == (parallel / name).read_bytes()


def test_no_models_is_a_usage_error(tmp_path):
    assert main(["batch", str(tmp_path / "nothing-*.onnx"), "-o", str(tmp_path / "out")]) == 2
