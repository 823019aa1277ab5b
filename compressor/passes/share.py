"""share: per-tensor k-means weight sharing (Deep Compression's second stage).

Each selected weight tensor (``Weight.is_matrix`` or a Gather table, ``row_use.is_table``;
at least ``min_params`` values, not excluded) is clustered on its own (``compressor.kmeans``): its non-zero values are
replaced by at most 2^bits centroids; zeros (pruned weights) stay exactly zero and are
not a cluster — pack codes them separately with its sparse index.  Defaults: 8 bits for
conv filters, 5 bits for fully-connected / MatMul / recurrent weights, as in the paper.

The output model has the same graph, names and dtypes; each shared tensor simply holds
only its centroid values, so ONNX Runtime runs it unchanged and pack finds the codebooks
in the tensors themselves.  float16 / bfloat16 tensors are clustered in float64 and the
codebook cast back; a centroid that would round to zero becomes the smallest non-zero
value of its sign, so zeros stay exactly where they were (``kmeans.cast_codebook``).
Tensors with NaN/inf are left alone (warning).  Tensors are clustered on a small thread
pool; each has its own seeded generator, so the output is byte-for-byte deterministic.

``refit_data`` (a Dataset of calibration inputs) enables a data-aware centroid update,
with the assignments fixed: for a layer computing ``Y = X @ W`` (Gemm, MatMul, and 2-D
Conv with group 1 via im2col), the centroid values ``v`` minimise the output error on the
calibration inputs.  With ``W' = sum_c v_c M_c`` (``M_c`` the 0/1 mask of cluster c) and
``C = X^T X`` accumulated over batches,

    ||X (W' - W)||_F^2 = tr((W' - W)^T C (W' - W)) = v^T H v - 2 g^T v + tr(W^T C W)
    H_ab = tr(M_a^T C M_b),   g_a = tr(M_a^T C W).

With ``C = R^T R`` (R = the r <= d_in calibration rows themselves when there are that few,
else a Cholesky factor of C, r = d_in), ``H = U^T U`` and ``g = U^T vec(R W)`` where column
``c`` of ``U`` is ``vec(R @ M_c)``: k matrix products of cost r·d_in·d_out each, done over
blocks of output columns to bound memory.  Layers where the bound ``k·d_in²·d_out`` exceeds
``layers.REFIT_MAX_FLOPS`` keep plain k-means and say so in the stats.
The refit values are kept only when they lower the calibration output error (checked on
the same quadratic form, after the cast to the tensor's dtype).

Refit limits: layer inputs are captured from the *original* model (one ORT pass), so each
layer is refit against its own float output, not against upstream sharing errors; a
weight used by several Gemm/MatMul/Conv nodes gets one system summed over its uses.  Not
refit (plain k-means kept, reason in the stats): recurrent weights, ConvTranspose,
grouped/depthwise and non-2-D convolutions, consumers inside subgraphs, batched (3-D+)
MatMul weights, and layers above the cost cap.
"""

from __future__ import annotations

import os
import re
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import onnx

from .. import graph
from ..data import Dataset, load_dataset
from ..ecq import RD_FACTOR, uniform_quantize
from ..errors import UsageError
from ..kmeans import INITS, SharedArray, cast_codebook, codebook_values, share_array
from ..kmeans_memo import SharedMemo, narrow_labels
from .bias_correction import correct_biases
from .layers import Layer, accumulate_inputs, layers_for
from .row_use import is_table
from .selection import DEFAULT_MIN_PARAMS, check_min_params, compile_exclude, unique_names

CONV_ROLES = ("conv_filter", "convtranspose_filter")
FC_ROLES = ("gemm_b", "matmul_const", "rnn_w", "rnn_r")
MIN_BITS, MAX_BITS = 1, 16
# Tensors clustered concurrently (threads; see share()).
MAX_WORKERS = 2
# Values whose squared errors are summed at a time (the stats of a large tensor).
STATS_CHUNK = 1 << 22
# Memory for one block of the k cluster products R @ M_c.
REFIT_BLOCK_BYTES = 128 << 20


