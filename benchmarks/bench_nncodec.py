"""NNCodec (MPEG NNC, ISO/IEC 15938-17, pip `nncodec`) beside `compressor run`, on every labeled
bench model, in one run: what issue 21 measures itself against.

    python benchmarks/bench_nncodec.py                      # every labeled model (builds the venv once)
    python benchmarks/bench_nncodec.py --models lenet300,lenet5
    python benchmarks/bench_nncodec.py --zoo /other/checkout/benchmarks/.cache/zoo

NNCodec runs in a venv of its own, ``benchmarks/.cache/nncodec-venv`` (it pins numpy < 2 and
imports torch; never a project dependency), built here on first use and reused while its
requirement list is unchanged; ``nncodec_child.py`` is the process that runs inside it.

Per model: every float32 initializer goes, as one dict, through ``nncodec.nn.encode(dict, args)``
and back through ``decode``, at a sweep of ``qp`` (step 2, coarse to fine until within 0.5 point, then the odd QP
next to each best point) for each of ``use_dq`` x ``opt_qp``; the decoded weights are written into the
ONNX model and scored with ONNX Runtime on the test set (the same data and scoring as
``benchmarks/run.py``).  NNCodec's bytes are its bitstream plus the graph without those weights,
zstd -19'd (what a decoder needs besides the bitstream).  Ours: ``python -m compressor run MODEL
-o X.cmpz --data TEST --calib CALIB`` with this checkout's code, the container unpacked and scored
the same way.  Writes benchmarks/results/nncodec.json and nncodec.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import zoo as zoo_module  # noqa: E402
from common import CACHE, RESULTS, ROOT, SAMPLES  # noqa: E402

from compressor.data import load_dataset  # noqa: E402
from compressor.evaluate import accuracy, make_session, run_model  # noqa: E402

VENV = CACHE / "nncodec-venv"
WORK = CACHE / "nncodec"
CHILD = HERE / "nncodec_child.py"
NNCODEC = "nncodec==2.1.3"
# nncodec's own requirements minus torchvision (stubbed in the child, see nncodec_child.py) and
# with the headless OpenCV build (cv2 is only imported); torch pinned to the local CPU wheel
# (an unpinned torch pulls the CUDA build), numpy < 2 as nncodec pins it.
REQUIREMENTS = (
    "torch==2.13.0",
    "numpy<2",
    "click>=7.0",
    "scikit-learn>=0.23.1",
    "tqdm>=4.32.2",
    "h5py>=3.1.0",
    "pandas>=1.0.5",
    "opencv-python-headless>=4.4.0.46",
    "ptflops>=0.7",
    "torchmetrics>=0.11.4",
)
# Bytes only grow as the QP gets finer (step 2**(qp/4)), so the sweep runs coarse to fine and stops
# at the first QP within the tightest threshold: every smaller candidate has been tried by then.
QP_COARSEST = -8  # step 1/4: every weight rounds to zero
QP_FINEST = -44  # step 1/2048: far finer than these weights need
QP_STEP = 2
THRESHOLDS = (1.0, 0.5)
CONFIGS = (
    {"use_dq": True, "opt_qp": False},
    {"use_dq": False, "opt_qp": False},
    {"use_dq": True, "opt_qp": True},
    {"use_dq": False, "opt_qp": True},
)


@dataclass
class Model:
    name: str
    onnx: Path
    test: Path
    calib: Path


def labeled_models(zoo: Path) -> list[Model]:
    found = [
        Model(n, SAMPLES / f"{n}.onnx", SAMPLES / f"{n}_test.npz", SAMPLES / f"{n}_calib.npz")
        for n in ("lenet300", "lenet5")
    ]
    found += [Model(n, p["onnx"], p["test"], p["calib"]) for n, p in zoo_module.paths(zoo).items()]
    return found


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- NNCodec's venv


def venv_python(venv: Path = VENV) -> Path:
    """The venv's python, building the venv first unless its stamp lists the same requirements."""
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = "\n".join((*REQUIREMENTS, NNCODEC)) + "\n"
    if python.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    log(f"building NNCodec's venv in {venv} (once: torch, nncodec's C++ extension; several minutes)")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *REQUIREMENTS], check=True)
    # --no-deps: its requirements name torchvision (a CUDA build on the registry) and opencv-python.
    # -g0: the C++ extension without debug info builds much faster.
    env = {**os.environ, "CFLAGS": "-g0"}
    subprocess.run([*pip, "--no-deps", NNCODEC], check=True, env=env)
    stamp.write_text(wanted)
    log(f"venv built in {time.perf_counter() - t0:.0f} s")
    return python


