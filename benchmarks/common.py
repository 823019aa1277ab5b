"""Helpers shared by the benchmarks: machine facts, timing and memory, generic compressors,
ONNX Runtime's quantizer, and the models the benchmarks build themselves with onnx.helper.

Nothing here is part of the `compressor` package: benchmarks import it as ``common``
(the scripts put their own folder on ``sys.path``).
"""

from __future__ import annotations

import lzma
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
CACHE = BENCH / ".cache"  # built and trained models: never committed (see .gitignore)
SAMPLES = ROOT / "sample_models"

if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    """What a result depends on: CPU, core count and library versions."""
    import onnxruntime

    info = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        import zstandard

        info["zstandard"] = zstandard.__version__
    except ImportError:  # pragma: no cover - a dependency of compressor
        pass
    return info


# --------------------------------------------------------------------------- time and memory


def timed(fn, *args, repeat: int = 1, **kwargs):
    """(result, best wall time in seconds of ``repeat`` runs)."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return result, best


def rss_mb() -> float:
    """Current resident set size (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak RSS of this process since it started (or since ``reset_peak_rss``), MB.

    VmHWM, not getrusage: ru_maxrss survives exec, so a child would report the (larger)
    RSS of the parent that forked it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is one step's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- generic compressors

# Files above this size are compressed on an evenly spaced sample and extrapolated: zstd -19
# runs at ~1.5 MB/s and xz -9 at ~3 MB/s here, so the float file of the 138 M-parameter model
# alone would take ~9 minutes.  Weight bytes are statistically uniform along such a file
# (a few huge tensors), so a 16 MiB sample predicts the ratio well; the table marks it "~".
SAMPLE_ABOVE = 64 << 20
SAMPLE_CHUNKS = 16
SAMPLE_CHUNK = 1 << 20


def zstd19(data: bytes) -> bytes:
    import zstandard

    # One thread and level 19, as compressor's own packer uses for its zstd sections.
    return zstandard.ZstdCompressor(level=19, threads=0).compress(data)


def xz9(data: bytes) -> bytes:
    return lzma.compress(data, preset=9)


CODECS = {"zstd -19": zstd19, "xz -9": xz9}


def generic_compress(path: Path, codec: str) -> dict:
    """Compress a file with ``codec``; returns bytes, seconds and whether it was estimated."""
    fn = CODECS[codec]
    raw = Path(path).read_bytes()
    if len(raw) <= SAMPLE_ABOVE:
        out, seconds = timed(fn, raw)
        return {"bytes": len(out), "seconds": round(seconds, 3), "estimated": False}
    step = len(raw) // SAMPLE_CHUNKS
    sample_in = sample_out = 0
    seconds = 0.0
    for i in range(SAMPLE_CHUNKS):
        chunk = raw[i * step : i * step + SAMPLE_CHUNK]
        out, s = timed(fn, chunk)
        sample_in, sample_out, seconds = sample_in + len(chunk), sample_out + len(out), seconds + s
    scale = len(raw) / sample_in
    return {
        "bytes": int(round(sample_out * scale)),
        "seconds": round(seconds * scale, 1),
        "estimated": True,
        "sample_bytes": sample_in,
    }


# --------------------------------------------------------------------------- ONNX Runtime's quantizer


def _reader(calib: dict[str, np.ndarray], batch: int = 64):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(calib.values())))
            self.batches = iter([{k: v[i : i + batch] for k, v in calib.items()} for i in range(0, n, batch)])

        def get_next(self):
            return next(self.batches, None)

    return Reader()


def ort_static(src: Path, calib: dict[str, np.ndarray], out: Path, reduce_range: bool = False) -> None:
    """ORT quantize_static: QDQ, per-channel, MinMax, uint8 activations / int8 weights."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # Models past protobuf's 2 GB limit need external data; below it one file keeps sizes comparable.
    big = Path(src).stat().st_size > 1_500_000_000
    quantize_static(
        str(src),
        str(out),
        _reader(calib),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        use_external_data_format=big,
    )


def ort_dynamic(src: Path, out: Path) -> None:
    """ORT quantize_dynamic: per-channel int8 weights, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(out), per_channel=True, weight_type=QuantType.QInt8)


# --------------------------------------------------------------------------- built models


