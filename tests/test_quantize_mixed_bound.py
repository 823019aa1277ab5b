"""stages/mixed_bound: a mixed-precision rung not built when keeping layers float only adds
bytes (objective size), the same container as when it is built."""

from __future__ import annotations

from pathlib import Path

from test_static_probe import regressor

from compressor.pipeline import run_pipeline
from compressor.stages import mixed_bound, quantize

NOT_BUILT = "not built: keeping layers float adds bytes"


def run(tmp_path: Path) -> tuple[dict, bytes]:
    tmp_path.mkdir()
    model, data = regressor(tmp_path, 30.0)
    overrides = {"prune": {"enabled": False}, "share": {"enabled": False}}
    out = tmp_path / "m.cmpz"
    report = run_pipeline(model, str(out), overrides=overrides, calib_path=data)
    return next(r for r in report["stages"] if r["stage"] == "quantize"), out.read_bytes()


def test_mixed_rungs_whose_probe_packs_larger_are_not_built(tmp_path, monkeypatch):
    built = []
    rule = mixed_bound.dominated_mixed

    def counted(ctx, probe, mixed, plain, weight_only):
        inner = rule(ctx, probe, mixed, plain, weight_only)

        def skip(tried):
            reason = inner(tried)
            built.append(reason is None)
            return reason

        return skip

    monkeypatch.setattr(quantize, "dominated_mixed", counted)
    row, container = run(tmp_path / "a")
    mixed = [a for a in row["attempts"] if "noisy layers float" in a["option"]]
    assert mixed and all(a["error"].startswith(NOT_BUILT) for a in mixed)
    assert built == [False] * len(mixed)
    plain = row["attempts"][0]
    assert "not smaller than int8 weights only" in plain["error"]
    assert row["applied"] and row["setting"] == "int8 weights only"

    # without the bound the rungs are built, packed, rejected: the same container
    monkeypatch.setattr(quantize, "dominated_mixed", lambda *args: lambda tried: None)
    row_before, container_before = run(tmp_path / "b")
    mixed_before = [a for a in row_before["attempts"] if "noisy layers float" in a["option"]]
    assert all("not smaller than int8 weights only" in a["error"] for a in mixed_before)
    assert container == container_before


def test_no_bound_without_a_dominated_plain_build_or_a_float_layer_on_the_probe():
    class Probe:
        def __init__(self, floats):
            self.floats = floats

        def model_of(self, settings):
            return object(), self.floats

    class Ctx:
        def packed_size(self, model):
            return 10_000

    plain = mixed_bound.PlainSizes()
    settings = quantize.QuantizeSettings(min_output_snr=30.0)
    assert mixed_bound.dominated_mixed(Ctx(), Probe(["a"]), settings, plain, 900)([]) is None  # no plain build
    plain.add(1000)
    assert mixed_bound.dominated_mixed(Ctx(), Probe([]), settings, plain, 900)([]) is None  # no float layer
    assert mixed_bound.dominated_mixed(Ctx(), Probe(["a"]), settings, plain, None)([]) is None  # no weight-only
    reason = mixed_bound.dominated_mixed(Ctx(), Probe(["a"]), settings, plain, 900)([])
    assert reason.startswith(NOT_BUILT) and "10,000" in reason and "1,000" in reason
    plain.add(20_000)  # the smallest plain build is the bound
    assert mixed_bound.dominated_mixed(Ctx(), Probe(["a"]), settings, plain, 900)([]) is not None
