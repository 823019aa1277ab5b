"""Benchmark of `quantize` against ONNX Runtime's own quantizer, on the sample CNN and MLP.

    python benchmarks/bench_quantize.py               # lenet5 + lenet300, all variants
    python benchmarks/bench_quantize.py --rounds 3    # fewer latency rounds

Variants per model: float; compressor static (calibrated QDQ, default options), dynamic and
weight-only; ORT ``quantize_static`` (QDQ, per-channel, MinMax, uint8 activations / int8
weights, the same calibration data through a CalibrationDataReader) with its defaults and with
``reduce_range=True``; ORT ``quantize_dynamic`` (per-channel int8).  For each: file size,
top-1 accuracy and agreement with float on the test split, integer-kernel coverage (from ORT's
optimised graph) and median latency at batch 1 and 64 with ``intra_op_num_threads=1``.
Latencies are measured in interleaved rounds (every variant once per round, median of the
per-round medians), so load from other processes spreads over all variants alike.

Prints a markdown table and writes benchmarks/results/quantize.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (puts the repository on sys.path too)
from common import ort_dynamic, ort_static  # noqa: E402

from compressor import graph  # noqa: E402
from compressor.data import load_dataset  # noqa: E402
from compressor.evaluate import accuracy, fidelity, latency_ms, make_session, run_model  # noqa: E402
from compressor.passes.quantize import QuantizeSettings, integer_kernel_coverage, quantize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
RESULTS = Path(__file__).resolve().parent / "results" / "quantize.json"
MODELS = {"lenet5": "CNN", "lenet300": "MLP"}


def variants(name: str, tmp: Path) -> dict[str, tuple[onnx.ModelProto, float]]:
    """label -> (model, seconds to produce it)."""
    src = SAMPLES / f"{name}.onnx"
    model = graph.load_model(src)
    calib = load_dataset(SAMPLES / f"{name}_calib.npz", model)
    out: dict[str, tuple[onnx.ModelProto, float]] = {"float": (model, 0.0)}
    for label, calib_data, activations in (
        ("compressor static", calib, None),
        ("compressor dynamic", None, "dynamic"),
        ("compressor weight-only", None, "none"),
    ):
        t = time.perf_counter()
        q, _ = quantize(model, calib_data, QuantizeSettings(activations=activations, check=False))
        out[label] = (q, time.perf_counter() - t)
    for label, fn in (
        ("ORT quantize_static", lambda p: ort_static(src, calib.inputs, p, False)),
        ("ORT quantize_static reduce_range", lambda p: ort_static(src, calib.inputs, p, True)),
        ("ORT quantize_dynamic", lambda p: ort_dynamic(src, p)),
    ):
        path = tmp / f"{name}_{label.replace(' ', '_')}.onnx"
        t = time.perf_counter()
        fn(path)
        out[label] = (onnx.load(path), time.perf_counter() - t)
    return out


def measure(name: str, rounds: int, tmp: Path) -> list[dict]:
    model = graph.load_model(SAMPLES / f"{name}.onnx")
    test = load_dataset(SAMPLES / f"{name}_test.npz", model)
    models = variants(name, tmp)
    reference = run_model(model, test)
    rows, sessions = [], {}
    for label, (m, seconds) in models.items():
        outputs = run_model(m, test)
        cov = integer_kernel_coverage(m)
        f = fidelity(reference, outputs)
        rows.append(
            {
                "model": name,
                "kind": MODELS[name],
                "variant": label,
                "bytes": len(m.SerializeToString()),
                "accuracy": accuracy(outputs[0], test.labels),
                "top1_agreement": f["top1_agreement"],
                "snr_db": f["snr_db"],
                "coverage": cov["fraction"],
                "integer_ops": cov["integer"],
                "float_ops": cov["float"],
                "quantize_s": round(seconds, 3),
            }
        )
        sessions[label] = make_session(m, threads=1)
    for batch, repeats in ((1, 200), (64, 30)):
        per_round: dict[str, list[float]] = {label: [] for label in sessions}
        for _ in range(rounds):
            for label, s in sessions.items():
                per_round[label].append(latency_ms(s, test, batch, repeats=repeats, warmup=5))
        for row in rows:
            row[f"latency_ms_b{batch}"] = statistics.median(per_round[row["variant"]])
    return rows


def markdown(rows: list[dict]) -> str:
    head = [
        "model",
        "variant",
        "size KB",
        "accuracy %",
        "agree %",
        "SNR dB",
        "int coverage",
        "b1 ms",
        "b64 ms",
        "quantize s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cov = "-" if r["coverage"] is None else f"{100 * r['coverage']:.0f}%"
        snr = "inf" if r["snr_db"] == float("inf") else f"{r['snr_db']:.1f}"
        lines.append(
            f"| {r['model']} ({r['kind']}) | {r['variant']} | {r['bytes'] / 1024:.1f} | {r['accuracy']:.1f} | "
            f"{r['top1_agreement']:.1f} | {snr} | {cov} | {r['latency_ms_b1']:.3f} | {r['latency_ms_b64']:.3f} | {r['quantize_s']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7, help="Interleaved latency rounds (median taken).")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    missing = [n for n in MODELS if not (SAMPLES / f"{n}.onnx").exists()]
    if missing:
        sys.exit(f"sample models missing ({', '.join(missing)}): run python sample_models/build.py")
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer logs pre-processing advice
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            rows += measure(name, args.rounds, Path(tmp))
    print(markdown(rows))
    result = {
        "machine": {**common.machine_info(), "load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
        "settings": {
            "intra_op_num_threads": 1,
            "latency": "median of per-round medians",
            "rounds": args.rounds,
            "repeats": {"batch1": 200, "batch64": 30},
        },
        "rows": rows,
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
