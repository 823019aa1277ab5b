"""The section codecs of the .cmpz format, one module each, behind a registry.

Importing this package registers the built-in coders: stored / zstd / xz (``generic``),
``dictionary``, ``sparse``, ``product``, ``planes``, ``dict_rans``, ``rows_lpc`` and ``dft_rows``.  A new coder is one more module
that calls ``registry.register`` (and is imported here, or by whoever uses it).
"""

from __future__ import annotations

from . import dft_rows, dict_bins, dict_rans, dictionary, generic, planes, product, rows_lpc, sparse
from .choice import encode_tensor_data
from .registry import Coder, EncodedTensor, get, register

__all__ = [
    "Coder",
    "EncodedTensor",
    "dft_rows",
    "dict_bins",
    "dict_rans",
    "dictionary",
    "encode_tensor_data",
    "generic",
    "get",
    "planes",
    "product",
    "register",
    "rows_lpc",
    "sparse",
]
