"""product (codec 18, format 1.1): a float32 tensor that is, bit for bit, a scalar tensor
times another tensor; the payload names the two (FORMAT.md §7.3).

Pack finds such tensors itself (``find_products``) rather than proposing this coder per
field: the payload depends on the other tensors, not on the field's bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from ...codec import CorruptData
from ...codec.sparse import ELEMENT_DTYPES
from .registry import Coder, DecodeContext, EncodedTensor, register

ID = 18
PAYLOAD = struct.Struct("<II")  # tensor index of the scalar, of the vector
FLOAT = 1  # ONNX TensorProto.FLOAT: the only data type (in raw_data) a product restores


def product_values(scalar: float, vector: np.ndarray) -> np.ndarray:
    """scalar x vector in IEEE-754 binary32 (round to nearest even), as decoders compute it."""
    return (np.float32(scalar) * np.asarray(vector, dtype="<f4")).astype("<f4")


def product_operands(payload) -> tuple[int, int]:
    """(tensor index of the scalar, tensor index of the vector)."""
    return PAYLOAD.unpack(bytes(payload))


def encode(scalar: int, vector: int) -> EncodedTensor:
    """The section of a product of tensor ``scalar`` and tensor ``vector``."""
    return EncodedTensor(ID, PAYLOAD.pack(scalar, vector), params={"scalar_tensor": scalar, "vector_tensor": vector})


def decode(payload, decoded_length: int, width: int, what: str, context: DecodeContext | None = None) -> np.ndarray:
    if context is None:
        raise CorruptData(
            f"{what}: a product section refers to other tensors (decoded with the model, see product_operands)"
        )
    scalar_index, vector_index = product_operands(payload)
    scalar = context.float32_values(scalar_index, 1)
    vector = context.float32_values(vector_index, decoded_length // 4)
    return product_values(scalar[0], vector).view(ELEMENT_DTYPES[4])


def find_products(values: list[tuple[np.ndarray, int] | None], min_bytes: int) -> dict[int, tuple[int, int]]:
    """{tensor index: (scalar index, vector index)} for float32 tensors equal, bit for bit, to a
    scalar float32 tensor times another float32 tensor of the same size.

    ``values`` holds, per tensor, its float32 values and number of dimensions (None when
    it is not float32 data that a product may restore); vectors of fewer than ``min_bytes``
    bytes are not considered.  The int32 biases of a quantized
    Conv carry a scale that is the input's scale times the weight's per-channel scales:
    on a small CNN those copies are 10 % of the container.  Only 1-D positive finite
    vectors big enough for a section are considered; a vector used as an operand is never
    itself a product, and a product is never an operand (no chains)."""
    scalars: dict[bytes, int] = {}
    groups: dict[int, list[tuple[int, np.ndarray]]] = {}
    for i, item in enumerate(values):
        if item is None:
            continue
        vector, ndim = item
        if vector.size == 1:
            scalars.setdefault(vector.tobytes(), i)
        elif ndim == 1 and 4 * vector.size >= min_bytes and np.all(np.isfinite(vector)) and np.all(vector > 0):
            groups.setdefault(vector.size, []).append((i, vector))
    if not scalars:
        return {}
    scalar_values = np.frombuffer(b"".join(scalars), dtype="<f4")
    order = np.argsort(scalar_values, kind="stable")
    scalar_tensors = list(scalars.values())
    sorted_values, scalar_index = scalar_values[order].astype(np.float64), [scalar_tensors[k] for k in order]
    found: dict[int, tuple[int, int]] = {}
    operand_of: set[int] = set()
    for _, group in sorted(groups.items()):
        if len(group) < 2:
            continue
        firsts = np.array([v[0] for _, v in group], dtype=np.float64)
        buckets = _shape_buckets(np.array([v[:2] for _, v in group], dtype=np.float64))
        everyone = np.arange(len(group))
        for ti, (t_index, t) in enumerate(group):  # products in tensor order, operands in order
            if t_index in operand_of:
                continue
            candidates = _candidates(t, buckets, everyone)
            ratios = t[0] / firsts[candidates]
            # Only where a scalar lies within 1e-6 of the ratio of first elements is the exact check run.
            at = np.searchsorted(sorted_values, ratios)
            right, left = np.minimum(at, len(sorted_values) - 1), np.maximum(at - 1, 0)
            near = np.minimum(np.abs(sorted_values[right] - ratios), np.abs(sorted_values[left] - ratios))
            for ci in np.flatnonzero(near <= 1e-6 * ratios):
                bi = int(candidates[ci])
                b_index, b = group[bi]
                if bi == ti or b_index in found:
                    continue
                lo = np.searchsorted(sorted_values, ratios[ci] * (1 - 1e-6))
                hi = np.searchsorted(sorted_values, ratios[ci] * (1 + 1e-6), side="right")
                match = next(
                    (
                        k
                        for k in range(lo, hi)
                        if np.array_equal(product_values(sorted_values[k], b).view("<u4"), t.view("<u4"))
                    ),
                    None,
                )
                if match is not None:
                    found[t_index] = (scalar_index[match], b_index)
                    operand_of.add(b_index)
                    break
    return found


# Buckets of log2(v[1] / v[0]) this wide: a product t = s x b (each element rounded once,
# relative error at most 2**-24 where t is normal) has its ratio within 2**-22 of b's, so
# in b's bucket or a neighbour.
_BUCKETS_PER_OCTAVE = 1 << 16
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def _shape_keys(first_two: np.ndarray) -> np.ndarray:
    """The bucket of each vector, from its first two elements (float64, positive)."""
    return np.floor(np.log2(first_two[:, 1] / first_two[:, 0]) * _BUCKETS_PER_OCTAVE).astype(np.int64)


def _shape_buckets(first_two: np.ndarray) -> dict[int, list[int]]:
    buckets: dict[int, list[int]] = {}
    for i, key in enumerate(_shape_keys(first_two).tolist()):
        buckets.setdefault(key, []).append(i)
    return buckets


def _candidates(t: np.ndarray, buckets: dict[int, list[int]], everyone: np.ndarray) -> np.ndarray:
    """The members of t's group that may be its vector operand, in group order: every one
    whose bucket is t's or a neighbour (all of them when t's first elements are subnormal,
    where rounding is not relative).  Comparing t with each member would make finding
    products quadratic in the number of same-sized vectors."""
    if t[0] < _FLOAT32_TINY or t[1] < _FLOAT32_TINY:
        return everyone
    key = int(_shape_keys(np.array([t[:2]], dtype=np.float64))[0])
    near = [i for k in (key - 1, key, key + 1) for i in buckets.get(k, ())]
    return np.array(sorted(near), dtype=np.int64)


def details(payload) -> dict:
    scalar, vector = product_operands(payload)
    return {"scalar_tensor": scalar, "vector_tensor": vector}


CODER = register(
    Coder(
        ID,
        "product",
        decode,
        min_version=(1, 1),
        summary=lambda params: f"#{params['scalar_tensor']} x #{params['vector_tensor']}",
        details=details,
        shareable=False,
        refers_to_tensors=True,
        restores=(FLOAT, "raw_data"),
        payload_bytes=PAYLOAD.size,
    )
)