def laplace(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """He-scaled Laplace weights: trained networks' weights are heavy-tailed, not Gaussian."""
    std = np.sqrt(2.0 / fan_in)
    return rng.laplace(0.0, std / np.sqrt(2.0), size=shape).astype(np.float32)


VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def build_vgg16(image: int = 32, classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """VGG-16 (13 Conv 3x3 + 3 Gemm, 138 M parameters) as torchvision defines it, with random weights.

    The input is CIFAR-sized (3 x 32 x 32) so that running it hundreds of times (the guarded
    pipeline measures every candidate) fits on 2 cores; the classifier keeps VGG's 25088-wide
    input the way torchvision does for small images: AdaptiveAvgPool2d((7, 7)) of the 1 x 1 map
    replicates it, here an Expand.  Gemm weights are [out, in] with transB=1, as PyTorch exports.
    """
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    cur, c_in, size, n = "x", 3, image, 0
    for v in VGG16:
        if v == "M":
            nodes.append(helper.make_node("MaxPool", [cur], [f"pool{n}"], kernel_shape=[2, 2], strides=[2, 2]))
            cur, size = f"pool{n}", size // 2
            continue
        n += 1
        name = f"features.conv{n}"
        inits += [
            numpy_helper.from_array(laplace(rng, (v, c_in, 3, 3), c_in * 9), f"{name}.weight"),
            numpy_helper.from_array(rng.laplace(0, 0.01, v).astype(np.float32), f"{name}.bias"),
        ]
        nodes += [
            helper.make_node("Conv", [cur, f"{name}.weight", f"{name}.bias"], [f"{name}.out"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"{name}.out"], [f"{name}.relu"]),
        ]
        cur, c_in = f"{name}.relu", v
    inits.append(numpy_helper.from_array(np.array([1, 1, 7, 7], np.int64), "avgpool.shape"))
    nodes += [
        helper.make_node("Expand", [cur, "avgpool.shape"], ["avgpool"]),
        helper.make_node("Flatten", ["avgpool"], ["flat"], axis=1),
    ]
    cur = "flat"
    dims = [c_in * 49, 4096, 4096, classes]
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        name = f"classifier.fc{i + 1}"
        inits += [
            numpy_helper.from_array(laplace(rng, (fan_out, fan_in), fan_in), f"{name}.weight"),
            numpy_helper.from_array(rng.laplace(0, 0.01, fan_out).astype(np.float32), f"{name}.bias"),
        ]
        out = "logits" if i == len(dims) - 2 else f"{name}.out"
        nodes.append(helper.make_node("Gemm", [cur, f"{name}.weight", f"{name}.bias"], [out], transB=1))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out], [f"{name}.relu"]))
            cur = f"{name}.relu"
    g = helper.make_graph(
        nodes,
        "vgg16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, image, image])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="benchmarks/common.py")


def build_transformer_encoder(
    vocab: int = 8192, seq: int = 64, d: int = 256, heads: int = 4, d_ff: int = 1024, layers: int = 4, seed: int = 0
) -> onnx.ModelProto:
    """A BERT-style encoder with random weights: ids[N, seq] (int64) -> hidden states [N, seq, d].

    Token Gather + position Add, then per layer: LayerNorm -> Q/K/V MatMuls -> scaled Q.K^T ->
    Softmax -> P.V -> output MatMul + residual -> LayerNorm -> FFN (erf GELU) + residual; a final
    LayerNorm.  The output is hidden states, not class scores, so the guarded pipeline budgets
    it by top-1 agreement *and* its output-SNR floor (20 dB), unlike the classifiers.
    """
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    dh = d // heads

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x, fan_in, fan_out, name):
        h = node(
            "MatMul",
            [x, const(f"{name}.weight", laplace(rng, (fan_in, fan_out), fan_in) / np.float32(np.sqrt(2)))],
            f"{name}.matmul",
        )
        return node("Add", [h, const(f"{name}.bias", rng.laplace(0, 0.01, fan_out).astype(np.float32))], f"{name}.add")

    def layer_norm(x, name):
        g = const(f"{name}.weight", (1 + rng.normal(0, 0.05, d)).astype(np.float32))
        b = const(f"{name}.bias", rng.normal(0, 0.05, d).astype(np.float32))
        return node("LayerNormalization", [x, g, b], name, axis=-1, epsilon=1e-5)

    x = node(
        "Gather",
        [const("embeddings.tokens", rng.normal(0, 1.0, (vocab, d)).astype(np.float32)), "ids"],
        "embed",
        axis=0,
    )
    x = node("Add", [x, const("embeddings.positions", rng.normal(0, 0.1, (seq, d)).astype(np.float32))], "embed.pos")
    split = const("attn.split_shape", np.array([0, 0, heads, dh], np.int64))
    merge = const("attn.merge_shape", np.array([0, 0, d], np.int64))
    scale = const("attn.scale", np.array(1 / np.sqrt(dh), np.float32))
    sqrt2, one, half = (
        const("gelu.sqrt2", np.array(np.sqrt(2), np.float32)),
        const("gelu.one", np.array(1, np.float32)),
        const("gelu.half", np.array(0.5, np.float32)),
    )
    for i in range(layers):
        p = f"layer{i}"
        h = layer_norm(x, f"{p}.ln1")
        qkv = {}
        for t in ("q", "k", "v"):
            z = node("Reshape", [linear(h, d, d, f"{p}.attn.{t}"), split], f"{p}.attn.{t}.split")
            qkv[t] = node("Transpose", [z], f"{p}.attn.{t}.heads", perm=[0, 2, 1, 3])
        kt = node("Transpose", [qkv["k"]], f"{p}.attn.kt", perm=[0, 1, 3, 2])
        s = node("Mul", [node("MatMul", [qkv["q"], kt], f"{p}.attn.qk"), scale], f"{p}.attn.scaled")
        a = node("MatMul", [node("Softmax", [s], f"{p}.attn.softmax", axis=-1), qkv["v"]], f"{p}.attn.av")
        a = node("Reshape", [node("Transpose", [a], f"{p}.attn.merge_t", perm=[0, 2, 1, 3]), merge], f"{p}.attn.merge")
        x = node("Add", [x, linear(a, d, d, f"{p}.attn.out")], f"{p}.residual1")
        f = linear(layer_norm(x, f"{p}.ln2"), d, d_ff, f"{p}.ffn.fc1")
        e = node(
            "Add", [node("Erf", [node("Div", [f, sqrt2], f"{p}.gelu.div")], f"{p}.gelu.erf"), one], f"{p}.gelu.add"
        )
        f = node("Mul", [node("Mul", [f, e], f"{p}.gelu.mul"), half], f"{p}.gelu")
        x = node("Add", [x, linear(f, d_ff, d, f"{p}.ffn.fc2")], f"{p}.residual2")
    final = layer_norm(x, "final_ln")
    nodes.append(helper.make_node("Identity", [final], ["hidden"], name="output"))
    g = helper.make_graph(
        nodes,
        "transformer_encoder",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", seq])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["N", seq, d])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="benchmarks/common.py")


def param_count(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == TensorProto.FLOAT)
