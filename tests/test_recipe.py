"""Recipes: validation names the bad key; defaults depend on the data available."""

import pytest

from compressor.errors import UsageError
from compressor.recipe import default_recipe, merge, read_recipe


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
    merged = merge(default_recipe("accuracy"), r)
    assert merged["prune"]["sparsity"] == 0.8 and merged["prune"]["scope"] == "layer"
    assert merged["share"]["bits_fc"] == 4 and merged["share"]["bits_conv"] == 8
    assert merged["gate"]["max_accuracy_drop"] == 1.0


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
    r = default_recipe("none")
    assert not r["prune"]["enabled"] and not r["share"]["enabled"]
    assert r["quantize"]["enabled"] and r["quantize"]["activations"] == "none"
    assert default_recipe("accuracy")["quantize"]["activations"] == "static"
