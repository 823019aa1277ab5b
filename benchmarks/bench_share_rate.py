"""The share stage's per-tensor search (``ecq_budget.share_by_rate``) alone on real models.

    python benchmarks/bench_share_rate.py ddddocr_common ddddocr_det   # names from benchmarks/real.py
    python benchmarks/bench_share_rate.py --points 0.7 --min-snr 20 --real-dir /work/real ppocr_rec

One child process per model (peak RSS is the child's): the original model and its
calibration file (``benchmarks/.cache/real``, made by ``real.py prepare``), the judge on the
calibration inputs, then ``share_by_rate`` as the share stage calls it.  Reports the search's
seconds, peak RSS, whole-model runs and a sha256 of the shared weights, so two versions of
the code can be compared for speed and for byte-identical results.  Writes
benchmarks/results/share_rate.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE, RESULTS, machine_info, peak_rss_mb  # noqa: E402  (puts the repository on sys.path too)

OUT = RESULTS / "share_rate.json"


def measure(name: str, points: float, min_snr: float | None, real: Path) -> dict:
    """Run in the child: share_by_rate on one real model."""
    import onnx

    from compressor import graph
    from compressor.data import load_dataset
    from compressor.measure import Judge
    from compressor.search.ecq_budget import share_by_rate

    model = onnx.load(str(real / f"{name}.onnx"))
    data = load_dataset(real / "data" / f"{name}_calib.npz", model)
    t0 = time.perf_counter()
    judge = Judge.of_model(model, data)
    t1 = time.perf_counter()
    shared, stats = share_by_rate(model, data, points, min_snr_db=min_snr, judge=judge, calib=data)
    t2 = time.perf_counter()
    digest = hashlib.sha256()
    for w in graph.weights(shared):
        digest.update(w.name.encode())
        digest.update(w.array().tobytes())
    search = stats["budget_search"]
    return {
        "model": name,
        "reference_seconds": round(t1 - t0, 2),
        "share_by_rate_seconds": round(t2 - t1, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "whole_model_runs": search["whole_model_runs"],
        "capture_runs": search["capture_runs"],
        "candidates": search["kmeans_runs"] + search["uniform_runs"],
        "weights_sha256": digest.hexdigest(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--points", type=float, default=0.7)
    parser.add_argument("--min-snr", type=float, default=20.0)
    parser.add_argument("--real-dir", type=Path, default=CACHE / "real", help="the models and their data/")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.models[0], args.points, args.min_snr, args.real_dir)))
        return
    rows = []
    for name in args.models:
        cmd = [sys.executable, __file__, "--child", name, "--points", str(args.points), "--min-snr", str(args.min_snr)]
        cmd += ["--real-dir", str(args.real_dir)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            rows.append({"model": name, "error": res.stderr.strip().splitlines()[-1:]})
        else:
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    OUT.write_text(json.dumps({"machine": machine_info(), "points": args.points, "rows": rows}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
