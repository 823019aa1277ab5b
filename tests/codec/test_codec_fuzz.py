"""A seeded container fuzzer: mutated containers of a few small models, resealed (section
CRCs, header CRC, SHA-256 recomputed) so that the decoders behind the checksums are reached.

Every case must end in a CompressorError with one line (CorruptData, DecodedSizeLimit, a
failed verification) or in a decode that verification accepts and that equals the packed
model; any other exception, or a case running longer than CASE_SECONDS, fails.  CI runs
FUZZ_CASES cases; ``COMPRESSOR_FUZZ_CASES=5000`` runs more (``COMPRESSOR_FUZZ_SEED`` moves
the sequence)."""

from __future__ import annotations

import json
import os
import signal
import struct
import time
from collections import Counter
from pathlib import Path

import graphs
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from resealing import reseal

from compressor.codec import STORED
from compressor.container import format as fmt
from compressor.container import pack_model, product_values, unpack_bytes, unpack_container
from compressor.container.coders import dict_bins, dict_rans, registry
from compressor.errors import CompressorError

FUZZ_CASES = int(os.environ.get("COMPRESSOR_FUZZ_CASES", "600"))
FUZZ_SEED = int(os.environ.get("COMPRESSOR_FUZZ_SEED", "0"))
CASE_SECONDS = 20  # a hang, not a slow machine
LIMIT = 64 << 20  # max_decoded_bytes: the models are small, a lie above this is refused early
SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
BOUNDARY_INTS = [0, 1, 2, 3, 7, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**64 - 1]


def lenet5_shared() -> onnx.ModelProto:
    """The sample LeNet-5, weights snapped to 16 values and mostly zero (dict and sparse sections)."""
    model = onnx.load(SAMPLES / "lenet5.onnx")
    for tensor in model.graph.initializer:
        w = onnx.numpy_helper.to_array(tensor)
        if w.dtype == np.float32 and w.size >= 1024:
            levels = np.round(w / (np.abs(w).max() + 1e-12) * 8) / 8
            levels[np.abs(w) < np.quantile(np.abs(w), 0.7)] = 0
            tensor.CopyFrom(onnx.numpy_helper.from_array(levels.astype(np.float32), tensor.name))
    return model


def filterbank(rows: int = 48, taps: int = 256) -> np.ndarray:
    """int8 rows of Hann-windowed cosines of increasing frequency, with a little noise."""
    n = np.arange(taps)
    waves = np.cos(np.pi * np.arange(1, rows + 1)[:, None] * n / taps) * np.hanning(taps)
    noise = np.random.default_rng(2).normal(scale=0.01, size=waves.shape)
    return np.round(120 * (waves + noise)).astype(np.int8)


