"""`compressor batch`: a zoo with a corrupt file, resumability, summaries."""

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import small_models

import compressor.zoo as zoo_module
from compressor.cli import main
from compressor.zoo import _stem_names

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def _zoo(tmp_path):
    # Small models: what is tested is the batch around the pipeline, not its searches.
    models = tmp_path / "zoo"
    models.mkdir()
    small_models.labeled_mlp(models)  # mlp.onnx with mlp_test.npz beside it
    small_models.conv_net(models)  # conv.onnx, no data
    (models / "broken.onnx").write_bytes(b"\x08\x07garbage that is not a model")
    return models


@pytest.fixture()
def zoo(tmp_path):
    return _zoo(tmp_path)


@pytest.fixture(scope="module")
def first_batch(tmp_path_factory):
    """The zoo (with its corrupt file, given as a glob) batched once, serially: (exit code, stderr,
    output folder), shared by the tests below; they only read that folder or rerun on a copy."""
    tmp = tmp_path_factory.mktemp("first_batch")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["batch", str(_zoo(tmp) / "*.onnx"), "-o", str(tmp / "out"), "-q"])
    return code, err.getvalue(), tmp / "out"


def test_a_corrupt_model_is_recorded_and_the_rest_go_on(first_batch):
    code, err, out = first_batch
    assert code == 1
    assert (out / "mlp.cmpz").stat().st_size > 0 and (out / "conv.cmpz").stat().st_size > 0
    assert not (out / "broken.cmpz").exists()
    summary = json.loads((out / "summary.json").read_text())
    status = {Path(m["model"]).name: m for m in summary["models"]}
    assert status["broken.onnx"]["status"] == "failed" and "not an ONNX model" in status["broken.onnx"]["error"]
    assert status["mlp.onnx"]["status"] == "ok" and status["mlp.onnx"]["mode"] == "accuracy"
    assert status["conv.onnx"]["mode"] == "none"  # no data beside it: data-free steps only
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [Path(r["model"]).name for r in rows] == [Path(m["model"]).name for m in summary["models"]]
    assert "1 of 3 models failed" in err


def test_rerun_skips_complete_models(zoo, tmp_path, first_batch):
    out = tmp_path / "out"
    (zoo / "broken.onnx").unlink()
    shutil.copytree(first_batch[2], out)  # a first run's output
    before = (out / "mlp.cmpz").stat().st_mtime_ns
    assert main(["batch", str(zoo), "-o", str(out), "--json"]) == 0
    assert (out / "mlp.cmpz").stat().st_mtime_ns == before
    summary = json.loads((out / "summary.json").read_text())
    assert {m["status"] for m in summary["models"]} == {"skipped"}


def test_parallel_jobs_give_the_same_containers(zoo, tmp_path, first_batch):
    (zoo / "broken.onnx").unlink()
    serial, parallel = first_batch[2], tmp_path / "parallel"
    assert main(["batch", str(zoo), "-o", str(parallel), "-j", "2", "-q"]) == 0
    for name in ("mlp.cmpz", "conv.cmpz"):
        assert (serial / name).read_bytes() == (parallel / name).read_bytes()


def test_no_models_is_a_usage_error(tmp_path):
    assert main(["batch", str(tmp_path / "nothing-*.onnx"), "-o", str(tmp_path / "out")]) == 2


def test_rerun_redoes_a_model_whose_container_or_options_changed(zoo, tmp_path, first_batch):
    out = tmp_path / "out"
    (zoo / "broken.onnx").unlink()
    shutil.copytree(first_batch[2], out)
    (out / "mlp.cmpz").write_bytes(b"garbage, but its report says ok")
    assert main(["batch", str(zoo), "-o", str(out), "-q"]) == 0
    status = {Path(m["model"]).name: m["status"] for m in json.loads((out / "summary.json").read_text())["models"]}
    assert status == {"mlp.onnx": "ok", "conv.onnx": "skipped"}
    assert (out / "mlp.cmpz").read_bytes() == (first_batch[2] / "mlp.cmpz").read_bytes()
    # Other options: nothing is skipped (conv has no data to gate on: it fails).
    assert main(["batch", str(zoo), "-o", str(out), "-q", "--max-accuracy-drop", "5"]) == 1
    status = {Path(m["model"]).name: m["status"] for m in json.loads((out / "summary.json").read_text())["models"]}
    assert status == {"mlp.onnx": "ok", "conv.onnx": "failed"}


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
import compressor.zoo as zoo
from compressor.cli import main

