"""pack / unpack: lossless round trips (bit-identical protos, identical ORT outputs), sizes, CLI."""

import functools
import glob
import json
import lzma
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import zstandard
from onnx import TensorProto, helper, numpy_helper

from compressor.cli import main
from compressor.codec import compress_best
from compressor.container import (
    describe_container,
    format_container_table,
    pack_model,
    unpack_bytes,
    unpack_container,
    unpack_file,
)
from compressor.container import format as fmt
from compressor.container.coders import registry
from compressor.container.splice import marker
from compressor.errors import CompressorError

OPSET = [helper.make_opsetid("", 17)]
RNG = np.random.default_rng(0)


def roundtrip(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bytes, dict]:
    data, stats = pack_model(model)
    back, info = unpack_container(data, verify=True)
    original = model.SerializeToString()
    assert back.SerializeToString() == original
    assert info["verified"]
    assert unpack_bytes(data) == original  # the spliced serialization unpack_file writes
    return back, data, stats


def assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict) -> None:
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for x, y in zip(run(a), run(b)):
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)


def prune_and_share(w: np.ndarray, keep: float = 0.1, k: int = 32) -> np.ndarray:
    """Magnitude pruning, then the survivors snapped to k values (k-means: quantile init, 3 Lloyd steps)."""
    flat = w.ravel().copy()
    mask = np.abs(flat) >= np.quantile(np.abs(flat), 1 - keep)
    nz = flat[mask]
    centroids = np.quantile(nz, (np.arange(k) + 0.5) / k)
    for _ in range(3):
        idx = np.abs(nz[:, None] - centroids[None, :]).argmin(1)
        sums, counts = np.bincount(idx, nz, k), np.bincount(idx, minlength=k)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    flat[~mask] = 0
    flat[mask] = centroids[np.abs(nz[:, None] - centroids[None, :]).argmin(1)].astype(np.float32)
    return flat.reshape(w.shape).astype(np.float32)


def lenet_300_100(int8: bool = False) -> onnx.ModelProto:
    """LeNet-300-100 (784-300-100-10), pruned 90 % and shared to 32 values per tensor."""
    rng = np.random.default_rng(1)
    inits, nodes, prev = [], [], "x"
    for i, (fan_in, fan_out) in enumerate([(784, 300), (300, 100), (100, 10)]):
        w = prune_and_share(rng.normal(0, 0.05, (fan_out, fan_in)).astype(np.float32), keep=0.1 if i < 2 else 0.25)
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, fan_out).astype(np.float32), f"b{i}"))
        if int8:
            scale = np.float32(np.abs(w).max() / 127)
            inits += [numpy_helper.from_array(np.rint(w / scale).astype(np.int8), f"q{i}"),
                      numpy_helper.from_array(np.array(scale), f"s{i}"),
                      numpy_helper.from_array(np.array(0, np.int8), f"z{i}")]  # fmt: skip
            nodes.append(helper.make_node("DequantizeLinear", [f"q{i}", f"s{i}", f"z{i}"], [f"w{i}"]))
        else:
            inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"h{i}"], transB=1))
        prev = f"h{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    graph = helper.make_graph(
        nodes, "lenet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 784])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", 10])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=OPSET)


@functools.cache
def lenet_300_100_roundtrip(int8: bool) -> tuple[onnx.ModelProto, onnx.ModelProto, bytes, dict]:
    """(model, *roundtrip(model)) of lenet_300_100(int8), packed once for the tests that read it."""
    model = lenet_300_100(int8)
    return model, *roundtrip(model)


