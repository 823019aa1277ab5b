"""Embedding outputs: points from the correlation of their pairwise cosines, and a sanity SNR floor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from graphs import make_model, vi
from onnx import helper, numpy_helper

from compressor import embedding_similarity as er
from compressor import output_kinds as ok
from compressor.data import Dataset
from compressor.measure import Judge, loss_points
from compressor.stages.ladder import fits_without, rejection, rejection_text


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def test_correlation_and_its_constant_cases():
    assert er.correlation(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert er.correlation(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert er.correlation(np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 2.0])) == pytest.approx(math.sqrt(0.75))
    assert er.correlation(np.ones(4), np.ones(4)) == 1.0
    assert er.correlation(np.ones(4), np.full(4, 2.0)) == 0.0
    assert er.correlation(np.ones(4), np.arange(4.0)) == 0.0


def test_pair_cosines_are_the_upper_triangle():
    rows = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    np.testing.assert_allclose(er.pair_cosines(rows), [0.0, math.sqrt(0.5), math.sqrt(0.5)])
    assert er.pair_cosines(np.zeros((2, 3))).tolist() == [0.0]


def test_similarity_points_grow_with_noise_and_are_blind_to_a_rotation():
    rng = np.random.default_rng(0)
    ref = unit(rng.normal(size=(60, 16)))
    assert er.similarity_points(ref, ref) == 0.0
    small = er.similarity_points(ref, unit(ref + 0.02 * rng.normal(size=ref.shape)))
    large = er.similarity_points(ref, unit(ref + 0.3 * rng.normal(size=ref.shape)))
    assert 0.0 < small < 1.0 < large
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    rotated = (ref @ rotation).astype(np.float32)
    assert er.similarity_points(ref, rotated) == pytest.approx(0.0, abs=1e-6)  # what the SNR floor is for
    assert ok.centred_snr_db(ref, rotated) < er.MIN_SNR_DB
    assert er.similarity_points(ref[:2], ref[:2] * 0.0) == 0.0  # fewer than 3 rows: nothing to correlate
    assert er.similarity_points(ref, np.full_like(ref, np.nan)) == math.inf


def test_rows_are_bounded_and_spread():
    rows = np.arange(2000 * 4, dtype=np.float32).reshape(1000, 2, 4)
    spread = er.spread_rows(rows, 100)
    assert spread.shape == (100, 4) and spread[0, 0] == 0 and spread[-1, 0] == rows.reshape(-1, 4)[-1, 0]


def test_the_embedding_kind_is_judged_by_similarities_not_by_the_default_floor():
    assert "embedding" not in ok.SNR_KINDS
    ref = unit(np.random.default_rng(1).normal(size=(20, 8)))
    result = ok.compare(ref, ref, ok.reference_of(ref))
    assert result["kind"] == "embedding" and result["similarity_points"] == 0.0
    assert loss_points("fidelity", None, None, similarity_points=0.4) == 0.4
    assert loss_points("accuracy", 0.1, None, similarity_points=0.4) == 0.1


def encoder(w: np.ndarray) -> object:
    """x[N, 16] -> LpNormalization(x @ w): an embedding of unit rows [N, D]."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["z"]),
        helper.make_node("LpNormalization", ["z"], ["e"], axis=-1, p=2),
    ]
    return make_model(nodes, [vi("x", ["N", 16])], [vi("e", ["N", w.shape[1]])], [numpy_helper.from_array(w, "w")])


def test_the_judge_spends_similarity_points_and_keeps_the_sanity_floor():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(80, 16)).astype(np.float32)
    w = rng.normal(size=(16, 24)).astype(np.float32)
    judge = Judge(Dataset({"x": x}, None), "fidelity", budget=1.0)
    judge.start(encoder(w))
    assert judge.kinds == ["embedding"] and judge.embedding_gated and not judge.snr_gated
    assert judge.describe()["embedding"] == {"max_rows": er.MAX_ROWS, "min_snr_db": er.MIN_SNR_DB}
    # Noise that the old 20 dB floor rejected, and the pairs' similarities barely notice: within.
    noisy, _ = judge(encoder(w + 0.12 * rng.normal(size=w.shape).astype(np.float32)))
    assert er.MIN_SNR_DB < noisy["embedding_snr_db"] < 20.0
    assert 0.0 < noisy["similarity_points"] < 1.0 and judge.loss(noisy) == noisy["similarity_points"]
    assert judge.within(noisy) and not rejection(judge, noisy)
    # A rotation keeps every cosine (0 points) but moves every row away from the original's.
    rotation, _ = np.linalg.qr(rng.normal(size=(24, 24)))
    rotated, _ = judge(encoder((w @ rotation).astype(np.float32)))
    assert judge.loss(rotated) == pytest.approx(0.0, abs=1e-3) and rotated["embedding_snr_db"] < er.MIN_SNR_DB
    assert not judge.within(rotated) and not fits_without(judge, rotated, noisy)
    assert "embedding SNR" in rejection_text(rejection(judge, rotated))
    # The searches' judge applies the same rule.
    search = Judge.of_model(encoder(w), Dataset({"x": x}, None))
    measured = search.measure_model(encoder((w @ rotation).astype(np.float32)))
    assert measured["drop"] == pytest.approx(0.0, abs=1e-3) and not search.fits(measured, 1.0)
    assert search.fits(search.measure_model(encoder(w)), 1.0)


def test_a_recipe_floor_still_gates_embeddings():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 16)).astype(np.float32)
    w = rng.normal(size=(16, 8)).astype(np.float32)
    judge = Judge(Dataset({"x": x}, None), "fidelity", budget=1.0, min_snr_db=30.0, explicit_snr=True)
    judge.start(encoder(w))
    assert judge.snr_gated and not judge.embedding_gated
    noisy, _ = judge(encoder(w + 0.06 * rng.normal(size=w.shape).astype(np.float32)))
    assert noisy["snr_db"] < 30.0 and not judge.within(noisy)
