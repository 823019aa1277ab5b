"""Fine-tuning without torch: the core install says in one line how to get the extra, and nothing
else changes (the recipe's finetune section is off by default)."""

import numpy as np
import onnx
import pytest
from graphs import make_inputs, mlp

import compressor.passes.finetune as front
from compressor.cli import main
from compressor.errors import UsageError
from compressor.options import Recipe
from compressor.passes.prune import prune
from compressor.passes.share import share
from compressor.stages import STAGES
from compressor.stages import finetune as finetune_stage


@pytest.fixture()
def no_torch(monkeypatch):
    monkeypatch.setattr(front, "torch_available", lambda: False)


@pytest.fixture()
def files(tmp_path):
    model = mlp()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    data = make_inputs(model, n=32)
    np.savez(tmp_path / "t.npz", **data.inputs)
    return path, tmp_path / "t.npz"


def test_finetune_without_torch_says_how_to_install(no_torch, files, tmp_path, capsys):
    path, train = files
    code = main(["finetune", str(path), "--teacher", str(path), "--train", str(train), "-o", str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "pip install 'compressor[finetune]'" in err
    assert not (tmp_path / "o.onnx").exists()


def test_run_finetune_without_torch_fails_before_any_work(no_torch, files, tmp_path, capsys):
    path, train = files
    out = tmp_path / "o.cmpz"
    code = main(["run", str(path), "-o", str(out), "--calib", str(train), "--finetune", "1", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "compressor[finetune]" in err
    assert not out.exists()


def test_finetune_is_off_by_default_and_has_no_row():
    recipe = Recipe.for_mode("accuracy")
    assert not recipe.finetune.enabled
    assert recipe.as_dict()["finetune"]["epochs"] == 0
    finetunes = [s for s in STAGES if s.NAME == "finetune"]
    assert all(s.OPTIONAL for s in finetunes) and [s.after for s in finetunes] == ["prune", "share"]


def test_run_finetune_needs_training_inputs(files, tmp_path, capsys):
    path, train = files
    # --data only: the fine-tune never trains on what it is judged on.
    code = main(["run", str(path), "-o", str(tmp_path / "o.cmpz"), "--data", str(train), "--finetune", "1", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--train" in err or "compressor[finetune]" in err


def test_the_recipe_section_turns_finetune_on_and_checks_its_values():
    recipe = Recipe.for_mode("accuracy", {"finetune": {"epochs": 2, "train": "t.npz"}})
    assert recipe.finetune.enabled and recipe.finetune.epochs == 2 and recipe.finetune.train == "t.npz"
    assert recipe.as_dict()["finetune"]["train"] == "t.npz"
    with pytest.raises(UsageError, match=r"'finetune\.lr' must be > 0"):
        Recipe.for_mode("accuracy", {"finetune": {"epochs": 1, "lr": 0.0}})


def test_run_never_writes_over_the_training_file(files, capsys):
    path, train = files
    before = train.read_bytes()
    code = main(["run", str(path), "-o", str(train), "--calib", str(train), "--train", str(train), "--finetune", "1"])
    assert code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert train.read_bytes() == before


def _arrays(model):
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def test_pruning_further_keeps_the_zeros_and_three_quarters_of_the_rest():
    pruned, _ = prune(mlp(), 0.5, min_params=0, exclude="fc3")
    further, what = finetune_stage._prune_further(pruned)
    before, after = _arrays(pruned), _arrays(further)
    for name in ("fc1.weight", "fc2.weight"):
        assert np.all(after[name][before[name] == 0] == 0)
        kept = np.count_nonzero(after[name]) / np.count_nonzero(before[name])
        assert kept == pytest.approx(finetune_stage.FURTHER_KEEP, abs=0.01)
    np.testing.assert_array_equal(before["fc3.weight"], after["fc3.weight"])  # never pruned: left alone
    assert "sparsity" in what


def test_narrower_codebooks_only_for_shared_tensors():
    shared, _ = share(mlp(), bits_fc=3, bits_conv=3, min_params=0, exclude="fc3")
    narrower, _ = finetune_stage._share_fewer_bits(shared)
    before, after = _arrays(shared), _arrays(narrower)
    for name in ("fc1.weight", "fc2.weight"):
        assert np.unique(before[name]).size <= 8 and np.unique(after[name]).size <= 4
    np.testing.assert_array_equal(before["fc3.weight"], after["fc3.weight"])  # not shared: not clustered