@pytest.mark.parametrize("int8", [False, True])
def test_pruned_shared_mlp_beats_zstd_and_xz_and_sits_near_the_entropy_bound(int8):
    model, back, data, stats = lenet_300_100_roundtrip(int8)
    raw = model.SerializeToString()
    zstd19 = len(zstandard.ZstdCompressor(level=19).compress(raw))
    xz9 = len(lzma.compress(raw, preset=9))
    assert len(data) < zstd19 and len(data) < xz9, (len(data), zstd19, xz9)
    e = stats["entropy"]
    # The Huffman streams (tables included) within 3 % of their Shannon bound, and the
    # whole container within 5 % of a container whose streams sat exactly at the bound.
    assert e["overhead_pct"] < 3.0, e
    assert e["container_over_bound_pct"] < 5.0, e
    first = next(t for t in stats["tensors"] if t["name"] == ("q0" if int8 else "w0"))
    # 5-bit sharing: a 32-value codebook, coded by position (sparse) or with the rANS context model
    # (sparse codes the 32 non-zero values; dict-rans's codebook holds the zero too)
    expected_codebook = {"sparse": 32, "dict-rans": 33}
    assert first["params"]["codebook_size"] == expected_codebook.get(first["encoding"]), first["encoding"]
    x = np.random.default_rng(2).normal(size=(16, 784)).astype(np.float32)
    assert_same_outputs(model, back, {"x": x})


def test_report_shows_why_zeros_go_to_the_index_stream():
    _, _, _, stats = lenet_300_100_roundtrip(False)
    w0 = next(t for t in stats["tensors"] if t["name"] == "w0")
    dense = w0["candidates"]["dict"]
    # A dense Huffman stream spends >= 1 bit on every zero: far above its entropy bound.
    assert dense["streams"][0]["overhead_pct"] > 30
    assert all(s["overhead_pct"] < 5 for s in w0["streams"])
    assert w0["bytes_after"] < 0.7 * dense["bytes"]
    assert w0["bits_per_weight"] < 1.0
    assert json.loads(json.dumps(stats)) == stats  # JSON-able as is


def conv_model_with_constants() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w = prune_and_share(rng.normal(size=(16, 3, 3, 3)).astype(np.float32), keep=0.3, k=256)
    nodes = [
        helper.make_node(
            "Constant", [], ["bias"], value=numpy_helper.from_array(rng.normal(size=16).astype(np.float32))
        ),
        helper.make_node("Constant", [], ["shape"], value=helper.make_tensor("s", TensorProto.INT64, [2], [1, -1])),
        helper.make_node("Constant", [], ["scale"], value_float=0.5),
        helper.make_node("Conv", ["x", "w", "bias"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "scale"], ["m"]),
        helper.make_node("Reshape", ["m", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1024])], [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=OPSET)


