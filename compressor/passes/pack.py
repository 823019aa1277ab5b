"""pack / unpack: an ONNX model <-> a .cmpz container (the byte format is in FORMAT.md).

The container is a lossless encoding of the model.  Packing serializes the ModelProto
with the data of every sizeable tensor stripped (compressed as the *graph* section) and
stores each stripped data field as a *tensor* section, encoded with whichever measured
candidate is smallest:

* ``sparse``: gaps between non-fill elements + codebook symbols (or raw values), Huffman-coded;
* ``dict``: codebook + one Huffman-coded symbol per element;
* ``planes``: multi-byte elements regrouped by byte position, then zstd or xz;
* ``zstd`` (level 19), ``xz`` (preset 9) or ``stored``.

A JSON *manifest* says which tensor (by its position in ``graph.iter_tensors`` order) and
which field each section restores.  Unpacking puts every field back, so the model's
``SerializeToString()`` is byte-identical to the original's (the manifest keeps its
SHA-256, which ``unpack --verify`` checks).  ``unpack_file`` writes that serialization
without loading big tensors into protobuf: it splices the decoded arrays into the
serialized graph (see ``_splice``), which is what makes unpacking faster than ``xz -d``.

Public API: ``pack_model`` / ``pack_file``, ``unpack_container`` / ``unpack_bytes`` /
``unpack_file``, ``describe_container``, ``format_pack_table``, ``format_container_table``.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from ..codec import SAMPLE_THRESHOLD, STORED, ZSTD, CorruptData, compress, compress_best, estimate_best, planes
from ..codec import container as fmt
from ..codec.sparse import (
    ELEMENT_DTYPES,
    MAX_CODEBOOK,
    StreamInfo,
    dict_layout,
    element_view,
    find_codebook,
    sparse_layouts,
    with_fill,
)
from ..errors import CompressorError, UsageError
from ..graph import EXTERNAL_DATA_THRESHOLD, atomic_write_bytes, iter_tensors, load_model, make_temp_file, save_model

MANIFEST_FORMAT = "cmpz"
# Tensor data smaller than this stays inside the graph section: compressed together with
# the graph it shares context with, and without a section-table entry or manifest record.
MIN_SECTION_BYTES = 256
MAX_SHARED_FIELD_BYTES = 4096  # fields up to this size may share a section (see _encode_fields)
MIN_CODED_ELEMENTS = 64  # fewer elements: Huffman tables cost more than they save
SPARSE_MIN_FILL = 0.25  # try position coding when at least this share equals the fill value
GENERIC_MARGIN = 1.15  # a sampled general-purpose estimate this far above the best coded size is not built
MAX_MANIFEST_BYTES = 256 << 20
MAX_GRAPH_BYTES = 2**31 - 1  # protobuf cannot parse more
MAX_DECODED_BYTES = 1 << 36  # a sanity cap on everything a container may declare (64 GiB)

T = onnx.TensorProto


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


def _num_values(dims) -> int:
    return math.prod(int(d) for d in dims)


def field_layout(data_type: int, dims, field_name: str) -> tuple[int, int] | None:
    """(element width, element count) that ``field_name`` must hold for this type and shape.

    None when the field cannot hold this type, or the type's layout is not known: such
    data is never stripped, so every section's size can be checked against a shape.
    """
    n = _num_values(dims)
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


def _field_bytes(tensor: onnx.TensorProto, field_name: str) -> bytes | None:
    """The field's data as little-endian bytes, or None if the field is absent/empty."""
    if field_name == "raw_data":
        return tensor.raw_data if tensor.HasField("raw_data") else None
    values = getattr(tensor, field_name)
    if not len(values):
        return None
    return np.array(values, dtype=FIELD_DTYPE[field_name]).tobytes()


def _set_field(tensor: onnx.TensorProto, field_name: str, data: bytes) -> None:
    if field_name == "raw_data":
        tensor.raw_data = data
    else:
        getattr(tensor, field_name).extend(np.frombuffer(data, dtype=FIELD_DTYPE[field_name]).tolist())


def _field_present(tensor: onnx.TensorProto, field_name: str) -> bool:
    if field_name == "raw_data":
        return tensor.HasField("raw_data")
    return len(getattr(tensor, field_name)) > 0


# ------------------------------------------------------------------ encoding choice


@dataclass
class EncodedTensor:
    codec: int
    payload: bytes
    streams: list[StreamInfo] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    candidates: dict = field(default_factory=dict)


def _candidate(size: float, streams: list[StreamInfo], exact: bool = True) -> dict:
    entry = {"bytes": int(round(size))}
    if not exact:
        entry["estimated"] = True
    if streams:
        entry["streams"] = [s.as_dict() for s in streams]
    return entry


