"""stages/gentlest_first: a failing ladder's gentlest rung judged early; harsher rungs not built."""

from __future__ import annotations

import numpy as np
from graphs import relu_mlp
from stage_contexts import measured_context

from compressor import evaluate, graph
from compressor.data import Dataset
from compressor.passes.quantize import QuantizeSettings
from compressor.stages import gentlest_first, quantize, share
from compressor.stages.ladder import Attempt, Ladder, run_ladder
from compressor.variants import with_arrays

# Rungs as share labels them, harshest first; relative weight noise of each.
RUNGS = {"k-means 4 bits fc": (None, 4), "k-means 6 bits fc": (None, 6), "k-means 8 bits fc": (None, 8)}


def ladder_of(gentle_noise: float, harsh_noise: float = 1.0):
    """A regressor, its measured context, the three rungs' attempts and the builds made."""
    rng = np.random.default_rng(0)
    model = relu_mlp(rng.normal(size=(16, 32)).astype(np.float32) / 4, rng.normal(size=(32, 1)).astype(np.float32))
    data = Dataset({"x": rng.normal(size=(64, 16)).astype(np.float32)}, None)
    ctx = measured_context(model, data, "fidelity", 1.0, graph.model_bytes, original_bytes=graph.model_bytes(model))
    weights = graph.weights(model)
    built: list[str] = []

    def noisy(label: str, level: float):
        def build():
            built.append(label)
            arrays = {w.name: w.array() * (1 + level * rng.normal(size=w.shape)).astype(np.float32) for w in weights}
            return with_arrays(model, weights, arrays), {}

        return build

    levels = dict(zip(RUNGS, (harsh_noise, harsh_noise / 2, gentle_noise)))
    attempts = [Attempt(label, noisy(label, levels[label])) for label in RUNGS]
    return ctx, attempts, built


def test_harsher_rungs_are_not_built_when_the_gentlest_misses_the_floor_by_far():
    ctx, attempts, built = ladder_of(gentle_noise=0.3)
    before = evaluate.ort_counts()["runs"]
    row = run_ladder(Ladder("share", share.gentlest_first(attempts, RUNGS, ctx), True), ctx).row
    runs = evaluate.ort_counts()["runs"] - before
    first, middle, last = row.attempts
    assert not row.applied and first["rejected_by"]  # the harshest measured: the ladder is failing
    assert middle["error"].startswith("not built: the gentlest setting, k-means 8 bits fc, missed by")
    assert "k-means 6 bits fc can only be noisier" in middle["error"]
    assert last["rejected_by"][0]["measure"] == "snr_db" and last["rejected_by"][0]["by"] > share.SKIP_SLACK_DB
    assert built == ["k-means 4 bits fc", "k-means 8 bits fc"]  # each built once
    assert runs == 3  # the harshest's verdict, the gentlest's probe, its early verdict (its verdict)


def test_a_gentlest_rung_near_the_floor_leaves_the_ladder_as_it_was():
    ctx, attempts, built = ladder_of(gentle_noise=0.0)  # the gentlest fits
    row = run_ladder(Ladder("share", share.gentlest_first(attempts, RUNGS, ctx), True), ctx).row
    assert [a["option"] for a in row.attempts] == list(RUNGS)
    assert all("error" not in a for a in row.attempts)  # the middle rung measured as before
    assert row.applied and row.options["setting"] == "k-means 8 bits fc"
    assert built == ["k-means 4 bits fc", "k-means 8 bits fc", "k-means 6 bits fc"]  # the gentlest built early, once


def test_a_gentlest_rung_that_fits_its_probe_is_not_judged_early(monkeypatch):
    # The harshest rung misses, the middle one fits: the gentlest is judged on the probe's few
    # verdict samples only, never on all of them.
    ctx, attempts, built = ladder_of(gentle_noise=0.0, harsh_noise=0.05)
    rows: list[int] = []
    run_batches = evaluate.run_batches

    def counted(session, data, *args, **kwargs):
        rows.append(data.size)
        return run_batches(session, data, *args, **kwargs)

    monkeypatch.setattr(evaluate, "run_batches", counted)
    row = run_ladder(Ladder("share", share.gentlest_first(attempts, RUNGS, ctx), True), ctx).row
    assert [a["option"] for a in row.attempts] == ["k-means 4 bits fc", "k-means 6 bits fc"]
    assert row.attempts[0]["rejected_by"] and row.options["setting"] == "k-means 6 bits fc"
    assert built == ["k-means 4 bits fc", "k-means 8 bits fc", "k-means 6 bits fc"]
    size = ctx.measure.data.size
    assert rows == [size, gentlest_first.PROBE_SAMPLES, size]  # two verdicts and the probe


