"""stages/kmeans_reach: a k-means rung of the share ladder not measured when its codes alone
are estimated larger than the searched candidate's packed container."""

from __future__ import annotations

from compressor.stages.kmeans_reach import ESTIMATE_SLACK, SearchSizes

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
