"""Decoded-size limits (decompression bombs) and unpack's default verification.

The hostile containers are written with the project's own writer, so every checksum is
valid and only the limits (or the verification) can refuse them."""

import os
import struct
import tracemalloc

import numpy as np
import onnx
import pytest
from google.protobuf.message import EncodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compressor.cli import main
from compressor.codec import STORED
from compressor.container import (
    DEFAULT_MAX_DECODED_BYTES,
    DecodedSizeLimit,
    serialize_model,
    unpack_bytes,
    unpack_container,
)
from compressor.container import format as fmt
from compressor.container.layout import FIELD_DTYPE, set_field
from compressor.container.manifest import manifest_bytes

DICT = 16  # the dict codec (FORMAT.md §7.1)


def constant_dict_payload(elements: int, width: int) -> bytes:
    """A dict section of ``elements`` zeros: a one-value codebook and a constant Huffman stream
    (a few dozen bytes, whatever ``elements`` is)."""
    header = struct.pack("<BBHI", width, 0, 0, 1) + b"\0" * width
    stream = struct.pack("<QIBBHI", elements, 1, 0, 0, 0, 0)  # count, alphabet, max_len 0, symbol 0
    return header + stream


def bomb(
    elements: int, field: str = "raw_data", data_type: int = TensorProto.FLOAT, width: int = 4, model_bytes: int = 1000
) -> bytes:
    """A container of one tensor of ``elements`` zeros (valid checksums, a made-up SHA-256)."""
    tensor = TensorProto(name="w", data_type=data_type, dims=[elements])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "bomb",
        [],
        [helper.make_tensor_value_info("y", data_type, [elements])],
        [tensor],
    )
    graph_bytes = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]).SerializeToString()
    record = {"section": 2, "tensor": 0, "name": "w", "field": field, "data_type": data_type,
              "dims": [elements], "width": width, "elements": elements}  # fmt: skip
    manifest = manifest_bytes((1, 0), model_bytes, "0" * 64, [record])
    return fmt.write_container(
        [
            fmt.Section(fmt.KIND_MANIFEST, STORED, manifest, len(manifest)),
            fmt.Section(fmt.KIND_GRAPH, STORED, graph_bytes, len(graph_bytes)),
            fmt.Section(fmt.KIND_TENSOR, DICT, constant_dict_payload(elements, width), width * elements),
        ]
    )


def test_a_600_byte_container_declaring_4_gib_is_refused_before_allocating(tmp_path, capsys):
    data = bomb(1 << 30)  # 4 GiB of float32 zeros
    assert len(data) < 600
    tracemalloc.start()
    for unpack in (unpack_container, unpack_bytes):
        with pytest.raises(DecodedSizeLimit, match="4,294,967,.* decoded bytes in all; the limit is 4,294,967,296"):
            unpack(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20
    box = tmp_path / "bomb.cmpz"
    box.write_bytes(data)
    before = set(os.listdir(tmp_path))
    assert main(["unpack", str(box), "-o", str(tmp_path / "out.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--max-decoded-bytes" in err
    assert set(os.listdir(tmp_path)) == before


def test_limits_apply_per_section_in_all_and_to_the_model(tmp_path):
    data = bomb(1 << 20)  # 4 MiB of zeros in one section
    with pytest.raises(DecodedSizeLimit, match=r"section 2 \(tensor\) declares 4,194,304 decoded bytes"):
        unpack_container(data, max_decoded_bytes=(4 << 20) - 1)
    with pytest.raises(DecodedSizeLimit, match="in all"):
        unpack_container(data, max_decoded_bytes=4 << 20)  # the section fits, not with the graph
    with pytest.raises(DecodedSizeLimit, match="a model of"):
        unpack_container(bomb(1 << 20, model_bytes=1 << 40), max_decoded_bytes=8 << 20)
    model, _ = unpack_container(data, max_decoded_bytes=8 << 20)
    assert numpy_helper.to_array(model.graph.initializer[0]).tobytes() == bytes(4 << 20)
    assert unpack_container(data, max_decoded_bytes=None)[0] == model
    # the CLI: a raised limit with a suffix decodes it (the made-up SHA-256 needs --no-verify)
    box = tmp_path / "zeros.cmpz"
    box.write_bytes(data)
    out = tmp_path / "out.onnx"
    assert main(["unpack", str(box), "-o", str(out), "--max-decoded-bytes", "1M", "--no-verify"]) == 1
    assert not out.exists()
    assert main(["unpack", str(box), "-o", str(out), "--max-decoded-bytes", "8M", "--no-verify"]) == 0
    assert onnx.load(out).graph.initializer[0].raw_data == bytes(4 << 20)
    assert main(["unpack", str(box), "-o", str(out), "--max-decoded-bytes", "lots"]) == 2


def test_the_default_limit_admits_what_pack_can_write():
    assert DEFAULT_MAX_DECODED_BYTES >= 2 * (2**31 - 1)  # a 2 GiB model (protobuf's limit) and its graph


@pytest.mark.parametrize("field, data_type", [("float_data", TensorProto.FLOAT), ("int64_data", TensorProto.INT64)])
def test_typed_fields_are_restored_without_a_python_number_per_value(field, data_type):
    width = np.dtype(FIELD_DTYPE[field]).itemsize
    elements = (8 << 20) // width
    data = bomb(elements, field, data_type, width)
    tracemalloc.start()
    model, _ = unpack_container(data, max_decoded_bytes=64 << 20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(getattr(model.graph.initializer[0], field)) == elements
    assert peak < 4 * (8 << 20)  # a list of Python numbers alone would be 32 bytes per value


typed_values = st.sampled_from(sorted(FIELD_DTYPE)).flatmap(
    lambda field: st.tuples(st.just(field), st.binary(max_size=400).map(lambda b, f=field: _whole(b, f)))
)


def _whole(raw: bytes, field: str) -> bytes:
    width = np.dtype(FIELD_DTYPE[field]).itemsize
    return raw[: len(raw) - len(raw) % width]


@settings(max_examples=200, deadline=None)
@given(typed_values)
def test_set_field_gives_what_extend_gives(case):
    field, raw = case
    values = np.frombuffer(raw, dtype=FIELD_DTYPE[field])
    if field in ("float_data", "double_data"):  # a NaN through a Python float may lose its payload
        values = np.nan_to_num(values)
    expected = TensorProto()
    getattr(expected, field).extend(values.tolist())
    got = TensorProto()
    set_field(got, field, values.tobytes())
    assert got.SerializeToString() == expected.SerializeToString()


def test_set_field_keeps_every_bit_of_float_values():
    bits = np.array([0x7FC00001, 0xFF800000, 0x80000000, 0x00000001, 0x7F7FFFFF], dtype="<u4")
    tensor = TensorProto()
    set_field(tensor, "float_data", bits.tobytes())
    assert np.array(tensor.float_data, dtype="<f4").view("<u4")[1:].tolist() == bits[1:].tolist()


def test_a_model_over_protobufs_limit_is_reported_not_raised():
    class TooLarge:  # what upb does with a message over 2 GiB (building one here would take 2 GB)
        def SerializeToString(self):
            raise EncodeError("Failed to serialize proto")

    assert serialize_model(TooLarge()) is None
