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
    # the whole ranking fails, its quiet half passes, the noisy half is split down to fc0
    assert mixed["probes"] <= 7 <= mixed["max_probes"]
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
    assert first["ort"]["sessions"] <= 2 + first["mixed_precision"]["probes"] + 2
    # the second: no capture, no reference, only the probes the first did not measure
    assert second["ort"]["sessions"] <= second["mixed_precision"]["probes"] + 2
    assert second["ort"]["runs"] < first["ort"]["runs"]
    assert second["layer_noise_db"] == first["layer_noise_db"]  # ranked once
    # the same floor again measures nothing new
    _, again = quantize(model, calib, QuantizeSettings(min_output_snr=25.0), shared)
    assert again["ort"]["runs"] == 0 and again["kept_float_mixed"] == first["kept_float_mixed"]


def test_group_testing_bisects_a_good_ranking_and_finds_a_misranked_layer():
    order = [f"l{i}" for i in range(16)]  # least noisy first
    cost = {name: 1e-4 for name in order}  # noise power each quantized layer adds
    for name in order[12:]:
        cost[name] = 1.0  # the ranking's noisy tail: really noisy
    asked = []

    def snr(float_layers):
        asked.append(float_layers)
        noise = sum(cost[n] for n in order if n not in float_layers)
        return math.inf if noise == 0 else -10 * math.log10(noise)

    quantized = sensitivity.layers_to_quantize(order, snr, 20.0, probes=100)
    assert quantized == order[:12]  # the boundary ...
    good = len(asked)
    assert good <= 2 * 4 + 4  # ... in about log2(16) probes, plus the tail's singletons
    cost["l3"] = 1.0  # a layer ranked quiet that is not (its noise grows downstream)
    asked.clear()
    assert sensitivity.layers_to_quantize(order, snr, 20.0, probes=100) == [n for n in order[:12] if n != "l3"]
    assert len(asked) <= good + 2 * 4
    # the probe budget is a count: blocks not tried by then stay float
    asked.clear()
    assert sensitivity.layers_to_quantize(order, snr, 20.0, probes=3) == []
    assert len(asked) == 3
    assert sensitivity.layers_to_quantize(order, snr, -100.0, probes=1) == order  # all at once
    assert sensitivity.max_probes(117) == sensitivity.PROBES_PER_HALVING * 7
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


def test_mixed_floors_follow_the_judge_and_what_was_spent():
    from types import SimpleNamespace

    from compressor.stages.quantize import MIXED_OUTPUT_SNR_FLOORS_DB, MIXED_SNR_MARGINS_DB, mixed_floors

    def ctx(gated, spent):
        row = SimpleNamespace(metrics={"snr_db": spent})
        return SimpleNamespace(measure=SimpleNamespace(snr_gated=gated, min_snr_db=20.0), rows=[row], previous=row)

    assert mixed_floors(ctx(False, None)) == list(MIXED_OUTPUT_SNR_FLOORS_DB)  # top-1 judged: fixed floors
    assert mixed_floors(ctx(True, None)) == [20.0 + m for m in MIXED_SNR_MARGINS_DB]
    spent = mixed_floors(ctx(True, 30.0))  # the noise already spent leaves less for quantize
    assert all(f > 20.0 + m for f, m in zip(spent, MIXED_SNR_MARGINS_DB))
    assert mixed_floors(ctx(True, 20.5)) == []  # nothing left: no mixed rung