def test_no_probe_without_an_snr_floor_or_with_few_verdict_samples():
    ctx, _, _ = ladder_of(gentle_noise=0.0)
    assert gentlest_first.verdict_probe(ctx).data.size == gentlest_first.PROBE_SAMPLES
    ctx.measure.snr_gated = False
    assert gentlest_first.verdict_probe(ctx) is None


def test_no_early_verdict_while_no_rung_of_the_chain_missed():
    ctx, attempts, built = ladder_of(gentle_noise=0.0, harsh_noise=0.0)  # the first rung fits
    row = run_ladder(Ladder("share", share.gentlest_first(attempts, RUNGS, ctx), True), ctx).row
    assert row.options["setting"] == "k-means 4 bits fc" and built == ["k-means 4 bits fc"]


def test_rungs_that_are_no_chain_are_left_alone():
    ctx, attempts, _ = ladder_of(gentle_noise=0.3)
    rungs = {"k-means 4 bits fc": (None, 4), "k-means 6 bits fc": (None, 8), "k-means 8 bits fc": (None, 6)}
    assert share.gentlest_first(attempts, rungs, ctx) is attempts


# --------------------------------------------------------------------------- quantize's weight-only bound

STATIC, TWIN, WEIGHTS = (
    quantize.LABELS["static"],
    f"{quantize.LABELS['static']}, small constants float",
    quantize.LABELS["none"],
)
MIXED = f"{quantize.LABELS['static']}, noisy layers float for 23 dB output SNR"


class FakeProbe:
    def __init__(self, every_layer: bool):
        self.every_layer = every_layer

    def quantizes_every_layer(self, _settings) -> bool:
        return self.every_layer


def quantize_ladder(weights_noise: float, every_layer: bool):
    """Quantize's rungs (static, its small-constants twin, a mixed rung, weight-only) as noisy copies."""
    ctx, attempts, built = ladder_of(gentle_noise=weights_noise)
    noisy = {a.label: a.build for a in attempts}
    builds = [
        noisy["k-means 4 bits fc"],
        noisy["k-means 4 bits fc"],
        noisy["k-means 6 bits fc"],
        noisy["k-means 8 bits fc"],
    ]
    rungs = [Attempt(label, build) for label, build in zip((STATIC, TWIN, MIXED, WEIGHTS), builds)]
    probe = FakeProbe(every_layer)
    return ctx, quantize.weights_only_first(rungs, ctx, probe, {MIXED: QuantizeSettings()}), built


def test_activation_rungs_are_not_built_when_weights_only_misses_by_more_than_the_slack():
    ctx, attempts, built = quantize_ladder(weights_noise=0.5, every_layer=True)
    row = run_ladder(Ladder("quantize", attempts, True), ctx).row
    static, twin, mixed, weights_only = row.attempts
    assert static["rejected_by"] and weights_only["rejected_by"][0]["by"] > quantize.WEIGHTS_ONLY_SLACK_DB
    assert twin["error"].startswith("not built: the gentlest setting, int8 weights only, missed by")
    assert mixed["error"].endswith("(its probe kept no layer float on 4 samples)")
    assert len(built) == 2  # the first static rung and weight-only, once


def test_a_mixed_rung_whose_probe_keeps_layers_float_is_built():
    ctx, attempts, built = quantize_ladder(weights_noise=0.5, every_layer=False)
    row = run_ladder(Ladder("quantize", attempts, True), ctx).row
    assert row.attempts[1]["error"].startswith("not built") and "error" not in row.attempts[2]
    assert len(built) == 3
