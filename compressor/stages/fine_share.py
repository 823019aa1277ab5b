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
them); main-graph weights are left to quantize.  The ladder judges each rung on its verdict
like any other, fewest centroids first (half a bit apart), and tries none once an earlier
setting fit.
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
from ..passes.quantize.names import read_in_subgraphs
from ..passes.share import tensor_rng
from ..search.branch_use import untaken_branches, unused_weights
from ..variants import weight_key, with_arrays
from .ladder import Attempt, StageContext
from .partial_share import LastBuilt

# The codebooks' sizes, fewest first (the k-means rungs end at 2^8): 2^9 to 2^11 half a bit
# apart (the rate moves by the bit, the error by about 6 dB a bit), then 2^12.
FINE_CENTROIDS = (512, 724, 1024, 1448, 2048, 4096)


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
    """One rung per codebook size of FINE_CENTROIDS, or none when no weight in `tensors` is read in a
    subgraph (then the ladder is as it was).  Each is skipped when an earlier attempt fit.  When
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

    def label(k: int) -> str:
        return f"k-means {k} centroids ({math.log2(k):.1f} bits) on the weights read in subgraphs (quantize leaves them float)"

    return [
        Attempt(
            label(k),
            lambda k=k: fine_shared(ctx.model, inner, k, untaken(), last, init, seed, sizes),
            budget,
            skip,
        )
        for k in FINE_CENTROIDS
    ]


def fine_shared(
    model: onnx.ModelProto,
    inner: Sequence[graph.Weight],
    centroids: int,
    untaken: dict[str, str],
    last: LastBuilt,
    init: str = "linear",
    seed: int = 0,
    sizes: dict[str, int] | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """`model` with the weights of `inner` the data uses shared with `centroids` and those of
    untaken branches as `last` shares them (unchanged when nothing was built).  A weight whose
    shared values would not pack smaller than its own (a structured basis the coders find
    regular) stays as it was: more error for no byte.  `sizes` keeps the unshared weights'
    packed bytes between calls."""
    sizes = {} if sizes is None else sizes
    built = {weight_key(w): w for w in graph.weights(last.model)} if last.model is not None else {}
    arrays, rows = {}, []
    for w in inner:
        values = w.array()
        if w.name in untaken:
            other = built.get(weight_key(w))
            if other is None:
                continue
            arrays[w.name] = other.array()
            rows.append(
                {"name": w.name, "params": w.size, "centroids": None, "from": last.label, "unused": untaken[w.name]}
            )
            continue
        if not np.issubdtype(values.dtype, np.floating) or np.unique(values).size <= centroids:
            continue  # a codebook that wide holds every value: nothing shared
        shared = fine_values(w.name, values, centroids, init, seed)
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
                "centroids": centroids,
                "relative_error": rel,
                "unused": None,
                "packed": size,
                "unshared": sizes[w.name],
            }
        )
    if not any(r["centroids"] for r in rows):
        raise CompressorError(
            f"no weight read in a subgraph that the data uses packs smaller with {centroids} centroids"
        )
    kept = [r for r in rows if r["centroids"] or r["unused"]]
    stats = {
        "shared_tensors": len(kept),
        "shared_params": int(sum(r["params"] for r in kept)),
        "fine": {"centroids": centroids, "tensors": rows},
    }
    return with_arrays(model, inner, arrays), stats
