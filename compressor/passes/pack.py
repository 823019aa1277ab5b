"""Moved to ``compressor.container``; this re-export keeps old imports working until callers switch."""

from __future__ import annotations

from ..container import (
    describe_container,
    encode_tensor_data,
    field_layout,
    find_products,
    format_container_table,
    format_pack_table,
    pack_file,
    pack_model,
    product_values,
    serialize_model,
    unpack_bytes,
    unpack_container,
    unpack_file,
)

__all__ = [
    "describe_container",
    "encode_tensor_data",
    "field_layout",
    "find_products",
    "format_container_table",
    "format_pack_table",
    "pack_file",
    "pack_model",
    "product_values",
    "serialize_model",
    "unpack_bytes",
    "unpack_container",
    "unpack_file",
]
