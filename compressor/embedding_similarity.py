"""Embedding outputs' task-shaped measure: does the candidate see the samples' similarities as
the original does?

What an embedding is used for is its cosine similarities (retrieval, clustering, semantic
similarity scored by a correlation with human labels), so the loss in points is
``100 x (1 - r)``, r the (Pearson) correlation between the original's and the candidate's cosine
similarities of every pair of rows (a bounded, evenly spread subset of the rows).  When a task
scores the cosines by their correlation with labels, noise that does not know the labels
attenuates that correlation by the factor r: the task loses its own correlation x (1 - r),
which ``1 - r`` bounds from above.  A rank correlation of the pairs would count every swap of
two nearly equal similarities, which no label tells apart, and says several times more.

The correlation is blind to what keeps every cosine (a rotation of the whole space) and to what
the verdict rows happen not to tell apart, so the judge keeps a weak centred-SNR floor beside
it (``MIN_SNR_DB``, see there why that number).
"""

from __future__ import annotations

import numpy as np

# Rows compared at most, evenly spread over the output's rows: their pairs (rows x (rows - 1) / 2)
# bound the time and memory of one measure whatever the data's size.
MAX_ROWS = 512
# The sanity floor of an embedding's centred SNR (dB).  Two different samples' original rows lie
# 2 x (the centred power per row) apart in squared distance on average, so a candidate row still
# finds its own original first (an index built with the original model) while its noise power
# stays under half that, 3 dB; the floor keeps a 7 dB margin on top for the pairs closer than
# the average.  It holds in any model's units: the centred SNR counts noise against the
# samples' own spread.
MIN_SNR_DB = 10.0


def spread_rows(output: np.ndarray, max_rows: int = MAX_ROWS) -> np.ndarray:
    """The output's rows ([N, ..., D] -> [rows, D]), at most `max_rows` of them evenly spread."""
    rows = output.reshape(-1, output.shape[-1])
    if len(rows) > max_rows:
        rows = rows[np.linspace(0, len(rows) - 1, max_rows).round().astype(np.int64)]
    return rows


def pair_cosines(rows: np.ndarray) -> np.ndarray:
    """The cosine similarity of every pair i < j of `rows` (float64, upper triangle, row-major);
    a zero row has cosine 0 with every other."""
    rows = rows.astype(np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit = rows / np.where(norms > 0, norms, 1.0)
    i, j = np.triu_indices(len(rows), k=1)
    return (unit @ unit.T)[i, j]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's correlation of two equal-length vectors; 1.0 when both are constant and equal,
    0.0 when only one is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    da, db = a - a.mean(), b - b.mean()
    va, vb = float(np.dot(da, da)), float(np.dot(db, db))
    if va == 0.0 or vb == 0.0:
        return 1.0 if va == vb and np.array_equal(a, b) else 0.0
    return float(np.dot(da, db) / np.sqrt(va * vb))


def similarity_points(reference: np.ndarray, output: np.ndarray, max_rows: int = MAX_ROWS) -> float:
    """Points lost by an embedding output: 100 x (1 - r), r the correlation of the pairs' cosine
    similarities, the candidate's against the original's (0 with fewer than 3 rows: nothing to
    correlate; inf when the candidate has non-finite values)."""
    ref_rows, out_rows = spread_rows(reference, max_rows), spread_rows(output, max_rows)
    if len(ref_rows) < 3:
        return 0.0
    if not np.all(np.isfinite(out_rows)):
        return float("inf")
    return max(0.0, 100.0 * (1.0 - correlation(pair_cosines(ref_rows), pair_cosines(out_rows))))
