"""The Python API (compressor.run/pack/unpack/batch): the CLI's results and messages, from Python values."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import small_models

import compressor
from compressor.cli import main
from compressor.errors import CompressorError, UsageError

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def _cli_error(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue().strip().removeprefix("error: ")


def test_run_with_a_model_proto_and_arrays_gives_the_cli_container(tmp_path):
    model_path, data_path = small_models.labeled_mlp(tmp_path)
    assert main(["run", str(model_path), "-o", str(tmp_path / "cli.cmpz"), "--data", str(data_path)]) == 0
    model = onnx.load(model_path)
    with np.load(data_path) as npz:
        data = {key: npz[key] for key in npz.files}
    report = compressor.run(model, out=tmp_path / "api.cmpz", data=data, report=tmp_path / "api.json")
    assert (tmp_path / "api.cmpz").read_bytes() == (tmp_path / "cli.cmpz").read_bytes()
    assert report["mode"] == "accuracy" and report["container"]["bytes"] == (tmp_path / "api.cmpz").stat().st_size
    assert report["model"] == "<onnx.ModelProto>"
    assert json.loads((tmp_path / "api.json").read_text())["container"]["bytes"] == report["container"]["bytes"]
    # unpack gives the compressed model back as a ModelProto, with the original's inputs and outputs.
    unpacked = compressor.unpack(tmp_path / "api.cmpz")
    assert isinstance(unpacked, onnx.ModelProto)
    assert [v.name for v in unpacked.graph.output] == [v.name for v in model.graph.output]


def test_run_without_out_returns_the_report_and_writes_nothing(tmp_path, monkeypatch):
    model = small_models.conv_net(tmp_path)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    report = compressor.run(str(model), recipe={"quantize": {"enabled": False}})
    assert report["mode"] == "none" and report["container"]["path"] is None and report["container"]["bytes"] > 0
    assert report["recipe"]["quantize"]["enabled"] is False
    assert sorted(tmp_path.iterdir()) == [model, tmp_path / "cwd"] and list((tmp_path / "cwd").iterdir()) == []


@pytest.mark.parametrize(
    "call, argv",
    [
        (
            lambda t: compressor.run(t / "missing.onnx", out=t / "x.cmpz"),
            ["run", "{t}/missing.onnx", "-o", "{t}/x.cmpz"],
        ),
        (
            lambda t: compressor.run(SAMPLES / "lenet5.onnx", out=t / "x.cmpz", data=t / "none.npz"),
            ["run", str(SAMPLES / "lenet5.onnx"), "-o", "{t}/x.cmpz", "--data", "{t}/none.npz"],
        ),
        (
            lambda t: compressor.run(SAMPLES / "lenet5.onnx", out=t / "x.cmpz", recipe=t / "bad.toml"),
            ["run", str(SAMPLES / "lenet5.onnx"), "-o", "{t}/x.cmpz", "--recipe", "{t}/bad.toml"],
        ),
        (
            lambda t: compressor.run(SAMPLES / "lenet5.onnx", out=SAMPLES / "lenet5.onnx"),
            ["run", str(SAMPLES / "lenet5.onnx"), "-o", str(SAMPLES / "lenet5.onnx")],
        ),
        (lambda t: compressor.unpack(t / "bad.toml"), ["unpack", "{t}/bad.toml", "-o", "{t}/y.onnx"]),
    ],
    ids=["no-model", "no-data", "bad-recipe", "overwrite-input", "not-a-container"],
)
def test_errors_are_the_cli_messages(tmp_path, call, argv):
    (tmp_path / "bad.toml").write_text("[share]\nbits_fc = 99\n")
    code, message = _cli_error([a.format(t=tmp_path) for a in argv])
    with pytest.raises(CompressorError) as raised:
        call(tmp_path)
    assert str(raised.value) == message and raised.value.exit_code == code
    assert not (tmp_path / "x.cmpz").exists()


def test_a_recipe_dict_is_checked_like_a_toml_recipe(tmp_path):
    (tmp_path / "bad.toml").write_text("[share]\nbits_fc = 99\n")
    with pytest.raises(UsageError) as from_toml:
        compressor.run(SAMPLES / "lenet5.onnx", recipe=tmp_path / "bad.toml")
    with pytest.raises(UsageError) as from_dict:
        compressor.run(SAMPLES / "lenet5.onnx", recipe={"share": {"bits_fc": 99}})
    assert str(from_dict.value) == str(from_toml.value)
    with pytest.raises(UsageError, match="unknown section 'sharing'"):
        compressor.run(SAMPLES / "lenet5.onnx", recipe={"sharing": {}})


def test_bad_arrays_name_the_dict_not_a_temporary_file():
    model = onnx.load(SAMPLES / "lenet5.onnx")
    with pytest.raises(CompressorError) as raised:
        compressor.run(model, data={"z": np.zeros((2, 1, 28, 28), np.float32)})
    assert str(raised.value).startswith("data file <data dict> has no array for model input")
    with pytest.raises(UsageError, match="holds Python objects"):
        compressor.run(model, calib={"x": np.array([object()])})
    with pytest.raises(UsageError, match="an .npz path or a dict"):
        compressor.run(model, data=[1, 2])


def test_pack_and_unpack(tmp_path):
    path = small_models.conv_net(tmp_path)
    model = onnx.load(path)
    # A path goes through pack_file, what `compressor pack` runs; a ModelProto gives the same bytes.
    assert compressor.pack(path, tmp_path / "file.cmpz")["input"] == str(path)
    stats = compressor.pack(model, tmp_path / "api.cmpz")
    assert (tmp_path / "api.cmpz").read_bytes() == (tmp_path / "file.cmpz").read_bytes()
    assert stats["output"] == str(tmp_path / "api.cmpz")
    assert compressor.unpack(tmp_path / "api.cmpz").SerializeToString() == model.SerializeToString()
    info = compressor.unpack(tmp_path / "api.cmpz", tmp_path / "back.onnx")
    assert info["verified"] and (tmp_path / "back.onnx").read_bytes() == path.read_bytes()
    with pytest.raises(UsageError, match="refusing to overwrite the container"):
        compressor.unpack(tmp_path / "api.cmpz", tmp_path / "api.cmpz")


def test_batch_returns_the_summary(tmp_path):
    models = tmp_path / "zoo"
    models.mkdir()
    small_models.conv_net(models)
    (models / "broken.onnx").write_bytes(b"not a model")
    done = []
    summary = compressor.batch(models, tmp_path / "out", step=lambda *counts: done.append(counts))
    assert {Path(m["model"]).name: m["status"] for m in summary["models"]} == {
        "broken.onnx": "failed",
        "conv.onnx": "ok",
    }
    assert done == [(1, 2, 1), (2, 2, 1)] or done == [(1, 2, 0), (2, 2, 1)]
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    with pytest.raises(UsageError, match="jobs must be a positive integer"):
        compressor.batch(models, tmp_path / "out", jobs=0)
