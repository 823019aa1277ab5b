"""`run` packs only the models a decision compares or the run keeps, above a size: the report's
packed column of the others is then unmeasured, and the container is the same bytes."""

import graphs
import pytest

from compressor import pipeline
from compressor.pipeline import run_pipeline


@pytest.mark.parametrize("prune", [False, True])
def test_models_only_the_report_would_pack_are_not_packed_above_the_size_and_the_container_is_the_same(
    tmp_path, monkeypatch, prune
):
    model, data = graphs.two_layer_mlp_files(tmp_path)
    overrides = {"prune": {"enabled": prune, "min_params": 0}, "share": {"min_params": 0}}
    full = run_pipeline(str(model), str(tmp_path / "full.cmpz"), data_path=str(data), overrides=overrides)
    monkeypatch.setattr(pipeline, "REPORT_PACK_MAX_BYTES", 0)
    lean = run_pipeline(str(model), str(tmp_path / "lean.cmpz"), data_path=str(data), overrides=overrides)

    assert (tmp_path / "lean.cmpz").read_bytes() == (tmp_path / "full.cmpz").read_bytes()
    assert all(s["packed_bytes"] is not None for s in full["stages"]) and "column" not in full["packs"]
    assert lean["packs"]["models"] < full["packs"]["models"]
    # The original's pack was the report's alone: not measured, no estimate, and the report says so.
    assert lean["stages"][0]["stage"] == "original" and lean["stages"][0]["packed_bytes"] is None
    assert lean["stages"][0]["packed_ratio"] is None
    assert "not measured" in lean["packs"]["column"]
    # What a decision compared or the run writes is still measured, the same as before.
    for a, b in zip(full["stages"], lean["stages"]):
        assert b["packed_bytes"] in (None, a["packed_bytes"])
    assert lean["stages"][-1]["packed_bytes"] == full["stages"][-1]["packed_bytes"]
