"""output_kinds: what an output is (the table in its docstring) and each kind's measure, pure numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compressor import output_kinds as ok


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "output, kind",
    [
        (RNG.normal(size=(40, 10)).astype(np.float32), "classes"),  # raw scores over 10 classes
        (RNG.normal(size=(40, 10, 1, 1)).astype(np.float32), "classes"),
        (_softmax(RNG.normal(size=(40, 2))), "classes"),  # 2-class probabilities
        (np.log(_softmax(RNG.normal(size=(40, 3)))), "classes"),  # log-probabilities
        (3.0 + 0.1 * RNG.normal(size=(40, 3)).astype(np.float32), "regressor"),  # quality scores
        (RNG.normal(size=(40, 1)).astype(np.float32), "regressor"),
        (RNG.normal(size=(40,)).astype(np.float32), "regressor"),
        (_softmax(RNG.normal(size=(4, 25, 30))), "positions"),  # CTC-like [N, T, C]
        (RNG.uniform(size=(3, 1, 32, 32)).astype(np.float32), "map"),  # sigmoid map
        (RNG.uniform(size=(3, 32, 32)).astype(np.float32), "map"),
        (RNG.normal(size=(3, 1, 32, 32)).astype(np.float32), "values"),  # not in [0, 1]
        (RNG.uniform(size=(3, 4, 32, 32)).astype(np.float32), "values"),  # 4 channels: no map
        (
            (lambda e: e / np.linalg.norm(e, axis=-1, keepdims=True))(RNG.normal(size=(40, 64))).astype(np.float32),
            "embedding",
        ),
        (np.arange(8, dtype=np.int64).reshape(4, 2), "exact"),
    ],
)
def test_output_kind(output, kind):
    assert ok.output_kind(output) == kind


def test_centred_snr_sees_the_ranking_a_large_mean_hides():
    # A regressor whose scores sit near 3 and vary by 0.1: noise of 0.1 keeps 30 dB of raw SNR
    # and destroys the ranking; the centred SNR is 0 dB.
    ref = (3.0 + 0.1 * RNG.normal(size=(64, 3))).astype(np.float32)
    out = ref + (0.1 * RNG.normal(size=ref.shape)).astype(np.float32)
    r = ok.reference_of(ref)
    assert ok.raw_snr_db(ref, out, r) > 29.0
    assert abs(ok.centred_snr_db(ref, out, r)) < 1.0
    assert ok.centred_snr_db(ref, ref, r) == math.inf
    assert ok.centred_snr_db(ref, np.full_like(ref, np.nan), r) == -math.inf


def test_centred_snr_is_streamed_and_matches_float64(monkeypatch):
    ref = RNG.normal(size=(50, 7, 3)).astype(np.float32) + 5.0
    out = ref + RNG.normal(size=ref.shape).astype(np.float32) * 0.01
    signal = np.sum((ref.astype(np.float64) - ref.astype(np.float64).mean(0)) ** 2)
    noise = np.sum((out.astype(np.float64) - ref) ** 2)
    expected = 10 * np.log10(signal / noise)
    whole = ok.centred_snr_db(ref, out)
    monkeypatch.setattr(ok, "CHUNK_VALUES", 21)  # one sample per chunk
    assert ok.centred_snr_db(ref, out) == pytest.approx(whole, abs=1e-4) == pytest.approx(expected, abs=1e-4)


def test_one_sample_falls_back_to_the_raw_snr():
    ref = np.array([[1.0, 2.0, 3.0]], np.float32)
    out = ref + np.float32(0.01)
    assert ok.centred_snr_db(ref, out) == pytest.approx(ok.raw_snr_db(ref, out))


def test_kl_of_class_probabilities_is_continuous_where_top1_counts_are_not():
    logits = RNG.normal(size=(30, 10)).astype(np.float32) * 3
    r = ok.reference_of(logits)
    flat = logits * np.float32(0.3)  # same decisions, much less confident
    assert ok.top1_agreement(logits, flat) == 100.0
    assert ok.mean_kl(logits, flat, r.form) > 0.3
    assert ok.mean_kl(logits, logits, r.form) == 0.0
    assert ok.mean_kl(logits, logits + np.float32(1.0), r.form) == pytest.approx(0.0, abs=1e-9)  # softmax shift
    probs = _softmax(logits)
    rp = ok.reference_of(probs)
    assert rp.form == "probs"
    assert ok.mean_kl(probs, _softmax(flat), rp.form) == pytest.approx(ok.mean_kl(logits, flat, None), rel=1e-4)


def test_per_position_agreement_and_kl():
    probs = _softmax(RNG.normal(size=(3, 8, 5)) * 4)
    changed = probs.copy()
    changed[0, 0] = changed[0, 0, ::-1]
    r = ok.reference_of(probs)
    assert r.kind == "positions"
    c = ok.compare(probs, changed, r)
    assert c["top1_agreement"] == pytest.approx(100 * 23 / 24) and c["kl"] > 0


def test_map_f1_judges_regions_not_pixel_values():
    ref = np.zeros((2, 1, 32, 32), np.float32)
    ref[:, :, 8:16, 4:28] = 0.9  # one text region per image
    ref[0, :, 20:26, 4:16] = 0.8  # and a second one in the first
    r = ok.reference_of(ref)
    assert r.kind == "map"
    scaled = ref * np.float32(0.6)  # values moved a lot, regions above 0.3 unchanged
    assert ok.map_f1(ref, scaled) == 1.0 and ok.centred_snr_db(ref, scaled, r) < 10.0
    moved = np.roll(ref, 1, axis=-1)  # every edge a pixel to the right: the same regions
    assert ok.map_f1(ref, moved) == 1.0
    # Moved by a quarter of its width (IoU 0.6 < REGION_IOU), the small region no longer
    # matches: a box that drifts that far from the original's can lose the task's own match.
    drifted = ref.copy()
    drifted[0, :, 20:26, 4:16] = 0.0
    drifted[0, :, 20:26, 7:19] = 0.8
    assert ok.map_f1(ref, drifted) == pytest.approx(2 * 2 / 6)
    lost = ref.copy()
    lost[0, :, 20:26, 4:16] = 0.1  # one of 3 regions lost: found 2, 3 + 2 regions
    assert ok.map_f1(ref, lost) == pytest.approx(2 * 2 / 5)
    split = ref.copy()
    split[1, :, 8:16, 7] = 0.0  # a region cut in two: the larger part (20 of 24 columns) still matches
    assert ok.map_f1(ref, split) == pytest.approx(2 * 3 / 7)
    speck = ref.copy()
    speck[1, :, 0:2, 0:2] = 0.9  # below MIN_REGION_PIXELS: not a region
    assert ok.map_f1(ref, speck) == 1.0
    assert ok.map_f1(np.zeros_like(ref), np.zeros_like(ref)) == 1.0
    assert ok.map_f1(ref, np.zeros_like(ref)) == 0.0


def test_map_regions_never_join_across_images():
    ref = np.zeros((2, 1, 20, 20), np.float32)
    ref[0, 0, 15:20, 5:15] = 0.9  # bottom of image 0
    ref[1, 0, 0:5, 5:15] = 0.9  # top of image 1: a separate region
    out = ref.copy()
    out[1] = 0.0
    assert ok.map_f1(ref, out) == pytest.approx(2 * 1 / 3)


def test_a_probability_column_is_judged_by_its_decisions_and_snr():
    rng = np.random.default_rng(5)
    p = rng.uniform(size=(200, 1)).astype(np.float32)
    assert ok.output_kind(p) == "probability" and ok.output_kind(p[:, 0]) == "probability"
    assert ok.output_kind(p * 3) == "regressor"  # not in [0, 1]
    flipped = p.copy()
    near = np.argsort(np.abs(p[:, 0] - 0.5))[:4]  # the four values nearest the threshold cross it
    flipped[near, 0] = 1.0 - flipped[near, 0]
    got = ok.compare(p, flipped, ok.reference_of(p))
    assert got["top1_agreement"] == pytest.approx(98.0) and got["centred_snr_db"] > 20
    assert "probability" in ok.SNR_KINDS and "probability" not in ok.TOP1_KINDS


def _detections(rng, n=6, anchors=200, classes=2):
    """A YOLO-style head [n, anchors, 4 + 1 + classes]: raw boxes, sigmoid objectness and classes,
    a few anchors per image with an object."""
    boxes = rng.normal(size=(n, anchors, 4)).astype(np.float32)
    objectness = np.where(rng.random((n, anchors, 1)) < 0.05, 0.9, 0.001).astype(np.float32)
    cls = rng.uniform(size=(n, anchors, classes)).astype(np.float32)
    return np.concatenate([boxes, objectness, cls], axis=-1)


def test_a_yolo_style_head_is_detections():
    rng = np.random.default_rng(1)
    assert ok.output_kind(_detections(rng)) == "detections"
    assert ok.output_kind(_detections(rng, classes=0)) == "detections"  # objectness alone
    few_rows = _detections(rng, anchors=20)
    assert ok.output_kind(few_rows) == "values"
    scores_out_of_range = _detections(rng)
    scores_out_of_range[..., 5] += 2.0
    assert ok.output_kind(scores_out_of_range) == "values"


def test_detections_judge_boxes_where_the_original_sees_an_object():
    rng = np.random.default_rng(2)
    ref = _detections(rng)
    reference = ok.reference_of(ref)
    assert reference.kind == "detections"
    background = ok.anchor_scores(ref) < 0.1
    noisy_background = ref.copy()
    noisy_background[..., :4] += np.where(background[..., None], 0.3 * rng.normal(size=ref[..., :4].shape), 0.0)
    noisy_objects = ref.copy()
    noisy_objects[..., :4] += np.where(background[..., None], 0.0, 0.3 * rng.normal(size=ref[..., :4].shape))
    quiet = ok.compare(ref, noisy_background, reference)["centred_snr_db"]
    loud = ok.compare(ref, noisy_objects, reference)["centred_snr_db"]
    plain = ok.centred_snr_db(ref, noisy_background)  # the whole output's SNR sees every anchor alike
    assert quiet > 20.0 > plain
    assert loud < 15.0
    # Scores are judged by the decisions they make (the boxes' SNR does not see them): a
    # confident detection lost costs points, a near-threshold anchor's flip does not.
    scores = ok.anchor_scores(ref)
    confident = np.argwhere(scores > ok.DECISION_THRESHOLD + ok.DETECTION_MARGIN)
    assert len(confident) > 0
    lost = ref.copy()
    lost[tuple(confident[0])][4] = 0.0
    expected = 100.0 * (1 - 1 / np.count_nonzero(scores > ok.DECISION_THRESHOLD))
    assert ok.compare(ref, lost, reference)["top1_agreement"] == pytest.approx(expected)
    near = ref.copy()
    near[..., 4] = np.where(np.abs(scores - ok.DECISION_THRESHOLD) < ok.DETECTION_MARGIN, 0.0, near[..., 4])
    assert ok.compare(ref, near, reference)["top1_agreement"] == 100.0
    assert ok.compare(ref, ref, reference)["centred_snr_db"] == math.inf


def test_raw_per_position_scores_over_a_vocabulary_are_positions():
    # CTC logits [N * T, 1, C] (a reader returning raw scores): peaked rows on several classes.
    logits = RNG.normal(size=(60, 1, ok.MIN_RAW_POSITION_CLASSES)).astype(np.float32)
    logits[np.arange(60), 0, RNG.integers(0, 5, size=60)] += 12.0
    assert ok.output_kind(logits) == "positions"
    assert ok.reference_of(logits).form is None
    # Hidden states of the same width: flat softmax rows, no class scores.
    hidden = RNG.normal(size=(4, 15, ok.MIN_RAW_POSITION_CLASSES)).astype(np.float32)
    assert ok.output_kind(hidden) == "values"
    # Narrower than a vocabulary: values, whatever the rows look like.
    narrow = logits[..., :64].copy()
    narrow[np.arange(60), 0, RNG.integers(0, 5, size=60)] += 12.0
    assert ok.output_kind(narrow) == "values"


def test_position_flips_count_where_the_original_is_confident():
    probs = np.full((1, 4, 3), 0.05, np.float32)
    probs[0, :, 0] = 0.9  # confident blanks
    probs[0, 1] = [0.48, 0.47, 0.05]  # a near-tie: a CTC boundary
    r = ok.reference_of(probs)
    assert r.kind == "positions" and r.confident.tolist() == [True, False, True, True]
    tie_flipped = probs.copy()
    tie_flipped[0, 1] = [0.47, 0.48, 0.05]
    c = ok.compare(probs, tie_flipped, r)
    assert c["top1_agreement"] == 100.0 and c["kl_points"] == pytest.approx(c["kl"] / ok.POSITION_KL_PER_POINT)
    confident_flipped = probs.copy()
    confident_flipped[0, 2] = [0.05, 0.9, 0.05]
    assert ok.compare(probs, confident_flipped, r)["top1_agreement"] == pytest.approx(75.0)
    # Without the reference's mask every flip counts.
    assert ok.top1_agreement(probs, tie_flipped) == pytest.approx(75.0)


def test_a_regressor_is_judged_at_the_upper_bound_of_its_noise_over_samples():
    reference_of, compare, noise_power, centred_snr_db = ok.reference_of, ok.compare, ok.noise_power, ok.centred_snr_db
    # The same total noise, spread evenly or held by a few samples: the bound over samples
    # counts the concentrated noise (what other inputs may bring) as larger.
    rng = np.random.default_rng(0)
    reference = rng.normal(3.0, 1.0, size=(8, 3)).astype(np.float32)
    ref = reference_of(reference)
    assert ref.kind == "regressor"
    even = reference + 0.05
    uneven = reference.copy()
    uneven[0] += 0.05 * np.sqrt(8)
    assert noise_power(reference, even) == pytest.approx(noise_power(reference, uneven), rel=1e-4)
    even_snr = compare(reference, even, ref)["centred_snr_db"]
    uneven_snr = compare(reference, uneven, ref)["centred_snr_db"]
    assert even_snr == pytest.approx(centred_snr_db(reference, even, ref), abs=1e-3)
    assert uneven_snr < even_snr - 3.0
    assert compare(reference, reference, ref)["centred_snr_db"] == math.inf
