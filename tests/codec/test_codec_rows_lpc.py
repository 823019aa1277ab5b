"""rows-lpc (codec 21): rows predicted from their previous values, residuals compressed."""

from __future__ import annotations

import numpy as np
import pytest

from compressor.codec import CorruptData, compress_best
from compressor.container.coders import encode_tensor_data, registry, rows_lpc
from tests.codec.test_codec_fuzz import filterbank


def roundtrip(data: bytes, length: int) -> bytes:
    _, payload = rows_lpc.encode(rows_lpc.signed(np.frombuffer(data, dtype=np.uint8)), length)
    return bytes(registry.get(rows_lpc.ID).decode(payload, len(data), 1, "t"))


def test_a_filterbank_takes_rows_lpc_and_decodes_exactly():
    data = filterbank().tobytes()
    encoded = encode_tensor_data(data, 1)
    assert registry.name_of(encoded.codec) == "rows-lpc"
    assert len(encoded.payload) < 0.8 * encode_tensor_data(data, 1).candidates["xz"]["bytes"]
    assert bytes(registry.get(encoded.codec).decode(encoded.payload, len(data), 1, "t")) == data


@pytest.mark.parametrize("seed", range(4))
def test_any_bytes_decode_exactly(seed):
    rng = np.random.default_rng(seed)
    for values in (rng.integers(0, 256, 4096 * 3), np.cumsum(rng.integers(-3, 4, 8192)), np.full(4096, 127)):
        data = (np.asarray(values) & 0xFF).astype(np.uint8).tobytes()
        for length in (16, 64, 4096):  # divisors of every count here
            assert roundtrip(data, length) == data


def test_learned_like_weights_keep_their_codec_and_stop_at_the_quick_test():
    values = np.round(np.random.default_rng(0).normal(scale=30, size=(64, 288))).astype(np.int8)
    assert registry.name_of(encode_tensor_data(values.tobytes(), 1).codec) != "rows-lpc"
    assert not rows_lpc.promising(values.ravel().astype(np.int64))
    assert rows_lpc.promising(filterbank().ravel().astype(np.int64))


def test_no_proposal_for_wide_elements_few_elements_or_no_row_length():
    assert rows_lpc.propose(registry.EncodeRequest(bytes(8192), 2), None) is None
    assert rows_lpc.propose(registry.EncodeRequest(bytes(1000), 1), None) is None
    assert rows_lpc.row_length(np.zeros(4099, dtype=np.int64)) is None  # a prime count


def test_a_corrupt_header_is_refused():
    payload = rows_lpc.HEADER.pack(4, 2, 300) + b"\0" * 16
    with pytest.raises(CorruptData):
        rows_lpc.decode(payload, 4096, 1, "t")  # 4096 bytes are no whole number of 300-byte rows
    with pytest.raises(CorruptData):
        rows_lpc.decode(b"\x04", 4096, 1, "t")


@pytest.mark.parametrize("order, length", [(255, 8192), (4, 8192), (200, 4096), (4, 8)])
def test_a_header_the_encoder_never_writes_is_refused_before_decoding(order, length):
    decoded = 8192
    codec, inner = compress_best(bytes(decoded // length * order * 2 + decoded))  # a body that decompresses
    payload = rows_lpc.HEADER.pack(order, codec, length) + inner
    with pytest.raises(CorruptData):
        rows_lpc.decode(payload, decoded, 1, "t")  # the loop's size is the encoder's, not the header's
