"""The share ladder's fine rungs: k-means codebooks wider than its widths, on the weights only
a subgraph reads.

Quantize rewrites the main graph only: a weight read inside an If/Loop body stays float after
it (``passes.quantize.subgraph_weights``), so when share's widths (up to 8 bits) all miss the
budget such a weight has no lossy setting left and packs as raw floats.  These rungs share
each of them with a codebook of more than 2^8 centroids (``kmeans.share_array``, zeros stay zero;
k-means, not one uniform grid: folded batch norms give conv weights outliers tens of times
their RMS, which a grid spanning them resolves worse than 8-bit k-means), and the container's
dict coder takes the codebook and its symbols.  Weights of If branches the calibration data
never takes keep the gentlest candidate's sharing (as the partial rungs do: no data judges
them) unless they pack smaller as they were; main-graph weights are left to quantize.  The
ladder judges each rung on its verdict like any other, fewest centroids first (half a bit
apart), and tries none once an earlier setting fit.

Before each of them comes a mixed rung with the same estimated output noise and fewer bytes:
each used weight is measured alone on the searches' data (one run each, once), its output
noise taken to fall 6 dB a bit of codebook, and the codebook sizes chosen so that every tensor
ends at the same noise per weight (the rate-distortion optimum when a tensor's bytes grow by a
bit a weight per doubling of its codebook).  The tensors that barely move the outputs (on
silero_vad its LSTM's recurrent weights) take narrower codebooks, the sensitive ones wider.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx

from .. import graph
from ..container.coders import encode_tensor_data
from ..errors import CompressorError
from ..kmeans import share_array
from ..measure import Judge, VariantRunner
from ..passes.quantize.names import read_in_subgraphs
from ..passes.share import tensor_rng
from ..search.branch_use import untaken_branches, unused_weights
from ..variants import weight_key, with_arrays
from .ladder import Attempt, StageContext
from .partial_share import LastBuilt

# The codebooks' sizes, fewest first (the k-means rungs end at 2^8): 2^9 to 2^11 half a bit
# apart (the rate moves by the bit, the error by about 6 dB a bit), then 2^12.
FINE_CENTROIDS = (512, 724, 1024, 1448, 2048, 4096)
# The mixed rungs' codebook sizes (half a bit apart from the k-means ladder's widest, 2^8) and
# the size each weight is measured at alone.
MIXED_CENTROIDS = (256, 362, 512, 724, 1024, 1448, 2048, 2896, 4096)
PROBE_CENTROIDS = 512
# The mixed rungs measure each used weight alone (a whole-model run each): past this many
# weights (a Loop body's dozens) they are not tried, and the uniform rungs stay.
MIXED_MAX_WEIGHTS = 24


def subgraph_weights(model: onnx.ModelProto, tensors: Sequence[graph.Weight]) -> list[graph.Weight]:
    """The `tensors` quantize leaves float: defined in a subgraph, or read by one."""
    inner = read_in_subgraphs(model.graph)
    return [
        w for w in tensors if w.ref.graph_path != "" or w.name in inner or any(c.graph_path != "" for c in w.consumers)
    ]


def packed_bytes(values: np.ndarray) -> int:
    """The bytes the container's coders store `values` in (the smallest proposal, as pack picks)."""
    flat = np.ascontiguousarray(values)
    return len(encode_tensor_data(flat.tobytes(), flat.dtype.itemsize).payload)


def fine_values(name: str, values: np.ndarray, centroids: int, init: str, seed: int) -> np.ndarray:
    """`values` on a k-means codebook of at most `centroids` values (zeros stay zero)."""
    return share_array(values, centroids, init=init, seed=tensor_rng(seed, name)).values


