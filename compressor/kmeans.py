"""1-D k-means for weight sharing (Deep Compression's second stage) — pure numpy.

Each weight tensor is clustered on its own: the values are replaced by the nearest of at
most ``k`` centroids (a codebook) and a per-weight index.  In one dimension k-means has
structure the general algorithm ignores: every cluster is an *interval* of the sorted
values, and the boundaries between clusters are the midpoints between sorted centroids.
So the values are sorted once (or, for huge tensors, summarised by a fine histogram),
prefix sums of counts and values are taken once, and each Lloyd iteration is

    midpoints -> np.searchsorted on the sorted support -> cluster counts and sums as
    differences of prefix sums -> new centroids = sums / counts

which costs O(k log n) (or O(k log bins)), not O(n·k).  Steps are over-relaxed (see
``lloyd``): plain 1-D Lloyd crawls, thousands of tiny steps at k = 256.  The final labels
are always exact — the nearest final centroid of every value, by np.searchsorted on the
midpoints, or a bin lookup that falls back to searchsorted only for the few bins a midpoint
can fall into — and at a fixed point each centroid is the exact mean of its cluster (the
histogram path finishes with exact Lloyd steps on the values themselves).

Why not scikit-learn's KMeans?  It is the better tool for multi-dimensional data (and for
k-means++ seeding); for 1-D data it costs O(n·k) per iteration on an (n, 1) array, so it
is 20-1300x slower here for the same fixed point (benchmarks/bench_share.py, one thread
each: 200 k values, k = 256: 43 s vs 0.03 s; 1 M values, k = 32: 28 s vs 0.09 s).  It is
used as the reference oracle instead: tests check that, started from the same centroids,
plain Lloyd here reaches the same centroids (in as many iterations) as sklearn's
``KMeans(algorithm="lloyd")``.

Centroid initialisation (Han, Mao & Dally, "Deep Compression", 2016, section 3.2):

* ``linear`` (default): centroids evenly spaced between the minimum and the maximum.
  The tails get centroids of their own, so the few large-magnitude weights — the ones
  that matter most to the output — are represented accurately.  Centroids may start in
  empty regions; empty clusters are re-seeded (see below).
* ``density``: centroids evenly spaced on the CDF (quantiles).  Centroids crowd where the
  weights are dense (near zero), which minimises the error of the bulk but starves the
  tails: the largest weights share a centroid with many smaller ones and are shrunk.
* ``random`` (Forgy): k distinct values sampled from the data, seeded.  Behaves like
  ``density`` in expectation (samples follow the distribution), with more variance.

Deep Compression found ``linear`` gives the best accuracy for exactly this reason;
``tests/test_kmeans.py`` checks that linear has the smaller error on the top 1 % |w|
(~20-35 % smaller on Laplacian / Student-t weights at k = 32), while density usually has
the same or a lower error overall (e.g. 25 % lower SSE at k = 256 on a 50 %-pruned
Laplacian tensor): the trade-off is bulk accuracy against the largest weights.

Empty clusters (and duplicate initial centroids) are re-seeded deterministically: the
non-empty clusters with the largest within-cluster sum of squares (ties: lowest index)
are split in two at their mean, for up to ``max_reseed`` rounds; clusters still empty
after that are dropped, so a result can have fewer than ``k`` centroids.  When the data
has at most ``k`` distinct values the codebook is exactly those values (zero error).

Not done: the exactly optimal 1-D k-means (dynamic programming, Wang & Song's
Ckmeans.1d.dp, O(k·n) per tensor).  Lloyd finds a local optimum that depends on the
initialisation — which is the point of the ``init`` choice; the gap to the global optimum
has not been measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INITS = ("linear", "density", "random")
DEFAULT_MAX_ITER = 3000
DEFAULT_MAX_RESEED = 20
BETA_START, BETA_GROWTH, BETA_MAX = 2.0, 1.5, 64.0  # over-relaxation of Lloyd steps
# Tensors with more values than this are clustered on a histogram of their values
# (Lloyd on bin counts and sums), then assigned exactly.  Below it: an exact sort.
# Measured in benchmarks/bench_share.py (8.4 M values): the histogram path is 2-3x faster;
# its error equals the exact path's at k = 32 and is within ~1-2 % at k = 256 (another local
# optimum).  With only 2^16 bins Lloyd stalls early at large k (several % worse), hence
# n/4 bins up to 2^20.
HIST_THRESHOLD = 1 << 22
MIN_BINS = 1 << 16
MAX_BINS = 1 << 20
# Values binned at a time.
HIST_CHUNK = 1 << 22


# --------------------------------------------------------------------------- support points


@dataclass
class Support:
    """Sorted, distinct support points with counts and prefix sums (leading zero)."""

    points: np.ndarray  # float64, ascending
    counts: np.ndarray  # int64, > 0
    cum_n: np.ndarray  # int64, len m + 1
    cum_s: np.ndarray  # float64, len m + 1: prefix sums of counts * points
    cum_q: np.ndarray  # float64, len m + 1: prefix sums of counts * points**2

    @classmethod
    def build(cls, points: np.ndarray, counts: np.ndarray, sums: np.ndarray | None = None) -> Support:
        counts = counts.astype(np.int64, copy=False)
        if sums is None:
            sums = points * counts
        m = len(points)
        cum_n = np.zeros(m + 1, np.int64)
        np.cumsum(counts, out=cum_n[1:])
        cum_s = np.zeros(m + 1, np.float64)
        np.cumsum(sums, out=cum_s[1:])
        cum_q = np.zeros(m + 1, np.float64)
        np.cumsum(sums * points, out=cum_q[1:])
        return cls(points, counts, cum_n, cum_s, cum_q)

    @property
    def total(self) -> int:
        return int(self.cum_n[-1])

    def __len__(self) -> int:
        return len(self.points)


def support_exact(values: np.ndarray) -> Support:
    """Distinct values with their counts (one sort)."""
    s = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = s.size
    first = np.empty(n, bool)
    if n:
        first[0] = True
        np.not_equal(s[1:], s[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, n))
    return Support.build(s[starts], counts)


@dataclass
class Histogram:
    lo: float
    scale: float  # bins per unit
    bins: int
    index: np.ndarray  # bin of each value (int32)


def support_histogram(values: np.ndarray, bins: int) -> tuple[Support, Histogram]:
    """A fine histogram of the values: the non-empty bins, at their means, weighted by counts.

    ``values`` must be finite, float64 or float32 (each computed with as float64: the same
    result).  Returns the support and each value's bin.
    """
    lo, hi = float(values.min()), float(values.max())
    scale = bins / (hi - lo) if hi > lo else 0.0
    # the bin of each value in chunks (bounded float64 temporaries), int32 (bins < 2**31)
    index = np.empty(values.shape, np.int32 if bins < 1 << 31 else np.intp)
    for s in range(0, values.size, HIST_CHUNK):
        f = np.subtract(values[s : s + HIST_CHUNK], lo, dtype=np.float64)  # float32 values: as float64
        f *= scale
        np.floor(f, out=f)
        np.minimum(f, bins - 1, out=f)
        index[s : s + HIST_CHUNK] = f
    counts = label_counts(index, bins)
    sums = label_sums(index, values, bins)
    keep = counts > 0
    counts, sums = counts[keep], sums[keep]
    points = sums / counts
    # Means of successive bins are increasing; guard against a last-ulp inversion.
    np.maximum.accumulate(points, out=points)
    return Support.build(points, counts, sums), Histogram(lo, scale, bins, index)


# --------------------------------------------------------------------------- initialisation


def init_centroids(support: Support, k: int, init: str = "linear", seed: int | np.random.Generator = 0) -> np.ndarray:
    """Initial centroids (sorted, distinct) on a support: linear, density (CDF) or random (Forgy)."""
    p = support.points
    if init == "linear":
        c = np.linspace(p[0], p[-1], k)
    elif init == "density":
        # Evenly spaced on the y-axis of the CDF, then the horizontal intercept.
        q = (np.arange(k) + 0.5) / k * support.total
        c = p[np.minimum(np.searchsorted(support.cum_n[1:], q, side="right"), len(p) - 1)]
    elif init == "random":
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        ranks = rng.choice(support.total, size=min(k, support.total), replace=False)
        c = p[np.searchsorted(support.cum_n[1:], ranks, side="right")]
    else:
        raise ValueError(f"unknown init {init!r} (expected one of {', '.join(INITS)})")
    return np.unique(c)


# --------------------------------------------------------------------------- Lloyd


def midpoints(centroids: np.ndarray) -> np.ndarray:
    return (centroids[:-1] + centroids[1:]) * 0.5


def _bounds(support: Support, centroids: np.ndarray) -> np.ndarray:
    """Cluster j holds support points [b[j], b[j+1]); a point equal to a midpoint goes left."""
    b = np.empty(len(centroids) + 1, np.intp)
    b[0], b[-1] = 0, len(support)
    b[1:-1] = np.searchsorted(support.points, midpoints(centroids), side="right")
    return b


def _split_largest(support: Support, b: np.ndarray, means: np.ndarray, nonempty: np.ndarray, n_new: int) -> np.ndarray:
    """Centroids after splitting the n_new non-empty clusters with the largest SSE in two."""
    cnt = (support.cum_n[b[1:]] - support.cum_n[b[:-1]]).astype(np.float64)
    s = support.cum_s[b[1:]] - support.cum_s[b[:-1]]
    q = support.cum_q[b[1:]] - support.cum_q[b[:-1]]
    with np.errstate(invalid="ignore", divide="ignore"):
        sse = np.maximum(q - s * s / cnt, 0.0)
    splittable = nonempty & (b[1:] - b[:-1] >= 2)
    sse = np.where(splittable, sse, -1.0)
    order = np.argsort(-sse, kind="stable")
    chosen = order[: min(n_new, int(splittable.sum()))]
    keep = nonempty.copy()
    keep[chosen] = False
    parts = [means[keep]]
    if len(chosen):
        lo, hi = b[chosen], b[chosen + 1]
        cut = np.searchsorted(support.points, means[chosen], side="right")
        cut = np.clip(cut, lo + 1, hi - 1)
        left = (support.cum_s[cut] - support.cum_s[lo]) / (support.cum_n[cut] - support.cum_n[lo])
        right = (support.cum_s[hi] - support.cum_s[cut]) / (support.cum_n[hi] - support.cum_n[cut])
        parts += [left, right]
    return np.unique(np.concatenate(parts))


def _cluster_stats(support: Support, centroids: np.ndarray):
    """Boundaries, counts and sums of the clusters of sorted centroids: O(k log m)."""
    b = _bounds(support, centroids)
    n = support.cum_n[b[1:]] - support.cum_n[b[:-1]]
    s = support.cum_s[b[1:]] - support.cum_s[b[:-1]]
    return b, n, s


def objective(support: Support, centroids: np.ndarray, stats=None) -> float:
    """The k-means objective of sorted centroids (nearest assignment), minus a constant.

    sum_j (c_j^2 n_j - 2 c_j s_j) = SSE - sum(x^2): O(k log m), for comparing centroid sets.
    """
    _, n, s = stats if stats is not None else _cluster_stats(support, centroids)
    return float(np.sum(centroids * (centroids * n - 2.0 * s)))


def lloyd(
    support: Support,
    centroids: np.ndarray,
    k: int | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    max_reseed: int = DEFAULT_MAX_RESEED,
    accelerate: bool = True,
) -> tuple[np.ndarray, int]:
    """Lloyd iterations on a weighted sorted support; returns (sorted centroids, iterations).

    Stops when the cluster boundaries no longer change (an exact fixed point).  Up to
    ``k`` centroids are kept alive by splitting the clusters with the largest SSE.

    ``accelerate``: over-relaxed steps.  With m = Lloyd(c), try c + beta (m - c) (beta
    starting at 2, growing x1.5 up to 64 while accepted) and keep it only if its objective
    beats m's.  Plain 1-D Lloyd crawls (thousands of tiny steps for k = 256); this reaches a
    fixed point in 2-4x fewer iterations, and usually a better one (measured: 0-8 % lower
    SSE on Laplacian / Student-t / pruned weights).  ``accelerate=False`` is textbook Lloyd
    (the same iterates as scikit-learn's ``KMeans(algorithm="lloyd")``).
    """
    k = len(centroids) if k is None else k
    c = np.unique(np.asarray(centroids, dtype=np.float64))
    prev = None
    reseeds = 0
    beta = BETA_START
    cached = None  # cluster stats of c, when already computed
    it = 0
    for it in range(1, max_iter + 1):
        b, cnt, sums = cached if cached is not None else _cluster_stats(support, c)
        cached = None
        nonempty = cnt > 0
        means = np.zeros(len(c))
        means[nonempty] = sums[nonempty] / cnt[nonempty]
        n_alive = int(nonempty.sum())
        if k - n_alive > 0 and reseeds < max_reseed and len(support) > n_alive:
            reseeds += 1
            c = _split_largest(support, b, means, nonempty, k - n_alive)
            prev, beta = None, BETA_START
            continue
        if not nonempty.all():  # cannot re-seed: drop the empty clusters
            c, prev, beta = means[nonempty], None, BETA_START
            continue
        if prev is not None and np.array_equal(b, prev):
            return means, it
        if accelerate:
            cand = c + beta * (means - c)
            if np.all(np.diff(cand) > 0):
                st_cand, st_means = _cluster_stats(support, cand), _cluster_stats(support, means)
                if objective(support, cand, st_cand) < objective(support, means, st_means):
                    c, prev, beta, cached = cand, None, min(beta * BETA_GROWTH, BETA_MAX), st_cand
                    continue
                cached = st_means
            beta = BETA_START
        prev = b
        c = means
    return c, it


# --------------------------------------------------------------------------- assignment


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index (intp) of the nearest centroid for each value (ties: the smaller centroid)."""
    return np.searchsorted(midpoints(np.asarray(centroids, dtype=np.float64)), values, side="left")


def _assign_histogram(values: np.ndarray, centroids: np.ndarray, hist: Histogram) -> np.ndarray:
    """Exact nearest-centroid labels using the histogram's bins.

    A bin whose range (widened by one bin on each side, far more than float rounding in
    the bin computation) holds no midpoint lies inside one cluster: its values take the
    label of its centre.  Values in the other bins (at most 3 per midpoint) are assigned
    by searchsorted.
    """
    mids = midpoints(centroids)
    centres = hist.lo + (np.arange(hist.bins) + 0.5) / hist.scale if hist.scale else np.full(hist.bins, hist.lo)
    bin_label = np.searchsorted(mids, centres, side="left")
    impure = np.zeros(hist.bins + 2, bool)
    if len(mids) and hist.scale:
        mb = np.floor((mids - hist.lo) * hist.scale)
        mb = np.clip(mb, -1, hist.bins).astype(np.intp) + 1  # shifted by one for the -1 / bins guards
        for d in (-1, 0, 1):
            impure[np.clip(mb + d, 0, hist.bins + 1)] = True
    impure = impure[1:-1]
    # One gather from a small table (uint8 for k < 255: cache-resident), impure bins marked
    # by a sentinel.
    kk = len(centroids)
    dt = np.uint8 if kk < 255 else (np.uint16 if kk < 65535 else np.int64)
    sentinel = np.iinfo(dt).max
    table = bin_label.astype(dt)
    table[impure] = sentinel
    small = table[hist.index]
    sel = np.flatnonzero(small == sentinel)
    labels = small.astype(np.int32)
    del small
    if sel.size:
        labels[sel] = np.searchsorted(mids, values[sel], side="left")
    return labels


def label_counts(labels: np.ndarray, k: int) -> np.ndarray:
    """``np.bincount(labels, minlength=k)`` (labels in [0, k)) counted block by block: bincount
    copies int32 labels to intp whole, eight bytes per value."""
    labels = labels.reshape(-1)
    counts = np.zeros(k, dtype=np.intp)
    for s in range(0, labels.size, HIST_CHUNK):
        counts += np.bincount(labels[s : s + HIST_CHUNK], minlength=k)
    return counts


def label_sums(labels: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """``np.bincount(labels, weights=weights, minlength=k)`` bit for bit: np.add.at adds the
    weights in the same order, block by block (no intp copy of the labels)."""
    labels, weights = labels.reshape(-1), weights.reshape(-1)
    sums = np.zeros(k, dtype=np.float64)
    for s in range(0, labels.size, HIST_CHUNK):
        # float32 weights as float64 a chunk at a time: add.at's fast loop needs one dtype
        np.add.at(sums, labels[s : s + HIST_CHUNK], weights[s : s + HIST_CHUNK].astype(np.float64, copy=False))
    return sums


def _cluster_means(values: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Exact means of the non-empty clusters (empty ones dropped)."""
    cnt = label_counts(labels, k)
    sums = label_sums(labels, values, k)
    used = cnt > 0
    return sums[used] / cnt[used]


def kmeans_1d(
    values,
    k: int,
    init: str = "linear",
    seed: int | np.random.Generator = 0,
    max_iter: int = DEFAULT_MAX_ITER,
    hist_threshold: int = HIST_THRESHOLD,
    bins: int | None = None,
    max_reseed: int = DEFAULT_MAX_RESEED,
    refine_steps: int = 1,
    accelerate: bool = True,
    return_iterations: bool = False,
    supports: dict | None = None,
):
    """Cluster 1-D values into at most k centroids.

    Returns ``(centroids, labels)``: centroids sorted ascending (float64), labels (int32, the
    shape of ``values``): the nearest centroid of each value (ties: the smaller).  At a fixed
    point (almost always) each centroid is also the exact mean of its cluster.  Values must
    be finite.  Above ``hist_threshold`` values, Lloyd runs on a ``bins``-bin histogram
    (default: n/4 clipped to 2^16..2^20 bins; coarser histograms make Lloyd stall early),
    then up to ``refine_steps`` exact Lloyd steps run on the values themselves (each O(n)).

    ``supports``: a dict kept by a caller clustering the same values (with the same
    ``hist_threshold`` and ``bins``) at several k: the sorted support (or the histogram) is
    made once and reused from it; the results are the same.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r} (expected one of {', '.join(INITS)})")
    if k < 1:
        raise ValueError("k must be >= 1")
    arr = np.asarray(values)
    shape = arr.shape
    # Float32 values of a histogram's size stay float32 (half the bytes): every product with
    # them is taken in float64 (the histogram's bins and sums, the labels' searchsorted, the
    # cluster means), so the result is the float64 copy's, bit for bit.
    keep32 = arr.dtype == np.float32 and arr.size > hist_threshold
    x = arr.ravel() if keep32 else arr.astype(np.float64, copy=False).ravel()
    if x.size == 0:
        out = (np.zeros(0), np.zeros(shape, np.int32))
        return (*out, 0) if return_iterations else out
    if not np.isfinite(x).all():
        raise ValueError("values must be finite")
    cache = {} if supports is None else supports
    hist = None
    if x.size > hist_threshold:
        nbins = bins or int(np.clip(x.size // 4, MIN_BINS, MAX_BINS))
        if "histogram" not in cache:
            cache["histogram"] = support_histogram(x, nbins)
        support, hist = cache["histogram"]
    if hist is None or len(support) <= k:
        # (on a histogram: few non-empty bins, maybe few distinct values, e.g. an already
        # shared tensor: checked exactly)
        if "exact" not in cache:
            cache["exact"] = support_exact(x)
        hist, support = None, cache["exact"]
    if hist is None and len(support) <= k:
        # At most k distinct values: the codebook is the values themselves.
        labels = np.searchsorted(support.points, x)
        out = (support.points.copy(), labels.astype(np.int32).reshape(shape))
        return (*out, 0) if return_iterations else out
    c0 = init_centroids(support, k, init, seed)
    centroids, iterations = lloyd(support, c0, k, max_iter=max_iter, max_reseed=max_reseed, accelerate=accelerate)

    def nearest(c):
        return _assign_histogram(x, c, hist) if hist is not None else assign(x, c)

    # On a histogram: a few exact Lloyd steps on the values themselves (each O(n)), until a
    # fixed point.  The labels returned are always the nearest of the centroids returned.
    labels = nearest(centroids)
    for _ in range(refine_steps if hist is not None else 0):
        means = _cluster_means(x, labels, len(centroids))
        if len(means) == len(centroids) and np.array_equal(means, centroids):
            break
        centroids = means
        del labels  # the next labels are made without the last ones beside them
        labels = nearest(centroids)
    used = label_counts(labels, len(centroids)) > 0
    if not used.all():  # a centroid nearest to no value: drop it (no label changes)
        centroids = centroids[used]
        labels = (np.cumsum(used) - 1)[labels]
    out = (centroids, labels.astype(np.int32, copy=False).reshape(shape))  # the histogram's labels are int32 already
    return (*out, iterations) if return_iterations else out


def inertia(values, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances of the values to their centroids."""
    d = (
        np.asarray(values, dtype=np.float64).ravel()
        - np.asarray(centroids, dtype=np.float64)[np.asarray(labels).ravel()]
    )
    return float(np.dot(d, d))


# --------------------------------------------------------------------------- tensors


def smallest_nonzero(dtype) -> float:
    """The smallest positive representable value of a float dtype (subnormals included)."""
    try:
        return float(np.finfo(dtype).smallest_subnormal)
    except (TypeError, ValueError, AttributeError):  # pragma: no cover - exotic dtypes
        return float(np.nextafter(np.zeros((), dtype), np.ones((), dtype)))


def cast_codebook(centroids: np.ndarray, dtype) -> np.ndarray:
    """Centroids cast to ``dtype`` without creating zeros.

    A centroid that rounds to (±)0 becomes the smallest non-zero representable value of
    its sign (+ for an exact 0), so non-zero weights never become zero.
    """
    dtype = np.dtype(dtype)
    c = np.asarray(centroids, dtype=np.float64)
    out = c.astype(dtype)
    zero = out.astype(np.float64) == 0
    if zero.any():
        tiny = smallest_nonzero(dtype)
        out[zero] = np.where(c[zero] < 0, -tiny, tiny).astype(dtype)
    return out


def codebook_values(array: np.ndarray, labels: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """``np.where(labels >= 0, codebook[labels], array)`` block by block (no gather and no mask of
    the whole tensor beside the result): a shared tensor made again from its labels."""
    flat_labels, source = labels.reshape(-1), array.reshape(-1)
    out = np.empty(source.shape, np.result_type(codebook, array))
    for s in range(0, source.size, HIST_CHUNK):
        part = slice(s, s + HIST_CHUNK)
        out[part] = np.where(flat_labels[part] >= 0, codebook[flat_labels[part]], source[part])
    return out.reshape(array.shape)


@dataclass
class SharedArray:
    values: np.ndarray  # the shared tensor: input dtype and shape
    labels: np.ndarray  # int32, input shape; -1 where the input is zero
    codebook: np.ndarray  # in the input dtype, no zeros; values[labels >= 0] == codebook[labels]
    centroids: np.ndarray  # float64 centroids before the cast
    counts: np.ndarray  # values per codebook entry
    iterations: int = 0


def share_array(
    array: np.ndarray, k: int, init: str = "linear", seed: int | np.random.Generator = 0, **kwargs
) -> SharedArray:
    """Replace the non-zero values of ``array`` by at most ``k`` centroids; zeros stay as they are.

    Clusters in float64, then casts the codebook to the array's dtype (``cast_codebook``:
    never a new zero).  The result has at most ``k`` distinct non-zero values.
    """
    arr = np.asarray(array)
    flat = arr.reshape(-1)
    # The non-zero positions as a mask: a byte per value where an index array takes eight (a
    # large tensor's k-means peak), at about the same speed.
    nonzero = flat != 0
    # The non-zero values in kmeans_1d's float64 (float16 / bfloat16 through float32, as
    # before), gathered block by block: no copy in the array's own type beside them.  Float32
    # values of a histogram's size stay float32: kmeans_1d computes with them in float64.
    count = int(np.count_nonzero(nonzero))
    keep32 = arr.dtype == np.float32 and count > kwargs.get("hist_threshold", HIST_THRESHOLD)
    x = np.empty(count, np.float32 if keep32 else np.float64)
    blocks = [(s, slice(s, s + HIST_CHUNK)) for s in range(0, flat.size, HIST_CHUNK)]
    at = 0
    for _, part in blocks:
        picked = flat[part][nonzero[part]]
        x[at : at + picked.size] = picked.astype(np.float32) if arr.dtype.itemsize <= 2 else picked
        at += picked.size
    centroids, lab, iterations = kmeans_1d(x, k, init=init, seed=seed, return_iterations=True, **kwargs)
    del x
    codebook = cast_codebook(centroids, arr.dtype)
    labels = np.full(flat.shape, -1, np.int32)
    labels[nonzero] = lab
    values = flat.copy()
    at = 0
    for _, part in blocks:  # the codebook's values block by block (no gather of every value at once)
        mask = nonzero[part]
        n = int(np.count_nonzero(mask))
        values[part][mask] = codebook[lab[at : at + n]]
        at += n
    counts = label_counts(lab, len(codebook))
    return SharedArray(values.reshape(arr.shape), labels.reshape(arr.shape), codebook, centroids, counts, iterations)
