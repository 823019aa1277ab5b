"""Recipes: validation names the bad key; defaults depend on the data available."""

import math

import pytest

from compressor.errors import UsageError
from compressor.options import Recipe, check_value, validate_overrides
from compressor.recipe import read_recipe


def write(tmp_path, text):
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


def test_valid_recipe_merges_over_defaults(tmp_path):
    r = read_recipe(
        write(
            tmp_path, "[prune]\nsparsity = 0.8\nscope = 'layer'\n[share]\nbits_fc = 4\n[gate]\nmax_accuracy_drop = 1\n"
        )
    )
    merged = Recipe.for_mode("accuracy", r)
    assert merged.prune.sparsity == 0.8 and merged.prune.scope == "layer"
    assert merged.share.bits_fc == 4 and merged.share.bits_conv == 8
    assert merged.gate.max_accuracy_drop == 1.0 and isinstance(merged.gate.max_accuracy_drop, float)
    assert merged.as_dict()["share"]["bits_fc"] == 4
    # the keys the user gave fix a stage's lossy settings (no fallback ladder)
    assert not merged.share.adaptive and merged.quantize.adaptive and not merged.gate.explicit_snr


@pytest.mark.parametrize(
    "text, key",
    [
        ("[prune]\nsparsty = 0.5\n", "prune.sparsty"),
        ("[prune]\nsparsity = 1.5\n", "prune.sparsity"),
        ("[prune]\nscope = 'everywhere'\n", "prune.scope"),
        ("[share]\nbits_fc = 'five'\n", "share.bits_fc"),
        ("[share]\nbits_conv = 0\n", "share.bits_conv"),
        ("[quantize]\nper_channel = 1\n", "quantize.per_channel"),
        ("[squash]\nx = 1\n", "squash"),
        ("[gate]\nbudget = nan\n", "gate.budget"),
        ("[quantize]\nexclude = '('\n", "quantize.exclude"),
        ("[gate]\nmin_snr_db = inf\n", "gate.min_snr_db"),
        ("[prune]\nmax_seconds = 0\n", "prune.max_seconds"),
        ("[gate]\nmax_accuracy_drop = -1\n", "gate.max_accuracy_drop"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, text, key):
    with pytest.raises(UsageError, match=key.replace(".", r"\.")):
        read_recipe(write(tmp_path, text))


def test_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(UsageError):
        read_recipe(write(tmp_path, "[prune\n"))
    with pytest.raises(UsageError, match="no such recipe"):
        read_recipe(tmp_path / "missing.toml")


def test_no_data_defaults_are_data_free():
    r = Recipe.for_mode("none")
    assert not r.prune.enabled and not r.share.enabled
    assert r.quantize.enabled and r.quantize.activations == "none" and not r.quantize.small_constants
    assert Recipe.for_mode("accuracy").quantize.activations == "static"


def test_report_recipe_is_one_dict_per_stage_with_every_option():
    d = Recipe.for_mode("fidelity", {"gate": {"min_snr_db": 30}}).as_dict()
    assert list(d) == ["prune", "share", "quantize", "pack", "gate", "run", "finetune", "lowrank", "structured"]
    assert d["prune"] == {
        "enabled": True,
        "budget": None,
        "sparsity": None,
        "scope": "global",
        "exclude": None,
        "min_params": 1024,
        "seed": 0,
        "max_seconds": 120.0,
        "compensate": True,
    }
    assert d["gate"] == {"max_accuracy_drop": None, "budget": 1.0, "min_snr_db": 30.0, "max_kl": 0.3, "hold_out": True}
    assert "given" not in d["share"]
    assert d["run"] == {"objective": "size"}
    # Off unless asked for (`run --finetune EPOCHS`); the training file shown only when set.
    assert d["finetune"] == {"epochs": 0, "lr": 0.001, "seed": 0, "further": True}


def test_the_objective_is_size_by_default_and_checked():
    assert Recipe.for_mode("accuracy").run.objective == "size"
    assert Recipe.for_mode("accuracy", {"run": {"objective": "int8-kernels"}}).run.objective == "int8-kernels"
    with pytest.raises(UsageError, match=r"'run\.objective' must be one of size, int8-kernels, got 'speed'"):
        validate_overrides({"run": {"objective": "speed"}})


def test_errors_name_the_option_not_a_flag():
    with pytest.raises(UsageError, match=r"^recipe: 'prune\.sparsity' must be in \[0, 1\), got 1\.5$"):
        validate_overrides({"prune": {"sparsity": 1.5}})
    with pytest.raises(UsageError, match=r"'gate\.max_accuracy_drop' must be a finite number"):
        check_value("gate", "max_accuracy_drop", math.nan)
    assert check_value("gate", "budget", 2) == 2.0 and isinstance(check_value("gate", "budget", 2), float)