def stft_basis(length: int = 64) -> np.ndarray:
    """float32 rows of a Hann-windowed DFT basis, cosines then sines of k = 0 .. N/2, as an
    STFT kept as a convolution stores it: float32 window times float32 cosines (the sines' own
    rounding and the exact zeros make some values no product the coder predicts)."""
    n = np.arange(length)
    k = np.arange(length // 2 + 1)[:, None]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * n / length)).astype(np.float32)
    angle = 2 * np.pi * k * n / length
    return np.concatenate([window * np.cos(angle).astype(np.float32), -window * np.sin(angle).astype(np.float32)])


def typed_fields() -> onnx.ModelProto:
    """Tensors holding their data in the typed fields (float_data, int64_data, ...)."""
    rng = np.random.default_rng(1)
    inits = [
        helper.make_tensor("f", TensorProto.FLOAT, [300], rng.normal(size=300).astype(np.float32)),
        helper.make_tensor("i64", TensorProto.INT64, [200], rng.integers(-(2**40), 2**40, 200)),
        helper.make_tensor("i32", TensorProto.INT32, [300], rng.integers(-5, 5, 300)),
        helper.make_tensor("d", TensorProto.DOUBLE, [100], rng.normal(size=100)),
        helper.make_tensor("u64", TensorProto.UINT64, [100], rng.integers(0, 2**63, 100, dtype=np.uint64)),
        helper.make_tensor("h", TensorProto.FLOAT16, [300], rng.normal(size=300).astype(np.float16).view(np.uint16)),
    ]
    # a per-channel bias scale that is exactly the input scale times the weight scales (a product)
    w_scale = rng.uniform(1e-3, 1e-2, 96).astype(np.float32)
    x_scale = np.float32(0.0173)
    inits += [
        onnx.numpy_helper.from_array(w_scale, "w_scale"),
        onnx.numpy_helper.from_array(np.array(x_scale), "x_scale"),
        onnx.numpy_helper.from_array(product_values(x_scale, w_scale), "b_scale"),
        # a random walk of bytes: more than 64 distinct values, and xz beats zstd on it (a prime
        # count: no row length for rows-lpc)
        onnx.numpy_helper.from_array(np.cumsum(rng.integers(0, 3, 30011)).astype(np.uint8), "walk"),
        # an int8 filterbank (windowed cosines, one per row): rows-lpc's kind of tensor
        onnx.numpy_helper.from_array(filterbank(), "filterbank"),
        # a float32 STFT basis: dft-rows's kind of tensor
        onnx.numpy_helper.from_array(stft_basis(), "stft_basis"),
    ]
    nodes = [helper.make_node("Identity", [t.name], [f"y_{t.name}"]) for t in inits]
    outputs = [helper.make_tensor_value_info(f"y_{t.name}", t.data_type, None) for t in inits]
    return helper.make_model(
        helper.make_graph(nodes, "typed", [], outputs, inits), opset_imports=[helper.make_opsetid("", 17)]
    )


MODELS = {
    "mlp": graphs.mlp,
    "conv": graphs.conv_net,
    "transformer": graphs.transformer_encoder,
    "gru": graphs.gru_model,
    "qdq": graphs.quantized_qdq_model,
    "fp16": graphs.fp16_model,
    "if": graphs.if_subgraph_model,
    "typed": typed_fields,
    "lenet5": lenet5_shared,
}


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, bytes, bytes]]:
    """(name, model bytes, container) per model."""
    out = []
    for name, build in MODELS.items():
        model = build()
        data, _ = pack_model(model)
        out.append((name, model.SerializeToString(), data))
    # Again without dict-bins (dict-rans and dict win their tensors) and without the rANS
    # layouts, so that the dict-rans, Huffman dict and sparse sections meet the mutations too.
    for name, build, left_out in (
        ("lenet5-rans", lenet5_shared, [dict_bins.ID]),
        ("lenet5-huffman", lenet5_shared, [dict_bins.ID, dict_rans.ID]),
        ("typed-huffman", typed_fields, [dict_bins.ID]),
    ):
        model = build()
        coders = [registry.get(cid) for cid in left_out]
        for coder in coders:
            registry.unregister(coder.id)
        try:
            data, _ = pack_model(model)
        finally:
            for coder in coders:
                registry.register(coder)
        out.append((name, model.SerializeToString(), data))
    return out


def test_the_corpus_reaches_every_coder_and_shared_sections(corpus):
    codecs, versions = set(), set()
    for _, _, data in corpus:
        container = fmt.read_container(data)
        codecs |= {registry.name_of(e.codec) for e in container.sections}
        versions.add(container.version)
    assert codecs == set(registry.names().values())
    assert fmt.SHARED_SECTIONS_VERSION in versions


# ------------------------------------------------------------------ mutations


def sections_of(data: bytes) -> tuple[list[fmt.Section], tuple[int, int]]:
    c = fmt.read_container(data)
    return [fmt.Section(e.kind, e.codec, bytes(c.payload(e)), e.decoded_length) for e in c.sections], c.version


def write(sections: list[fmt.Section], version) -> bytes:
    try:
        return fmt.write_container(sections, version)
    except (ValueError, struct.error):  # the writer refuses an unknown codec or a value out of range
        return b""


def random_int(rng) -> int:
    if rng.random() < 0.6:
        return int(rng.choice(BOUNDARY_INTS)) + int(rng.integers(-1, 2))
    return int(rng.integers(0, 1 << 20))


