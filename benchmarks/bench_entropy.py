"""Entropy coders on quantized weights: canonical Huffman vs context-modelled rANS (vs constriction).

For every stream it prints the symbol count, the alphabet, the zero-order entropy bound in
bytes, the bytes of ``compressor.codec.huffman`` and of ``compressor.codec.rans`` (with the
contexts and precision rANS chose), and encode/decode speeds in M symbols/s (one symbol is
one int8 weight, so also MB/s of weights).  Streams:

* the int8 weights of the sample models after the default ``compressor run`` (built with the
  CLI into a temporary directory, then unpacked), as the ``dict`` layout codes them: each
  element's index into the tensor's sorted distinct values;
* synthetic ones: Laplacian int8 weights, Deep-Compression-style tensors (90 % pruned, the
  rest snapped to 32 values) with and without whole pruned input columns.

If the Rust-backed ``constriction`` package is installed, its ANS coder is measured on the
same streams: zero-order (one categorical model, vectorised encode and decode) and with the
same previous-symbol contexts (vectorised encode; decoding must ask for one symbol at a time
from Python because each model depends on the symbol before, timed on a prefix).  Its
sizes are payload only (it stores no tables).

    python benchmarks/bench_entropy.py [--large] [--no-constriction]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import timed  # noqa: E402  (puts the repository on sys.path too)

from compressor.codec import ByteReader, huffman, rans, sparse  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
CONSTRICTION_DECODE_PREFIX = 100_000


def run_sample(name: str, workdir: Path) -> Path:
    """The sample model after the default ``compressor run``, unpacked to ONNX."""
    container, restored = workdir / f"{name}.cmpz", workdir / f"{name}.onnx"
    data, calib = SAMPLES / f"{name}_test.npz", SAMPLES / f"{name}_calib.npz"
    cli = [sys.executable, "-m", "compressor"]
    subprocess.run(
        [*cli, "run", str(SAMPLES / f"{name}.onnx"), "-o", str(container), "--data", str(data), "--calib", str(calib)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    subprocess.run([*cli, "unpack", str(container), "-o", str(restored)], check=True, capture_output=True, cwd=ROOT)
    return restored


def int8_streams(path: Path, prefix: str) -> list[tuple[str, np.ndarray, int]]:
    """(name, symbols, alphabet) of every int8 initializer with at least 64 elements."""
    out = []
    for tensor in onnx.load(str(path)).graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype != np.int8 or array.size < 64:
            continue
        values, symbols = np.unique(array.view(np.uint8).ravel(), return_inverse=True)
        out.append((f"{prefix}/{tensor.name}", symbols.astype(np.uint16), int(values.size)))
    return out


def deep_compression(rng, rows: int, cols: int, pruned_columns: float) -> np.ndarray:
    """A 90 %-pruned weight matrix, non-zeros snapped to 32 shared int8 values; optionally whole
    input columns pruned (as for MNIST's border pixels)."""
    weights = rng.laplace(0, 1, (rows, cols))
    dead = rng.random(cols) < pruned_columns
    weights[:, dead] = 0
    threshold = np.quantile(np.abs(weights), 0.9)
    weights[np.abs(weights) < threshold] = 0
    centers = np.quantile(weights[weights != 0], np.linspace(0, 1, 32))
    nearest = np.abs(weights[..., None] - centers).argmin(axis=-1)
    shared = np.where(weights != 0, centers[nearest], 0)
    return np.round(shared / np.abs(shared).max() * 127).astype(np.int8)


def synthetic_streams(large: bool) -> list[tuple[str, np.ndarray, int]]:
    rng = np.random.default_rng(0)
    arrays = {
        "laplace int8 1M": np.clip(np.round(rng.laplace(0, 6, 1_000_000)), -127, 127).astype(np.int8),
        "pruned+shared 2048x2048": deep_compression(rng, 2048, 2048, 0.0),
        "pruned+shared, dead columns 2048x2048": deep_compression(rng, 2048, 2048, 0.3),
    }
    if large:
        arrays["laplace int8 100M"] = np.clip(np.round(rng.laplace(0, 4, 100_000_000)), -127, 127).astype(np.int8)
    out = []
    for name, array in arrays.items():
        values, symbols = np.unique(array.view(np.uint8).ravel(), return_inverse=True)
        out.append((name, symbols.astype(np.uint16), int(values.size)))
    return out


def pack_layout_bytes(symbols: np.ndarray) -> int:
    """Bytes of the smaller Huffman-based layout pack can give these elements: dict, or sparse
    (gaps + codebook values) around the most frequent one.  The symbols stand for the elements
    (any distinct values keep the same layouts' sizes)."""
    elements = symbols.astype(np.uint16)
    codebook = sparse.find_codebook(elements)
    sizes = [sparse.dict_layout(elements, codebook.values, codebook.counts, codebook.symbols).size]
    fill = int(codebook.values[np.argmax(codebook.counts)])
    positions = np.flatnonzero(elements != fill)
    rest = sparse.find_codebook(elements[positions]) if positions.size else None
    sizes += [layout.size for layout in sparse.sparse_layouts(elements, fill, positions, rest, raw=False)]
    return min(sizes)


def context_ids(symbols: np.ndarray, contexts: int) -> np.ndarray:
    """rANS's contexts: the previous symbol's frequency rank, clipped to ``contexts - 1``."""
    counts = np.bincount(symbols)
    rank_of = np.empty(counts.size, dtype=np.int64)
    rank_of[np.argsort(-counts, kind="stable")] = np.arange(counts.size)
    ids = np.zeros(symbols.size, dtype=np.int64)
    ids[1:] = np.minimum(rank_of[symbols[:-1]], contexts - 1)
    return ids


def measure_constriction(symbols: np.ndarray, alphabet: int, contexts: int) -> dict:
    # Optional: only this comparison needs it.
    import constriction

    model_family = constriction.stream.model.Categorical(perfect=False)
    counts = np.bincount(symbols, minlength=alphabet).astype(np.float64)
    model = constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)

    def encode_zero_order():
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(symbols.astype(np.int32), model)
        return coder.get_compressed()

    def decode_zero_order(words):
        return constriction.stream.stack.AnsCoder(words).decode(model, symbols.size)

    words, encode_seconds = timed(encode_zero_order)
    decoded, decode_seconds = timed(decode_zero_order, words)
    assert np.array_equal(decoded, symbols)
    result = {"zero_bytes": 4 * words.size, "zero_enc": encode_seconds, "zero_dec": decode_seconds}
    if contexts > 1 and alphabet <= 64:
        ids = context_ids(symbols, contexts)
        table = np.zeros((contexts, alphabet))
        np.add.at(table, (ids, symbols), 1)
        table = (table + 1e-9) / (table + 1e-9).sum(axis=1, keepdims=True)

        def encode_context():
            coder = constriction.stream.stack.AnsCoder()
            coder.encode_reverse(symbols.astype(np.int32), model_family, table[ids])
            return coder.get_compressed()

        words, encode_seconds = timed(encode_context)
        models = [constriction.stream.model.Categorical(row, perfect=False) for row in table]
        prefix = min(symbols.size, CONSTRICTION_DECODE_PREFIX)

        def decode_context_prefix():
            coder = constriction.stream.stack.AnsCoder(words)
            out = np.empty(prefix, dtype=np.int64)
            context = 0
            rank_of = np.argsort(np.argsort(-np.bincount(symbols, minlength=alphabet), kind="stable"), kind="stable")
            rank = np.minimum(rank_of, contexts - 1).tolist()
            for i in range(prefix):
                symbol = coder.decode(models[context])
                out[i] = symbol
                context = rank[symbol]
            return out

        decoded, decode_seconds = timed(decode_context_prefix)
        assert np.array_equal(decoded, symbols[:prefix])
        result.update(ctx_bytes=4 * words.size, ctx_enc=encode_seconds, ctx_dec=decode_seconds * symbols.size / prefix)
    return result


