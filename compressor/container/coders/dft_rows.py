"""dft-rows (codec 22, version 1.6): float32 rows predicted as a window times a cosine table
at the row's frequency, the residuals (bit patterns) compressed (FORMAT.md §7.7).

An STFT kept as a convolution (torch.stft exported, an audio model's front end) carries its
basis as a float tensor: rows ``w[n] * cos(2 pi k n / N)`` and ``w[n] * sin(...)``, k = 0 ..
N/2.  Float bits are noise to zstd and xz, but the rows are a window and one table of N
cosines indexed by ``k * n mod N``: stored once, their float32 products predict most values
bit for bit, and only the bit-pattern differences are compressed.  The decoder multiplies
stored float32 numbers (IEEE rounding, no trigonometry): exact on any machine.  Learned weights
fail the quick test on a few leading rows and cost a few milliseconds.  Lossless.
"""

from __future__ import annotations

import struct

import numpy as np

from ...codec import STORED, ByteReader, CorruptData, compress_best, decompress
from .registry import Candidate, Coder, EncodeRequest, name_of, register

ID = 22
VERSION = (1, 6)
ROW_LENGTHS = (16, 4096)  # N: the row lengths tried (divisors of the element count, multiples of 4)
MIN_ELEMENTS = 1024
MAX_ELEMENTS = 1 << 22
PROBE_ROWS = 8  # the quick test: this many leading rows ...
PROBE_EXACT = 0.5  # ... must be predicted bit for bit at this share of their values
HEADER = struct.Struct("<BBHI")  # inner codec, reserved, reserved, row length N
# A row's kind: its table phase (0: cosine, 1: sine = the cosine a quarter turn later) and,
# from 2 on, the product negated (the float32 sign is exact).
KINDS = 4
SPREAD = (0, 1, -1, 2, -2)  # the frequencies tried around a row's spectral peak


def max_rows(length: int) -> int:
    """The most rows a basis of row length `length` has (cosines and sines of k = 0 .. N)."""
    return 2 * length + 2


