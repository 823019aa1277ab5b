"""quantize and run on models over the protobuf limit (lowered here): every serialization of a
whole model goes through external data or the graph's skeleton.

The guard makes ``ModelProto.SerializeToString`` refuse a model whose tensors are over the
lowered limit, so a path that serializes a whole big model fails these tests as it would
fail at 2 GiB; the > 2 GB run itself is the opt-in test in test_big_models.py.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from big_models import write_external_model
from click.testing import CliRunner

from compressor import graph
from compressor.cli import cli
from compressor.evaluate import make_session

LIMIT = 200_000  # bytes: the two 360 KB weights make the model "too big"


@pytest.fixture
def lowered_limit(monkeypatch):
    monkeypatch.setattr(graph, "PROTOBUF_LIMIT", LIMIT)
    monkeypatch.setattr(graph, "EXTERNAL_DATA_THRESHOLD", LIMIT // 2)
    serialize = onnx.ModelProto.SerializeToString
    tripped = []  # also the serializations a best-effort path caught and fell back from

    def guarded(self, *args, **kwargs):
        data = serialize(self, *args, **kwargs)
        if len(data) > LIMIT:
            tripped.append((len(data), "".join(__import__("traceback").format_stack(limit=9)[:-1])))
            raise ValueError("serialized a whole model over the (lowered) protobuf limit")
        return data

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", guarded)
    yield
    assert not tripped, "a whole model over the limit was serialized (and the failure caught): " + tripped[0][1]


@pytest.fixture
def big_model(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    return write_external_model(folder, layers=2, width=300)


def _calib(tmp_path, n=8):
    x = np.random.default_rng(1).standard_normal((n, 300)).astype(np.float32)
    path = tmp_path / "calib.npz"
    np.savez(path, h0=x)
    return path, x


def _outputs(path, x):
    session = make_session(str(path))
    return np.concatenate([session.run(None, {"h0": row[None]})[0] for row in x])


@pytest.mark.parametrize("with_calib", [False, True])
def test_quantize_writes_external_data_close_to_the_original(tmp_path, big_model, lowered_limit, with_calib):
    calib, x = _calib(tmp_path)
    out = tmp_path / "q.onnx"
    args = ["quantize", str(big_model), "-o", str(out), "--json"] + (["--calib", str(calib)] if with_calib else [])
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "q.onnx.data").exists()
    a, b = _outputs(big_model, x), _outputs(out, x)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
    stats = json.loads(result.stdout)
    assert stats["mode"] == ("static" if with_calib else "none")
    # One build of a model over the limit: 7-bit weights, no 8-bit probe (a second model in memory).
    assert stats["reduce_range"] and "weight_range_snr_db" not in stats


@pytest.mark.parametrize("with_calib,extra", [(False, []), (True, []), (False, ["--no-quantize"])])
def test_run_packs_a_model_over_the_limit(tmp_path, big_model, lowered_limit, with_calib, extra):
    calib, x = _calib(tmp_path)
    out = tmp_path / "r.cmpz"
    args = ["run", str(big_model), "-o", str(out), "--report", str(tmp_path / "r.json"), *extra]
    args += ["--calib", str(calib)] if with_calib else []
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["unpack", str(out), "-o", str(tmp_path / "u.onnx")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    a, b = _outputs(big_model, x), _outputs(tmp_path / "u.onnx", x)
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["container"]["bytes"] == out.stat().st_size
    assert report["original_bytes"] == big_model.stat().st_size + (big_model.parent / "model.onnx.data").stat().st_size


def test_the_checker_sees_the_graph_of_a_model_held_over_the_limit(big_model, lowered_limit):
    model = graph.load_model(big_model, max_bytes=None)
    graph.check_model(model)
    model.graph.node[0].input[1] = "missing"
    with pytest.raises(Exception, match="onnx checker"):
        graph.check_model(model)


def test_shapes_of_a_model_held_over_the_limit_are_inferred_on_its_skeleton(big_model, lowered_limit):
    model = graph.load_model(big_model, max_bytes=None)
    assert graph.infer_shapes_batch1(model)["h2"] == (1, 300)
    assert graph.without_large_data(model).ByteSize() < 10_000


@pytest.mark.parametrize(
    "command",
    [["prune", "--sparsity", "0.5"], ["share", "--bits-fc", "4"]],
)
def test_prune_and_share_write_external_data_close_to_the_original(tmp_path, big_model, lowered_limit, command):
    _, x = _calib(tmp_path)
    out = tmp_path / "p.onnx"
    result = CliRunner().invoke(cli, [command[0], str(big_model), "-o", str(out), *command[1:]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.onnx.data").exists()
    a, b = _outputs(big_model, x), _outputs(out, x)
    assert np.abs(a - b).max() < 0.5 * np.abs(a).max()


def test_eval_measures_a_model_over_the_limit(tmp_path, big_model, lowered_limit):
    data, _ = _calib(tmp_path)
    args = ["eval", str(big_model), "--data", str(data), "--reference", str(big_model), "--no-latency", "--json"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["samples"] == 8
