"""Benchmark of `share` (per-tensor k-means weight sharing).

    python benchmarks/bench_share.py            # the 100 M-parameter model (~2 GB RAM peak)
    python benchmarks/bench_share.py --quick    # a 10 M-parameter model, small sklearn sample
    python benchmarks/bench_share.py --no-sklearn

Builds its own model with numpy / onnx.helper (MatMul 4096x4096 layers and 3x3 convs,
Laplacian weights, half of the MatMul weights pruned), then times:

1. the whole ``share`` pass (8 bits conv, 5 bits fc) and the CLI's load + share + save;
2. per tensor, the 1-D k-means: the exact sort path vs the histogram path, with their errors;
3. scikit-learn's ``KMeans`` (Lloyd, same initial centroids, n_init=1) vs ``kmeans_1d`` on a
   sample, time and inertia.

Prints a summary and writes benchmarks/results/share.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, timed  # noqa: E402  (puts the repository on sys.path too)

from compressor import graph  # noqa: E402
from compressor.kmeans import inertia, init_centroids, kmeans_1d, support_exact  # noqa: E402
from compressor.passes.share import share  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "share.json"


def build_model(n_fc: int, fc_dim: int, n_conv: int, conv_ch: int, seed: int = 0) -> onnx.ModelProto:
    """x -> n_conv x (Conv 3x3 conv_ch->conv_ch) -> GlobalAveragePool -> Flatten -> pad to fc_dim -> n_fc x MatMul."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    cur = "x"
    for i in range(n_conv):
        w = rng.laplace(0, 0.02, (conv_ch, conv_ch, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"conv{i}.weight"))
        nodes.append(helper.make_node("Conv", [cur, f"conv{i}.weight"], [f"c{i}"], pads=[1, 1, 1, 1]))
        cur = f"c{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [cur], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    proj = rng.laplace(0, 0.02, (conv_ch, fc_dim)).astype(np.float32)
    inits.append(numpy_helper.from_array(proj, "proj.weight"))
    nodes.append(helper.make_node("MatMul", ["flat", "proj.weight"], ["h0"]))
    cur = "h0"
    for i in range(n_fc):
        w = rng.laplace(0, 0.02, (fc_dim, fc_dim)).astype(np.float32)
        w[np.abs(w) < np.quantile(np.abs(w[:256]), 0.5)] = 0.0  # ~50 % pruned
        inits.append(numpy_helper.from_array(w, f"fc{i}.weight"))
        nodes.append(helper.make_node("MatMul", [cur, f"fc{i}.weight"], [f"h{i + 1}"]))
        cur = f"h{i + 1}"
    g = helper.make_graph(
        nodes,
        "bench_share",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", conv_ch, 8, 8])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["N", fc_dim])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def bench_paths(values: np.ndarray, k: int) -> dict:
    x = values[values != 0]
    (c_e, l_e), t_exact = timed(kmeans_1d, x, k, hist_threshold=1 << 62)
    (c_h, l_h), t_hist = timed(kmeans_1d, x, k, hist_threshold=0)
    return {
        "values": int(x.size),
        "k": k,
        "exact_sort_s": round(t_exact, 3),
        "histogram_s": round(t_hist, 3),
        "exact_inertia": inertia(x, c_e, l_e),
        "histogram_inertia": inertia(x, c_h, l_h),
        "histogram_vs_exact_inertia": inertia(x, c_h, l_h) / inertia(x, c_e, l_e),
    }


def bench_sklearn(n: int, k: int, init: str, seed: int = 0) -> dict:
    """sklearn's Lloyd from our initial centroids vs kmeans_1d (plain Lloyd and over-relaxed)."""
    from sklearn.cluster import KMeans

    x = np.random.default_rng(seed).laplace(0, 0.02, n)
    c0 = init_centroids(support_exact(x), k, init)
    KMeans(2, n_init=1).fit(x[:100].reshape(-1, 1))  # warm-up (thread pools, imports)
    km = KMeans(len(c0), init=c0.reshape(-1, 1), n_init=1, algorithm="lloyd", tol=0, max_iter=3000)
    # One thread, like kmeans_1d: on a busy 2-core machine sklearn's OpenMP threads were ~7x
    # slower than one thread (spinning at barriers), which would flatter our numbers.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        _, t_sk = timed(km.fit, x.reshape(-1, 1))
    (pc, pl, pit), t_plain = timed(kmeans_1d, x, k, init=init, accelerate=False, return_iterations=True)
    (ac, al, ait), t_acc = timed(kmeans_1d, x, k, init=init, return_iterations=True)
    return {
        "values": n,
        "k": k,
        "init": init,
        "sklearn_threads": 1,
        "sklearn_s": round(t_sk, 3),
        "sklearn_iterations": int(km.n_iter_),
        "sklearn_inertia": float(km.inertia_),
        "plain_s": round(t_plain, 4),
        "plain_iterations": int(pit),
        "plain_inertia": inertia(x, pc, pl),
        "accelerated_s": round(t_acc, 4),
        "accelerated_iterations": int(ait),
        "accelerated_inertia": inertia(x, ac, al),
        "max_centroid_diff_plain_vs_sklearn": float(np.max(np.abs(np.sort(km.cluster_centers_.ravel()) - pc)))
        if len(pc) == len(km.cluster_centers_)
        else None,
        "speedup_plain_vs_sklearn": round(t_sk / t_plain, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 M parameters instead of 100 M")
    ap.add_argument("--no-sklearn", action="store_true", help="skip the (slow) scikit-learn comparison")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    n_fc, fc_dim, n_conv, conv_ch = (5, 4096, 7, 512) if not args.quick else (2, 2048, 2, 256)
    # (values, k, init): density init has no empty clusters, so sklearn and our plain Lloyd
    # must reach the same fixed point; with linear init the empty-cluster handling differs.
    sk_cases = [
        (20_000, 32, "density"),
        (20_000, 32, "linear"),
        (200_000, 32, "density"),
        (200_000, 32, "linear"),
        (200_000, 256, "linear"),
        (1_000_000, 32, "density"),
    ]
    if args.quick:
        sk_cases = sk_cases[:2]
    if args.no_sklearn:
        sk_cases = []

    model, t_build = timed(build_model, n_fc, fc_dim, n_conv, conv_ch)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(
        f"model: {params / 1e6:.1f} M parameters ({n_fc} MatMul {fc_dim}x{fc_dim}, {n_conv} Conv {conv_ch}x{conv_ch}x3x3), "
        f"built in {t_build:.1f} s"
    )

    (shared, stats), t_share = timed(share, model, bits_conv=8, bits_fc=5)
    print(
        f"share pass (8 bits conv, 5 bits fc): {t_share:.1f} s for {stats['shared_tensors']} tensors, "
        f"{stats['shared_params'] / 1e6:.1f} M values"
    )
    for t in stats["tensors"]:
        assert t["distinct"] <= 2 ** t["bits"]

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        graph.save_model(model, src)
        _, t_load = timed(graph.load_model, src)
        t0 = time.perf_counter()  # what `compressor share in.onnx -o out.onnx` does
        loaded = graph.load_model(src)
        out, _ = share(loaded)
        graph.save_model(out, dst, input_path=src)
        t_cli = time.perf_counter() - t0
        size_mb = src.stat().st_size / 1e6
    print(f"load + share + save ({size_mb:.0f} MB file): {t_cli:.1f} s (load alone {t_load:.1f} s)")

    big = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "fc0.weight"))
    conv = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "conv0.weight"))
    paths = [bench_paths(big, 32), bench_paths(big, 256), bench_paths(conv, 256)]
    for p in paths:
        print(
            f"k-means on {p['values'] / 1e6:.2f} M values, k={p['k']}: exact sort {p['exact_sort_s']:.2f} s, "
            f"histogram {p['histogram_s']:.2f} s (inertia ratio hist/exact {p['histogram_vs_exact_inertia']:.5f})"
        )

    sk = []
    for n, k, init in sk_cases:
        r = bench_sklearn(n, k, init)
        sk.append(r)
        print(
            f"sklearn KMeans vs kmeans_1d, {n} values, k={k}, {init} init: sklearn {r['sklearn_s']:.3f} s "
            f"({r['sklearn_iterations']} it, inertia {r['sklearn_inertia']:.6g}); ours plain {r['plain_s']:.4f} s "
            f"({r['plain_iterations']} it, inertia {r['plain_inertia']:.6g}, {r['speedup_plain_vs_sklearn']}x); "
            f"ours accelerated {r['accelerated_s']:.4f} s ({r['accelerated_iterations']} it, "
            f"inertia {r['accelerated_inertia']:.6g})"
        )

    result = {
        "machine": {**machine_info(), "load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
        "model": {"params": params, "matmul": [n_fc, fc_dim], "conv": [n_conv, conv_ch]},
        "share_pass_s": round(t_share, 2),
        "load_share_save_s": round(t_cli, 2),
        "load_s": round(t_load, 2),
        "shared_tensors": stats["shared_tensors"],
        "shared_params": stats["shared_params"],
        "kmeans_paths": paths,
        "sklearn": sk,
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