def encode_tensor_data(data: bytes, width: int) -> EncodedTensor:
    """Encode one field's bytes with the smallest measured candidate (exact sizes where cheap).

    The Huffman-based layouts are sized exactly from symbol histograms before anything is
    written; the general-purpose codecs are measured on the whole data when it is at most
    256 KiB and on a sample otherwise (then built in full only if they could win).
    """
    elements = element_view(data, width)
    n = elements.size
    layouts = []
    candidates: dict[str, dict] = {}
    built: dict[int, bytes] = {}
    if n >= MIN_CODED_ELEMENTS:
        fill, positions, entry_codebook = 0, None, None
        zeros = n - int(np.count_nonzero(elements))
        if zeros >= SPARSE_MIN_FILL * n:
            # Mostly zeros: analyse only the non-zeros; the dense codebook is theirs plus 0.
            positions = np.flatnonzero(elements)
            entry_codebook = find_codebook(elements[positions], limit=MAX_CODEBOOK - 1)
            if entry_codebook is not None:
                values, counts, _ = with_fill(entry_codebook, 0, zeros)
                layouts.append(dict_layout(elements, values, counts))
            elif positions.size == 0:
                layouts.append(dict_layout(elements, elements[:1].copy(), np.array([n], dtype=np.int64)))
        else:
            dense = find_codebook(elements, limit=MAX_CODEBOOK)
            if dense is not None:
                layouts.append(dict_layout(elements, dense.values, dense.counts, dense.symbols))
                most = int(np.argmax(dense.counts))
                if dense.counts[most] >= SPARSE_MIN_FILL * n and dense.size > 1:
                    # Position coding around the most frequent value (e.g. a non-zero zero-point).
                    fill = int(dense.values[most])
                    positions = np.flatnonzero(elements != elements.dtype.type(fill))
                    entry_codebook = find_codebook(elements[positions], limit=MAX_CODEBOOK - 1)
        if layouts:
            candidates["dict"] = _candidate(layouts[0].size, layouts[0].streams)
        if positions is not None and positions.size:
            for layout in sparse_layouts(elements, fill, positions, entry_codebook, raw=entry_codebook is None):
                if layout.params["values"] == "raw":
                    payload = layout.builder()
                    layout.size = len(payload)
                    built[id(layout)] = payload
                layouts.append(layout)
                candidates[f"sparse+{layout.params['values']}"] = _candidate(layout.size, layout.streams)
    best_layout = min(layouts, key=lambda lay: lay.size) if layouts else None
    generic = None
    if len(data) <= SAMPLE_THRESHOLD or best_layout is None:
        generic = compress_best(data)
    else:
        codec, estimate = estimate_best(data)
        if estimate < GENERIC_MARGIN * best_layout.size:
            generic = compress_best(data, codec)
        else:
            candidates[fmt.CODEC_NAMES[codec]] = _candidate(estimate, [], exact=False)
    if generic is not None:
        candidates[fmt.CODEC_NAMES[generic[0]]] = _candidate(len(generic[1]), [])
    # (generic is None only when a coded layout exists and the sampled generic lost to it.)
    to_beat = min(len(generic[1]) if generic else math.inf, best_layout.size if best_layout else math.inf)
    by_planes = _planes_candidate(data, width, to_beat, candidates) if n >= MIN_CODED_ELEMENTS else None
    if by_planes is not None:
        inner_codec, payload = by_planes
        return EncodedTensor(fmt.PLANES, payload, [], {"inner": fmt.CODEC_NAMES[inner_codec]}, candidates)
    if best_layout is not None and (generic is None or best_layout.size < len(generic[1])):
        payload = built.get(id(best_layout)) or best_layout.build()
        codec = fmt.DICT if best_layout.encoding == "dict" else fmt.SPARSE
        return EncodedTensor(codec, payload, best_layout.streams, best_layout.params, candidates)
    return EncodedTensor(generic[0], generic[1], [], {}, candidates)


def _planes_candidate(data: bytes, width: int, to_beat: float, candidates: dict) -> tuple[int, bytes] | None:
    """(inner codec, planes payload) (FORMAT.md §7.4) if smaller than ``to_beat`` bytes, else None.

    Like the generic codecs, it is compressed in full up to 256 KiB (once: the winner's bytes
    are kept) and measured on a sample above, then built only if it could win."""
    if width not in planes.WIDTHS:
        return None
    shuffled = planes.to_planes(data, width)
    if len(shuffled) <= SAMPLE_THRESHOLD:
        codec, inner = compress_best(shuffled)
        size, exact = len(inner) + planes.HEADER_BYTES, True
    else:
        codec, estimate = estimate_best(shuffled)
        inner, size, exact = None, estimate + planes.HEADER_BYTES, False
    if codec == STORED:
        return None
    name = f"planes+{fmt.CODEC_NAMES[codec]}"
    candidates[name] = _candidate(size, [], exact=exact)
    if size >= (to_beat if exact else to_beat / GENERIC_MARGIN):
        return None
    if inner is None:
        inner = compress(shuffled, codec)
        candidates[name] = _candidate(len(inner) + planes.HEADER_BYTES, [])
    payload = planes.header(width, codec) + inner
    return (codec, payload) if len(payload) < to_beat else None


def _describe_encoding(codec: int, params: dict) -> str:
    name = fmt.CODEC_NAMES[codec]
    if codec == fmt.DICT:
        return f"dict k={params['codebook_size']}"
    if codec == fmt.SPARSE:
        values = f"k={params['codebook_size']}" if params.get("values") == "codebook" else "raw"
        return f"sparse gap={params['gap_width']}b {values}"
    if codec == fmt.PRODUCT:
        return f"#{params['scalar_tensor']} x #{params['vector_tensor']}"
    if codec == fmt.PLANES:
        return f"planes+{params['inner']}"
    return name


# ------------------------------------------------------------------ products


def _raw_float32(tensor: onnx.TensorProto) -> np.ndarray | None:
    if tensor.data_type != T.FLOAT or not tensor.HasField("raw_data") or tensor.data_location == T.EXTERNAL:
        return None
    n = _num_values(tensor.dims)
    return np.frombuffer(tensor.raw_data, dtype="<f4") if len(tensor.raw_data) == 4 * n else None


def find_products(tensors: list[onnx.TensorProto]) -> dict[int, tuple[int, int]]:
    """{tensor index: (scalar index, vector index)} for float32 tensors equal, bit for bit, to a
    scalar float32 tensor times another float32 tensor of the same size (FORMAT.md §7.3).

    The int32 biases of a quantized Conv carry a scale that is the input's scale times the
    weight's per-channel scales: on a small CNN those copies are 10 % of the container.  Only
    1-D positive finite vectors big enough for a section are considered; a vector used as an
    operand is never itself a product, and a product is never an operand (no chains)."""
    scalars: dict[bytes, int] = {}
    groups: dict[int, list[tuple[int, np.ndarray]]] = {}
    for i, tensor in enumerate(tensors):
        values = _raw_float32(tensor)
        if values is None:
            continue
        if values.size == 1:
            scalars.setdefault(values.tobytes(), i)
        elif (
            len(tensor.dims) == 1
            and 4 * values.size >= MIN_SECTION_BYTES
            and np.all(np.isfinite(values))
            and np.all(values > 0)
        ):
            groups.setdefault(values.size, []).append((i, values))
    if not scalars:
        return {}
    scalar_values = np.frombuffer(b"".join(scalars), dtype="<f4")
    order = np.argsort(scalar_values, kind="stable")
    sorted_values, scalar_index = scalar_values[order].astype(np.float64), [list(scalars.values())[k] for k in order]
    found: dict[int, tuple[int, int]] = {}
    operands: set[int] = set()
    for _, group in sorted(groups.items()):
        if len(group) < 2:
            continue
        firsts = np.array([v[0] for _, v in group], dtype=np.float64)
        for ti, (t_index, t) in enumerate(group):  # products in tensor order, operands in order
            if t_index in operands:
                continue
            ratios = t[0] / firsts
            # Only where a scalar lies within 1e-6 of the ratio of first elements is the exact check run.
            at = np.searchsorted(sorted_values, ratios)
            right, left = np.minimum(at, len(sorted_values) - 1), np.maximum(at - 1, 0)
            near = np.minimum(np.abs(sorted_values[right] - ratios), np.abs(sorted_values[left] - ratios))
            for bi in np.flatnonzero(near <= 1e-6 * ratios):
                b_index, b = group[bi]
                if bi == ti or b_index in found:
                    continue
                lo = np.searchsorted(sorted_values, ratios[bi] * (1 - 1e-6))
                hi = np.searchsorted(sorted_values, ratios[bi] * (1 + 1e-6), side="right")
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
                    operands.add(b_index)
                    break
    return found


