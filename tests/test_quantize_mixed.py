"""Mixed precision (passes/quantize/sensitivity.py): layers ranked by a layer-local noise estimate
without running the model, the number kept float chosen by bisection with a few whole-model runs,
the work shared by every rung (sensitivity.Shared)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor import evaluate
from compressor import quant_math as qm
from compressor.data import Dataset
from compressor.passes.quantize import QuantizeSettings, Shared, quantize, sensitivity
from compressor.passes.quantize.params import QParams

LAYERS = ["fc0", "fc1", "fc2", "fc3", "fc4", "fc5"]


def outlier_mlp(seed: int = 0):
    """x -> 6 x (MatMul -> Relu).  Input feature 0 takes values near +-1000 but reaches fc0's output
    through weights of 1e-4: quantizing x on its min/max grid rounds every other feature to a few
    levels, so fc0 (the only layer that quantizes x) carries nearly all the error."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, name in enumerate(LAYERS):
        w = rng.normal(0, 0.3, (16, 16)).astype(np.float32)
        if i == 0:
            w[0] = 1e-4
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=name))
        out = "y" if i == len(LAYERS) - 1 else f"r{i}"
        nodes.append(helper.make_node("Relu", [f"h{i}"], [out], name=f"relu{i}"))
        prev = out
    g = helper.make_graph(
        nodes,
        "outlier_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def outlier_data(n: int = 48, seed: int = 1) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 16)).astype(np.float32)
    x[:, 0] = rng.choice([-1000.0, 1000.0], n)
    return Dataset({"x": x}, None)


def test_the_one_sensitive_layer_ranks_first_and_alone_is_kept_float():
    model, calib = outlier_mlp(), outlier_data()
    plain, _ = quantize(model, calib, QuantizeSettings())
    ref = evaluate.run_model(model, calib)[0]
    assert evaluate.snr_db(ref, evaluate.run_model(plain, calib)[0]) < 10  # static int8 ruins it
    q, stats = quantize(model, calib, QuantizeSettings(min_output_snr=25.0))
    noise = stats["layer_noise_db"]
    assert list(noise)[0] == "fc0" and noise["fc0"] < min(v for k, v in noise.items() if k != "fc0") - 20
    assert stats["kept_float_mixed"] == ["fc0"]
    mixed = stats["mixed_precision"]
    assert mixed["kept_float"] == 1 and mixed["layers_ranked"] == len(LAYERS)
    # a bisection over 0..6 float layers: at most ceil(log2(7)) probes, each one whole-model run
    assert len(mixed["probes"]) <= math.ceil(math.log2(len(LAYERS) + 1))
    assert evaluate.snr_db(ref, evaluate.run_model(q, calib)[0]) >= 25.0
    fc0 = next(n for n in q.graph.node if n.name == "fc0")
    assert fc0.op_type == "MatMul" and fc0.input[1] == "w0"  # float kernel, float weight
    assert {"node": "fc0", "op": "MatMul", "status": "float", "reason": "kept in float (mixed precision)"} in stats[
        "nodes"
    ]


def test_rungs_share_ranges_reference_and_probes():
    model, calib = outlier_mlp(), outlier_data()
    shared = Shared()
    _, first = quantize(model, calib, QuantizeSettings(min_output_snr=25.0), shared)
    _, second = quantize(model, calib, QuantizeSettings(min_output_snr=30.0), shared)
    # the first call: ranges (1 capture session), the reference, its probes and the 8-bit weight range
    assert first["ort"]["sessions"] <= 2 + len(first["mixed_precision"]["probes"]) + 2
    # the second: no capture, no reference, only the probes the first did not measure
    new = set(second["mixed_precision"]["probes"]) - set(first["mixed_precision"]["probes"])
    assert second["ort"]["sessions"] <= len(new) + 2
    assert second["layer_noise_db"] == first["layer_noise_db"]  # ranked once
    # the same floor again measures nothing new
    _, again = quantize(model, calib, QuantizeSettings(min_output_snr=25.0), shared)
    assert again["ort"]["runs"] == 0 and again["kept_float_mixed"] == first["kept_float_mixed"]


def test_fewest_float_bisects_on_the_count():
    snr = [3.0, 8.0, 12.0, 19.0, 25.0, 31.0, 40.0, 44.0, 50.0, 60.0, 70.0]  # with k layers float
    asked = []

    def probe(k):
        asked.append(k)
        return snr[k]

    assert sensitivity.fewest_float(10, probe, 30.0) == 5
    assert len(asked) <= 4 and len(set(asked)) == len(asked)
    assert sensitivity.fewest_float(10, lambda k: snr[k], 0.0) == 0
    assert sensitivity.fewest_float(10, lambda k: snr[k], 1000.0) == 10  # all float, never run
    assert sensitivity.ranking({"a": 0.1, "b": 0.5, "c": 0.1}) == ["b", "a", "c"]


def test_activation_noise_from_the_histogram():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 100_000).astype(np.float32)
    stats = qm.RangeCollector()
    stats.update(x)
    scale = 1.0 / 255
    power, noise = sensitivity.activation_noise(stats, QParams(scale, 0, "uint8"))
    assert power == pytest.approx(float(np.mean(x.astype(np.float64) ** 2)), rel=1e-3)
    assert noise == pytest.approx(scale**2 / 12, rel=0.05)  # uniform rounding noise inside the range
    # a range cut at 0.5: the clipped half dominates
    _, clipped = sensitivity.activation_noise(stats, QParams(0.5 / 255, 0, "uint8"))
    exact = float(np.mean(np.maximum(x.astype(np.float64) - 0.5, 0) ** 2))
    assert clipped == pytest.approx(exact, rel=0.05)
    assert sensitivity.activation_noise(qm.RangeCollector(), QParams(1.0, 0, "uint8")) == (0.0, 0.0)


def test_reference_outputs_are_bounded_by_bytes(monkeypatch):
    model, calib = outlier_mlp(), outlier_data(40)
    monkeypatch.setattr(evaluate, "CAPTURE_BYTES", 16 * 4 * 10)  # ten samples of the [N, 16] output
    ref = sensitivity.Reference(model, calib)
    assert ref.subset.size == 10 and ref.outputs[0].shape[0] == 10
    assert ref.snr(model) == math.inf
