"""The generic ladder runner, on fake attempts: no ONNX model is built or run."""

from dataclasses import dataclass

import pytest

from compressor.errors import CompressorError
from compressor.report import StageRow
from compressor.stages import ladder as ladder_module
from compressor.stages.ladder import (
    Attempt,
    Ladder,
    MustShrink,
    StageContext,
    fits_without,
    rejection,
    rejection_text,
    run_ladder,
)


@dataclass(frozen=True)
class FakeModel:
    """A model is its size and the loss (points) it costs; packed: what its container would weigh."""

    size: int
    loss: float
    packed: int = 0

    def ByteSize(self) -> int:  # noqa: N802 (onnx's name)
        return self.size


@pytest.fixture(autouse=True)
def fake_model_sizes(monkeypatch):
    """The ladder sizes a model with ``graph.model_bytes``; a FakeModel is its own size."""
    real = ladder_module.model_bytes
    monkeypatch.setattr(ladder_module, "model_bytes", lambda m: m.size if isinstance(m, FakeModel) else real(m))


class FakeJudge:
    """The run's Measure, reduced to what the ladder asks: loss in points against a budget."""

    snr_gated, min_snr_db = False, 20.0

    def __init__(self, budget: float):
        self.budget, self.allowance, self.measured = budget, 0.0, []

    def __call__(self, model):
        self.measured.append(model)
        return {"accuracy_drop": model.loss}, [f"outputs of {model.size}"]

    def loss(self, metrics):
        return metrics["accuracy_drop"]

    def within(self, metrics, budget=None):
        return metrics["accuracy_drop"] <= max(self.budget if budget is None else budget, self.allowance) + 1e-9


INPUT = FakeModel(1000, 0.0)


def context(judge):
    previous = StageRow("original", True, INPUT.size, {"accuracy_drop": 0.0})
    return StageContext(INPUT, judge, None, None, ["input outputs"], (previous,), lambda msg: None, lambda m: m.packed)


def attempt(label, model, budget=None):
    return Attempt(label, lambda: (model, {"label": label}), budget)


def failing(label):
    def build():
        raise CompressorError(f"{label} cannot be built")

    return Attempt(label, build)


def test_first_attempt_that_fits_is_applied_with_its_outputs():
    judge = FakeJudge(1.0)
    big, fits = FakeModel(500, 2.0), FakeModel(700, 0.5)
    result = run_ladder(Ladder("s", [attempt("big", big), attempt("fits", fits)], adaptive=True), context(judge))
    assert result.model is fits and result.outputs == ["outputs of 700"]
    row = result.row
    assert row.stage == "s" and row.applied and row.bytes == 700 and row.options == {"setting": "fits"}
    assert row.note == "fell back to fits" and row.stats == {"label": "fits"}
    assert [a["option"] for a in row.attempts] == ["big", "fits"] and row.attempts[0]["accuracy_drop"] == 2.0


def test_an_attempt_that_returns_the_input_itself_is_not_measured_again():
    judge = FakeJudge(1.0)
    result = run_ladder(Ladder("s", [attempt("same", INPUT)], adaptive=True), context(judge))
    assert judge.measured == [] and result.model is INPUT and result.outputs == ["input outputs"]
    assert result.row.applied and result.row.attempts[0]["accuracy_drop"] == 0.0


def test_an_attempt_budget_is_stricter_than_the_stage_budget():
    judge = FakeJudge(1.0)
    low, plain = FakeModel(300, 0.6), FakeModel(600, 0.6)
    result = run_ladder(
        Ladder("s", [attempt("low", low, budget=0.5), attempt("plain", plain)], adaptive=True), context(judge)
    )
    assert result.model is plain


def test_errors_are_recorded_and_skipped_and_overshoots_skip_the_stage():
    judge = FakeJudge(1.0)
    ladder = Ladder("s", [failing("a"), attempt("b", FakeModel(500, 3.0))], adaptive=True)
    result = run_ladder(ladder, context(judge))
    assert result.model is INPUT and result.outputs == ["input outputs"]
    assert not result.row.applied and result.row.bytes == INPUT.size
    why = "the gentlest measured, b: loss 3.00 points > budget 1.00 (by 2.00)"
    assert result.row.note == f"skipped: no setting fit the budget (see attempts); {why}"
    assert result.row.attempts[0] == {"option": "a", "error": "a cannot be built"}
    rejected = [{"measure": "loss_points", "value": 3.0, "limit": 1.0, "by": 2.0}]
    assert result.row.attempts[1]["rejected_by"] == result.row.rejected_by == rejected
    assert result.row.rejected_metrics == {"accuracy_drop": 3.0}
    only_over = run_ladder(Ladder("s", [attempt("b", FakeModel(500, 3.0))], adaptive=True), context(judge))
    assert only_over.row.note == f"skipped: every setting tried exceeded the budget; {why}"
    assert run_ladder(Ladder("s", [], adaptive=True), context(judge)).row.note == "skipped"


def test_a_fixed_stage_is_applied_even_over_budget_and_raises_the_allowance():
    judge = FakeJudge(1.0)
    over = FakeModel(500, 3.0)
    result = run_ladder(Ladder("s", [attempt("fixed", over)], adaptive=False), context(judge))
    assert result.model is over and result.row.note == ""
    assert judge.allowance == 3.0  # later stages are judged on not making it worse


