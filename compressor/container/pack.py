"""pack: an ONNX model -> .cmpz container bytes and a report of how each tensor was stored.

Packing serializes the ModelProto with the data of every sizeable tensor stripped
(compressed as the *graph* section) and stores each stripped data field as a *tensor*
section, encoded by whichever registered coder proposes the smallest payload
(``coders.encode_tensor_data``), or as a product of two other tensors when it is one.
A JSON *manifest* says which tensor (by its position in ``graph.iter_tensors`` order)
and which field each section restores, and keeps the model's SHA-256.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import EncodeError

from ..codec import STORED, ZSTD, compress, compress_best
from ..errors import CompressorError
from ..graph import iter_tensors, load_model_and_files
from ..paths import atomic_write_bytes, check_outputs
from . import format as fmt
from .coders import EncodedTensor, encode_tensor_data, product, registry
from .layout import DATA_FIELDS, dtype_name, field_bytes, field_layout, num_values, raw_float32
from .manifest import manifest_bytes

T = onnx.TensorProto

# Tensor data smaller than this stays inside the graph section: compressed together with
# the graph it shares context with, and without a section-table entry or manifest record.
MIN_SECTION_BYTES = 256
MAX_SHARED_FIELD_BYTES = 4096  # fields up to this size may share a section (see _encode_fields)


def find_products(tensors: list[onnx.TensorProto]) -> dict[int, tuple[int, int]]:
    """{tensor index: (scalar index, vector index)} for float32 tensors equal, bit for bit, to a
    scalar float32 tensor times another float32 tensor of the same size (FORMAT.md §7.3);
    see ``coders.product.find_products``."""
    values = []
    for tensor in tensors:
        floats = raw_float32(tensor)
        values.append(None if floats is None else (floats, len(tensor.dims)))
    return product.find_products(values, MIN_SECTION_BYTES)


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
    operands: tuple[int, int] | None,
) -> _Field:
    """Encode one field on its own; a product (scalar, vector tensor indices) is stored as such."""
    encoded = product.encode(*operands) if operands else encode_tensor_data(data, width)
    keep = data if not operands and len(data) <= MAX_SHARED_FIELD_BYTES else None
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
        coder = registry.get(enc.codec)
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
            detail = coder.describe(enc.params)
            stats[j] = {
                **rows[g.index],
                "field": g.name,
                "section": section_index,
                "bytes_before": g.size,
                "bytes_after": round(share) if len(members) > 1 else len(enc.payload),
                "bits_per_weight": round(8 * share / values, 3),
                "encoding": coder.name,
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
    except (EncodeError, ValueError, OverflowError):  # over protobuf's 2 GiB limit (upb raises EncodeError)
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
        row = {
            "name": ref.name,
            "kind": ref.kind,
            "graph_path": ref.graph_path,
            "dtype": dtype_name(tensor.data_type),
            "shape": dims,
            "elements": num_values(dims),
        }
        rows.append(row)
        for field_name in DATA_FIELDS:
            data = field_bytes(tensor, field_name)
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
        data_bytes = sum(len(field_bytes(ref.proto, f) or b"") for f in DATA_FIELDS)
        tensor_stats.append({**rows[index], "field": None, "section": 1, "bytes_before": data_bytes, "bytes_after": None,
                             "bits_per_weight": None, "encoding": "graph", "detail": "in graph section",
                             "params": {}, "streams": [], "candidates": {}})  # fmt: skip
    graph_bytes = stripped.SerializeToString()
    graph_codec, graph_payload = compress_best(graph_bytes)
    shared = len({e["section"] for e in entries}) < len(entries)
    version = fmt.format_version(sections, fmt.SHARED_SECTIONS_VERSION if shared else None)
    manifest = manifest_bytes(version, len(original), hashlib.sha256(original).hexdigest(), entries)
    manifest_codec, manifest_payload = STORED, manifest
    zstd_manifest = compress(manifest, ZSTD)
    if len(zstd_manifest) < len(manifest):
        manifest_codec, manifest_payload = ZSTD, zstd_manifest
    all_sections = [
        fmt.Section(fmt.KIND_MANIFEST, manifest_codec, manifest_payload, len(manifest)),
        fmt.Section(fmt.KIND_GRAPH, graph_codec, graph_payload, len(graph_bytes)),
        *sections,
    ]
    data = fmt.write_container(all_sections, version)
    parameters = sum(num_values(ref.proto.dims) for ref in refs)
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
            "graph_codec": registry.name_of(graph_codec),
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
    """Load a model (the onnx checker runs), pack it and write the container atomically; returns the stats.

    The output must differ from the model and its external-data files."""
    model, external_files = load_model_and_files(model_path)
    check_outputs({"-o": out_path}, {"the input model": model_path, "the model's external data": external_files})
    data, stats = pack_model(model)
    atomic_write_bytes(out_path, data)
    stats = {"input": str(model_path), "output": str(Path(out_path)), **stats}
    if str(model_path) != "-":
        stats["file_bytes"] = Path(model_path).stat().st_size
    return stats
