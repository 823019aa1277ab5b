"""stages/kmeans_reach: a k-means rung of the share ladder not measured when its codes alone
are estimated larger than the searched candidate's packed container."""

from __future__ import annotations

import pytest

from compressor.stages.kmeans_reach import ESTIMATE_SLACK, PREDICT_SLACK, SearchSizes

LABEL = "k-means bits or uniform steps per tensor, searched within 0.5 points"


def curve(name: str, role: str, bytes_by_bits: dict[int, int]) -> dict:
    options = [{"method": "kmeans", "bits": b, "bytes": n, "error": 0.0} for b, n in bytes_by_bits.items()]
    options.append({"method": "uniform", "step": 0.1, "bytes": 1, "error": 1.0})
    return {"name": name, "role": role, "options": options, "front": [0]}


def searched(curves: list[dict]) -> SearchSizes:
    sizes = SearchSizes(LABEL)
    build = sizes.wrap(lambda: ("model", {"budget_search": {"curves": curves}}))
    assert build() == ("model", {"budget_search": {"curves": curves}})
    return sizes


def test_the_estimate_sums_each_tensor_at_its_kinds_width():
    sizes = searched([curve("c", "conv_filter", {8: 1000, 4: 400}), curve("f", "gemm_b", {8: 300, 5: 100})])
    assert sizes.estimate((8, 5)) == 1100
    assert sizes.estimate((4, 8)) == 700
    assert sizes.estimate((6, 5)) is None  # no estimate at 6 bits
    assert SearchSizes(LABEL).estimate((8, 5)) is None  # not built


def test_a_rung_is_out_of_reach_only_past_the_slack_of_a_fitting_packed_search():
    sizes = searched([curve("c", "conv_filter", {8: 4000, 4: 1000})])
    rule_8, rule_4 = sizes.out_of_reach((8, None)), sizes.out_of_reach((4, None))
    packed = int(4000 * (1 - ESTIMATE_SLACK))
    fit = [{"option": LABEL, "snr_db": 30.0, "packed_bytes": packed}]
    reason = rule_8(fit)
    assert reason.startswith("not measured: its shared tensors' codes alone are estimated at 4,000 bytes")
    assert rule_4(fit) is None  # could pack smaller: measured
    assert rule_8([{**fit[0], "packed_bytes": packed + 1}]) is None
    # no fitting, packed search candidate: nothing to compare with
    assert rule_8([]) is None
    assert rule_8([{"option": LABEL, "snr_db": 10.0, "rejected_by": [{"measure": "snr_db"}]}]) is None
    assert rule_8([{"option": LABEL, "error": "no per-tensor share setting fits"}]) is None
    assert rule_8([{"option": LABEL, "snr_db": 30.0}]) is None  # fit, not packed


def curve_with_errors(name: str, role: str, errors_by_bits: dict[int, float]) -> dict:
    options = [{"method": "kmeans", "bits": b, "bytes": 100, "error": e} for b, e in errors_by_bits.items()]
    return {"name": name, "role": role, "options": options, "front": list(range(len(options)))}


def predicting(curves: list[dict], tried: list[dict]) -> SearchSizes:
    sizes = SearchSizes(LABEL)
    sizes.wrap(lambda: ("model", {"budget_search": {"curves": curves, "tried": tried}}))()
    return sizes


def test_a_rungs_loss_is_predicted_from_the_trials_by_the_ratio_of_summed_errors():
    curves = [
        curve_with_errors("c", "conv_filter", {8: 1.0, 6: 16.0, 4: 256.0}),
        curve_with_errors("f", "gemm_b", {8: 0.5, 5: 2.0, 4: 8.0}),
    ]
    # the trial: c at 8 bits (index 0), f at 5 bits (index 1): summed error 3, loss 0.6 points
    trial = {"choice": {"c": 0, "f": 1}, "drop": 0.6}
    sizes = predicting(curves, [trial, {"choice": {"c": 0, "f": 0}, "drop": 0.0}])  # no loss: predicts nothing
    assert sizes.summed_error((8, 5)) == 3.0 and sizes.summed_error((6, 5)) == 18.0
    assert sizes.summed_error((7, 5)) is None
    assert sizes.predicted_loss((8, 5)) == pytest.approx(0.6)
    assert sizes.predicted_loss((6, 5)) == pytest.approx(3.6)
    # the most optimistic trial decides: a second one predicting less for every rung
    lower = predicting(curves, [trial, {"choice": {"c": 1, "f": 1}, "drop": 1.8}])
    assert lower.predicted_loss((4, 4)) == pytest.approx(1.8 * 264 / 18)
    assert predicting(curves, []).predicted_loss((6, 5)) is None
    assert SearchSizes(LABEL).predicted_loss((6, 5)) is None  # not built


def test_a_rung_predicted_past_the_slack_of_its_budget_is_not_measured():
    curves = [curve_with_errors("c", "conv_filter", {8: 1.0, 6: 16.0, 4: 256.0})]
    sizes = predicting(curves, [{"choice": {"c": 0}, "drop": 0.1}])
    budget = 0.8
    assert sizes.predicted_miss((8, None), budget)([]) is None  # 0.1 points
    assert sizes.predicted_miss((6, None), budget)([]) is None  # 1.6 <= 4 x 0.8
    reason = sizes.predicted_miss((4, None), budget)([])  # 25.6 points
    assert reason.startswith("not measured: the search's measured allocations predict 25.6 points")
    assert f"more than {PREDICT_SLACK:g} x its budget of 0.8" in reason
    assert sizes.predicted_miss((4, None), 0.0)([]) is None  # no budget: nothing to compare
