"""stages/static_probe: static activations judged on a few samples before their full calibration."""

from __future__ import annotations

import numpy as np
import onnx
from graphs import relu_mlp

from compressor.pipeline import run_pipeline
from compressor.stages import static_probe


def regressor(tmp_path, outlier: float):
    """A [N, 1] regressor whose input holds one feature at `outlier` in every sample (it sets the
    input's static range) that the output ignores; 64 inputs."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 32)).astype(np.float32) / 4
    w1[0] = 0.0
    w2 = rng.normal(size=(32, 1)).astype(np.float32) / 6
    path = tmp_path / "reg.onnx"
    onnx.save(relu_mlp(w1, w2), path)
    x = rng.normal(size=(64, 16)).astype(np.float32)
    x[:, 0] = outlier
    np.savez(tmp_path / "in.npz", x=x)
    return str(path), str(tmp_path / "in.npz")


def quantize_row(tmp_path, outlier: float, objective: str = "size") -> dict:
    model, data = regressor(tmp_path, outlier)
    overrides = {"prune": {"enabled": False}, "share": {"enabled": False}, "run": {"objective": objective}}
    report = run_pipeline(model, str(tmp_path / "m.cmpz"), overrides=overrides, calib_path=data)
    return next(r for r in report["stages"] if r["stage"] == "quantize")


def test_static_rungs_far_under_the_floor_on_the_probe_are_not_measured(tmp_path):
    row = quantize_row(tmp_path, 1e5)
    static = [a for a in row["attempts"] if a["option"].startswith("int8 weights + static")]
    assert static and all(a.get("error", "").startswith("not measured: calibrated on") for a in static[:2])
    assert row["applied"] and row["setting"] == "int8 weights only"


def test_static_rungs_the_probe_does_not_rule_out_are_measured_as_before(tmp_path):
    # int8 kernels wanted: under objective size this regressor's weight-only model packs smaller
    # and the static rungs would be dominated, not measured (tests/test_quantize_gentlest.py)
    row = quantize_row(tmp_path, 1.0, "int8-kernels")
    first = row["attempts"][0]
    assert first["option"] == "int8 weights + static int8 activations" and "error" not in first
    assert first["snr_db"] is not None


def test_the_probe_needs_enough_calibration_samples():
    assert static_probe.PROBE_MIN_CALIB > static_probe.PROBE_SAMPLES
    assert static_probe.spread_index(32, 4).tolist() == [0, 8, 16, 24]
    assert static_probe.spread_index(3, 4).tolist() == [0, 1, 2]


def test_settings_that_build_the_same_probe_model_share_its_run(tmp_path, monkeypatch):
    runs = []

    def counted(model, data, *args, **kwargs):
        runs.append(model.SerializeToString())
        return static_probe_run(model, data, *args, **kwargs)

    static_probe_run = static_probe.run_model
    monkeypatch.setattr(static_probe, "run_model", counted)
    row = quantize_row(tmp_path, 1e5)
    static = [a for a in row["attempts"] if a["option"].startswith("int8 weights + static")]
    assert len(static) >= 2 and static[0]["error"].split(" on ")[-1] == static[1]["error"].split(" on ")[-1]
    assert runs and len(runs) == len(set(runs))  # each distinct probe model run once