def product_values(scalar: float, vector: np.ndarray) -> np.ndarray:
    """scalar x vector in IEEE-754 binary32 (round to nearest even), as decoders compute it."""
    return (np.float32(scalar) * np.asarray(vector, dtype="<f4")).astype("<f4")


# ------------------------------------------------------------------ pack


@dataclass
class _Field:
    """One tensor data field stripped from the graph, to be stored in a tensor section."""

    index: int  # the tensor's position in iter_tensors order
    tensor: onnx.TensorProto
    name: str  # the field: raw_data, float_data, ...
    size: int  # bytes
    width: int
    count: int
    encoded: EncodedTensor  # in a section of its own
    data: bytes | None  # kept only while it may still share a section (MAX_SHARED_FIELD_BYTES)


def _field(
    index: int,
    tensor: onnx.TensorProto,
    name: str,
    data: bytes,
    width: int,
    count: int,
    product: tuple[int, int] | None,
) -> _Field:
    """Encode one field on its own; a product (scalar, vector tensor indices) is stored as such."""
    if product:
        encoded = EncodedTensor(
            fmt.PRODUCT,
            fmt.PRODUCT_PAYLOAD.pack(*product),
            params={"scalar_tensor": product[0], "vector_tensor": product[1]},
        )
    else:
        encoded = encode_tensor_data(data, width)
    keep = data if not product and len(data) <= MAX_SHARED_FIELD_BYTES else None
    return _Field(index, tensor, name, len(data), width, count, encoded, keep)


def _encode_fields(fields: list[_Field], rows: list[dict]) -> tuple[list[fmt.Section], list[dict], list[dict]]:
    """Tensor sections, manifest records and stats rows (aligned with ``fields``).

    Each field gets its own section, except that small fields of one data type and field
    name may share one (FORMAT.md §5.3.1): a CNN's per-channel scales and int32 biases,
    a few hundred bytes each, compress far better together and save a table entry each.
    A group is kept only where it is smaller than its members stored apart."""
    encoded = [f.encoded for f in fields]
    groups: dict[tuple, list[int]] = {}
    for i, f in enumerate(fields):
        if f.data is not None:
            groups.setdefault((f.tensor.data_type, f.name, f.width), []).append(i)
    shared_of: dict[int, tuple[list[int], EncodedTensor]] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        together = encode_tensor_data(b"".join(fields[i].data for i in members), fields[members[0]].width)
        apart = sum(len(encoded[i].payload) + fmt.ENTRY_BYTES for i in members)
        if len(together.payload) + fmt.ENTRY_BYTES < apart:
            for i in members:
                shared_of[i] = (members, together)
    sections: list[fmt.Section] = []
    entries: list[dict] = []
    stats: list[dict | None] = [None] * len(fields)
    for i in range(len(fields)):
        members, enc = shared_of.get(i, ([i], encoded[i]))
        if i != members[0]:
            continue  # written with the group's first member
        section_index = 2 + len(sections)
        total = sum(fields[j].size for j in members)
        sections.append(fmt.Section(fmt.KIND_TENSOR, enc.codec, enc.payload, total))
        offset = 0
        for j in members:
            g = fields[j]
            entry = {"section": section_index, "tensor": g.index, "name": g.tensor.name, "field": g.name,
                     "data_type": int(g.tensor.data_type), "dims": [int(d) for d in g.tensor.dims],
                     "width": g.width, "elements": g.count}  # fmt: skip
            if len(members) > 1:
                entry["offset"] = offset
            entries.append(entry)
            # A shared section's bytes are attributed to its members in proportion to their size.
            share = len(enc.payload) * g.size / total
            values = max(rows[g.index]["elements"], 1)
            detail = _describe_encoding(enc.codec, enc.params)
            stats[j] = {
                **rows[g.index],
                "field": g.name,
                "section": section_index,
                "bytes_before": g.size,
                "bytes_after": round(share) if len(members) > 1 else len(enc.payload),
                "bits_per_weight": round(8 * share / values, 3),
                "encoding": fmt.CODEC_NAMES[enc.codec],
                "detail": f"{detail}, shared by {len(members)}" if len(members) > 1 else detail,
                "params": enc.params,
                "streams": [s.as_dict() for s in enc.streams] if j == members[0] else [],
                "candidates": encoded[j].candidates,
            }
            offset += g.size
    return sections, entries, stats