@pytest.mark.parametrize("first_packed, other_packed, winner", [(90, 100, "first"), (110, 100, "other")])
def test_compare_first_keeps_the_smaller_packed_of_the_first_and_the_next_fit(first_packed, other_packed, winner):
    judge = FakeJudge(1.0)
    first, over, other = FakeModel(600, 0.5, first_packed), FakeModel(400, 5.0, 1), FakeModel(500, 0.5, other_packed)
    ladder = Ladder(
        "s",
        [attempt("first", first), attempt("over", over), attempt("other", other)],
        adaptive=True,
        compare_first=True,
    )
    result = run_ladder(ladder, context(judge))
    assert result.row.options["setting"] == winner
    assert result.row.packed_bytes == min(first_packed, other_packed)
    assert result.row.note.startswith(f"smaller than {'other' if winner == 'first' else 'first'}")
    packed = {a["option"]: a.get("packed_bytes") for a in result.row.attempts}
    assert packed == {"first": first_packed, "over": None, "other": other_packed}


def test_compare_first_alone_is_applied_when_nothing_else_fits():
    judge = FakeJudge(1.0)
    first = FakeModel(600, 0.5, 77)
    ladder = Ladder(
        "s", [attempt("first", first), attempt("over", FakeModel(400, 5.0))], adaptive=True, compare_first=True
    )
    result = run_ladder(ladder, context(judge))
    assert result.model is first and result.row.packed_bytes == 77 and result.row.note == ""


def test_must_shrink_rejects_a_candidate_not_smaller_than_the_input_without_measuring_it():
    judge = FakeJudge(1.0)
    same, smaller = FakeModel(INPUT.size, 0.0), FakeModel(800, 0.1)
    rule = MustShrink("no size gain", "did not shrink")
    ladder = Ladder("s", [attempt("same", same), attempt("smaller", smaller)], adaptive=True, must_shrink=rule)
    result = run_ladder(ladder, context(judge))
    assert result.model is smaller and result.row.attempts[0] == {"option": "same", "error": "no size gain"}
    assert same not in judge.measured
    # without the rule the same candidate is measured and kept
    plain = run_ladder(Ladder("s", [attempt("same", same)], adaptive=True), context(FakeJudge(1.0)))
    assert plain.model is same


class SnrJudge(FakeJudge):
    """A judge whose outputs the SNR floor gates (fidelity mode on a detector's map)."""

    snr_gated = True


def test_rejection_names_every_measure_that_rejects_and_by_how_much():
    judge = SnrJudge(1.0)
    assert rejection(judge, {"accuracy_drop": 0.5, "snr_db": 25.0}) == []
    found = rejection(judge, {"accuracy_drop": 1.5, "snr_db": 19.62})
    assert [r["measure"] for r in found] == ["loss_points", "snr_db"]
    assert found[1]["by"] == pytest.approx(0.38)
    assert rejection_text(found) == (
        "loss 1.50 points > budget 1.00 (by 0.50); SNR 19.62 dB < floor 20 dB (by 0.38 dB)"
    )
    # An attempt's own (stricter) budget is what rejected it; the allowance never lowers it.
    assert rejection(judge, {"accuracy_drop": 0.9, "snr_db": 30.0}, budget=0.8)[0]["limit"] == 0.8


def test_fits_without_takes_the_earlier_spending_off_points_and_noise_power():
    judge = SnrJudge(1.0)
    # 19.62 dB total, of which pruning added noise at 25 dB: without it about 21.1 dB, within 20.
    assert fits_without(judge, {"accuracy_drop": 0.0, "snr_db": 19.62}, {"accuracy_drop": 0.0, "snr_db": 25.0})
    # Pruning's noise at 35 dB is too little to make room.
    assert not fits_without(judge, {"accuracy_drop": 0.0, "snr_db": 19.62}, {"accuracy_drop": 0.0, "snr_db": 35.0})
    assert fits_without(judge, {"accuracy_drop": 1.3, "snr_db": None}, {"accuracy_drop": 0.4, "snr_db": None})
    assert not fits_without(judge, {"accuracy_drop": 1.5, "snr_db": None}, {"accuracy_drop": 0.4, "snr_db": None})


def test_compare_first_as_a_group_keeps_its_first_fit_and_weighs_it_against_the_next():
    judge = FakeJudge(1.0)
    over, gentler, gentlest = FakeModel(600, 2.0, 50), FakeModel(620, 0.5, 60), FakeModel(640, 0.1, 70)
    other = FakeModel(700, 0.5, 80)
    ladder = Ladder(
        "s",
        [attempt("over", over), attempt("gentler", gentler), attempt("gentlest", gentlest), attempt("other", other)],
        adaptive=True,
        compare_first=3,
    )
    result = run_ladder(ladder, context(judge))
    assert result.model is gentler and result.row.note.startswith("smaller than other (60 vs 80")
    assert [a["option"] for a in result.row.attempts] == ["over", "gentler", "other"]  # gentlest not tried
    assert gentlest not in judge.measured
