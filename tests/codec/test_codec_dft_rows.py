"""dft-rows (codec 22): float32 rows predicted as a window times a cosine table."""

from __future__ import annotations

import numpy as np
import pytest

from compressor.codec import CorruptData, compress_best
from compressor.container.coders import dft_rows, encode_tensor_data, registry
from tests.codec.test_codec_fuzz import stft_basis


def decoded(payload: bytes, data: bytes) -> bytes:
    return bytes(registry.get(dft_rows.ID).decode(payload, len(data), 4, "t"))


@pytest.mark.parametrize("length", [64, 256])
def test_an_stft_basis_takes_dft_rows_and_decodes_exactly(length):
    data = stft_basis(length).tobytes()
    encoded = encode_tensor_data(data, 4)
    assert registry.name_of(encoded.codec) == "dft-rows"
    assert len(encoded.payload) < 0.5 * min(c["bytes"] for n, c in encoded.candidates.items() if "dft" not in n)
    assert decoded(encoded.payload, data) == data


def test_each_row_gets_its_frequency_and_zero_sine_rows_predict_exactly():
    basis = stft_basis(128).reshape(-1, 128)
    window, table, freqs, kinds = dft_rows.fit(basis)
    k = np.arange(65).tolist() * 2
    # k and N - k are the same cosine; Hann's first cosine ties bins 0 and 1 (the neighbours are tried)
    assert all(f in (j, (128 - j) % 128) for f, j in zip(freqs[:128].tolist(), k[:128]))
    exact = dft_rows.bits(dft_rows.predict(window, table, freqs, kinds)) == dft_rows.bits(basis)
    assert exact[65].all()  # the k = 0 sine row: zeros, the table's quarter turn is exactly 0
    assert exact.mean() > 0.8


@pytest.mark.parametrize("seed", range(3))
def test_any_rows_decode_exactly_noise_negative_zeros_and_scaled_rows_included(seed):
    rng = np.random.default_rng(seed)
    basis = stft_basis(64)
    for values in (
        basis + rng.normal(scale=1e-3, size=basis.shape).astype(np.float32),
        np.where(rng.random(basis.shape) < 0.1, np.float32(-0.0), basis),
        basis[::-1] * np.float32(3.7),
        rng.normal(size=(10, 64)).astype(np.float32),
    ):
        values = np.ascontiguousarray(values, dtype=np.float32)
        built = dft_rows.encode(values.ravel(), 64)
        assert built is not None
        assert decoded(built[1], values.tobytes()) == values.tobytes()


def test_learned_like_weights_and_pruned_zeros_stop_at_the_quick_test():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(258, 256)).astype(np.float32)
    assert dft_rows.probe(weights.ravel()) is None
    pruned = np.where(rng.random((258, 256)) < 0.9, 0, weights).astype(np.float32)
    assert dft_rows.probe(pruned.ravel()) is None
    assert registry.name_of(encode_tensor_data(weights.tobytes(), 4).codec) != "dft-rows"
    assert dft_rows.probe(stft_basis(256).ravel()) == 256


def test_no_proposal_for_other_widths_few_elements_or_non_finite_values():
    basis = stft_basis(64)
    assert dft_rows.propose(registry.EncodeRequest(basis.tobytes()[:4000], 4), None) is None
    assert dft_rows.propose(registry.EncodeRequest(basis.tobytes(), 2), None) is None
    bad = basis.copy()
    bad[3, 5] = np.nan
    assert dft_rows.propose(registry.EncodeRequest(bad.tobytes(), 4), None) is None
    assert dft_rows.row_lengths(4099) == []


@pytest.mark.parametrize("length, decoded_length", [(300, 4 * 300 * 4), (8, 4 * 8 * 4), (64, 4 * 64 * 200), (64, 1000)])
def test_a_header_the_encoder_never_writes_is_refused_before_decoding(length, decoded_length):
    codec, inner = compress_best(bytes(64))
    with pytest.raises(CorruptData):
        dft_rows.decode(dft_rows.HEADER.pack(codec, 0, 0, length) + inner, decoded_length, 4, "t")
    with pytest.raises(CorruptData):
        dft_rows.decode(b"\x01", 4096, 4, "t")


def test_out_of_range_frequencies_are_refused():
    basis = stft_basis(64)
    raw = bytearray(dft_rows.body(basis.ravel(), 64))
    raw[8 * 64 : 8 * 64 + 2] = (64).to_bytes(2, "little")  # row 0's frequency = N
    codec, inner = compress_best(bytes(raw))
    with pytest.raises(CorruptData):
        dft_rows.decode(dft_rows.HEADER.pack(codec, 0, 0, 64) + inner, basis.nbytes, 4, "t")