# --------------------------------------------------------------------------- options


def _check_bits(label: str, bits) -> int:
    """`label`: the option, named as in the recipe (bits_conv, bits_fc, bits_by_name[...])."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise UsageError(f"{label}: bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    if not MIN_BITS <= int(bits) <= MAX_BITS:
        raise UsageError(f"{label}: bits must be in {MIN_BITS}..{MAX_BITS}, got {bits}")
    return int(bits)


def tensor_rng(seed: int, name: str) -> np.random.Generator:
    """A per-tensor generator: a tensor's result does not depend on which others are shared
    (so a search can reproduce share's result for one tensor alone)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode("utf-8"))])


def _select(ws: list[graph.Weight], pattern: re.Pattern | None, min_params: int, explicit: set[str] = frozenset()):
    """The matrix weights share clusters (explicitly named ones whatever their size), and the
    matrix weights it leaves with why (dtype and non-finite checks come later, per tensor)."""
    selected: list[graph.Weight] = []
    skipped: list[dict] = []
    for w in ws:
        if not (w.is_matrix or is_table(w)):
            continue
        reason = None
        if pattern is not None and pattern.search(w.name):
            reason = "excluded"
        elif w.size < min_params and w.name not in explicit:
            reason = f"fewer than {min_params} values"
        if reason:
            skipped.append({"name": w.name, "role": w.role, "size": w.size, "reason": reason})
            continue
        selected.append(w)
    return selected, skipped


def _copy_for(original: onnx.ModelProto, selected: list[graph.Weight]):
    """A copy of the model whose selected weights come without their data (share sets every one
    of them, or gives its data back: no copy of the large weights that are replaced anyway), and
    the copy's tensor for a weight of `original`."""
    refs = list(graph.iter_tensors(original))
    position = {(r.graph_path, r.kind, r.name): i for i, r in enumerate(refs)}
    if len(position) != len(refs):  # tensors not told apart by place and name: a plain copy
        model = graph.copy_model(original)
        copied = {(w.ref.graph_path, w.ref.kind, w.name): w for w in graph.weights(model)}
        return model, lambda w: copied[(w.ref.graph_path, w.ref.kind, w.name)].proto
    model = graph.copy_without_data(original, {position[(w.ref.graph_path, w.ref.kind, w.name)] for w in selected})
    copied_refs = list(graph.iter_tensors(model))
    return model, lambda w: copied_refs[position[(w.ref.graph_path, w.ref.kind, w.name)]].proto


def _unshareable(arr: np.ndarray) -> str | None:
    """Why share leaves these values alone (None: it clusters them)."""
    if arr.dtype.kind != "f" and arr.dtype.name != "bfloat16":
        return f"dtype {arr.dtype} not supported"
    if not np.isfinite(arr.astype(np.float32) if arr.dtype.itemsize <= 2 else arr).all():
        return "non-finite values"
    return None


def shareable_weights(
    model: onnx.ModelProto, exclude: str | None = None, min_params: int = DEFAULT_MIN_PARAMS
) -> list[graph.Weight]:
    """The weights ``share`` would cluster with these options, one definition per name (what a
    search keyed by name can reproduce)."""
    selected, _ = _select(graph.weights(model), compile_exclude(exclude), min_params)
    return [w for w in unique_names(selected, []) if _unshareable(w.array()) is None]


# --------------------------------------------------------------------------- the pass


def share(
    model: onnx.ModelProto,
    bits_conv: int = 8,
    bits_fc: int = 5,
    bits_by_name: dict[str, int] | None = None,
    init: str = "linear",
    seed: int = 0,
    exclude: str | None = None,
    min_params: int = DEFAULT_MIN_PARAMS,
    refit_data: Dataset | str | None = None,
    bias_data: Dataset | str | None = None,
    bias_judge=None,
    steps_by_name: dict[str, float] | None = None,
    rd_factor: float = RD_FACTOR,
    importance_by_name: dict[str, np.ndarray] | None = None,
    memo: SharedMemo | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """Per-tensor k-means weight sharing.  Returns ``(new model, stats)``; never mutates ``model``.

    ``steps_by_name``: tensors put on a uniform grid of that step instead (``ecq.uniform_quantize``,
    rate-distortion rounding with ``rd_factor``; ``importance_by_name``: per-tensor error weights
    broadcastable to the tensor, e.g. its layer's input variances).  Their values are step x an
    integer, so quantize keeps the grid; they are not refit.

    ``bias_data`` (calibration inputs): afterwards, lower each shared layer's bias by the mean
    output shift sharing caused (``bias_correction``; kept if it brings the outputs closer to
    the original's on that data, or if ``bias_judge(model)`` scores it higher).

    ``memo``: a caller's ``SharedMemo`` over calls on the same model (a tensor clustered at the
    same width as in the last call is not clustered again; the result is the same)."""
    bits_conv = _check_bits("bits_conv", bits_conv)
    bits_fc = _check_bits("bits_fc", bits_fc)
    bits_by_name = {str(k): _check_bits(f"bits_by_name[{k!r}]", v) for k, v in (bits_by_name or {}).items()}
    if init not in INITS:
        raise UsageError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    check_min_params(min_params)
    steps_by_name = {str(k): _check_step(f"steps_by_name[{k!r}]", v) for k, v in (steps_by_name or {}).items()}
    if isinstance(rd_factor, bool) or not (
        isinstance(rd_factor, (int, float, np.integer, np.floating)) and np.isfinite(rd_factor) and rd_factor >= 0
    ):
        raise UsageError(f"rd_factor must be a non-negative number, got {rd_factor!r}")
    importance_by_name = importance_by_name or {}
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UsageError(f"seed must be an integer, got {seed!r}")
    pattern = compile_exclude(exclude)

    original = model
    ws = graph.weights(original)  # read only: the values share sets go into `model`, a copy
    by_name: dict[str, list[graph.Weight]] = {}
    for w in ws:
        by_name.setdefault(w.name, []).append(w)
    for name in [*bits_by_name, *steps_by_name]:
        if name not in by_name:
            known = sorted({w.name for w in ws if w.is_matrix})
            hint = f" (matrix weights: {', '.join(known[:8])}{', ...' if len(known) > 8 else ''})" if known else ""
            raise UsageError(f"bits_by_name[{name!r}]: the model has no weight tensor named {name!r}{hint}")
        roles = {w.role for w in by_name[name]}
        if not any(w.is_matrix or is_table(w) for w in by_name[name]):
            raise UsageError(
                f"bits_by_name[{name!r}]: tensor has role {', '.join(sorted(roles))}; only matrix weights "
                f"(conv filters, Gemm/MatMul weights, recurrent W/R) and Gather tables are shared"
            )

    selected, skipped = _select(ws, pattern, min_params, set(bits_by_name) | set(steps_by_name))
    model, target = _copy_for(original, selected)
    plan = [(w, bits_by_name.get(w.name, bits_conv if w.role in CONV_ROLES else bits_fc)) for w in selected]

    warnings: list[str] = []
    data = None
    if refit_data is not None:
        data = refit_data if isinstance(refit_data, Dataset) else load_dataset(refit_data, original)

    def work(arr: np.ndarray, bits: int, meta: dict) -> tuple[SharedArray, dict | None]:
        name = meta["name"]

        def make() -> SharedArray:
            return share_array(arr, 2**bits, init=init, seed=tensor_rng(seed, name))

        shared = make() if memo is None else memo.shared(name, arr, (2**bits, init, int(seed)), make)
        return shared, (None if data is not None else _tensor_stats(meta, bits, arr, shared, None))

    # Tensors are independent: cluster them on a small thread pool (numpy releases the GIL in
    # the O(n) passes), at most `workers` in flight to bound memory.  Protobuf is only touched
    # here, in order, so the output does not depend on the scheduling.
    results: list[tuple[graph.Weight, int, np.ndarray, SharedArray]] = []  # kept for the refit
    entries: list[dict] = []
    workers = max(1, min(MAX_WORKERS, os.cpu_count() or 1))

    def finish(w, bits, arr, future) -> None:
        shared, entry = future.result()
        if data is not None:
            results.append((w, bits, arr, _held(shared)))
        else:
            graph.set_tensor_values(target(w), shared.values)
            entries.append(entry)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        inflight: deque = deque()
        for w, bits in plan:
            arr = w.array()
            reason = _unshareable(arr)
            if reason:
                target(w).CopyFrom(w.proto)  # left as it was: its data back in the copy
                skipped.append({"name": w.name, "role": w.role, "size": w.size, "reason": reason})
                if reason == "non-finite values":
                    warnings.append(f"{w.name}: NaN or infinite values; left unshared")
                continue
            if w.name in steps_by_name:
                step = steps_by_name[w.name]
                uniform = uniform_quantize(arr, step, rd_factor, importance=importance_by_name.get(w.name))
                graph.set_tensor_values(target(w), uniform.values)
                entries.append(_uniform_stats(_weight_meta(w), arr, uniform, rd_factor))
                continue
            inflight.append((w, bits, arr, pool.submit(work, arr, bits, _weight_meta(w))))
            if len(inflight) >= workers:
                finish(*inflight.popleft())
        while inflight:
            finish(*inflight.popleft())

    if data is not None and results:
        refit_info = _refit(original, results, data, warnings)
        for i, (w, bits, arr, shared) in enumerate(results):
            info = refit_info.get(i)
            if info and info.get("applied"):
                shared = info.pop("_shared")
            elif info:
                info.pop("_shared", None)
            shared = replace(shared, values=shared_values(arr, shared))
            graph.set_tensor_values(target(w), shared.values)
            entries.append(_tensor_stats(_weight_meta(w), bits, arr, shared, info))
            results[i] = None  # this tensor's arrays are in the model now

    if not entries:
        matrix = [w for w in ws if w.is_matrix]
        if not matrix:
            warnings.append(
                "nothing to share: the model has no conv, Gemm, MatMul or recurrent weights; output unchanged"
            )
        else:
            reasons = sorted({sk["reason"] for sk in skipped})
            warnings.append(
                f"nothing to share: none of the {len(matrix)} matrix weights qualifies ({'; '.join(reasons)}); "
                "output unchanged"
            )
        model = graph.copy_model(original)

    correction = None
    if bias_data is not None and entries:
        if not isinstance(bias_data, Dataset):
            bias_data = load_dataset(bias_data, original)
        model, correction = correct_biases(original, model, bias_data, [e["name"] for e in entries], judge=bias_judge)

    stats = {
        "bits_conv": bits_conv,
        "bits_fc": bits_fc,
        "bits_by_name": bits_by_name,
        "steps_by_name": steps_by_name,
        "rd_factor": float(rd_factor),
        "init": init,
        "seed": int(seed),
        "min_params": int(min_params),
        "exclude": exclude,
        "refit": refit_data is not None,
        "bias_correction": correction,
        "shared_tensors": len(entries),
        "shared_params": int(sum(e["size"] for e in entries)),
        "tensors": entries,
        "skipped": skipped,
        "warnings": warnings,
    }
    return model, stats


def _check_step(label: str, step) -> float:
    if (
        isinstance(step, bool)
        or not isinstance(step, (int, float, np.floating))
        or not (np.isfinite(step) and step > 0)
    ):
        raise UsageError(f"{label}: the step must be a positive number, got {step!r}")
    return float(step)


def _squared_errors(arr: np.ndarray, approx: np.ndarray) -> tuple[float, float]:
    """Sum of squared differences and of squared values, in float64; a large tensor in chunks
    of STATS_CHUNK values (no float64 copy of it)."""
    a, b = arr.ravel(), approx.ravel()
    sse = norm2 = 0.0
    for s in range(0, max(a.size, 1), STATS_CHUNK):
        a64 = a[s : s + STATS_CHUNK].astype(np.float64)
        d = np.subtract(b[s : s + STATS_CHUNK], a64, dtype=np.float64)
        sse += float(np.dot(d, d))
        norm2 += float(np.dot(a64, a64))
    return sse, norm2


def _used_levels(levels: np.ndarray) -> np.ndarray:
    """The distinct non-zero levels, ascending (a count per level: the levels span a few hundred)."""
    if levels.size == 0:
        return levels[:0]
    low, high = int(levels.min()), int(levels.max())
    if high - low > 1 << 16:
        return np.unique(levels[levels != 0])
    # counted a chunk at a time: no shifted copy of every level (int64) beside them
    counts = np.zeros(high - low + 1, np.intp)
    for s in range(0, levels.size, STATS_CHUNK):
        counts += np.bincount(levels[s : s + STATS_CHUNK] - low, minlength=high - low + 1)
    present = np.flatnonzero(counts) + low
    return present[present != 0].astype(levels.dtype)


def _uniform_stats(meta: dict, arr: np.ndarray, uniform, rd_factor: float) -> dict:
    """A uniform-grid tensor's stats entry: the k-means entry's keys ("bits": the magnitude bits
    its levels need plus a sign bit; "codebook_size": the non-zero levels used), with "method",
    "step" and "rd_factor"."""
    sse, norm2 = _squared_errors(arr, uniform.values)
    levels = uniform.levels.ravel()
    used = _used_levels(levels)
    peak = int(np.max(np.abs(used))) if used.size else 0
    entry = {
        "name": meta["name"],
        "role": meta["role"],
        "shape": meta["shape"],
        "dtype": str(arr.dtype),
        "size": meta["size"],
        "method": "uniform",
        "bits": int(peak).bit_length() + 1,
        "step": uniform.step,
        "rd_factor": float(rd_factor),
        "codebook_size": int(used.size),
        "distinct": int(used.size),
        "zeros": int(np.count_nonzero(levels == 0)),
        "rmse": (sse / max(meta["size"], 1)) ** 0.5,
        "rel_error": (sse / norm2) ** 0.5 if norm2 > 0 else 0.0,
        "iterations": 0,
        "refit": None,
    }
    if meta["graph"]:
        entry["graph"] = meta["graph"]
    return entry


def _weight_meta(w: graph.Weight) -> dict:
    """What the stats say of the tensor a weight is (before what sharing did to it)."""
    return {"name": w.name, "role": w.role, "shape": list(w.shape), "size": int(w.size), "graph": w.ref.graph_path}


def _tensor_stats(meta: dict, bits: int, arr: np.ndarray, shared: SharedArray, refit: dict | None) -> dict:
    sse, norm2 = _squared_errors(arr, shared.values)
    used = shared.counts > 0
    distinct = int(np.unique(shared.codebook[used].astype(np.float64)).size)
    size = meta["size"]
    entry = {
        "name": meta["name"],
        "role": meta["role"],
        "shape": meta["shape"],
        "dtype": str(arr.dtype),
        "size": size,
        "method": "kmeans",
        "bits": bits,
        "codebook_size": int(len(shared.codebook)),
        "distinct": distinct,
        "zeros": int(size - int(shared.counts.sum())),
        "rmse": (sse / max(size, 1)) ** 0.5,
        "rel_error": (sse / norm2) ** 0.5 if norm2 > 0 else 0.0,
        "iterations": int(shared.iterations),
        "refit": refit,
    }
    if meta["graph"]:
        entry["graph"] = meta["graph"]
    return entry


# --------------------------------------------------------------------------- refit


def _held(shared: SharedArray) -> SharedArray:
    """What the refit holds of a tensor's k-means until every tensor is clustered: no values
    (made again from the labels, ``shared_values``) and the labels narrowed to int8 / int16
    (three large tensors' worth of memory fewer for the refit's model)."""
    return replace(shared, values=np.empty(0, shared.values.dtype), labels=narrow_labels(shared.labels))


def shared_values(arr: np.ndarray, shared: SharedArray) -> np.ndarray:
    """The shared tensor: the codebook's value where a label is set, `arr`'s (its zeros) where
    it is -1 (what ``share_array`` gives, from its labels and codebook)."""
    if not shared.codebook.size:
        return arr.copy()
    return codebook_values(arr, shared.labels, shared.codebook)


def _refit(original: onnx.ModelProto, results, data: Dataset, warnings: list[str]) -> dict[int, dict]:
    known = {w.name for w in graph.weights(original, include_non_float=True)}
    plans: dict[int, list[Layer]] = {}
    info: dict[int, dict] = {}
    for i, (w, _bits, _arr, shared) in enumerate(results):
        layers = layers_for(w, len(shared.codebook), known)
        if isinstance(layers, str):
            info[i] = {"applied": False, "reason": layers}
        else:
            plans[i] = layers
    if not plans:
        warnings.append("--refit: no shared layer supports the refit (Gemm, MatMul, 2-D Conv); plain k-means kept")
        return info

    accumulate_inputs(original, [layer for layers in plans.values() for layer in layers], data)
    for i, layers in plans.items():
        w, bits, arr, shared = results[i]
        info[i] = _refit_one(layers, arr, shared)
    return info


def refit_system(
    layers: list[Layer], w: np.ndarray, labels: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """H, g and const of the output error v^T H v - 2 g^T v + const (summed over the layers), and r."""
    H = np.zeros((k, k))
    g = np.zeros(k)
    const = 0.0
    rank = 0
    w64 = w.astype(np.float64)
    for layer in layers:
        if layer.rows == 0:
            continue
        R = layer.factor()
        r = R.shape[0]
        rank += r
        if r == 0:
            continue
        W = layer.matrix(w64)
        L = layer.matrix(labels)
        RW = R @ W
        const += float(np.sum(RW * RW))
        d_out = W.shape[1]
        block = max(1, min(d_out, REFIT_BLOCK_BYTES // (8 * k * r)))
        for s in range(0, d_out, block):
            Lb = L[:, s : s + block]
            U = np.empty((k, r, Lb.shape[1]))
            for c in range(k):
                U[c] = R @ (Lb == c).astype(np.float64)
            Uf = U.reshape(k, -1)
            H += Uf @ Uf.T
            g += Uf @ RW[:, s : s + block].ravel()
    return H, g, const, rank


def _refit_one(layers: list[Layer], arr: np.ndarray, shared: SharedArray) -> dict:
    k = len(shared.codebook)
    H, g, const, rank = refit_system(layers, arr, shared.labels, k)
    v_km = shared.codebook.astype(np.float64)
    if const <= 0:
        return {"applied": False, "reason": "no signal in the calibration inputs"}

    def err(v):
        return max(float(v @ H @ v - 2 * g @ v + const), 0.0)

    lam = 1e-9 * max(float(np.trace(H)) / k, 1e-300)
    try:
        v = np.linalg.solve(H + lam * np.eye(k), g + lam * v_km)
    except np.linalg.LinAlgError:
        return {"applied": False, "reason": "singular system"}
    if not np.isfinite(v).all():
        return {"applied": False, "reason": "singular system"}
    codebook = cast_codebook(v, arr.dtype)
    e_km, e_new = err(v_km), err(codebook.astype(np.float64))
    result = {
        "applied": e_new < e_km,
        "output_rel_error_kmeans": (e_km / const) ** 0.5,
        "output_rel_error_refit": (e_new / const) ** 0.5,
        "factor_rows": rank,
    }
    if result["applied"]:
        # its values are made when the model takes them (shared_values)
        result["_shared"] = replace(shared, codebook=codebook, centroids=v)
    else:
        result["reason"] = "k-means centroids already give the smaller calibration output error"
    return result