def if_model() -> onnx.ModelProto:
    """Weights inside If branches (initializer in one, a big Constant in the other)."""
    rng = np.random.default_rng(4)
    big = numpy_helper.from_array(prune_and_share(rng.normal(size=(64, 64)).astype(np.float32)), "then_w")
    then_graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "then_w"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 64])], [big],
    )  # fmt: skip
    const = numpy_helper.from_array(rng.integers(-5, 5, (64, 64)).astype(np.float32))
    else_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["else_w"], value=const), helper.make_node("MatMul", ["x", "else_w"], ["e"])],
        "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 64])],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)],
        "if",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def qdq_model() -> onnx.ModelProto:
    """int8 QDQ: quantized weights with a non-zero zero-point, activations quantized too."""
    rng = np.random.default_rng(5)
    q = np.clip(np.rint(rng.normal(0, 20, (128, 64))), -128, 127).astype(np.int8)
    q[rng.random(q.shape) < 0.6] = 3  # the zero-point is 3: the fill value is not 0
    inits = [
        numpy_helper.from_array(q, "wq"),
        numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
        numpy_helper.from_array(np.array(3, np.int8), "wz"),
        numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
        numpy_helper.from_array(np.array(128, np.uint8), "xz"),
        numpy_helper.from_array(rng.integers(-1000, 1000, 64).astype(np.int32), "bias_i32"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]),
        helper.make_node("MatMul", ["xd", "w"], ["y0"]),
        helper.make_node("Cast", ["bias_i32"], ["bias"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["y0", "bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def float16_model() -> onnx.ModelProto:
    rng = np.random.default_rng(6)
    w = prune_and_share(rng.normal(size=(96, 96)).astype(np.float32), keep=0.2).astype(np.float16)
    b = rng.normal(size=96).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "fp16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 96])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=OPSET)


@pytest.mark.parametrize(
    "build, feeds",
    [
        (conv_model_with_constants, lambda r: {"x": r.normal(size=(1, 3, 8, 8)).astype(np.float32)}),
        (if_model, lambda r: {"x": r.normal(size=(1, 64)).astype(np.float32), "cond": np.array(True)}),
        (if_model, lambda r: {"x": r.normal(size=(1, 64)).astype(np.float32), "cond": np.array(False)}),
        (qdq_model, lambda r: {"x": r.normal(size=(4, 128)).astype(np.float32)}),
        (float16_model, lambda r: {"x": r.normal(size=(2, 96)).astype(np.float16)}),
    ],
    ids=["conv+constants", "if-then", "if-else", "int8-qdq", "float16"],
)
def test_models_roundtrip_bit_identically_with_identical_ort_outputs(build, feeds):
    model = build()
    back, data, stats = roundtrip(model)
    assert any(t["encoding"] != "graph" for t in stats["tensors"])  # something was really coded
    assert_same_outputs(model, back, feeds(np.random.default_rng(7)))


def test_subgraph_and_constant_tensors_get_their_own_sections():
    _, data, stats = roundtrip(if_model())
    coded = {t["name"]: t for t in stats["tensors"] if t["encoding"] != "graph"}
    assert coded["then_w"]["graph_path"] == "If_0/then_branch"
    assert coded["else_w"]["kind"] == "constant" and coded["else_w"]["graph_path"] == "If_0/else_branch"


DTYPES = [
    np.float32,
    np.float16,
    np.float64,
    np.int8,
    np.uint8,
    np.int16,
    np.uint16,
    np.int32,
    np.int64,
    np.uint32,
    np.uint64,
    np.bool_,
]


def every_dtype_model() -> onnx.ModelProto:
    """Every dtype, in raw_data and in typed fields, plus strings, scalars, empty and odd tensors."""
    rng = np.random.default_rng(8)
    inits = []
    for dt in DTYPES:
        values = (rng.random((33, 17)) < 0.3) * rng.integers(1, 9, (33, 17))
        values = values.astype(dt)
        inits.append(numpy_helper.from_array(values, f"raw_{np.dtype(dt).name}"))
        typed = helper.make_tensor(
            f"typed_{np.dtype(dt).name}",
            helper.np_dtype_to_tensor_dtype(np.dtype(dt)),
            values.shape,
            values.ravel().tolist(),
        )
        inits.append(typed)
    nasty = rng.normal(size=500).astype(np.float32)
    nasty[:5] = [np.nan, -0.0, np.inf, -np.inf, 1e-45]
    inits.append(numpy_helper.from_array(nasty, "nasty_floats"))
    inits.append(numpy_helper.from_array(np.zeros((0, 7), np.float32), "empty"))
    inits.append(numpy_helper.from_array(np.array(3.5, np.float64), "scalar"))
    inits.append(numpy_helper.from_array(np.zeros((64, 64), np.float32), "all_zero"))
    inits.append(numpy_helper.from_array(np.full((64, 64), 7, np.int64), "all_seven"))
    inits.append(numpy_helper.from_array(np.array([b"abc", b"", b"\xff\x00"] * 100, dtype=object), "strings"))
    inits.append(
        helper.make_tensor("bf16", TensorProto.BFLOAT16, [300], rng.normal(size=300).astype(np.float32).tolist())
    )
    inits.append(
        helper.make_tensor(
            "c64", TensorProto.COMPLEX64, [100], (rng.normal(size=100) + 1j * rng.normal(size=100)).tolist()
        )
    )
    inits.append(numpy_helper.from_array(rng.integers(-8, 8, 999).astype(np.int8), "odd_length"))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "dtypes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=OPSET)


def test_every_dtype_and_storage_field_roundtrips():
    model = every_dtype_model()
    back, _, stats = roundtrip(model)
    fields = {t["field"] for t in stats["tensors"] if t["encoding"] != "graph"}
    assert {"raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"} <= fields
    for a, b in zip(model.graph.initializer, back.graph.initializer):
        assert a.SerializeToString() == b.SerializeToString()
        if a.data_type not in (TensorProto.STRING, TensorProto.BFLOAT16, TensorProto.COMPLEX64):
            x, y = numpy_helper.to_array(a), numpy_helper.to_array(b)
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


def test_external_data_models_pack_from_disk(tmp_path):
    model = lenet_300_100()
    src = tmp_path / "ext" / "model.onnx"
    src.parent.mkdir()
    on_disk = onnx.ModelProto()
    on_disk.CopyFrom(model)  # onnx.save moves the data of the proto it saves out to the file
    onnx.save(
        on_disk, src, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0
    )
    assert (src.parent / "weights.bin").exists()
    assert main(["pack", str(src), "-o", str(tmp_path / "m.cmpz"), "--json"]) == 0
    assert main(["unpack", str(tmp_path / "m.cmpz"), "-o", str(tmp_path / "back.onnx"), "--verify"]) == 0
    back = onnx.load(tmp_path / "back.onnx")
    for a, b in zip(model.graph.initializer, back.graph.initializer):
        assert numpy_helper.to_array(a).tobytes() == numpy_helper.to_array(b).tobytes() and a.name == b.name
    x = np.random.default_rng(0).normal(size=(3, 784)).astype(np.float32)
    assert_same_outputs(model, back, {"x": x})


def test_unloaded_external_data_is_refused():
    model = lenet_300_100()
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    with pytest.raises(CompressorError, match="external data"):
        pack_model(model)


def onnx_package_models() -> list[str]:
    root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    node = sorted(glob.glob(str(root / "node" / "*" / "model.onnx")))
    node = node[:: max(1, len(node) // 250)]  # a sample of ~250 when the package ships them
    others = sorted(glob.glob(str(root / "*" / "*" / "model.onnx"))) + sorted(glob.glob(str(root / "light" / "*.onnx")))
    return node + [p for p in others if "/node/" not in p]


def test_models_shipped_with_onnx_roundtrip_bit_identically():
    paths = onnx_package_models()
    assert len(paths) >= 100
    coded = 0
    for path in paths:
        model = onnx.load(path)
        data, stats = pack_model(model)
        back, _ = unpack_container(data)
        assert back.SerializeToString() == model.SerializeToString(), path
        assert unpack_bytes(data) == model.SerializeToString(), path
        coded += sum(t["encoding"] != "graph" for t in stats["tensors"])
    assert coded > 50


def test_cli_pack_unpack_inspect(tmp_path, capsys):
    model = conv_model_with_constants()
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    out = tmp_path / "m.cmpz"
    assert main(["pack", str(src), "-o", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["container_bytes"] == out.stat().st_size
    assert {"bytes_before", "bytes_after", "bits_per_weight", "encoding", "streams"} <= set(stats["tensors"][0])
    assert main(["pack", str(src), "-o", str(tmp_path / "again.cmpz")]) == 0
    assert "container:" in capsys.readouterr().out
    assert (tmp_path / "again.cmpz").read_bytes() == out.read_bytes()  # deterministic
    assert main(["unpack", str(out), "-o", str(tmp_path / "back.onnx"), "--verify"]) == 0
    assert "verified" in capsys.readouterr().out
    assert (tmp_path / "back.onnx").read_bytes() == src.read_bytes()
    assert main(["inspect", str(out), "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["container_bytes"] == out.stat().st_size and desc["tensors"][0]["encoding"] in registry.names().values()
    assert "encoding" in format_container_table(describe_container(out))
    assert main(["inspect", str(out)]) == 0
    assert "manifest" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "missing", "not_a_container"])
def test_cli_unpack_failures_are_one_line_and_leave_no_file(tmp_path, capsys, damage):
    src = tmp_path / "m.onnx"
    onnx.save(conv_model_with_constants(), src)
    box = tmp_path / "m.cmpz"
    assert main(["pack", str(src), "-o", str(box)]) == 0
    data = box.read_bytes()
    if damage == "truncate":
        box.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        box.write_bytes(data[:100] + bytes([data[100] ^ 4]) + data[101:])
    elif damage == "garbage":
        box.write_bytes(data + b"junk")
    elif damage == "missing":
        box.unlink()
    else:
        box.write_bytes(src.read_bytes())
    capsys.readouterr()
    before = set(os.listdir(tmp_path))
    code = main(["unpack", str(box), "-o", str(tmp_path / "out.onnx")])
    err = capsys.readouterr().err
    assert code == (2 if damage == "missing" else 1)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert set(os.listdir(tmp_path)) == before  # no output, no temp file


def test_pack_refuses_to_overwrite_its_input(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(conv_model_with_constants(), src)
    assert main(["pack", str(src), "-o", str(src)]) == 2
    assert onnx.load(src) is not None


# ------------------------------------------------------------------ verification is the default


def relu_model() -> onnx.ModelProto:
    w = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def altered_container(data: bytes) -> bytes:
    """The container with Relu replaced by Sigmoid in its graph section: well formed, every
    checksum recomputed, but no longer the model whose SHA-256 the manifest keeps."""
    container = fmt.read_container(data)
    sections = [fmt.Section(e.kind, e.codec, bytes(container.payload(e)), e.decoded_length) for e in container.sections]
    graph = onnx.ModelProto()
    graph.ParseFromString(fmt.decode_section(container, container.sections[1]))
    graph.graph.node[1].op_type = "Sigmoid"
    raw = graph.SerializeToString()
    codec, payload = compress_best(raw)
    sections[1] = fmt.Section(fmt.KIND_GRAPH, codec, payload, len(raw))
    return fmt.write_container(sections, container.version)


def test_unpack_verifies_by_default(tmp_path, capsys):
    data, _ = pack_model(relu_model())
    altered = altered_container(data)
    model, info = unpack_container(altered)  # decodes: only the SHA-256 can tell
    assert model.graph.node[1].op_type == "Sigmoid" and not info["verified"]
    box, out = tmp_path / "altered.cmpz", tmp_path / "out.onnx"
    box.write_bytes(altered)
    with pytest.raises(CompressorError, match="verification failed"):
        unpack_file(box, out)
    assert not out.exists()
    capsys.readouterr()
    assert main(["unpack", str(box), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "verification failed" in err and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["altered.cmpz"]  # no output, no temp file
    assert main(["unpack", str(box), "-o", str(out), "--no-verify"]) == 0
    assert "verified" not in capsys.readouterr().out
    assert onnx.load(out).graph.node[1].op_type == "Sigmoid"
    assert unpack_file(box, out, verify=False)["verified"] is False
    # the genuine container: verified by default, with the CLI and the library alike
    box.write_bytes(data)
    assert main(["unpack", str(box), "-o", str(out)]) == 0
    assert "verified" in capsys.readouterr().out
    assert unpack_file(box, out)["verified"] is True


def test_splicing_finds_its_markers_in_one_scan_and_falls_back_on_look_alikes():
    """Many spliced tensors round trip; a graph holding a marker itself (in a small tensor)
    makes splicing give up for the plain serialization, never garble it."""
    rng = np.random.default_rng(0)
    count = 300  # markers past index 255: their index takes two bytes
    inits = [numpy_helper.from_array(rng.normal(size=100 + i % 7).astype(np.float32), f"w{i}") for i in range(count)]
    nodes = [helper.make_node("Identity", [f"w{i}"], [f"y{i}"]) for i in range(count)]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(count)]
    model = helper.make_model(helper.make_graph(nodes, "many", [], outputs, inits), opset_imports=OPSET)
    data, _ = pack_model(model)
    assert unpack_bytes(data) == model.SerializeToString()
    for stray in (marker(0), marker(0)[:-3], marker(10**6)):  # small: stays in the graph section
        model.graph.initializer.append(helper.make_tensor("stray", TensorProto.UINT8, [len(stray)], stray, raw=True))
        data, _ = pack_model(model)
        assert unpack_bytes(data) == model.SerializeToString()
        del model.graph.initializer[-1]
