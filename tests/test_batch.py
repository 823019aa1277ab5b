"""`compressor batch`: a zoo with a corrupt file, resumability, summaries."""

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from compressor.cli import main

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def _zoo(tmp_path, sample_subset):
    models = tmp_path / "zoo"
    models.mkdir()
    shutil.copy(SAMPLES / "lenet300.onnx", models / "lenet300.onnx")
    # 200 of the 1000 samples: what is tested is the batch around the pipeline, not its searches.
    shutil.copy(sample_subset("lenet300_test", 200), models / "lenet300_test.npz")
    shutil.copy(SAMPLES / "lenet5.onnx", models / "lenet5.onnx")
    (models / "broken.onnx").write_bytes(b"\x08\x07garbage that is not a model")
    return models


@pytest.fixture()
def zoo(tmp_path, sample_subset):
    return _zoo(tmp_path, sample_subset)


@pytest.fixture(scope="module")
def first_batch(tmp_path_factory, sample_subset):
    """The zoo (with its corrupt file, given as a glob) batched once, serially: (exit code, stderr,
    output folder), shared by the tests below; they only read that folder or rerun on a copy."""
    tmp = tmp_path_factory.mktemp("first_batch")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["batch", str(_zoo(tmp, sample_subset) / "*.onnx"), "-o", str(tmp / "out"), "-q"])
    return code, err.getvalue(), tmp / "out"


def test_a_corrupt_model_is_recorded_and_the_rest_go_on(first_batch):
    code, err, out = first_batch
    assert code == 1
    assert (out / "lenet300.cmpz").stat().st_size > 0 and (out / "lenet5.cmpz").stat().st_size > 0
    assert not (out / "broken.cmpz").exists()
    summary = json.loads((out / "summary.json").read_text())
    status = {Path(m["model"]).name: m for m in summary["models"]}
    assert status["broken.onnx"]["status"] == "failed" and "not an ONNX model" in status["broken.onnx"]["error"]
    assert status["lenet300.onnx"]["status"] == "ok" and status["lenet300.onnx"]["mode"] == "accuracy"
    assert status["lenet5.onnx"]["mode"] == "none"  # no data beside it: data-free steps only
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [Path(r["model"]).name for r in rows] == [Path(m["model"]).name for m in summary["models"]]
    assert "1 of 3 models failed" in err


def test_rerun_skips_complete_models(zoo, tmp_path, first_batch):
    out = tmp_path / "out"
    (zoo / "broken.onnx").unlink()
    shutil.copytree(first_batch[2], out)  # a first run's output
    before = (out / "lenet300.cmpz").stat().st_mtime_ns
    assert main(["batch", str(zoo), "-o", str(out), "--json"]) == 0
    assert (out / "lenet300.cmpz").stat().st_mtime_ns == before
    summary = json.loads((out / "summary.json").read_text())
    assert {m["status"] for m in summary["models"]} == {"skipped"}


def test_parallel_jobs_give_the_same_containers(zoo, tmp_path, first_batch):
    (zoo / "broken.onnx").unlink()
    serial, parallel = first_batch[2], tmp_path / "parallel"
    assert main(["batch", str(zoo), "-o", str(parallel), "-j", "2", "-q"]) == 0
    for name in ("lenet300.cmpz", "lenet5.cmpz"):
        assert (serial / name).read_bytes() == (parallel / name).read_bytes()


def test_no_models_is_a_usage_error(tmp_path):
    assert main(["batch", str(tmp_path / "nothing-*.onnx"), "-o", str(tmp_path / "out")]) == 2