def pack_model(model: onnx.ModelProto) -> tuple[bytes, dict]:
    """Encode a model (with all tensor data in memory) as container bytes; returns (bytes, stats)."""
    for ref in iter_tensors(model):
        if ref.proto.data_location == T.EXTERNAL:
            raise CompressorError(
                f"tensor {ref.name!r} has external data that is not loaded (load the model with compressor.graph.load_model)"
            )
    try:
        original = model.SerializeToString()
    except (ValueError, OverflowError):
        raise CompressorError("models larger than protobuf's 2 GiB limit cannot be packed yet") from None
    stripped = onnx.ModelProto()
    stripped.ParseFromString(original)
    refs = list(iter_tensors(model))
    stripped_refs = list(iter_tensors(stripped))
    products = find_products([ref.proto for ref in refs])
    fields: list[_Field] = []
    rows: list[dict] = []
    for index, (ref, target) in enumerate(zip(refs, stripped_refs)):
        tensor = ref.proto
        dims = [int(d) for d in tensor.dims]
        dtype = T.DataType.Name(tensor.data_type) if tensor.data_type in T.DataType.values() else str(tensor.data_type)
        row = {
            "name": ref.name,
            "kind": ref.kind,
            "graph_path": ref.graph_path,
            "dtype": dtype,
            "shape": dims,
            "elements": _num_values(dims),
        }
        rows.append(row)
        for field_name in DATA_FIELDS:
            data = _field_bytes(tensor, field_name)
            layout = field_layout(tensor.data_type, dims, field_name)
            if data is None or layout is None or len(data) < MIN_SECTION_BYTES:
                continue
            width, count = layout
            if count * width != len(data):
                continue  # inconsistent with its shape: leave it in the graph, untouched
            target.proto.ClearField(field_name)
            fields.append(
                _field(
                    index,
                    tensor,
                    field_name,
                    data,
                    width,
                    count,
                    products.get(index) if field_name == "raw_data" else None,
                )
            )
    sections, entries, field_stats = _encode_fields(fields, rows)
    tensor_stats = []
    by_tensor: dict[int, list[dict]] = {}
    for f, stat in zip(fields, field_stats):
        by_tensor.setdefault(f.index, []).append(stat)
    for index, ref in enumerate(refs):
        if index in by_tensor:
            tensor_stats.extend(by_tensor[index])
            continue
        data_bytes = sum(len(_field_bytes(ref.proto, f) or b"") for f in DATA_FIELDS)
        tensor_stats.append({**rows[index], "field": None, "section": 1, "bytes_before": data_bytes, "bytes_after": None,
                             "bits_per_weight": None, "encoding": "graph", "detail": "in graph section",
                             "params": {}, "streams": [], "candidates": {}})  # fmt: skip
    graph_bytes = stripped.SerializeToString()
    graph_codec, graph_payload = compress_best(graph_bytes)
    shared = len({e["section"] for e in entries}) < len(entries)
    version = fmt.format_version(sections, fmt.SHARED_SECTIONS_VERSION if shared else None)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": list(version),
        "model_bytes": len(original),
        "model_sha256": hashlib.sha256(original).hexdigest(),
        "tensors": entries,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    manifest_codec, manifest_payload = STORED, manifest_bytes
    zstd_manifest = compress(manifest_bytes, ZSTD)
    if len(zstd_manifest) < len(manifest_bytes):
        manifest_codec, manifest_payload = ZSTD, zstd_manifest
    all_sections = [
        fmt.Section(fmt.KIND_MANIFEST, manifest_codec, manifest_payload, len(manifest_bytes)),
        fmt.Section(fmt.KIND_GRAPH, graph_codec, graph_payload, len(graph_bytes)),
        *sections,
    ]
    data = fmt.write_container(all_sections, version)
    parameters = sum(_num_values(ref.proto.dims) for ref in refs)
    stats = _pack_stats(original, data, all_sections, tensor_stats, graph_codec, len(graph_bytes), parameters)
    return data, stats


def _pack_stats(original: bytes, data: bytes, sections, tensor_stats, graph_codec, graph_raw, parameters) -> dict:
    streams = [s for t in tensor_stats for s in t["streams"]]
    coded = sum(s["coded_bytes"] for s in streams)
    bound = sum(s["entropy_bound_bytes"] for s in streams)
    tensor_bytes = sum(len(s.payload) for s in sections[2:])
    overhead = fmt.HEADER_BYTES + fmt.ENTRY_BYTES * len(sections) + fmt.TRAILER_BYTES
    # The non-Huffman part of the tensor sections: codebooks, layout headers, general-purpose payloads.
    other = tensor_bytes - coded
    return {
        "model_bytes": len(original),
        "container_bytes": len(data),
        "ratio": round(len(original) / len(data), 3),
        "parameters": parameters,
        "bits_per_weight": round(8 * len(data) / parameters, 3) if parameters else None,
        "sections": {
            "header_and_table": overhead,
            "manifest": len(sections[0].payload),
            "graph": len(sections[1].payload),
            "graph_raw": graph_raw,
            "graph_codec": fmt.CODEC_NAMES[graph_codec],
            "tensors": tensor_bytes,
        },
        "entropy": {
            "streams": len(streams),
            "coded_bytes": coded,
            "entropy_bound_bytes": round(bound, 1),
            "overhead_pct": round(100 * (coded - bound) / bound, 2) if bound else None,
            "other_tensor_bytes": other,
            # The container against a bound where every Huffman stream is at its entropy.
            "container_over_bound_pct": round(100 * (coded - bound) / (len(data) - coded + bound), 2)
            if bound
            else None,
        },
        "tensors": tensor_stats,
    }


def pack_file(model_path: str | os.PathLike, out_path: str | os.PathLike) -> dict:
    """Load a model, pack it and write the container atomically; returns the stats."""
    out = Path(out_path)
    if str(model_path) != "-" and out.exists() and os.path.samefile(out, model_path):
        raise UsageError(f"refusing to overwrite the input model {out} (choose another -o)")
    if not out.resolve().parent.is_dir():
        raise UsageError(f"output folder does not exist: {out.resolve().parent}")
    model = load_model(model_path, check=False)
    data, stats = pack_model(model)
    atomic_write_bytes(out, data)
    stats = {"input": str(model_path), "output": str(out), **stats}
    if str(model_path) != "-":
        stats["file_bytes"] = Path(model_path).stat().st_size
    return stats


# ------------------------------------------------------------------ unpack


