"""Pack / unpack speed and size against zstd -19 and xz -9 on the same ONNX file.

Builds a Deep-Compression-style model with onnx.helper and numpy: a VGG-16 classifier
head (a 512x512x3x3 conv, then 25088x4096, 4096x4096 and 4096x1000 Gemm weights,
~126 M parameters), pruned 90 % by magnitude, each tensor's non-zeros snapped to 256
(conv) or 32 (fc) distinct values by a few k-means (Lloyd) iterations.  Then,
in one run, it times

* ``compressor`` pack (file -> .cmpz) and unpack (.cmpz -> file),
* zstd level 19 (zstandard, one thread) and xz preset 9 (lzma) of the ONNX file, and
  their decompression,

and prints a markdown table (MB/s are of the ONNX file's size; every step reads and
writes files; decoding times are the best of 3 runs, encoding runs once) and writes
benchmarks/results/pack.json.  ``--quick`` uses a ~6 M parameter model instead.

``--many-tensors 5000,20000`` times pack and unpack (with its SHA-256 check) of models of
that many tiny initializers instead (scalars, per-channel vectors of a few sizes, their
products, small int32 arrays): time per tensor must not grow with the count.  Results in
benchmarks/results/pack_many.json.

    python benchmarks/bench_pack.py [--quick] [--int8] [--many-tensors N,N,...]
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import zstandard
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, timed  # noqa: E402  (puts the repository on sys.path too)

from compressor.container import pack_file, unpack_file  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pack.json"


def prune_and_share(w: np.ndarray, keep: float, k: int, rng: np.random.Generator) -> np.ndarray:
    """Magnitude-prune to ``keep`` and snap the survivors to ``k`` values (k-means: quantile init, 5 Lloyd steps)."""
    flat = w.reshape(-1)
    threshold = np.partition(np.abs(flat), int(flat.size * (1 - keep)))[int(flat.size * (1 - keep))]
    mask = np.abs(flat) >= threshold
    nz = flat[mask]
    sample = rng.choice(nz, size=min(nz.size, 1_000_000), replace=False)
    centroids = np.quantile(sample, (np.arange(k) + 0.5) / k)  # density init: all k values get used
    for _ in range(5):
        edges = (centroids[1:] + centroids[:-1]) / 2
        idx = np.searchsorted(edges, sample)
        sums = np.bincount(idx, weights=sample, minlength=k)
        counts = np.bincount(idx, minlength=k)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    centroids = np.sort(centroids).astype(np.float32)
    edges = (centroids[1:] + centroids[:-1]) / 2
    out = np.zeros_like(flat)
    out[mask] = centroids[np.searchsorted(edges, nz)]
    return out.reshape(w.shape)


def build_model(quick: bool, int8: bool, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    if quick:
        conv_c, spatial, fc = 128, 7, [(128 * 7 * 7, 1024), (1024, 1024), (1024, 1000)]
    else:
        conv_c, spatial, fc = 512, 7, [(512 * 7 * 7, 4096), (4096, 4096), (4096, 1000)]
    inits, nodes = [], []
    conv_w = prune_and_share(rng.standard_normal((conv_c, conv_c, 3, 3), dtype=np.float32) * 0.02, 0.1, 256, rng)
    inits += [
        numpy_helper.from_array(conv_w, "conv_w"),
        numpy_helper.from_array(rng.standard_normal(conv_c).astype(np.float32) * 0.01, "conv_b"),
    ]
    nodes += [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["cr"]),
        helper.make_node("Flatten", ["cr"], ["h0"]),
    ]
    prev = "h0"
    for i, (fan_in, fan_out) in enumerate(fc):
        w = prune_and_share(rng.standard_normal((fan_in, fan_out), dtype=np.float32) * 0.01, 0.1, 32, rng)
        b = rng.standard_normal(fan_out).astype(np.float32) * 0.01
        name = f"fc{i}"
        if int8:
            # Symmetric per-tensor int8: the 32 shared values become 32 int8 codes; 0 stays 0.
            scale = np.float32(np.abs(w).max() / 127)
            q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
            inits += [numpy_helper.from_array(q, f"{name}_q"), numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
                      numpy_helper.from_array(np.array(0, np.int8), f"{name}_z")]  # fmt: skip
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_w"]))
        else:
            inits.append(numpy_helper.from_array(w, f"{name}_w"))
        inits.append(numpy_helper.from_array(b, f"{name}_b"))
        out = f"{name}_y"
        nodes.append(helper.make_node("Gemm", [prev, f"{name}_w", f"{name}_b"], [out]))
        if i < len(fc) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"{name}_r"]))
            out = f"{name}_r"
        prev = out
    graph = helper.make_graph(
        nodes, "vgg_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", conv_c, spatial, spatial])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", fc[-1][1]])],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


DECODE_REPEATS = 3  # decoding is cheap: best of 3; the slow encoders run once
MANY_RESULTS = Path(__file__).resolve().parent / "results" / "pack_many.json"


def many_tensors_model(count: int, seed: int = 0) -> onnx.ModelProto:
    """``count`` tiny initializers as a quantized network has them: scalar scales, vectors of
    per-channel scales (three sizes), scalar x vector products, small int32 arrays."""
    rng = np.random.default_rng(seed)
    inits, vectors, scalars = [], [], []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            t = np.array(rng.uniform(0.01, 1), np.float32)
            scalars.append(t)
        elif kind == 1 or not vectors:
            t = rng.uniform(0.1, 1, (64, 96, 128)[i % 3]).astype(np.float32)
            vectors.append(t)
        elif kind == 2:
            vector = vectors[int(rng.integers(len(vectors)))]
            t = (scalars[int(rng.integers(len(scalars)))] * vector).astype(np.float32)
        else:
            t = rng.integers(-100, 100, int(rng.integers(8, 200))).astype(np.int32)
        inits.append(numpy_helper.from_array(t, f"t{i}"))
    nodes = [helper.make_node("Identity", [f"t{i}"], [f"y{i}"]) for i in range(count)]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(count)]
    graph = helper.make_graph(nodes, "many", [], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def many_tensors(counts: list[int], output: Path) -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for count in counts:
            onnx_path, cmpz_path, back_path = tmp / "many.onnx", tmp / "many.cmpz", tmp / "back.onnx"
            onnx.save(many_tensors_model(count), onnx_path)
            stats, pack_s = timed(pack_file, onnx_path, cmpz_path)
            _, unpack_s = timed(unpack_file, cmpz_path, back_path)
            identical = back_path.read_bytes() == onnx_path.read_bytes()
            products = sum(t["encoding"] == "product" for t in stats["tensors"])
            rows.append({"tensors": count, "container_bytes": stats["container_bytes"], "products": products,
                         "pack_s": round(pack_s, 2), "unpack_s": round(unpack_s, 2),
                         "pack_us_per_tensor": round(1e6 * pack_s / count), "unpack_us_per_tensor": round(1e6 * unpack_s / count),
                         "roundtrip_identical": identical})  # fmt: skip
            print(f"{count} tensors: pack {pack_s:.1f} s, unpack {unpack_s:.1f} s", file=sys.stderr)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"machine": machine_info(), "results": rows}, indent=2, sort_keys=True) + "\n")
    print("| tensors | container bytes | products | pack s | unpack s | pack us/tensor | unpack us/tensor |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tensors']:,} | {r['container_bytes']:,} | {r['products']:,} | {r['pack_s']} | {r['unpack_s']} "
              f"| {r['pack_us_per_tensor']} | {r['unpack_us_per_tensor']} |")  # fmt: skip
    return 0 if all(r["roundtrip_identical"] for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a ~6 M parameter model instead of ~126 M")
    parser.add_argument("--int8", action="store_true", help="store the fc weights as int8 + DequantizeLinear")
    parser.add_argument("--output", type=Path, default=None, help="where to write the JSON results")
    parser.add_argument(
        "--many-tensors", metavar="N,N,...", help="time models of this many tiny tensors instead (e.g. 5000,20000)"
    )
    args = parser.parse_args(argv)
    if args.many_tensors:
        return many_tensors([int(n) for n in args.many_tensors.split(",")], args.output or MANY_RESULTS)
    args.output = args.output or RESULTS

    model, build_s = timed(build_model, args.quick, args.int8)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx_path, cmpz_path, back_path = tmp / "model.onnx", tmp / "model.cmpz", tmp / "back.onnx"
        onnx.save(model, onnx_path)
        del model
        raw = onnx_path.read_bytes()
        mb = len(raw) / 1e6
        print(
            f"model: {params / 1e6:.1f} M parameters, {mb:.1f} MB ONNX file (built in {build_s:.1f} s)", file=sys.stderr
        )

        stats, pack_s = timed(pack_file, onnx_path, cmpz_path)
        _, unpack_s = timed(unpack_file, cmpz_path, back_path, verify=False, repeat=DECODE_REPEATS)
        identical = back_path.read_bytes() == raw
        rows = [
            {
                "tool": "compressor pack/unpack",
                "bytes": stats["container_bytes"],
                "pack_s": pack_s,
                "unpack_s": unpack_s,
            }
        ]
        print(
            f"compressor: {stats['container_bytes']:,} bytes, pack {pack_s:.1f} s, unpack {unpack_s:.1f} s",
            file=sys.stderr,
        )

        def file_roundtrip(compress, decompress, suffix):
            path = tmp / ("model.onnx" + suffix)

            def do_compress():
                path.write_bytes(compress(onnx_path.read_bytes()))

            def do_decompress():
                (tmp / "out.onnx").write_bytes(decompress(path.read_bytes()))

            _, c_s = timed(do_compress)
            _, d_s = timed(do_decompress, repeat=DECODE_REPEATS)
            return path.stat().st_size, c_s, d_s

        size, c_s, d_s = file_roundtrip(
            lambda b: zstandard.ZstdCompressor(level=19).compress(b),
            lambda b: zstandard.ZstdDecompressor().decompress(b),
            ".zst",
        )
        rows.append({"tool": "zstd -19 (zstandard)", "bytes": size, "pack_s": c_s, "unpack_s": d_s})
        print(f"zstd -19: {size:,} bytes, {c_s:.1f} s / {d_s:.1f} s", file=sys.stderr)
        size, c_s, d_s = file_roundtrip(lambda b: lzma.compress(b, preset=9), lzma.decompress, ".xz")
        rows.append({"tool": "xz -9 (lzma)", "bytes": size, "pack_s": c_s, "unpack_s": d_s})
        print(f"xz -9: {size:,} bytes, {c_s:.1f} s / {d_s:.1f} s", file=sys.stderr)

    for r in rows:
        r["ratio"] = round(len(raw) / r["bytes"], 2)
        r["pack_MBps"] = round(mb / r["pack_s"], 2)
        r["unpack_MBps"] = round(mb / r["unpack_s"], 2)
        r["pack_s"], r["unpack_s"] = round(r["pack_s"], 2), round(r["unpack_s"], 2)
    entropy = stats["entropy"]
    result = {
        "model": {"quick": args.quick, "int8": args.int8, "parameters": params, "onnx_bytes": len(raw)},
        "machine": machine_info(),
        "roundtrip_identical": identical,
        "entropy": entropy,
        "results": rows,
        "tensors": [
            {k: t[k] for k in ("name", "shape", "detail", "bytes_before", "bytes_after", "bits_per_weight", "streams")}
            for t in stats["tensors"]
            if t["encoding"] != "graph"
        ],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")

    print(
        f"\nModel: {params / 1e6:.1f} M parameters, {mb:.1f} MB ONNX ({'int8 fc, ' if args.int8 else ''}90 % pruned, 32/256 shared values)\n"
    )
    print("| tool | bytes | ratio | pack MB/s | unpack MB/s | pack s | unpack s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['tool']} | {r['bytes']:,} | {r['ratio']} | {r['pack_MBps']} | {r['unpack_MBps']} | {r['pack_s']} | {r['unpack_s']} |"
        )
    print(
        f"\nHuffman streams: {entropy['coded_bytes']:,} bytes vs entropy bound {entropy['entropy_bound_bytes']:,.0f} "
        f"(+{entropy['overhead_pct']} %); round trip bit-identical: {identical}; JSON: {args.output}"
    )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
