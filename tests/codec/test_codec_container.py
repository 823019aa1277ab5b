"""The container refuses every malformed input with CompressorError (never another exception)."""

import contextlib
import hashlib
import json
import struct

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from resealing import reseal

from compressor.codec import STORED, XZ, ZSTD, CorruptData, compress, decompress
from compressor.container import format as fmt
from compressor.container import pack, pack_model, unpack_container
from compressor.container.coders import dict_bins, dict_rans, registry
from compressor.errors import CompressorError


def small_model() -> onnx.ModelProto:
    """Every section codec in a few KB: sparse, dict, general-purpose, typed fields."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(40, 30)).astype(np.float32)
    w1[np.abs(w1) < 1.3] = 0
    w1[w1 != 0] = np.round(w1[w1 != 0] * 2) / 2
    w2 = np.clip(np.rint(rng.normal(size=(30, 200)) * 2), -7, 7).astype(np.int8)
    b1 = rng.normal(size=30).astype(np.float32)
    half = rng.normal(size=(20, 20)).astype(np.float16)
    shape = helper.make_tensor("shape", TensorProto.INT64, [100], list(range(100)))  # int64_data
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("DequantizeLinear", ["w2", "s"], ["w2f"]),
        helper.make_node("MatMul", ["h", "w2f"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 40])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 200])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(np.array(0.1, np.float32), "s"),
            numpy_helper.from_array(half, "half"),
            shape,
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


@contextlib.contextmanager
def left_out(*coder_ids: int):
    """The registered coders without these (restored after)."""
    coders = [registry.get(cid) for cid in coder_ids]
    for coder in coders:
        registry.unregister(coder.id)
    try:
        yield
    finally:
        for coder in coders:
            registry.register(coder)


@pytest.fixture(scope="module", params=["every coder", "dict-rans", "Huffman layouts only"])
def packed(request):
    # Three times: with every coder (dict-bins wins the large tensors), without dict-bins (dict-rans
    # wins them) and without either, so that every symbol decoder meets the same hostile containers.
    model = small_model()
    left = {"every coder": [], "dict-rans": [dict_bins.ID], "Huffman layouts only": [dict_bins.ID, dict_rans.ID]}
    with left_out(*left[request.param]):
        data, stats = pack_model(model)
    expected = {"every coder": {"dict-bins"}, "dict-rans": {"dict-rans"}, "Huffman layouts only": {"sparse", "dict"}}
    expected = expected[request.param]
    codecs = {registry.name_of(e.codec) for e in fmt.read_container(data).sections}
    assert expected <= codecs
    return model.SerializeToString(), data


def assert_refused(data, match=None):
    with pytest.raises(CompressorError, match=match) as info:
        unpack_container(data)
    assert "\n" not in str(info.value)


def test_roundtrip(packed):
    original, data = packed
    model, info = unpack_container(data, verify=True)
    assert model.SerializeToString() == original and info["verified"]


def test_truncation_trailing_garbage_and_version(packed):
    _, data = packed
    assert_refused(data[:-1], "truncated")
    assert_refused(data[:40], "truncated")
    assert_refused(data[:5], "magic")
    assert_refused(b"", "magic")
    assert_refused(data + b"\0", "trailing garbage")
    newer = bytearray(data)
    struct.pack_into("<HH", newer, 8, 2, 0)
    assert_refused(reseal(newer), "unsupported container format version 2.0")
    assert_refused(b"PK\x03\x04" + data[4:], "magic")


def test_checksums(packed):
    _, data = packed
    bad = bytearray(data)
    bad[len(data) // 2] ^= 1
    assert_refused(bytes(bad), "SHA-256")
    # With a recomputed SHA-256 the section CRC still catches it.
    bad[-32:] = hashlib.sha256(bytes(bad[:-32])).digest()
    assert_refused(bytes(bad), "CRC32")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_flipped_byte_is_refused(packed, data):
    _, blob = packed
    i = data.draw(st.integers(0, len(blob) - 1))
    mask = data.draw(st.integers(1, 255))
    bad = bytearray(blob)
    bad[i] ^= mask
    assert_refused(bytes(bad))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_truncation_is_refused(packed, data):
    _, blob = packed
    assert_refused(blob[: data.draw(st.integers(0, len(blob) - 1))])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_lying_fields_with_valid_checksums_never_crash(packed, data):
    """Mutations resealed with correct checksums: refused cleanly, or (benign) the exact model."""
    original, blob = packed
    bad = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(blob) - 33))
        bad[i] = data.draw(st.integers(0, 255))
    try:
        model, _ = unpack_container(reseal(bad), verify=True)
    except CompressorError as e:
        assert "\n" not in str(e)
    else:
        assert model.SerializeToString() == original


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_after_magic_is_refused(tail):
    assert_refused(fmt.MAGIC + tail)
    buf = bytearray(fmt.MAGIC + struct.pack("<HHIQII", 1, 0, 0, 0, 0, 0) + tail + b"\0" * 32)
    struct.pack_into("<Q", buf, 16, len(buf))
    assert_refused(reseal(buf))


# ------------------------------------------------------------------ targeted lies


def rebuild(data: bytes, edit_manifest=None, edit_sections=None, version=None) -> bytes:
    """Re-encode a container with an edited manifest / section list (valid checksums), under
    its own version or the given (older) one."""
    c = fmt.read_container(data)
    sections = [fmt.Section(e.kind, e.codec, bytes(c.payload(e)), e.decoded_length) for e in c.sections]
    manifest = json.loads(fmt.decode_section(c, c.sections[0]))
    if edit_manifest:
        edit_manifest(manifest)
    raw = json.dumps(manifest).encode()
    sections[0] = fmt.Section(fmt.KIND_MANIFEST, STORED, raw, len(raw))
    if edit_sections:
        edit_sections(sections)
    return fmt.write_container(sections, version or c.version)


def first_tensor(manifest):
    return manifest["tensors"][0]


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: first_tensor(m).update(dims=[3, 3]), "do not match"),
        (lambda m: first_tensor(m).update(elements=first_tensor(m)["elements"] + 1), "do not fit"),
        (lambda m: first_tensor(m).update(width=8), "do not fit"),
        (lambda m: first_tensor(m).update(tensor=999), "tensor index"),
        (lambda m: first_tensor(m).update(tensor="0"), "bad 'tensor'"),
        (lambda m: first_tensor(m).update(dims="big"), "bad dims"),
        (lambda m: first_tensor(m).update(field="string_data"), "bad name or field"),
        (lambda m: first_tensor(m).update(section=5), "points at section"),
        (lambda m: m["tensors"].pop(), "tensor records"),
        (lambda m: m.update(version=[9, 9]), "unsupported version"),
        (lambda m: m.update(format="zip"), "not a cmpz manifest"),
        (lambda m: m["tensors"].__setitem__(1, dict(m["tensors"][0], section=3)), "restored twice"),
    ],
)
def test_lying_manifest_is_refused(packed, edit, match):
    _, data = packed
    assert_refused(rebuild(data, edit_manifest=edit), match)


def test_lying_section_sizes_are_refused_before_allocation(packed):
    _, data = packed

    def huge(sections):
        s = sections[2]
        sections[2] = fmt.Section(s.kind, s.codec, s.payload, 1 << 40)

    assert_refused(rebuild(data, edit_sections=huge), r"section 2 \(tensor\) declares .* decoded bytes")

    def larger(sections):
        s = sections[2]
        sections[2] = fmt.Section(s.kind, s.codec, s.payload, s.decoded_length * 2)

    assert_refused(rebuild(data, edit_sections=larger), "section declares .* its records need")

    def lying_graph(sections):
        s = sections[1]
        sections[1] = fmt.Section(s.kind, s.codec, s.payload, s.decoded_length - 1)

    assert_refused(rebuild(data, edit_sections=lying_graph), "declares")

    def not_json(sections):
        sections[0] = fmt.Section(fmt.KIND_MANIFEST, STORED, b"\xff{", 2)

    assert_refused(rebuild(data, edit_sections=not_json), "JSON")

    def swapped(sections):
        sections[0], sections[1] = sections[1], sections[0]

    assert_refused(rebuild(data, edit_sections=swapped), "expected")


@pytest.mark.parametrize("codec", [ZSTD, XZ])
def test_general_purpose_decompression_is_capped_by_the_declared_size(codec):
    bomb = compress(b"\0" * 1_000_000, codec)
    assert decompress(bomb, codec, 1_000_000, "t") == b"\0" * 1_000_000
    for declared in (999_999, 1_000_001, 10):
        with pytest.raises(CorruptData):
            decompress(bomb, codec, declared, "t")
    with pytest.raises(CorruptData):
        decompress(bomb + b"x", codec, 1_000_000, "t")
    with pytest.raises(CorruptData):
        decompress(bomb[:-3], codec, 1_000_000, "t")


def test_containers_are_deterministic():
    a, _ = pack_model(small_model())
    b, _ = pack_model(small_model())
    assert a == b


# ------------------------------------------------------------------ shared sections (1.3)


def shared_model() -> onnx.ModelProto:
    """Five small per-channel scale vectors and five int32 bias vectors: two shared sections."""
    rng = np.random.default_rng(3)
    inits, nodes, f, i = [], [], "x", "n"
    for k in range(5):
        scale = (rng.uniform(0.01, 0.02, 64 * (1 + k % 2))).astype(np.float32)
        scale = (scale.view(np.uint32) & np.uint32(0xFFFF0000)).view(
            np.float32
        )  # 7 mantissa bits, like the quantizer's
        inits.append(numpy_helper.from_array(np.resize(scale, 128), f"s{k}"))
        inits.append(numpy_helper.from_array((rng.integers(-3000, 3000, 128) // 16 * 16).astype(np.int32), f"b{k}"))
        nodes += [helper.make_node("Mul", [f, f"s{k}"], [f"f{k}"]), helper.make_node("Add", [i, f"b{k}"], [f"i{k}"])]
        f, i = f"f{k}", f"i{k}"
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [128]), helper.make_tensor_value_info("n", TensorProto.INT32, [128])],
        [helper.make_tensor_value_info(f, TensorProto.FLOAT, [128]), helper.make_tensor_value_info(i, TensorProto.INT32, [128])],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def shared_packed():
    # Without dict-bins, whose version (1.7) would hide the shared sections' own (1.3).
    model = shared_model()
    with left_out(dict_bins.ID):
        data, _ = pack_model(model)
    container = fmt.read_container(data)
    manifest = json.loads(fmt.decode_section(container, container.sections[0]))
    assert container.version == fmt.SHARED_SECTIONS_VERSION
    assert len(manifest["tensors"]) == 10 and len(container.sections) == 4  # 10 fields in 2 sections
    return model, data


def test_shared_sections_roundtrip_and_are_smaller_than_one_section_each(shared_packed, monkeypatch):
    model, data = shared_packed
    assert unpack_container(data, verify=True)[0].SerializeToString() == model.SerializeToString()
    c = fmt.read_container(data)
    manifest = json.loads(fmt.decode_section(c, c.sections[0]))
    assert [r.get("offset", 0) for r in manifest["tensors"]] == [0, 512, 1024, 1536, 2048] * 2
    monkeypatch.setattr(pack, "MAX_SHARED_FIELD_BYTES", 0)  # every field in its own section
    with left_out(dict_bins.ID):
        apart, _ = pack_model(model)
    assert fmt.read_container(apart).version < fmt.SHARED_SECTIONS_VERSION
    assert len(data) < len(apart)


def test_a_shared_section_longer_than_its_records_is_refused(shared_packed):
    _, data = shared_packed

    def longer(sections):
        s = sections[2]
        sections[2] = fmt.Section(s.kind, s.codec, s.payload, s.decoded_length + 512)

    assert_refused(rebuild(data, edit_sections=longer), "section declares 3072 bytes, its records need 2560")


def second_record(m):
    return m["tensors"][1]


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: second_record(m).update(offset=4), "offset 4, 512 expected"),
        (lambda m: second_record(m).pop("offset"), "offset 0, 512 expected"),
        (lambda m: second_record(m).update(offset=-1), "bad 'offset'"),
        (lambda m: second_record(m).update(offset="512"), "bad 'offset'"),
        (lambda m: m["tensors"][4].update(offset=2049), "offset 2049, 2048 expected"),
        (lambda m: m["tensors"].__setitem__(slice(0, 2), [m["tensors"][1], m["tensors"][0]]), "offset 512, 0 expected"),
        (lambda m: m["tensors"][5].update(section=2, offset=2560), "points at section|its records need"),
        (lambda m: m.update(version=[1, 2]), "unsupported version|points at section|tensor records"),
    ],
)
def test_lying_shared_records_are_refused(shared_packed, edit, match):
    _, data = shared_packed
    assert_refused(rebuild(data, edit_manifest=edit), match)


def test_shared_records_are_refused_before_1_3(shared_packed):
    _, data = shared_packed
    as_1_2 = rebuild(data, edit_manifest=lambda m: m.update(version=[1, 2]), version=(1, 2))
    assert fmt.read_container(as_1_2).version == (1, 2)
    assert_refused(as_1_2, "tensor records for 2 tensor sections")