class Codec:
    """The child process in NNCodec's venv: one JSON request and answer a line."""

    def __init__(self, python: Path, log_path: Path):
        self.log = log_path.open("w")  # NNCodec's own progress lines, for when something fails
        self.proc = subprocess.Popen(
            [str(python), str(CHILD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True
        )

    def code(self, weights: Path, names: list[str], args: dict, out: Path) -> dict:
        request = {"weights": str(weights), "names": names, "args": args, "out": str(out)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"NNCodec's child exited with {self.proc.wait()}; see {self.log.name}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()


# --------------------------------------------------------------------------- one model


def float_initializers(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]


def graph_without(model: onnx.ModelProto, names: set[str]) -> bytes:
    """The model minus the coded initializers, zstd -19'd: the rest a decoder needs."""
    rest = onnx.ModelProto()
    rest.CopyFrom(model)
    keep = [t for t in rest.graph.initializer if t.name not in names]
    del rest.graph.initializer[:]
    rest.graph.initializer.extend(keep)
    return common.zstd19(rest.SerializeToString())


def with_weights(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> bytes:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in arrays:
            t.CopyFrom(numpy_helper.from_array(arrays[t.name].astype(np.float32), t.name))
    return out.SerializeToString()


def score(model_bytes: bytes, data) -> float:
    return accuracy(run_model(make_session(model_bytes), data)[0], data.labels)


def sweep_nncodec(codec: Codec, m: Model, model: onnx.ModelProto, data, float_acc: float, work: Path) -> dict:
    tensors = float_initializers(model)
    names = [t.name for t in tensors]
    weights = work / f"{m.name}_weights.npz"
    np.savez(weights, **{f"t{i}": numpy_helper.to_array(t) for i, t in enumerate(tensors)})
    graph_bytes = len(graph_without(model, set(names)))
    points: list[dict] = []

    def trial(config: dict, qp: int) -> dict:
        out = work / f"{m.name}_decoded.npz"
        answer = codec.code(weights, names, {**config, "qp": qp}, out)
        point = {**config, "qp": qp, **answer}
        if "error" not in answer:
            with np.load(out) as f:
                decoded = {n: f[f"t{i}"] for i, n in enumerate(names)}
            acc = score(with_weights(model, decoded), data)
            point.update(
                accuracy=round(acc, 2), drop=round(float_acc - acc, 2), total_bytes=answer["bytes"] + graph_bytes
            )
        points.append(point)
        return point

    for config in CONFIGS:
        for qp in range(QP_COARSEST, QP_FINEST - 1, -QP_STEP):
            point = trial(config, qp)
            if "error" in point or point["drop"] <= min(THRESHOLDS):
                break
        # The odd QP one step coarser than the best passing even one.
        for limit in THRESHOLDS:
            best = _best(points, limit, config)
            tried = {p["qp"] for p in points if _same(p, config)}
            if best and best["qp"] + 1 not in tried and best["qp"] + 1 <= QP_COARSEST:
                trial(config, best["qp"] + 1)
    best = {str(limit): _best(points, limit) for limit in THRESHOLDS}
    log(
        f"{m.name}: NNCodec "
        + ", ".join(
            f"<= {k}: {b['total_bytes']:,} B (qp {b['qp']}, dq {b['use_dq']}, opt_qp {b['opt_qp']}, {b['accuracy']:.1f} %)"
            for k, b in best.items()
            if b
        )
        + f"; {len(points)} trials"
    )
    return {
        "tensors": len(names),
        "params": int(sum(np.prod(t.dims) for t in tensors)),
        "graph_bytes": graph_bytes,
        "best": best,
        "points": points,
    }


def _same(point: dict, config: dict) -> bool:
    return all(point[k] == v for k, v in config.items())


def _best(points: list[dict], limit: float, config: dict | None = None) -> dict | None:
    ok = [p for p in points if "drop" in p and p["drop"] <= limit + 1e-9 and (config is None or _same(p, config))]
    return min(ok, key=lambda p: (p["total_bytes"], p["drop"])) if ok else None


def ours(m: Model, data, float_acc: float, work: Path) -> dict:
    """`compressor run` with this checkout's code; the container unpacked and scored like NNCodec's."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmpz, unpacked = work / f"{m.name}.cmpz", work / f"{m.name}.unpacked.onnx"
    cmpz.unlink(missing_ok=True)
    unpacked.unlink(missing_ok=True)
    t0 = time.perf_counter()
    run = [
        sys.executable,
        "-m",
        "compressor",
        "run",
        str(m.onnx),
        "-o",
        str(cmpz),
        "--data",
        str(m.test),
        "--calib",
        str(m.calib),
    ]
    subprocess.run(run, check=True, env=env, capture_output=True)
    seconds = time.perf_counter() - t0
    subprocess.run(
        [sys.executable, "-m", "compressor", "unpack", str(cmpz), "-o", str(unpacked)],
        check=True,
        env=env,
        capture_output=True,
    )
    acc = score(unpacked.read_bytes(), data)
    log(f"{m.name}: ours {cmpz.stat().st_size:,} B, {acc:.1f} % in {seconds:.0f} s")
    return {
        "bytes": cmpz.stat().st_size,
        "accuracy": round(acc, 2),
        "drop": round(float_acc - acc, 2),
        "seconds": round(seconds, 1),
    }


def ours_from(results: Path, name: str) -> dict | None:
    """Ours as `benchmarks/run.py` measured it (its latest.json: the container, unpacked and scored
    on the same test set), or None when that file has no such model."""
    try:
        rows = {r["model"]: r for r in json.loads(results.read_text())["models"]}
        row = rows[name]
        acc, float_acc = row["eval"]["compressor"]["accuracy"], row["eval"]["float"]["accuracy"]
        return {
            "bytes": row["report"]["container"]["bytes"],
            "accuracy": round(acc, 2),
            "drop": round(float_acc - acc, 2),
            "seconds": row["compressor"]["seconds"],
            "from": str(results),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------- report


def _nnc_cell(b: dict | None) -> str:
    if not b:
        return "-"
    flags = ("DQ" if b["use_dq"] else "no DQ") + (", opt_qp" if b["opt_qp"] else "")
    return f"{b['total_bytes']:,} (qp {b['qp']}, {flags}) · {b['accuracy']:.1f} (-{b['drop']:.1f})"


def render(result: dict) -> str:
    lines = [
        "# NNCodec beside compressor",
        "",
        f"{result['date']} · compressor at {result['commit']} · {NNCODEC} · {result['machine']['cpu']} ({result['machine']['cpus']} CPUs) · total {result['seconds']:.0f} s",
        "",
        "Generated by `benchmarks/bench_nncodec.py` (see benchmarks/README.md). Bytes: NNCodec's bitstream + the graph without "
        "its weights (zstd -19); ours: the .cmpz container. Accuracy: top-1 % on the 1,000 test digits (points lost vs float).",
        "",
        "| model | fp32 ONNX bytes | float % | NNCodec <= 1 point | NNCodec <= 0.5 point | ours (.cmpz) | ours / NNCodec (<= 1) |",
        "|---|---:|---:|---|---|---|---:|",
    ]
    for r in result["models"]:
        b1 = r["nncodec"]["best"]["1.0"]
        o = r.get("ours")
        ours_cell = f"{o['bytes']:,} · {o['accuracy']:.1f} ({-o['drop']:+.1f})" if o else "-"
        ratio = f"{o['bytes'] / b1['total_bytes']:.2f}" if o and b1 else "-"
        lines.append(
            f"| {r['model']} | {r['fp32_bytes']:,} | {r['float_accuracy']:.1f} | {_nnc_cell(b1)} | {_nnc_cell(r['nncodec']['best']['0.5'])} | {ours_cell} | {ratio} |"
        )
    taken = sorted({r["ours"]["from"] for r in result["models"] if r.get("ours", {}).get("from")})
    if taken:
        lines += ["", f"Ours as `benchmarks/run.py` measured it in the same `make bench` ({', '.join(taken)})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated subset of: lenet300, lenet5, " + ", ".join(zoo_module.NAMES))
    ap.add_argument("--zoo", type=Path, default=zoo_module.ZOO, help="folder of the trained zoo (benchmarks/zoo.py)")
    ap.add_argument("--no-ours", action="store_true", help="NNCodec only, no `compressor run`")
    ap.add_argument(
        "--ours-from",
        type=Path,
        help="take ours from run.py's latest.json of the same `make bench` (models not in it are run here)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for nncodec.json / nncodec.md")
    ap.add_argument("--python", type=Path, help="a python that already has nncodec (instead of the cached venv)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    models = labeled_models(args.zoo)
    if args.models:
        wanted = args.models.split(",")
        models = [m for m in models if m.name in wanted]
    missing = [m.name for m in models if not (m.onnx.is_file() and m.test.is_file())]
    if missing:
        log(f"skipped (not built; `python benchmarks/zoo.py` trains the zoo): {', '.join(missing)}")
    models = [m for m in models if m.name not in missing]
    WORK.mkdir(parents=True, exist_ok=True)
    codec = Codec(args.python or venv_python(), WORK / "nncodec_child.log")
    rows = []
    try:
        for m in models:
            model = onnx.load(str(m.onnx))
            data = load_dataset(m.test, model)
            float_acc = score(model.SerializeToString(), data)
            row = {"model": m.name, "fp32_bytes": m.onnx.stat().st_size, "float_accuracy": round(float_acc, 2)}
            row["nncodec"] = sweep_nncodec(codec, m, model, data, float_acc, WORK)
            if not args.no_ours:
                row["ours"] = (args.ours_from and ours_from(args.ours_from, m.name)) or ours(m, data, float_acc, WORK)
            rows.append(row)
    finally:
        codec.close()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "nncodec": NNCODEC,
        "venv": list(REQUIREMENTS),
        "machine": common.machine_info(),
        "seconds": round(time.perf_counter() - t0, 1),
        "models": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nncodec.json").write_text(json.dumps(result, indent=1) + "\n")
    table = render(result)
    (args.out / "nncodec.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