def fine_attempts(
    tensors: Sequence[graph.Weight],
    ctx: StageContext,
    last: LastBuilt,
    init: str,
    seed: int,
    reserve: float | None = None,
) -> list[Attempt]:
    """Two rungs per codebook size k of FINE_CENTROIDS (sizes per weight at k's estimated noise,
    then k for all), or none when no weight in `tensors` is read in a subgraph (then the ladder
    is as it was).  Each is skipped when an earlier attempt fit.  When
    some of `tensors` live in the main graph, the rungs are held to `reserve` points (quantize's
    room for them); else they may take the whole budget."""
    inner = subgraph_weights(ctx.model, tensors)
    if not inner:
        return []
    found: list[dict[str, str]] = []
    sizes: dict[str, int] = {}  # the unshared tensors' packed bytes, for every rung
    budget = reserve if len(inner) < len(tensors) else None

    def untaken() -> dict[str, str]:
        # weight name -> the untaken branch it lives in, found once for every rung
        if not found:
            calib = ctx.calib_data if ctx.calib_data is not None else ctx.measure.search_data
            branches, _ = untaken_branches(ctx.model, calib)
            found.append(unused_weights(inner, branches))
        return found[0]

    def skip(tried: Sequence[dict]) -> str | None:
        if any("error" not in t and not t.get("rejected_by") for t in tried):
            return "not needed: an earlier setting fits"
        return None

    noises: list[dict[str, float]] = []

    def probed() -> dict[str, float]:
        # each used weight's output noise alone at PROBE_CENTROIDS, measured once for every rung
        if not noises:
            used = [w for w in inner if w.name not in untaken()]
            noises.append(probe_noise(ctx, used, init, seed))
        return noises[0]

    def label(k: int) -> str:
        return f"k-means {k} centroids ({math.log2(k):.1f} bits) on the weights read in subgraphs (quantize leaves them float)"

    def mixed(k: int) -> tuple[onnx.ModelProto, dict]:
        used = len(inner) - len(untaken())
        if used > MIXED_MAX_WEIGHTS:
            raise CompressorError(
                f"{used} weights read in subgraphs: more than {MIXED_MAX_WEIGHTS} to measure one by one"
            )
        noise = probed()
        counts = {w.name: w.size for w in inner if w.name in noise}
        widths = mixed_widths(noise, counts, k)
        if all(v == k for v in widths.values()):
            raise CompressorError(f"the same codebook for every weight: the {k}-centroid rung")
        return fine_shared(ctx.model, inner, widths, untaken(), last, init, seed, sizes, nominal=k)

    attempts = []
    for k in FINE_CENTROIDS:
        attempts.append(
            Attempt(
                f"k-means per weight at the output noise of {k} centroids ({math.log2(k):.1f} bits) on the weights read in subgraphs",
                lambda k=k: mixed(k),
                budget,
                skip,
            )
        )
        attempts.append(
            Attempt(
                label(k), lambda k=k: fine_shared(ctx.model, inner, k, untaken(), last, init, seed, sizes), budget, skip
            )
        )
    return attempts


def probe_noise(ctx: StageContext, used: Sequence[graph.Weight], init: str, seed: int) -> dict[str, float]:
    """Each weight of `used` alone shared at PROBE_CENTROIDS: the output noise (power ratio of
    the worst centred SNR) on the searches' data; one whole-model run per weight."""
    measure = ctx.measure
    data = measure.search_data
    judge = Judge.of_model(ctx.model, data, reference=ctx.outputs if data is measure.data else None)
    runner = VariantRunner(ctx.model, judge, list(used))
    noise = {}
    for w in used:
        values = w.array()
        if not np.issubdtype(values.dtype, np.floating) or np.unique(values).size <= PROBE_CENTROIDS:
            continue
        snr = runner.measure_arrays({w.name: fine_values(w.name, values, PROBE_CENTROIDS, init, seed)}).get("snr_db")
        noise[w.name] = 0.0 if snr is None or not math.isfinite(snr) else 10.0 ** (-snr / 10.0)
    runner.close()
    return noise