def _read_manifest(container: fmt.Container) -> dict:
    entry = container.sections[0]
    if entry.decoded_length > MAX_MANIFEST_BYTES:
        raise CorruptData(f"manifest declares {entry.decoded_length} bytes (limit {MAX_MANIFEST_BYTES})")
    raw = fmt.decode_section(container, entry)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CorruptData("manifest is not valid UTF-8 JSON") from None
    _check_manifest(manifest, len(container.sections), container.version)
    return manifest


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_manifest(manifest, section_count: int, version: tuple[int, int]) -> None:
    """Check the manifest's shape and types (it is data from a file, so trust nothing)."""
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CorruptData("manifest: not a cmpz manifest")
    if manifest.get("version") != list(version):
        raise CorruptData(
            f"manifest: unsupported version {manifest.get('version')!r} (the header says {version[0]}.{version[1]})"
        )
    sha = manifest.get("model_sha256")
    if not isinstance(sha, str) or len(sha) != 64 or not _is_int(manifest.get("model_bytes")):
        raise CorruptData("manifest: bad model_sha256 / model_bytes")
    tensors = manifest.get("tensors")
    if not isinstance(tensors, list):
        raise CorruptData("manifest: no tensor records")
    shared = tuple(version) >= fmt.SHARED_SECTIONS_VERSION
    if len(tensors) < section_count - 2 or (not shared and len(tensors) != section_count - 2):
        raise CorruptData(f"manifest: {len(tensors)} tensor records for {section_count - 2} tensor sections")
    seen_fields = set()
    for i, rec in enumerate(tensors):
        if not isinstance(rec, dict):
            raise CorruptData(f"manifest: tensor record {i} is not an object")
        for key in ("section", "tensor", "data_type", "width", "elements"):
            if not _is_int(rec.get(key)) or rec[key] < 0:
                raise CorruptData(f"manifest: tensor record {i}: bad {key!r}")
        dims = rec.get("dims")
        if not isinstance(dims, list) or len(dims) > 64 or not all(_is_int(d) and 0 <= d < 2**62 for d in dims):
            raise CorruptData(f"manifest: tensor record {i}: bad dims")
        if not isinstance(rec.get("name"), str) or rec.get("field") not in DATA_FIELDS:
            raise CorruptData(f"manifest: tensor record {i}: bad name or field")
        # Records name sections 2, 3, ... in order; from 1.3 on, consecutive records may name
        # the same section (FORMAT.md §5.3.1) and then say where their bytes start.
        previous = tensors[i - 1]["section"] if i else 1
        if rec["section"] not in ((previous, previous + 1) if shared and i else (previous + 1,)):
            raise CorruptData(
                f"manifest: tensor record {i} points at section {rec['section']}, {previous + 1} expected"
            )
        if "offset" in rec and (not shared or not _is_int(rec["offset"]) or rec["offset"] < 0):
            raise CorruptData(f"manifest: tensor record {i}: bad 'offset'")
        key = (rec["tensor"], rec["field"])
        if key in seen_fields:
            raise CorruptData(f"manifest: tensor {rec['tensor']} field {rec['field']} restored twice")
        seen_fields.add(key)
    if tensors and tensors[-1]["section"] != section_count - 1:
        raise CorruptData(
            f"manifest: the tensor records end at section {tensors[-1]['section']}, the container has {section_count}"
        )


@dataclass
class _Plan:
    """A checked container: its graph (tensor fields still empty) and what goes where."""

    container: fmt.Container
    manifest: dict
    model: onnx.ModelProto
    records: list  # (TensorProto in model, manifest record, SectionEntry)
    tensors: list  # every TensorProto of the model, in the order of FORMAT.md §5.2.1


def _plan(data) -> _Plan:
    """Check everything that can be checked before decoding any tensor.

    Declared sizes are checked against each other, the graph (name, type, shape of each
    target tensor) and the file; nothing large is allocated before that.
    """
    container = fmt.read_container(data)
    manifest = _read_manifest(container)
    graph_entry = container.sections[1]
    if graph_entry.decoded_length > MAX_GRAPH_BYTES:
        raise CorruptData(f"graph section declares {graph_entry.decoded_length} bytes (protobuf limit 2 GiB)")
    declared = sum(s.decoded_length for s in container.sections)
    if declared > MAX_DECODED_BYTES:
        raise CorruptData(f"container declares {declared} decoded bytes (limit {MAX_DECODED_BYTES})")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(fmt.decode_section(container, graph_entry))
    except (DecodeError, RuntimeError, ValueError):
        raise CorruptData("graph section is not a valid ONNX ModelProto") from None
    try:
        refs = list(iter_tensors(model))
    except RecursionError:
        raise CorruptData("graph section nests subgraphs too deeply") from None
    records = []
    filled = (None, 0)  # (section, bytes its records so far cover)
    for rec in manifest["tensors"]:
        what = f"manifest: tensor record for section {rec['section']}"
        if rec["tensor"] >= len(refs):
            raise CorruptData(f"{what}: tensor index {rec['tensor']} but the graph has {len(refs)} tensors")
        tensor = refs[rec["tensor"]].proto
        if tensor.name != rec["name"] or tensor.data_type != rec["data_type"] or list(tensor.dims) != rec["dims"]:
            raise CorruptData(f"{what}: name/type/shape do not match tensor {rec['tensor']} of the graph")
        if _field_present(tensor, rec["field"]) or tensor.data_location == T.EXTERNAL:
            raise CorruptData(f"{what}: the graph already holds data for {rec['name']!r}")
        layout = field_layout(rec["data_type"], rec["dims"], rec["field"])
        entry = container.sections[rec["section"]]
        if layout is None or layout != (rec["width"], rec["elements"]):
            raise CorruptData(
                f"{what}: {rec['elements']} elements of {rec['width']} bytes do not fit shape {rec['dims']}"
            )
        # The records of a section tile its decoded bytes, in order (FORMAT.md §5.3.1).
        start = filled[1] if filled[0] == rec["section"] else 0
        if rec.get("offset", 0) != start:
            raise CorruptData(f"{what}: offset {rec.get('offset', 0)}, {start} expected")
        if start and (entry.codec == fmt.PRODUCT or records[-1][1]["width"] != rec["width"]):
            raise CorruptData(f"{what}: records sharing a section have one width and are not products")
        filled = (rec["section"], start + rec["width"] * rec["elements"])
        last_of_section = (
            rec is manifest["tensors"][-1] or manifest["tensors"][len(records) + 1]["section"] != rec["section"]
        )
        if filled[1] > entry.decoded_length or (last_of_section and filled[1] != entry.decoded_length):
            raise CorruptData(f"{what}: section declares {entry.decoded_length} bytes, its records need {filled[1]}")
        if entry.codec == fmt.PRODUCT and (rec["data_type"] != T.FLOAT or rec["field"] != "raw_data"):
            raise CorruptData(f"{what}: a product section restores FLOAT raw_data only")
        records.append((tensor, rec, entry))
    return _Plan(container, manifest, model, records, [r.proto for r in refs])