def decode_huffman(data: bytes, count: int, alphabet: int) -> np.ndarray:
    return huffman.decode(ByteReader(data, "huffman"), count, alphabet)


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds / 1e6:.1f}" if seconds > 0 else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="add a 100 M symbol stream")
    parser.add_argument("--no-constriction", action="store_true", help="skip the constriction comparison")
    args = parser.parse_args()
    try:
        import constriction  # noqa: F401  (optional, for the comparison only)

        use_constriction = not args.no_constriction
    except ImportError:
        use_constriction = False

    with tempfile.TemporaryDirectory() as tmp:
        streams = []
        for name in ("lenet5", "lenet300"):
            streams += int8_streams(run_sample(name, Path(tmp)), name)
    streams += synthetic_streams(args.large)

    header = (
        "| stream | symbols | K | H0 bytes | huffman | rans | ctx/prec | rans/H0 | huf enc/dec | rans enc/dec "
        "| pack best layout | rans dict layout |"
    )
    rule = "|---|---:|---:|---:|---:|---:|---|---:|---|---|---:|---:|"
    c_header = (
        "| stream | rans | constriction H0-model | enc/dec | constriction ctx-model | enc/dec (dec extrapolated) |"
    )
    lines, c_lines = [header, rule], [c_header, "|---|---:|---:|---|---:|---|"]
    totals = dict(n=0, h0=0.0, huf=0, rans=0, pack=0, rans_dict=0)
    for name, symbols, alphabet in streams:
        count = symbols.size
        h0 = huffman.entropy_bits(np.bincount(symbols, minlength=alphabet)) / 8
        huf, huf_enc = timed(huffman.encode, symbols, alphabet)
        _, huf_dec = timed(decode_huffman, huf, count, alphabet, repeat=2)
        coded, rans_enc = timed(rans.encode, symbols, alphabet)
        decoded, rans_dec = timed(rans.decode, coded, count, alphabet, repeat=2)
        assert np.array_equal(decoded, symbols), name
        header = rans.describe(coded)
        contexts, precision = header["contexts"], header["precision"]
        totals["n"] += count
        totals["h0"] += h0
        totals["huf"] += len(huf)
        totals["rans"] += len(coded)
        # The dict layout with a rANS stream: 8-byte header, K one-byte values, the stream.
        pack, rans_dict = pack_layout_bytes(symbols), sparse.DICT_HEADER_BYTES + alphabet + len(coded)
        totals["pack"] += pack
        totals["rans_dict"] += rans_dict
        lines.append(
            f"| {name} | {count:,} | {alphabet} | {h0:,.0f} | {len(huf):,} | {len(coded):,} | {contexts}/{precision} "
            f"| {len(coded) / max(h0, 1):.3f} | {rate(count, huf_enc)}/{rate(count, huf_dec)} "
            f"| {rate(count, rans_enc)}/{rate(count, rans_dec)} | {pack:,} | {rans_dict:,} |"
        )
        if use_constriction and count <= 20_000_000:
            c = measure_constriction(symbols, alphabet, max(int(contexts), 1))
            ctx = (
                f"{c['ctx_bytes']:,} | {rate(count, c['ctx_enc'])}/{rate(count, c['ctx_dec'])}"
                if "ctx_bytes" in c
                else "- | -"
            )
            c_lines.append(
                f"| {name} | {len(coded):,} | {c['zero_bytes']:,} | {rate(count, c['zero_enc'])}/"
                f"{rate(count, c['zero_dec'])} | {ctx} |"
            )
    lines.append(
        f"| total | {totals['n']:,} | | {totals['h0']:,.0f} | {totals['huf']:,} | {totals['rans']:,} | "
        f"| {totals['rans'] / totals['h0']:.3f} | | | {totals['pack']:,} | {totals['rans_dict']:,} |"
    )
    print("\n".join(lines))
    print("\nspeeds in M symbols/s (= MB/s of int8 weights); decode best of 2")
    if use_constriction:
        print()
        print("\n".join(c_lines))


if __name__ == "__main__":
    main()
