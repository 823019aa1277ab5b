"""`compressor batch`: a zoo with a corrupt file, resumability, summaries."""

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compressor.batch import _stem_names
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


def test_rerun_redoes_a_model_whose_container_or_options_changed(zoo, tmp_path, first_batch):
    out = tmp_path / "out"
    (zoo / "broken.onnx").unlink()
    shutil.copytree(first_batch[2], out)
    (out / "lenet300.cmpz").write_bytes(b"garbage, but its report says ok")
    assert main(["batch", str(zoo), "-o", str(out), "-q"]) == 0
    status = {Path(m["model"]).name: m["status"] for m in json.loads((out / "summary.json").read_text())["models"]}
    assert status == {"lenet300.onnx": "ok", "lenet5.onnx": "skipped"}
    assert (out / "lenet300.cmpz").read_bytes() == (first_batch[2] / "lenet300.cmpz").read_bytes()
    # Other options: nothing is skipped (lenet5 has no data to gate on: it fails).
    assert main(["batch", str(zoo), "-o", str(out), "-q", "--max-accuracy-drop", "5"]) == 1
    status = {Path(m["model"]).name: m["status"] for m in json.loads((out / "summary.json").read_text())["models"]}
    assert status == {"lenet300.onnx": "ok", "lenet5.onnx": "failed"}


def test_output_names_do_not_depend_on_the_argument_order(tmp_path):
    a, b = tmp_path / "x" / "m.onnx", tmp_path / "y" / "m.onnx"
    c, d = tmp_path / "p" / "x" / "m.onnx", tmp_path / "q" / "x" / "m.onnx"
    assert _stem_names([a, b]) == _stem_names([b, a])
    assert sorted(_stem_names([a, b]).values()) == ["x_m", "y_m"]
    names = _stem_names([c, d, a])
    assert names == _stem_names([a, d, c]) and len(set(names.values())) == 3


# A batch whose models block in the pipeline: each worker prints its pid once it has started.
BLOCKING_BATCH = """
import os, sys, time
import compressor.batch as batch
from compressor.cli import main

def blocking(*args, **kwargs):
    print(os.getpid(), flush=True)
    time.sleep(120)

batch.run_pipeline = blocking
sys.exit(main(["batch", *sys.argv[1:], "-j", "2", "-q"]))
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state


def test_a_terminated_parallel_batch_leaves_no_worker_behind(tmp_path):
    models = tmp_path / "zoo"
    models.mkdir()
    for name in ("a", "b"):
        shutil.copy(SAMPLES / "lenet300.onnx", models / f"{name}.onnx")
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKING_BATCH, str(models), "-o", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    workers = [int(proc.stdout.readline()) for _ in range(2)]
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)
    assert not list((tmp_path / "out").glob("*.cmpz"))
