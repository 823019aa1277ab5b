"""passes/quantize/weights: each weight quantized once per stage (sensitivity.Shared.weights),
the same models as without the cache."""

from __future__ import annotations

from dataclasses import replace

from graphs import depthwise_resnet, make_inputs

from compressor.passes.quantize import QuantizeSettings, Shared, quantize
from compressor.passes.quantize.weights import WeightStore
from compressor.passes.share import share


def test_builds_sharing_the_cache_make_the_models_built_without_it(monkeypatch):
    calls = []
    quantize_weight = WeightStore._quantize

    def counted(self, name, *args):
        calls.append(name)
        return quantize_weight(self, name, *args)

    monkeypatch.setattr(WeightStore, "_quantize", counted)
    model, _ = share(depthwise_resnet(16), bits_conv=5, bits_fc=5)  # codebooks (and BatchNorm folds)
    calib = make_inputs(model, 8)
    settings = QuantizeSettings(activations="static")
    shared = Shared()
    first, stats = quantize(model, calib, settings, shared)
    assert shared.weights
    cached = len(shared.weights)
    mixed, _ = quantize(model, calib, replace(settings, min_output_snr=60.0), shared)
    weight_only, wo_stats = quantize(model, None, replace(settings, activations="none"), shared)
    assert len(shared.weights) >= cached  # the same weights found again (a new range adds entries)
    assert len(calls) == len(shared.weights)  # each quantized once
    calls.clear()
    for built, kwargs in (
        (first, dict(calib=calib, settings=settings)),
        (mixed, dict(calib=calib, settings=replace(settings, min_output_snr=60.0))),
        (weight_only, dict(calib=None, settings=replace(settings, activations="none"))),
    ):
        alone, alone_stats = quantize(model, kwargs["calib"], kwargs["settings"])
        assert alone.SerializeToString() == built.SerializeToString()
    assert len(calls) > len(shared.weights)  # without the cache: once per build
    alone_stats = quantize(model, None, replace(settings, activations="none"))[1]
    assert alone_stats["warnings"] == wo_stats["warnings"] and alone_stats["weights"] == wo_stats["weights"]
