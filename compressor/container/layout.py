"""Which bytes of an ONNX tensor a container section holds: data fields <-> little-endian bytes.

``field_layout`` says how many elements of which width a data field must hold for a
tensor's type and shape (FORMAT.md §5.3); only fields whose layout is known are ever
moved into a tensor section, so every section's size can be checked against a shape.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

T = onnx.TensorProto

MAX_GRAPH_BYTES = 2**31 - 1  # protobuf cannot parse more


def _types(*names: str) -> set[int]:
    return {getattr(T, n) for n in names if hasattr(T, n)}


FLOAT8 = _types("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0")
FOUR_BIT = _types("UINT4", "INT4", "FLOAT4E2M1")
TWO_BIT = _types("UINT2", "INT2")
# raw_data: element width in bytes and elements per tensor value, by data type.
RAW_LAYOUT = {
    T.FLOAT: (4, 1), T.UINT8: (1, 1), T.INT8: (1, 1), T.UINT16: (2, 1), T.INT16: (2, 1),
    T.INT32: (4, 1), T.INT64: (8, 1), T.BOOL: (1, 1), T.FLOAT16: (2, 1), T.DOUBLE: (8, 1),
    T.UINT32: (4, 1), T.UINT64: (8, 1), T.COMPLEX64: (4, 2), T.COMPLEX128: (8, 2), T.BFLOAT16: (2, 1),
    **{t: (1, 1) for t in FLOAT8},
}  # fmt: skip
# Typed fields: numpy dtype of one field element, and the data types each field may hold.
FIELD_DTYPE = {
    "float_data": "<f4",
    "int32_data": "<i4",
    "int64_data": "<i8",
    "double_data": "<f8",
    "uint64_data": "<u8",
}
INT32_FIELD_TYPES = _types("INT32", "INT16", "INT8", "UINT16", "UINT8", "BOOL", "FLOAT16", "BFLOAT16") | FLOAT8
FIELD_TYPES = {
    "float_data": {T.FLOAT: 1, T.COMPLEX64: 2},
    "int32_data": {t: 1 for t in INT32_FIELD_TYPES},
    "int64_data": {T.INT64: 1},
    "double_data": {T.DOUBLE: 1, T.COMPLEX128: 2},
    "uint64_data": {T.UINT32: 1, T.UINT64: 1},
}
# string_data is not here: string tensors stay in the graph section.
DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def num_values(dims) -> int:
    return math.prod(int(d) for d in dims)


def dtype_name(data_type: int) -> str:
    """The ONNX name of a data type (its number when unknown)."""
    return T.DataType.Name(data_type) if data_type in T.DataType.values() else str(data_type)


def field_layout(data_type: int, dims, field_name: str) -> tuple[int, int] | None:
    """(element width, element count) that ``field_name`` must hold for this type and shape.

    None when the field cannot hold this type, or the type's layout is not known: such
    data is never stripped, so every section's size can be checked against a shape.
    """
    n = num_values(dims)
    if field_name == "raw_data":
        if data_type in RAW_LAYOUT:
            width, per_value = RAW_LAYOUT[data_type]
            return width, n * per_value
        if data_type in FOUR_BIT:
            return 1, (n + 1) // 2
        if data_type in TWO_BIT:
            return 1, (n + 3) // 4
        return None
    if field_name == "int32_data" and data_type in FOUR_BIT:
        return 4, (n + 1) // 2
    if field_name == "int32_data" and data_type in TWO_BIT:
        return 4, (n + 3) // 4
    per_value = FIELD_TYPES.get(field_name, {}).get(data_type)
    if per_value is None:
        return None
    return np.dtype(FIELD_DTYPE[field_name]).itemsize, n * per_value


def field_bytes(tensor: onnx.TensorProto, field_name: str) -> bytes | None:
    """The field's data as little-endian bytes, or None if the field is absent/empty."""
    if field_name == "raw_data":
        return tensor.raw_data if tensor.HasField("raw_data") else None
    values = getattr(tensor, field_name)
    if not len(values):
        return None
    return np.array(values, dtype=FIELD_DTYPE[field_name]).tobytes()


# TensorProto field numbers of the typed data fields, all ``[packed = true]`` in onnx.proto.
FIELD_NUMBER = {"float_data": 4, "int32_data": 5, "int64_data": 7, "double_data": 10, "uint64_data": 11}
VARINT_CHUNK = 1 << 16  # values varint-encoded at a time (bounds the temporary arrays)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varints(values: np.ndarray) -> bytes:
    """Protobuf varints of 64-bit unsigned values (minimal length), vectorised."""
    groups = np.empty((values.size, 10), dtype=np.uint8)
    rest = values.copy()
    for k in range(10):
        groups[:, k] = rest & np.uint64(0x7F)
        rest >>= np.uint64(7)
    lengths = np.ones(values.size, dtype=np.int64)
    for k in range(1, 10):
        lengths += (values >> np.uint64(7 * k)) != 0
    column = np.arange(10)
    groups[column < (lengths - 1)[:, None]] |= 0x80
    return groups[column < lengths[:, None]].tobytes()


def packed_field(field_name: str, data) -> bytes:
    """A typed data field holding these little-endian values, serialized as protobuf does
    (tag, length, values): float/double values are their bytes, integers varints."""
    values = np.frombuffer(data, dtype=FIELD_DTYPE[field_name])
    if field_name in ("float_data", "double_data"):
        body = [memoryview(values).cast("B")]
    else:
        # int32/int64 values are varints of their 64-bit two's complement.
        body = [
            _varints(chunk.astype(np.int64).view(np.uint64) if chunk.dtype.kind == "i" else chunk.astype(np.uint64))
            for chunk in (values[i : i + VARINT_CHUNK] for i in range(0, values.size, VARINT_CHUNK))
        ]
    length = sum(len(part) for part in body)
    return b"".join([_varint(FIELD_NUMBER[field_name] << 3 | 2), _varint(length), *body])


def set_field(tensor: onnx.TensorProto, field_name: str, data) -> None:
    """Fill an empty data field from its little-endian bytes.

    Typed fields are parsed from their serialization: no Python number per value (a
    256 MiB float_data field would cost gigabytes as a list of floats), and every bit of
    each value is kept."""
    if field_name == "raw_data":
        tensor.raw_data = data
    else:
        tensor.MergeFromString(packed_field(field_name, data))


def field_present(tensor: onnx.TensorProto, field_name: str) -> bool:
    if field_name == "raw_data":
        return tensor.HasField("raw_data")
    return len(getattr(tensor, field_name)) > 0


def raw_float32(tensor: onnx.TensorProto) -> np.ndarray | None:
    """A FLOAT tensor's values when it holds them in raw_data (in memory, the right size)."""
    if tensor.data_type != T.FLOAT or not tensor.HasField("raw_data") or tensor.data_location == T.EXTERNAL:
        return None
    n = num_values(tensor.dims)
    return np.frombuffer(tensor.raw_data, dtype="<f4") if len(tensor.raw_data) == 4 * n else None