def _decode_all(plan: _Plan) -> list:
    """Every record's decoded field (bytes or an element array), product sections last: they
    read their operands from the other sections or from the graph (FORMAT.md §7.3)."""
    buffers: list = [None] * len(plan.records)
    section_of = {rec["tensor"]: i for i, (_, rec, _) in enumerate(plan.records)}
    products = [i for i, (_, _, entry) in enumerate(plan.records) if entry.codec == fmt.PRODUCT]
    decoded: dict[int, bytes | np.ndarray] = {}  # a shared section is decoded once
    for i, (_, rec, entry) in enumerate(plan.records):
        if entry.codec == fmt.PRODUCT:
            continue
        if rec["section"] not in decoded:
            decoded = {rec["section"]: _decode_buffer(plan, rec, entry)}
        whole = decoded[rec["section"]]
        if rec.get("offset", 0) == 0 and rec["width"] * rec["elements"] == entry.decoded_length:
            buffers[i] = whole
        elif isinstance(whole, bytes):
            buffers[i] = whole[rec["offset"] : rec["offset"] + rec["width"] * rec["elements"]]
        else:  # an element array: offsets are whole elements (one width per section)
            first = rec["offset"] // rec["width"]
            buffers[i] = whole[first : first + rec["elements"]]
    for i in products:
        _, rec, entry = plan.records[i]
        scalar_index, vector_index = fmt.product_operands(plan.container, entry)
        what = f"section {rec['section']} (product)"
        scalar = _operand(plan, scalar_index, 1, section_of, buffers, what)
        vector = _operand(plan, vector_index, rec["elements"], section_of, buffers, what)
        buffers[i] = product_values(scalar[0], vector).view(ELEMENT_DTYPES[4])
    return buffers


def _operand(plan: _Plan, index: int, elements: int, section_of: dict, buffers: list, what: str) -> np.ndarray:
    """The float32 values of tensor `index` for a product: from its section or from the graph."""
    if index >= len(plan.tensors):
        raise CorruptData(f"{what}: operand tensor {index}, but the graph has {len(plan.tensors)} tensors")
    tensor = plan.tensors[index]
    if tensor.data_type != T.FLOAT or _num_values(tensor.dims) != elements:
        raise CorruptData(f"{what}: operand tensor {index} is not FLOAT with {elements} values")
    if index in section_of:
        j = section_of[index]
        if plan.records[j][2].codec == fmt.PRODUCT:
            raise CorruptData(f"{what}: operand tensor {index} is itself a product")
        buffer = buffers[j]
        data = buffer if isinstance(buffer, bytes) else buffer.tobytes()
    elif tensor.HasField("raw_data") and tensor.data_location != T.EXTERNAL:
        data = tensor.raw_data
    elif len(tensor.float_data):
        data = np.array(tensor.float_data, dtype="<f4").tobytes()
    else:
        raise CorruptData(f"{what}: operand tensor {index} has no data")
    if len(data) != 4 * elements:
        raise CorruptData(f"{what}: operand tensor {index} holds {len(data)} bytes, {4 * elements} expected")
    return np.frombuffer(data, dtype="<f4")


def _decode_buffer(plan: _Plan, rec: dict, entry) -> bytes | np.ndarray:
    try:
        return fmt.decode_section_buffer(plan.container, entry, rec["width"])
    except MemoryError:
        raise CompressorError(f"not enough memory to decode tensor {rec['name']!r}") from None


def _info(plan: _Plan) -> dict:
    m = plan.manifest
    return {
        "tensors": len(plan.records),
        "model_bytes": m["model_bytes"],
        "model_sha256": m["model_sha256"],
        "verified": False,
    }


def unpack_container(data, *, verify: bool = False) -> tuple[onnx.ModelProto, dict]:
    """Decode container bytes into the original model; returns (model, info).

    With ``verify`` the model's serialization is hashed and compared with the SHA-256
    the manifest recorded at pack time.
    """
    plan = _plan(data)
    for (tensor, rec, _), buffer in zip(plan.records, _decode_all(plan)):
        _set_field(tensor, rec["field"], buffer if isinstance(buffer, bytes) else buffer.tobytes())
    info = _info(plan)
    if verify:
        _verify([serialize_model(plan.model)], info)
        info["verified"] = True
    return plan.model, info


# Splicing: the unpacked model is written without ever holding big tensors inside
# protobuf.  Each raw_data field gets a unique short marker, the (small) model is
# serialized, and the serialization is re-emitted as chunks with every marker replaced
# by the tensor's bytes and the lengths of the enclosing messages fixed.  The result is
# byte-identical to SerializeToString() of the full model (fields keep their order and
# varints are minimal) and saves three copies of every tensor.
_SUBMESSAGES = {  # message kind -> {field number: submessage kind}, along iter_tensors' paths
    "model": {7: "graph"},
    "graph": {1: "node", 5: "tensor"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 11: "graph"},
    "tensor": {},
}
_RAW_DATA_FIELD = 9
_MARKER_PREFIX = b"\x89cmpz-splice\x1a"