def random_value(rng):
    return [
        lambda: random_int(rng),
        lambda: -random_int(rng),
        lambda: "x" * int(rng.integers(0, 5)),
        lambda: None,
        lambda: [random_int(rng)] * int(rng.integers(0, 4)),
        lambda: {"a": 1},
        lambda: 1.5,
        lambda: True,
    ][int(rng.integers(0, 8))]()


def flip_bits(data: bytes, rng) -> bytes:
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(0, len(buf) - fmt.TRAILER_BYTES))
        buf[i] ^= 1 << int(rng.integers(0, 8))
    return reseal(buf)


def set_bytes(data: bytes, rng) -> bytes:
    """Random bytes at a random place of a tensor section's first bytes (its header: widths, counts)."""
    sections, version = sections_of(data)
    i = int(rng.integers(0, len(sections)))
    payload = bytearray(sections[i].payload)
    if not payload:
        return write(sections, version)
    at = int(rng.integers(0, min(len(payload), 48)))
    for k in range(at, min(len(payload), at + int(rng.integers(1, 9)))):
        payload[k] = int(rng.integers(0, 256))
    s = sections[i]
    sections[i] = fmt.Section(s.kind, s.codec, bytes(payload), s.decoded_length)
    return write(sections, version)


def truncate_file(data: bytes, rng) -> bytes:
    """The file cut short (half the time with the header's length fixed to match)."""
    buf = bytearray(data[: int(rng.integers(0, len(data)))] + bytes(32))
    if len(buf) >= fmt.HEADER_BYTES and rng.random() < 0.5:
        struct.pack_into("<Q", buf, 16, len(buf))
    return reseal(buf)


def truncate_stream(data: bytes, rng) -> bytes:
    """One section's payload shortened, longer or spliced, the table then rewritten to match."""
    sections, version = sections_of(data)
    i = int(rng.integers(0, len(sections)))
    s = sections[i]
    payload = s.payload
    choice = int(rng.integers(0, 3))
    if choice == 0:
        payload = payload[: int(rng.integers(0, len(payload) + 1))]
    elif choice == 1:
        payload = payload + rng.bytes(int(rng.integers(1, 16)))
    else:
        at = int(rng.integers(0, len(payload) + 1))
        payload = payload[:at] + payload[at + int(rng.integers(1, 16)) :]
    decoded = len(payload) if registry.get(s.codec).stored_is_decoded else s.decoded_length
    sections[i] = fmt.Section(s.kind, s.codec, payload, decoded)
    return write(sections, version)


def lie_in_table(data: bytes, rng) -> bytes:
    sections, version = sections_of(data)
    i = int(rng.integers(0, len(sections)))
    s = sections[i]
    what = int(rng.integers(0, 4))
    if what == 0:  # another codec, the same payload
        sections[i] = fmt.Section(s.kind, int(rng.choice(list(registry.names()))), s.payload, s.decoded_length)
    elif what == 1:  # another decoded length
        decoded = random_int(rng) if rng.random() < 0.5 else max(0, s.decoded_length + int(rng.integers(-9, 10)))
        sections[i] = fmt.Section(s.kind, s.codec, s.payload, decoded)
    elif what == 2:  # sections swapped or dropped
        j = int(rng.integers(0, len(sections)))
        sections[i], sections[j] = sections[j], sections[i]
        if rng.random() < 0.3 and len(sections) > 2:
            del sections[j]
    else:  # a raw table field (kind, codec, offset, lengths) rewritten in the bytes
        buf = bytearray(write(sections, version))
        entry = fmt.HEADER_BYTES + fmt.ENTRY_BYTES * i
        field = [(0, "<B"), (1, "<B"), (2, "<H"), (8, "<Q"), (16, "<Q"), (24, "<Q")][int(rng.integers(0, 6))]
        size = struct.calcsize(field[1])
        struct.pack_into(field[1], buf, entry + field[0], random_int(rng) % (1 << (8 * size)))
        return reseal(buf)
    return write(sections, version)


