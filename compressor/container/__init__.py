"""The .cmpz container: an ONNX model <-> a lossless, checksummed, compressed file (FORMAT.md).

Modules, each with one job:

* ``format``: header, section table, checksums; reads and writes container bytes (no onnx).
* ``coders/``: the section codecs behind a registry, one module per coder (no onnx);
  ``coders.encode_tensor_data`` picks the smallest proposal for a field's bytes.
* ``layout``: which bytes of an ONNX tensor a section holds (data fields <-> bytes).
* ``manifest``: the manifest section (what each tensor section restores), written and checked.
* ``pack``: model -> container bytes + stats.  ``unpack``: container -> model or file
  (``splice`` writes the file without loading big tensors into protobuf), with verify.
* ``describe``: what a container holds, for ``inspect``.  ``tables``: the text reports.
"""

from __future__ import annotations

from .coders import encode_tensor_data
from .coders.product import product_values
from .describe import describe_container
from .format import MAGIC
from .layout import field_layout
from .pack import EncodingMemo, find_products, pack_file, pack_model
from .tables import format_container_table, format_pack_table
from .unpack import (
    DEFAULT_MAX_DECODED_BYTES,
    DecodedSizeLimit,
    serialize_model,
    unpack_bytes,
    unpack_container,
    unpack_file,
)

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "MAGIC",
    "DecodedSizeLimit",
    "describe_container",
    "encode_tensor_data",
    "field_layout",
    "find_products",
    "format_container_table",
    "format_pack_table",
    "pack_file",
    "pack_model",
    "EncodingMemo",
    "product_values",
    "serialize_model",
    "unpack_bytes",
    "unpack_container",
    "unpack_file",
]