class _SpliceFailed(Exception):
    """The serialized graph is not laid out as expected: fall back to plain serialization."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _SpliceFailed("bad varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _nbytes(chunk) -> int:
    return chunk.nbytes if isinstance(chunk, (np.ndarray, memoryview)) else len(chunk)


def _splice(
    buf: bytes, start: int, end: int, kind: str, payloads: dict, marker_at: list, chunks: list, found: set
) -> int:
    """Append the re-encoded message buf[start:end] to ``chunks``; return its new length."""
    view = memoryview(buf)
    total = 0
    run = start  # start of bytes copied through unchanged
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _read_varint(buf, pos, end)
        wire, number = key & 7, key >> 3
        if wire == 0:
            _, pos = _read_varint(buf, pos, end)
            continue
        if wire in (1, 5):
            pos += 8 if wire == 1 else 4
            continue
        if wire != 2:
            raise _SpliceFailed(f"wire type {wire}")
        key_end = pos
        length, data_start = _read_varint(buf, pos, end)
        pos = data_end = data_start + length
        if data_end > end:
            raise _SpliceFailed("field past its message")
        i = bisect.bisect_left(marker_at, data_start)
        if i == len(marker_at) or marker_at[i] >= data_end:
            continue  # no marker inside: copied through with the run
        inner: list = []
        if kind == "tensor" and number == _RAW_DATA_FIELD and data_start == marker_at[i]:
            marker = bytes(buf[data_start:data_end])
            if marker not in payloads or marker in found:
                raise _SpliceFailed("raw_data is not a marker")
            found.add(marker)
            inner.append(payloads[marker])
            new_length = _nbytes(payloads[marker])
        elif number in _SUBMESSAGES[kind]:
            new_length = _splice(
                buf, data_start, data_end, _SUBMESSAGES[kind][number], payloads, marker_at, inner, found
            )
        else:
            raise _SpliceFailed(f"marker inside field {number} of a {kind}")
        if field_start > run:
            chunks.append(view[run:field_start])
            total += field_start - run
        head = bytes(buf[field_start:key_end]) + _varint(new_length)
        chunks.append(head)
        chunks.extend(inner)
        total += len(head) + new_length
        run = data_end
    if pos != end:
        raise _SpliceFailed("message overruns")
    if end > run:
        chunks.append(view[run:end])
        total += end - run
    return total


def _unpack_chunks(plan: _Plan) -> list:
    """The unpacked model's serialization as a list of byte chunks (see _splice)."""
    payloads = {}
    for i, ((tensor, rec, _), buffer) in enumerate(zip(plan.records, _decode_all(plan))):
        if rec["field"] == "raw_data":
            marker = _MARKER_PREFIX + i.to_bytes(8, "little")
            payloads[marker] = buffer if isinstance(buffer, bytes) else buffer.view(np.uint8)
            tensor.raw_data = marker
        else:
            _set_field(tensor, rec["field"], buffer if isinstance(buffer, bytes) else buffer.tobytes())
    serialized = plan.model.SerializeToString()
    marker_at = []
    for marker in payloads:
        at = serialized.find(marker)
        if at < 0 or serialized.find(marker, at + 1) >= 0:
            raise _SpliceFailed("marker not unique")
        marker_at.append(at)
    marker_at.sort()
    chunks: list = []
    found: set = set()
    _splice(serialized, 0, len(serialized), "model", payloads, marker_at, chunks, found)
    if len(found) != len(payloads):
        raise _SpliceFailed("a marker was not reached")
    return chunks


def unpack_bytes(data) -> bytes:
    """The unpacked model's serialization, built by splicing (what unpack_file writes)."""
    plan = _plan(data)
    try:
        chunks = _unpack_chunks(plan)
    except _SpliceFailed:
        return unpack_container(data)[0].SerializeToString()
    return b"".join(chunks)


def _write_chunks(path: Path, chunks: list) -> None:
    """Atomic write (temp file in the same folder, then rename), chunk by chunk."""
    fd, tmp = make_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk if not isinstance(chunk, np.ndarray) else memoryview(chunk))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def serialize_model(model: onnx.ModelProto) -> bytes | None:
    """The model's bytes, or None when it is too large for one protobuf message."""
    try:
        return model.SerializeToString()
    except (ValueError, OverflowError):  # over protobuf's 2 GiB limit
        return None


def _verify(chunks: list | None, info: dict) -> None:
    if chunks is None or any(c is None for c in chunks):
        raise CompressorError("cannot verify: the unpacked model is larger than protobuf's 2 GiB limit")
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    size = sum(_nbytes(c) for c in chunks)
    if size != info["model_bytes"] or digest.hexdigest() != info["model_sha256"]:
        raise CompressorError("verification failed: the unpacked model differs from the packed one (SHA-256)")


