"""Fine-tuning with torch (the `finetune` extra; skipped without it): the interpreter matches
ONNX Runtime, training keeps pruned zeros and shared values, is deterministic, writes only
initializer values, and `run --finetune` adds its rows."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

import graphs  # noqa: E402

from compressor.cli import main  # noqa: E402
from compressor.data import Dataset, load_dataset  # noqa: E402
from compressor.errors import CompressorError  # noqa: E402
from compressor.evaluate import run_model  # noqa: E402
from compressor.output_kinds import mean_kl  # noqa: E402
from compressor.passes.finetune import finetune  # noqa: E402
from compressor.passes.finetune.interpret import Graph, run_numpy  # noqa: E402
from compressor.passes.prune import prune  # noqa: E402
from compressor.passes.share import share  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"

BUILDERS = [
    "mlp",
    "mlp_matmul_shared",
    "mlp_with_preprocessing",
    "conv_net",
    "depthwise_resnet",
    "constant_weights_conv",
    "transformer_encoder",
    "quantized_qdq_model",
    "integer_input_model",
]


@pytest.mark.parametrize("builder", BUILDERS)
def test_interpreter_matches_onnxruntime(builder):
    model = getattr(graphs, builder)()
    data = graphs.make_inputs(model, n=6)
    ours = run_numpy(Graph(model), next(data.batches(64)))
    theirs = run_model(model, data)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(b).max())))


def test_interpreter_matches_onnxruntime_on_lenet5():
    model = onnx.load(SAMPLES / "lenet5.onnx")
    data = load_dataset(SAMPLES / "lenet5_calib.npz", model).take(16)
    np.testing.assert_allclose(run_numpy(Graph(model), data.inputs)[0], run_model(model, data)[0], atol=1e-4)


def test_an_unsupported_op_is_refused_in_one_line():
    with pytest.raises(CompressorError) as info:
        Graph(graphs.gru_model())
    message = str(info.value)
    assert "GRU" in message and "\n" not in message


def _compressed_mlp():
    model = graphs.mlp()
    pruned, _ = prune(model, 0.7, min_params=0)
    shared, _ = share(pruned, bits_fc=3, bits_conv=3, min_params=0, exclude="fc3")
    return model, pruned, shared


def _train(model, n=96, seed=1):
    data = graphs.make_inputs(model, n=n, seed=seed)
    teacher = run_model(model, data)
    return Dataset(data.inputs, teacher[0].argmax(1)), teacher


def _arrays(model):
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def test_finetune_keeps_zeros_and_codebooks_and_gets_closer_to_the_teacher():
    original, _, shared = _compressed_mlp()
    train, teacher = _train(original)
    train = Dataset(train.inputs, None)  # distillation alone
    tuned, stats = finetune(shared, original, train, epochs=4, lr=1e-2, progress=False)
    before, after = _arrays(shared), _arrays(tuned)
    assert stats["tensors"]["shared"] == 2 and stats["tensors"]["masked"] == 1
    for name in ("fc1.weight", "fc2.weight"):
        np.testing.assert_array_equal(before[name] == 0, after[name] == 0)
        assert np.unique(after[name][after[name] != 0]).size <= 8
        assert not np.array_equal(before[name], after[name])  # the centroids moved
        # The weights that shared a value still share one (each centroid moved as a whole).
        for value in np.unique(before[name]):
            assert np.unique(after[name][before[name] == value]).size == 1
    np.testing.assert_array_equal(before["fc3.weight"] == 0, after["fc3.weight"] == 0)
    # Same graph: only initializer values changed.
    assert [n.SerializeToString() for n in shared.graph.node] == [n.SerializeToString() for n in tuned.graph.node]
    assert {k: v.dtype for k, v in before.items()} == {k: v.dtype for k, v in after.items()}
    gap = lambda m: mean_kl(teacher[0], run_model(m, train)[0])  # noqa: E731
    assert gap(tuned) < 0.8 * gap(shared)


def test_finetune_is_deterministic():
    original, pruned, _ = _compressed_mlp()
    train, _ = _train(original)
    a, _ = finetune(pruned, original, train, epochs=2, lr=1e-2, seed=3, progress=False)
    b, _ = finetune(pruned, original, train, epochs=2, lr=1e-2, seed=3, progress=False)
    assert a.SerializeToString() == b.SerializeToString()


def test_qdq_model_trains_through_fake_quantization():
    model = graphs.quantized_qdq_model()
    data = graphs.make_inputs(model, n=64)
    teacher = [out + 0.05 * np.abs(out).mean() for out in run_model(model, data)]  # a target to move to
    tuned, stats = finetune(model, teacher, data, epochs=3, lr=1e-2, progress=False)
    before, after = _arrays(model), _arrays(tuned)
    for name in ("fc1.weight_quantized", "fc2.weight_quantized"):
        assert after[name].dtype == np.int8
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    for name in ("x.scale", "fc1.weight_scale", "fc1.out.zero_point"):  # quantization parameters stay
        np.testing.assert_array_equal(before[name], after[name])


def test_finetune_command_writes_the_model(tmp_path, capsys):
    original, pruned, _ = _compressed_mlp()
    train, _ = _train(original)
    onnx.save(original, tmp_path / "orig.onnx")
    onnx.save(pruned, tmp_path / "pruned.onnx")
    np.savez(tmp_path / "t.npz", x=train.inputs["x"], y=train.labels)
    out = tmp_path / "out.onnx"
    args = ["finetune", str(tmp_path / "pruned.onnx"), "--teacher", str(tmp_path / "orig.onnx")]
    args += ["--train", str(tmp_path / "t.npz"), "-o", str(out), "--epochs", "2", "--json"]
    assert main(args) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["labels"] is True and stats["epochs"] == 2 and len(stats["losses"]) == 2
    tuned = onnx.load(out)
    np.testing.assert_array_equal(_arrays(tuned)["fc1.weight"] == 0, _arrays(pruned)["fc1.weight"] == 0)


def test_run_finetune_adds_rows_after_prune_and_share(tmp_path, sample_subset):
    # No --train: the fine-tune trains on the --calib inputs (unlabeled), never on --data.
    report = tmp_path / "r.json"
    args = ["run", str(SAMPLES / "lenet300.onnx"), "-o", str(tmp_path / "o.cmpz")]
    args += ["--data", str(sample_subset("lenet300_test", 200)), "--calib", str(SAMPLES / "lenet300_calib.npz")]
    args += ["--finetune", "1", "--report", str(report), "-q"]
    assert main(args) == 0
    rows = json.loads(report.read_text())["stages"]
    assert [r["stage"] for r in rows][:5] == ["original", "prune", "finetune", "share", "finetune"]
    tunes = [row for row in rows if row["stage"] == "finetune"]
    assert tunes[0]["applied"], tunes[0]["note"]
    for row in tunes:
        assert {"before", "finetuned", "after", "finetune"} <= set(row["finetune"]), row["note"]
        assert row["finetune"]["finetune"]["samples"] == 200 and not row["finetune"]["finetune"]["labels"]
