"""The `planes` codec (FORMAT.md §7.4): byte planes of multi-byte elements, then zstd or xz."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from compressor.codec import XZ, ZSTD, CorruptData, planes
from compressor.container import encode_tensor_data, pack_model, unpack_bytes, unpack_container
from compressor.container import format as fmt
from compressor.container.coders import dict_bins, dict_rans, dictionary
from compressor.container.coders import planes as planes_coder


@settings(max_examples=60, deadline=None)
@given(
    width=st.sampled_from(planes.WIDTHS),
    count=st.integers(0, 300),
    codec=st.sampled_from(planes.INNER_CODECS),
    seed=st.integers(0, 2**32 - 1),
)
def test_planes_round_trip(width, count, codec, seed):
    data = np.random.default_rng(seed).integers(0, 256, width * count, dtype=np.uint8).tobytes()
    assert planes.from_planes(planes.to_planes(data, width), width) == data
    payload = planes.encode(data, width, codec)
    assert payload[:2] == bytes([width, codec])
    assert planes.decode(payload, width, len(data), "t") == data


def test_planes_are_byte_positions():
    data = np.array([0x04030201, 0x08070605], dtype="<u4").tobytes()
    assert planes.to_planes(data, 4) == bytes([1, 5, 2, 6, 3, 7, 4, 8])


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda p: bytes([2]) + p[1:], "element width 2"),
        (lambda p: p[:1] + bytes([0]) + p[2:], "inner codec 0"),
        (lambda p: p[:1] + bytes([9]) + p[2:], "inner codec 9"),
        (lambda p: p[:1], "truncated"),
        (lambda p: p[:-3], "zstd"),
    ],
)
def test_lying_planes_payloads_are_refused(mutate, match):
    data = np.arange(100, dtype="<f4").tobytes()
    payload = planes.encode(data, 4, ZSTD)
    with pytest.raises(CorruptData, match=match):
        planes.decode(mutate(payload), 4, len(data), "t")
    with pytest.raises(CorruptData, match="declares"):
        planes.decode(payload, 4, len(data) + 4, "t")


def rounded_scales(n=512, seed=0) -> np.ndarray:
    """Positive float32 values with 7 mantissa bits, like the per-channel scales quantize writes."""
    values = np.random.default_rng(seed).uniform(1e-3, 1e-2, n).astype(np.float32)
    return (values.view("<u4") & np.uint32(0xFFFF0000)).view("<f4")


def test_the_packer_picks_planes_where_they_win_and_not_elsewhere():
    encoded = encode_tensor_data(rounded_scales().tobytes(), 4)
    assert encoded.codec == planes_coder.ID and encoded.params["inner"] in ("zstd", "xz")
    assert len(encoded.payload) < min(
        c["bytes"] for name, c in encoded.candidates.items() if not name.startswith("planes")
    )
    # Bytes (width 1) never go to planes; neither does a tensor a codebook codes better.
    assert encode_tensor_data(np.arange(1000, dtype=np.uint8).tobytes(), 1).codec != planes_coder.ID
    few = np.random.default_rng(1).choice(np.float32([0.5, -1.0, 2.0]), 4000)
    assert encode_tensor_data(few.tobytes(), 4).codec in (dictionary.ID, dict_rans.ID, dict_bins.ID)


def scales_model() -> onnx.ModelProto:
    scales = rounded_scales()
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [scales.size])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [scales.size])],
        [numpy_helper.from_array(scales, "s")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_container_with_planes_is_version_1_2_and_round_trips():
    model = scales_model()
    data, _ = pack_model(model)
    container = fmt.read_container(data)
    assert container.version == (1, 2)
    assert [e.codec for e in container.sections[2:]] == [planes_coder.ID]
    assert unpack_container(data, verify=True)[0].SerializeToString() == model.SerializeToString()
    assert unpack_bytes(data) == model.SerializeToString()
    # The same sections under an older version number are refused before anything is decoded.
    sections = [fmt.Section(e.kind, e.codec, bytes(container.payload(e)), e.decoded_length) for e in container.sections]
    older = bytearray(fmt.write_container(sections))
    older[10:12] = (1).to_bytes(2, "little")
    with pytest.raises(CorruptData, match="needs format 1.2"):
        fmt.read_container(bytes(older), verify_checksums=False)


def test_xz_planes_decode_too():
    data = rounded_scales(4000).tobytes()
    assert planes.decode(planes.encode(data, 4, XZ), 4, len(data), "t") == data