def mixed_widths(noise: dict[str, float], counts: dict[str, int], centroids: int) -> dict[str, int]:
    """Each weight's codebook size (MIXED_CENTROIDS) at the same estimated total noise as
    `centroids` for all, each ending near the same noise per value.  A weight's noise at k
    centroids is taken as its probe's times (PROBE_CENTROIDS / k)^2 (6 dB a bit)."""

    def at(name: str, k: int) -> float:
        return noise[name] * (PROBE_CENTROIDS / k) ** 2

    target = sum(at(n, centroids) for n in noise)
    grid = np.log2(np.asarray(MIXED_CENTROIDS, dtype=np.float64))

    def widths(level: float) -> dict[str, int]:
        # the width whose noise per value is nearest `level` (log scale), within the grid
        out = {}
        for n in noise:
            if noise[n] <= 0:
                out[n] = MIXED_CENTROIDS[0]
                continue
            want = math.log2(PROBE_CENTROIDS) + 0.5 * math.log2(noise[n] / (level * counts[n]))
            out[n] = MIXED_CENTROIDS[int(np.argmin(np.abs(grid - want)))]
        return out

    per_value = [noise[n] / counts[n] for n in noise if noise[n] > 0]
    if not per_value:
        return {n: MIXED_CENTROIDS[0] for n in noise}
    # the coarsest common level whose widths keep the total within the target (bisection in log)
    lo, hi = math.log(min(per_value)) - 40.0, math.log(max(per_value)) + 40.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if sum(at(n, k) for n, k in widths(math.exp(mid)).items()) <= target:
            lo = mid
        else:
            hi = mid
    return widths(math.exp(lo))


def fine_shared(
    model: onnx.ModelProto,
    inner: Sequence[graph.Weight],
    centroids: int | dict[str, int],
    untaken: dict[str, str],
    last: LastBuilt,
    init: str = "linear",
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    nominal: int | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """`model` with the weights of `inner` the data uses shared with `centroids` (one size, or
    one per weight name: a weight not named stays as it was) and those of untaken branches as
    `last` shares them (unchanged when nothing was built).  A weight whose shared values would
    not pack smaller than its own (a structured basis the coders find regular) stays as it was:
    more error for no byte.  `sizes` keeps the unshared weights' packed bytes between calls;
    `nominal`: the rung's size in the stats when `centroids` is per weight."""
    sizes = {} if sizes is None else sizes
    width_of = centroids.get if isinstance(centroids, dict) else (lambda name: centroids)
    built = {weight_key(w): w for w in graph.weights(last.model)} if last.model is not None else {}
    arrays, rows = {}, []
    for w in inner:
        values = w.array()
        if w.name in untaken:
            other = built.get(weight_key(w))
            if other is None:
                continue
            shared = other.array()
            if w.name not in sizes:
                sizes[w.name] = packed_bytes(values)
            key = f"{w.name} as {last.label}"  # the same for every rung: packed once
            if key not in sizes:
                sizes[key] = packed_bytes(shared)
            if sizes[key] >= sizes[w.name]:
                continue  # as it was packs smaller (a regular basis): no error, fewer bytes
            arrays[w.name] = shared
            rows.append(
                {"name": w.name, "params": w.size, "centroids": None, "from": last.label, "unused": untaken[w.name]}
            )
            continue
        k = width_of(w.name)
        if k is None or not np.issubdtype(values.dtype, np.floating) or np.unique(values).size <= k:
            continue  # a codebook that wide holds every value: nothing shared
        shared = fine_values(w.name, values, k, init, seed)
        if w.name not in sizes:
            sizes[w.name] = packed_bytes(values)
        size = packed_bytes(shared)
        if size >= sizes[w.name]:
            rows.append(
                {
                    "name": w.name,
                    "params": w.size,
                    "centroids": None,
                    "unused": None,
                    "packed": size,
                    "unshared": sizes[w.name],
                }
            )
            continue
        arrays[w.name] = shared
        rel = float(np.linalg.norm(shared - values) / max(np.linalg.norm(values), 1e-30))
        rows.append(
            {
                "name": w.name,
                "params": w.size,
                "centroids": k,
                "relative_error": rel,
                "unused": None,
                "packed": size,
                "unshared": sizes[w.name],
            }
        )
    rung = nominal if isinstance(centroids, dict) else centroids
    if not any(r["centroids"] for r in rows):
        raise CompressorError(f"no weight read in a subgraph that the data uses packs smaller with {rung} centroids")
    kept = [r for r in rows if r["centroids"] or r["unused"]]
    fine = {"centroids": rung, "tensors": rows}
    if isinstance(centroids, dict):
        fine["per_weight"] = True  # each weight's own size, at the output noise of `rung` for all
    stats = {
        "shared_tensors": len(kept),
        "shared_params": int(sum(r["params"] for r in kept)),
        "fine": fine,
    }
    return with_arrays(model, inner, arrays), stats