def blocking(*args, **kwargs):
    print(os.getpid(), flush=True)
    time.sleep(120)

zoo.run_pipeline = blocking
sys.exit(main(["batch", *sys.argv[1:], "-j", "2", "-q"]))
"""


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(p) for p in (task / "children").read_text().split()}
    return found


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
    # A worker prints its pid once it is in a model; then every worker process of the pool is
    # a child of the batch process.
    line = proc.stdout.readline()
    while line and not line.strip():
        line = proc.stdout.readline()
    assert line, "the batch ended before a worker started"
    workers = {int(line)} | _children(proc.pid)
    assert len(workers) >= 2
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)
    assert not list((tmp_path / "out").glob("*.cmpz"))


# ---- on a Dask cluster (the `dask` extra): a real scheduler and two worker processes


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed")
    dask = pytest.importorskip("dask")
    # A model whose worker dies is rescheduled (Dask's default allows 3 deaths; a loaded machine
    # can miss a heartbeat and count a second one, so the test keeps that default).
    with dask.config.set({"distributed.scheduler.allowed-failures": 3}):
        cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    # Not the default client: the CLI must find its own (as it does in a fresh process).
    with cluster, distributed.Client(cluster, set_as_default=False) as client:
        yield cluster.scheduler_address, client


def test_a_dask_cluster_gives_the_local_containers(dask_cluster, zoo, tmp_path, first_batch):
    address, _ = dask_cluster
    out = tmp_path / "out"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["batch", str(zoo), "-o", str(out), "--scheduler", address, "-v"])
    assert code == 1
    for name in ("mlp.cmpz", "conv.cmpz"):
        assert (out / name).read_bytes() == (first_batch[2] / name).read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    status = {Path(m["model"]).name: m for m in summary["models"]}
    assert status["broken.onnx"]["status"] == "failed" and "not an ONNX model" in status["broken.onnx"]["error"]
    assert status["mlp.onnx"]["status"] == status["conv.onnx"]["status"] == "ok"
    assert not (out / "broken.cmpz").exists()
    # One line per finished model, as it finishes.
    assert sorted(line.split(":")[0].strip() for line in err.getvalue().splitlines() if ": /" in line) == [
        "failed",
        "ok",
        "ok",
    ]


def _kill_worker_mid_model(marker: str) -> None:
    """Run on each worker (client.run): the first model to reach its pack step kills its own worker
    process (SIGKILL: no cleanup at all) and leaves `marker`; the others run unchanged."""
    real = zoo_module.run_pipeline

    def dying(*args, **kwargs):
        def log(msg: str) -> None:
            if not msg.startswith("pack"):
                return
            # O_EXCL: of two workers reaching pack at the same moment only one dies.
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                return
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)

        return real(*args, log=log, **kwargs)

    zoo_module.run_pipeline = dying


def test_a_worker_killed_mid_model_loses_nothing(dask_cluster, tmp_path, first_batch):
    address, client = dask_cluster
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a", "b"):  # no data: the quick data-free run
        small_models.conv_net(models, name)
    marker = tmp_path / "killed"
    client.run(_kill_worker_mid_model, str(marker))
    out = tmp_path / "out"
    assert main(["batch", str(models), "-o", str(out), "--scheduler", address, "-q"]) == 0
    assert marker.exists()  # a worker did die mid-model ...
    for name in ("a", "b"):  # ... and its model was run again, elsewhere, to the same bytes
        assert (out / f"{name}.cmpz").read_bytes() == (first_batch[2] / "conv.cmpz").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["a.cmpz", "a.report.json", "b.cmpz", "b.report.json", "summary.csv", "summary.json"]
    )


def test_scheduler_without_dask_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    shutil.copy(SAMPLES / "lenet5.onnx", tmp_path / "m.onnx")
    code = main(["batch", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"), "--scheduler", "tcp://localhost:1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'compressor[dask]'" in err
    assert not (tmp_path / "out").exists()


def test_an_unreachable_scheduler_is_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("distributed")
    monkeypatch.setattr(zoo_module, "DASK_CONNECT_TIMEOUT", 1)
    shutil.copy(SAMPLES / "lenet5.onnx", tmp_path / "m.onnx")
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    assert main(["batch", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out"), "--scheduler", address]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot reach the Dask scheduler at {address}") and "\n" not in err