def cosine_table(length: int) -> np.ndarray:
    """float32 cos(2 pi m / N), m < N, exactly 0 at the quarter turns (the encoder's choice: the
    table is stored, so a zero sine row predicts as zeros)."""
    m = np.arange(length)
    table = np.cos(2 * np.pi * m / length).astype(np.float32)
    table[[length // 4, 3 * length // 4]] = 0
    return table


def table_index(freqs: np.ndarray, kinds: np.ndarray, length: int) -> np.ndarray:
    """[rows, N] indices into the table: (k n - phase) mod N, phase N/4 for sines."""
    n = np.arange(length, dtype=np.int64)
    phase = np.where(kinds % 2 == 1, length // 4, 0).astype(np.int64)
    return (freqs.astype(np.int64)[:, None] * n[None, :] - phase[:, None]) % length


def predict(window: np.ndarray, table: np.ndarray, freqs: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """[rows, N] float32: float32(window[n] * table[index]) (one IEEE product), negated for kinds >= 2."""
    length = window.size
    values = window[None, :] * table[table_index(freqs, kinds, length)]
    return np.where((kinds >= 2)[:, None], -values, values).astype(np.float32)


def bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)


def assign(rows: np.ndarray, window: np.ndarray | None, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's frequency (its spectrum's peak) and the kind predicting most of it exactly
    (with `window`; by the spectrum's phase when no window is known yet)."""
    r, length = rows.shape
    spectrum = np.fft.rfft(rows.astype(np.float64), axis=1)
    freqs = np.argmax(np.abs(spectrum), axis=1).astype(np.int64)
    if window is None:
        peak = spectrum[np.arange(r), freqs]
        re, im = peak.real, peak.imag
        kinds = np.where(np.abs(re) >= np.abs(im), np.where(re >= 0, 0, 2), np.where(im <= 0, 1, 3))
        return freqs, kinds.astype(np.int64)
    # The window's own spectrum spreads a row over neighbouring bins (Hann: k = 0 and 1 tie for
    # the first cosine), so the peak's neighbours are tried too.
    target = bits(rows)
    options = [(f, kind) for f in (freqs + d for d in SPREAD) for kind in range(KINDS)]
    exact = np.stack(
        [(bits(predict(window, table, f % length, np.full(r, kind))) == target).sum(axis=1) for f, kind in options]
    )
    choice = np.argmax(exact, axis=0)  # the first best: nearest the peak, cosine first
    chosen_freqs = np.stack([f % length for f, _ in options])[choice, np.arange(r)]
    chosen_kinds = np.array([kind for _, kind in options])[choice]
    return chosen_freqs.astype(np.int64), chosen_kinds.astype(np.int64)


def estimate_window(rows: np.ndarray, freqs: np.ndarray, kinds: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The window: a k = 0 cosine row itself when there is one (its table values are all 1),
    else each tap's least-squares fit over the rows."""
    dc = np.flatnonzero((freqs == 0) & (kinds == 0))
    if dc.size:
        return rows[dc[0]].astype(np.float32)
    t = table[table_index(freqs, kinds, rows.shape[1])].astype(np.float64)
    t *= np.where(kinds >= 2, -1.0, 1.0)[:, None]
    return ((rows * t).sum(axis=0) / np.maximum((t * t).sum(axis=0), 1e-300)).astype(np.float32)


def fit(rows: np.ndarray, refine: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(window, table, freqs, kinds) for float32 `rows` [R, N]; `refine`: each row's frequency
    and kind chosen again by exact matches once the window is known (else by the spectrum)."""
    table = cosine_table(rows.shape[1])
    freqs, kinds = assign(rows, None, table)
    window = estimate_window(rows, freqs, kinds, table)
    if refine:
        freqs, kinds = assign(rows, window, table)
    return window, table, freqs, kinds


def usable(window: np.ndarray, table: np.ndarray) -> bool:
    """No product of the two is subnormal (a reader that flushes them to zero would differ)."""
    tiny = np.finfo(np.float32).tiny
    w, t = np.abs(window[window != 0]), np.abs(table[table != 0])
    return w.size == 0 or t.size == 0 or float(w.min()) * float(t.min()) >= 2 * tiny


def row_lengths(elements: int) -> list[int]:
    """The row lengths N a basis of `elements` values could have, longest first: its rows are
    the cosines (or sines) of k = 0 .. N/2, both of them, or every k < N (two-sided), so
    there are N/2 + 1, N + 2, N or 2 N (+ 2) of them; few tensors of learned weights fit one."""
    return [
        n
        for n in range(min(ROW_LENGTHS[1], elements // 2), ROW_LENGTHS[0] - 1, -1)
        if n % 4 == 0 and elements % n == 0 and elements // n in (n // 2 + 1, n, n + 2, 2 * n, 2 * n + 2)
    ]


def probe(values: np.ndarray) -> int | None:
    """The row length whose leading PROBE_ROWS rows are predicted exactly at PROBE_EXACT of their
    nonzero values (the largest share, then the longest), or None."""
    best = None
    for length in row_lengths(values.size):
        rows = values[: min(PROBE_ROWS, values.size // length) * length].reshape(-1, length)
        nonzero = rows != 0  # zeros alone (a pruned tensor) are no basis
        if not nonzero.any():
            continue
        window, table, freqs, kinds = fit(rows, refine=False)
        share = float(np.mean((bits(predict(window, table, freqs, kinds)) == bits(rows))[nonzero]))
        if share >= PROBE_EXACT and (best is None or share > best[1]):
            best = (length, share)
    return None if best is None else best[0]


def body(values: np.ndarray, length: int) -> bytes | None:
    """The uncompressed body for float32 `values` in rows of `length`, or None when unusable."""
    rows = values.reshape(-1, length)
    window, table, freqs, kinds = fit(rows)
    if not usable(window, table):
        return None
    residual = bits(rows) - bits(predict(window, table, freqs, kinds))  # uint32, mod 2^32
    return b"".join(
        [
            window.astype("<f4").tobytes(),
            table.astype("<f4").tobytes(),
            freqs.astype("<u2").tobytes(),
            kinds.astype(np.uint8).tobytes(),
            residual.astype("<u4").tobytes(),
        ]
    )


def encode(values: np.ndarray, length: int) -> tuple[int, bytes] | None:
    """(the inner codec, the payload) of float32 `values` in rows of `length`, or None."""
    raw = body(values, length)
    if raw is None:
        return None
    codec, inner = compress_best(raw)
    return codec, HEADER.pack(codec, 0, 0, length) + inner


def propose(request: EncodeRequest, best: Candidate | None) -> Candidate | None:
    if request.width != 4 or not MIN_ELEMENTS <= request.elements.size <= MAX_ELEMENTS:
        return None
    values = np.frombuffer(request.data, dtype="<f4")
    if not np.isfinite(values[: PROBE_ROWS * ROW_LENGTHS[1]]).all():
        return None
    length = probe(values)
    if length is None or not np.isfinite(values).all():
        return None
    built = encode(values, length)
    if built is None or built[0] == STORED:
        return None
    codec, payload = built
    request.report(f"dft-rows+{name_of(codec)}", len(payload), [])
    if best is not None and len(payload) >= best.size:
        return None
    params = {"row_length": length, "inner": name_of(codec)}
    return Candidate(ID, len(payload), lambda: payload, [], params)


def decode(payload, decoded_length: int, width: int, what: str, context=None) -> bytes:
    reader = ByteReader(bytes(payload), what)
    if width != 4 or len(payload) < HEADER.size:
        raise CorruptData(f"{what}: dft-rows needs 4-byte elements and its header")
    codec, reserved, reserved2, length = HEADER.unpack(reader.take(HEADER.size))
    # Only what the encoder writes: a corrupt header must not buy work of its own size.
    rows = decoded_length // (4 * length) if length else 0
    if (
        reserved
        or reserved2
        or length % 4
        or not ROW_LENGTHS[0] <= length <= ROW_LENGTHS[1]
        or decoded_length % (4 * length)
        or not 1 <= rows <= max_rows(length)
    ):
        raise CorruptData(f"{what}: dft-rows row length {length} for {decoded_length} bytes")
    size = 8 * length + 3 * rows + decoded_length
    raw = decompress(reader.take(len(payload) - HEADER.size), codec, size, what)
    window = np.frombuffer(raw, dtype="<f4", count=length).astype(np.float32)
    table = np.frombuffer(raw, dtype="<f4", count=length, offset=4 * length).astype(np.float32)
    freqs = np.frombuffer(raw, dtype="<u2", count=rows, offset=8 * length).astype(np.int64)
    kinds = np.frombuffer(raw, dtype=np.uint8, count=rows, offset=8 * length + 2 * rows).astype(np.int64)
    residual = np.frombuffer(raw, dtype="<u4", offset=8 * length + 3 * rows).reshape(rows, length)
    if (freqs >= length).any() or (kinds >= KINDS).any():
        raise CorruptData(f"{what}: dft-rows frequency or kind out of range")
    with np.errstate(all="ignore"):  # corrupt tables may overflow: the checksum refuses the result
        predicted = bits(predict(window, table, freqs, kinds))
    return (predicted + residual).astype("<u4").tobytes()


def _summary(params: dict) -> str:
    return f"dft-rows {params['row_length']} + {params['inner']}"


register(Coder(ID, "dft-rows", decode, min_version=VERSION, propose=propose, order=96, summary=_summary))
