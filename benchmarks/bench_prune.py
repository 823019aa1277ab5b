"""Benchmark of `prune` on a model of 100 M+ parameters.

    python benchmarks/bench_prune.py           # ~102 M parameters (~0.4 GB of float32 weights)
    python benchmarks/bench_prune.py --quick   # ~10 M parameters

Builds a VGG-sized network with numpy / onnx.helper (3x3 convs 512->512 and MatMul
4096x4096 layers, Laplacian weights, a tenth of one layer already zero), saves it to a
temp folder (never committed), then, each in a fresh child process so that the peak RSS
is the operation's own:

1. ``prune`` at 0.9 for each scope (global / layer / random), the pass alone, with the
   model's load time and the RSS after loading (the model itself) and at the peak;
2. the CLI path: load + prune (global 0.9) + save;
3. the threshold step alone: ``np.partition`` vs a full ``np.sort`` of the magnitudes.

Each child checks the exact zero count.  Prints a summary and writes
benchmarks/results/prune.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402  (puts the repository on sys.path too)
from common import peak_rss_mb, rss_mb  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "prune.json"
SPARSITY = 0.9


def build_model(n_fc: int, fc_dim: int, n_conv: int, conv_ch: int, seed: int = 0) -> onnx.ModelProto:
    """x -> n_conv x (Conv 3x3 + bias + Relu) -> GlobalAveragePool -> Flatten -> MatMul proj -> n_fc x (MatMul + Relu)."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    cur = "x"
    for i in range(n_conv):
        w = rng.laplace(0, 0.02, (conv_ch, conv_ch, 3, 3)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"conv{i}.weight"),
            numpy_helper.from_array(rng.normal(0, 0.01, conv_ch).astype(np.float32), f"conv{i}.bias"),
        ]
        nodes += [
            helper.make_node("Conv", [cur, f"conv{i}.weight", f"conv{i}.bias"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        cur = f"r{i}"
    nodes += [helper.make_node("GlobalAveragePool", [cur], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"])]
    inits.append(numpy_helper.from_array(rng.laplace(0, 0.02, (conv_ch, fc_dim)).astype(np.float32), "proj.weight"))
    nodes.append(helper.make_node("MatMul", ["flat", "proj.weight"], ["h0"]))
    cur = "h0"
    for i in range(n_fc):
        w = rng.laplace(0, 0.02, (fc_dim, fc_dim)).astype(np.float32)
        if i == 0:
            w[: fc_dim // 10] = 0.0  # already pruned rows: they count towards the target
        inits.append(numpy_helper.from_array(w, f"fc{i}.weight"))
        nodes += [
            helper.make_node("MatMul", [cur, f"fc{i}.weight"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"]),
        ]
        cur = f"h{i + 1}"
    g = helper.make_graph(
        nodes,
        "bench_prune",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", conv_ch, 8, 8])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["N", fc_dim])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def child(task: str, model_path: str) -> dict:
    from compressor import graph
    from compressor.passes.prune import find_cut, magnitudes, prune, target_zeros

    t0 = time.perf_counter()
    model = graph.load_model(model_path, check=False)
    load_s = time.perf_counter() - t0
    result = {
        "task": task,
        "load_s": round(load_s, 2),
        "rss_after_load_mb": round(rss_mb()),
        "peak_rss_load_mb": round(peak_rss_mb()),
    }
    if task in ("global", "layer", "random"):
        t0 = time.perf_counter()
        pruned, stats = prune(model, SPARSITY, scope=task)
        result["prune_s"] = round(time.perf_counter() - t0, 2)
        totals = stats["totals"]
        result.update(params=totals["params"], zeros=totals["zeros_after"], sparsity=totals["sparsity"])
        if task == "global":
            assert totals["zeros_after"] == target_zeros(SPARSITY, totals["params"]), "global count not exact"
        else:
            assert all(
                t["zeros_after"] == max(t["zeros_before"], target_zeros(SPARSITY, t["params"]))
                for t in stats["tensors"]
            )
    elif task == "cli":
        out = Path(model_path).with_name("pruned.onnx")
        t0 = time.perf_counter()
        from compressor.cli import main

        code = main(["prune", model_path, "-o", str(out), "--sparsity", str(SPARSITY)])
        result["cli_load_prune_save_s"] = round(time.perf_counter() - t0, 2)
        result["exit_code"] = code
        result["output_bytes"] = out.stat().st_size
    elif task == "threshold":
        ws = [w for w in graph.weights(model) if w.is_matrix]
        total = sum(w.size for w in ws)
        buffer = np.empty(total, dtype=np.float32)
        offset = 0
        t0 = time.perf_counter()
        for w in ws:
            magnitudes(w.array(), out=buffer[offset : offset + w.size])
            offset += w.size
        result["gather_magnitudes_s"] = round(time.perf_counter() - t0, 2)
        k = target_zeros(SPARSITY, total)
        copy = buffer.copy()
        t0 = time.perf_counter()
        cut = find_cut(copy, k)
        result["partition_s"] = round(time.perf_counter() - t0, 2)
        del copy
        t0 = time.perf_counter()
        threshold = np.sort(buffer)[k - 1]
        result["full_sort_s"] = round(time.perf_counter() - t0, 2)
        assert threshold == np.float32(cut.threshold)
    result["peak_rss_mb"] = round(peak_rss_mb())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~10 M parameters instead of ~102 M")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    shape = (
        dict(n_fc=1, fc_dim=2048, n_conv=3, conv_ch=256)
        if args.quick
        else dict(n_fc=5, fc_dim=4096, n_conv=7, conv_ch=512)
    )
    with tempfile.TemporaryDirectory(prefix="bench_prune_") as tmp:
        model_path = Path(tmp) / "model.onnx"
        t0 = time.perf_counter()
        model = build_model(**shape)
        params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        onnx.save_model(model, model_path)
        del model
        print(
            f"built {params:,} parameters ({model_path.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        runs = []
        for task in ("global", "layer", "random", "cli", "threshold"):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", task, str(model_path)], capture_output=True, text=True, cwd=ROOT
            )
            if proc.returncode != 0:
                sys.exit(f"child {task} failed:\n{proc.stderr}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            runs.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "machine": common.machine_info(),
        "model": {"params": params, **shape},
        "sparsity": SPARSITY,
        "runs": runs,
    }
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