def lie_in_header(data: bytes, rng) -> bytes:
    buf = bytearray(data)
    field = [(8, "<H"), (10, "<H"), (12, "<I"), (16, "<Q"), (24, "<I")][int(rng.integers(0, 5))]
    size = struct.calcsize(field[1])
    struct.pack_into(field[1], buf, field[0], random_int(rng) % (1 << (8 * size)))
    return reseal(buf)


def lie_in_manifest(data: bytes, rng) -> bytes:
    sections, version = sections_of(data)
    manifest = json.loads(fmt.decode_section(fmt.read_container(data), fmt.read_container(data).sections[0]))
    records = manifest["tensors"]
    choice = int(rng.integers(0, 5))
    if choice <= 2 and records:
        record = records[int(rng.integers(0, len(records)))]
        key = str(
            rng.choice(["section", "tensor", "name", "field", "data_type", "dims", "width", "elements", "offset"])
        )
        if key == "dims" and rng.random() < 0.5:
            record[key] = [random_int(rng) for _ in range(int(rng.integers(0, 4)))]
        elif key == "field":
            record[key] = str(
                rng.choice(["raw_data", "float_data", "int32_data", "int64_data", "double_data", "string_data"])
            )
        else:
            record[key] = (
                random_value(rng)
                if rng.random() < 0.5
                else (
                    record.get(key, 0) + int(rng.integers(-2, 3))
                    if isinstance(record.get(key, 0), int)
                    else random_value(rng)
                )
            )
    elif choice == 3 and records:
        i, j = (int(k) for k in rng.integers(0, len(records), 2))
        records[i], records[j] = records[j], records[i]
        if rng.random() < 0.5:
            records.insert(i, dict(records[j]))
    else:
        manifest[str(rng.choice(["format", "version", "model_bytes", "model_sha256", "tensors"]))] = random_value(rng)
    raw = json.dumps(manifest).encode()
    sections[0] = fmt.Section(fmt.KIND_MANIFEST, STORED, raw, len(raw))
    return write(sections, version if rng.random() < 0.8 else (1, int(rng.integers(0, 4))))


MUTATIONS = [flip_bits, set_bytes, truncate_file, truncate_stream, lie_in_table, lie_in_header, lie_in_manifest]


class CaseTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise CaseTimeout


def check_case(original: bytes, data: bytes) -> str:
    """'refused' or 'decoded' (and then exactly the packed model); raises on anything else."""
    outcome = "decoded"
    try:
        model, info = unpack_container(data, verify=True, max_decoded_bytes=LIMIT)
        assert info["verified"] and model.SerializeToString() == original
    except CompressorError as e:
        assert "\n" not in str(e) and str(e)
        outcome = "refused"
    try:  # the splicing decoder (what unpack writes) must refuse as cleanly, verified or not
        if unpack_bytes(data, max_decoded_bytes=LIMIT) != original:
            assert outcome == "refused"
    except CompressorError as e:
        assert "\n" not in str(e) and str(e)
    return outcome


def test_fuzzed_containers_are_refused_cleanly_or_decode_exactly(corpus):
    outcomes: Counter = Counter()
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for case in range(FUZZ_CASES):
            rng = np.random.default_rng([FUZZ_SEED, case])
            name, original, data = corpus[case % len(corpus)]
            mutate = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
            where = f"case {case} (seed {FUZZ_SEED}, {name}, {mutate.__name__})"
            start = time.perf_counter()
            signal.alarm(CASE_SECONDS)
            try:
                outcomes[check_case(original, mutate(data, rng))] += 1
            except CaseTimeout:
                pytest.fail(f"{where}: still running after {CASE_SECONDS} s")
            except Exception as e:  # noqa: BLE001  (any other exception type is the failure)
                raise AssertionError(f"{where}: {type(e).__name__}: {e}") from e
            finally:
                signal.alarm(0)
            assert time.perf_counter() - start < CASE_SECONDS, where
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert outcomes["refused"] > FUZZ_CASES // 2, outcomes