def _read_container_file(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no such file: {path}")
    if p.is_dir():
        raise UsageError(f"is a directory, not a container: {path}")
    return p.read_bytes()


def unpack_file(container_path: str | os.PathLike, out_path: str | os.PathLike, *, verify: bool = False) -> dict:
    """Unpack a container file into an ONNX file (written atomically; nothing is left on failure)."""
    out = Path(out_path)
    if out.exists() and Path(container_path).exists() and os.path.samefile(out, container_path):
        raise UsageError(f"refusing to overwrite the container {out} (choose another -o)")
    if not out.resolve().parent.is_dir():
        raise UsageError(f"output folder does not exist: {out.resolve().parent}")
    data = _read_container_file(container_path)
    info = None
    if _plan_size(data) < EXTERNAL_DATA_THRESHOLD:
        plan = _plan(data)
        info = _info(plan)
        try:
            chunks = _unpack_chunks(plan)
        except _SpliceFailed:
            chunks = None
        if chunks is not None:
            if verify:
                _verify(chunks, info)
                info["verified"] = True
            _write_chunks(out, chunks)
            return {"input": str(container_path), "output": str(out), "container_bytes": len(data), **info}
    # Large models (external data on save) or an unexpected graph layout: plain protobuf path.
    model, info = unpack_container(data, verify=verify)
    save_model(model, out, input_path=container_path)
    return {"input": str(container_path), "output": str(out), "container_bytes": len(data), **info}


def _plan_size(data) -> int:
    """The model size the manifest declares (0 if it cannot be read: _plan reports why)."""
    try:
        return int(_read_manifest(fmt.read_container(data, verify_checksums=False))["model_bytes"])
    except CompressorError:
        return 0


# ------------------------------------------------------------------ inspect


def describe_container(path: str | os.PathLike) -> dict:
    """What a container holds, from its table, manifest and graph (tensors are not decoded)."""
    data = _read_container_file(path)
    container = fmt.read_container(data)
    manifest = _read_manifest(container)
    graph_entry = container.sections[1]
    if graph_entry.decoded_length > MAX_GRAPH_BYTES:
        raise CorruptData("graph section declares more than 2 GiB")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(fmt.decode_section(container, graph_entry))
    except (DecodeError, RuntimeError, ValueError):
        raise CorruptData("graph section is not a valid ONNX ModelProto") from None
    refs = list(iter_tensors(model))
    sections = []
    for entry in container.sections:
        sections.append(
            {
                "index": entry.index,
                "kind": entry.kind_name,
                "codec": entry.codec_name,
                "stored_bytes": entry.stored_length,
                "decoded_bytes": entry.decoded_length,
                "crc32": f"{entry.crc32:08x}",
            }
        )
    tensors = []
    records_in = Counter(rec["section"] for rec in manifest["tensors"])
    for rec in manifest["tensors"]:
        entry = container.sections[rec["section"]]
        ref = refs[rec["tensor"]] if rec["tensor"] < len(refs) else None
        values = max(_num_values(rec["dims"]), 1)
        size = rec["width"] * rec["elements"]
        # A shared section's stored bytes are attributed in proportion to each record's size.
        stored = entry.stored_length * size / entry.decoded_length if entry.decoded_length else entry.stored_length
        if entry.codec == fmt.PRODUCT:
            size, stored = entry.decoded_length, entry.stored_length
        tensors.append(
            {
                "name": rec["name"],
                "kind": ref.kind if ref else None,
                "graph_path": ref.graph_path if ref else None,
                "dtype": T.DataType.Name(rec["data_type"])
                if rec["data_type"] in T.DataType.values()
                else str(rec["data_type"]),
                "shape": rec["dims"],
                "field": rec["field"],
                "section": rec["section"],
                "encoding": entry.codec_name,
                "details": fmt.section_details(container, entry),
                "bytes_before": size,
                "bytes_after": round(stored),
                "bits_per_weight": round(8 * stored / values, 3),
                "shared": records_in[rec["section"]] > 1,
            }
        )
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return {
        "path": str(path),
        "format_version": f"{container.version[0]}.{container.version[1]}",
        "container_bytes": len(data),
        "model_bytes": manifest["model_bytes"],
        "ratio": round(manifest["model_bytes"] / len(data), 3),
        "model_sha256": manifest["model_sha256"],
        "opset": opsets,
        "nodes": len(model.graph.node),
        "sections": sections,
        "tensors": tensors,
    }


def _table(rows: list[list], headers: list[str]) -> str:
    from ..present import format_table

    return format_table(rows, headers)


def format_container_table(desc: dict) -> str:
    """A readable summary of ``describe_container``."""
    lines = [
        f"container: {desc['path']}  format {desc['format_version']}  {desc['container_bytes']:,} bytes"
        f"  (model {desc['model_bytes']:,} bytes, {desc['ratio']}x)",
        f"opset {desc['opset']}  nodes {desc['nodes']}  sha256 {desc['model_sha256'][:16]}...",
        "",
    ]
    rows = [
        [t["name"], t["dtype"], "x".join(map(str, t["shape"])) or "scalar", t["encoding"],
         _detail(t["details"]) + (f"{' ' if t['details'] else ''}(section {t['section']}, shared)" if t["shared"] else ""),
         t["bytes_before"], t["bytes_after"], t["bits_per_weight"]]
        for t in desc["tensors"]
    ]  # fmt: skip
    lines.append(_table(rows, ["tensor", "dtype", "shape", "encoding", "detail", "bytes", "packed", "bits/w"]))
    lines.append("")
    lines.append(
        _table(
            [
                [s["index"], s["kind"], s["codec"], s["stored_bytes"], s["decoded_bytes"], s["crc32"]]
                for s in desc["sections"]
                if s["kind"] != "tensor"
            ],
            ["section", "kind", "codec", "stored", "decoded", "crc32"],
        )
    )
    return "\n".join(lines)


def _detail(details: dict) -> str:
    if "gap_width" in details:
        return f"gap={details['gap_width']}b {details['values']}"
    if "codebook_size" in details:
        return f"k={details['codebook_size']}"
    return ""


def format_pack_table(stats: dict) -> str:
    """A readable pack report: per tensor, then totals and the entropy bound."""
    rows = []
    for t in stats["tensors"]:
        if t["encoding"] == "graph":
            continue
        over = [s["overhead_pct"] for s in t["streams"] if s["overhead_pct"] is not None]
        rows.append(
            [t["name"], "x".join(map(str, t["shape"])) or "scalar", t["detail"], t["bytes_before"], t["bytes_after"],
             t["bits_per_weight"], ", ".join(f"{o:.1f}" for o in over) or "-"]
        )  # fmt: skip
    in_graph = [t for t in stats["tensors"] if t["encoding"] == "graph"]
    lines = [_table(rows, ["tensor", "shape", "encoding", "bytes", "packed", "bits/w", "huffman over H %"])]
    if in_graph:
        lines.append(
            f"({len(in_graph)} small tensors, {sum(t['bytes_before'] for t in in_graph):,} bytes, travel inside the graph section)"
        )
    s, e = stats["sections"], stats["entropy"]
    lines += [
        "",
        f"graph section: {s['graph']:,} bytes ({s['graph_codec']}, {s['graph_raw']:,} raw)   manifest: {s['manifest']:,} bytes"
        f"   header+table+sha: {s['header_and_table']:,} bytes",
    ]
    if e["coded_bytes"]:
        lines.append(
            f"huffman streams: {e['coded_bytes']:,} bytes vs entropy bound {e['entropy_bound_bytes']:,.0f} bytes"
            f" (+{e['overhead_pct']}%)"
        )
    per_weight = f", {stats['bits_per_weight']} bits per weight" if stats["bits_per_weight"] is not None else ""
    lines.append(
        f"model: {stats['model_bytes']:,} bytes -> container: {stats['container_bytes']:,} bytes ({stats['ratio']}x{per_weight})"
    )
    return "\n".join(lines)
