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
import struct
import tempfile
import threading
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
from google.protobuf.message import EncodeError

from ..codec import STORED, ZSTD, compress, compress_best
from ..errors import CompressorError
from ..graph import (
    copy_without_data,
    external_data_span,
    fits_in_one_message,
    inline_data,
    iter_tensors,
    load_model_and_files,
    model_folder,
    read_external_data,
)
from ..paths import check_outputs, write_chunks_atomically
from . import format as fmt
from .coders import EncodedTensor, encode_tensor_data, product, registry
from .layout import DATA_FIELDS, dtype_name, field_bytes, field_layout, num_values, raw_float32
from .manifest import manifest_bytes
from .splice import marker, spliced_chunks

T = onnx.TensorProto

# Tensor data smaller than this stays inside the graph section: compressed together with
# the graph it shares context with, and without a section-table entry or manifest record.
MIN_SECTION_BYTES = 256
MAX_SHARED_FIELD_BYTES = 4096  # fields up to this size may share a section (see _encode_fields)
SPOOL_MIN_BYTES = 1 << 16  # pack_file keeps encoded payloads from this size in a temp file, not in memory
COPY_CHUNK = 16 << 20
# Tensor fields are encoded on this many threads when nothing is spooled (zstd and xz release the
# GIL): the same sections in the same order whatever the count, at most this many fields' bytes
# held beyond the one being collected.
PACK_THREADS = min(2, os.cpu_count() or 1)


class _ExternalPayload:
    """An external tensor's bytes, read when its turn comes (a splice payload)."""

    def __init__(self, tensor: onnx.TensorProto, base_dir: Path, length: int):
        self.tensor, self.base_dir, self.length = tensor, base_dir, length

    def __len__(self) -> int:
        return self.length

    def read(self) -> bytes:
        return read_external_data(self.tensor, self.base_dir)


class _HeldPayload(_ExternalPayload):
    """A held tensor's raw_data, copied out of protobuf when its turn comes (a splice payload)."""

    def __init__(self, tensor: onnx.TensorProto):
        self.tensor, self.length = tensor, len(tensor.raw_data)

    def read(self) -> bytes:
        return self.tensor.raw_data


@dataclass
class _Spooled:
    """An encoded payload kept in the spool file: where, how long, its CRC-32."""

    file: object
    offset: int
    length: int
    crc32: int

    def __len__(self) -> int:
        return self.length

    def chunks(self):
        self.file.seek(self.offset)
        left = self.length
        while left:
            chunk = self.file.read(min(left, COPY_CHUNK))
            if not chunk:
                raise CompressorError("the pack spool file was truncated")
            left -= len(chunk)
            yield chunk


def _spool(encoded: EncodedTensor, spool) -> EncodedTensor:
    """The encoding with its payload moved to the spool file (when there is one and it is large)."""
    if spool is None or len(encoded.payload) < SPOOL_MIN_BYTES:
        return encoded
    spool.seek(0, os.SEEK_END)
    offset = spool.tell()
    spool.write(encoded.payload)
    return replace(encoded, payload=_Spooled(spool, offset, len(encoded.payload), zlib.crc32(encoded.payload)))


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
    spool=None,
    memo: EncodingMemo | None = None,
) -> _Field:
    """Encode one field on its own; a product (scalar, vector tensor indices) is stored as such."""
    if operands:
        coded = product.encode(*operands)
    else:
        coded = encode_tensor_data(data, width) if memo is None else memo.encode(data, width)
    encoded = _spool(coded, spool)
    keep = data if not operands and len(data) <= MAX_SHARED_FIELD_BYTES else None
    return _Field(index, tensor, name, len(data), width, count, encoded, keep)


class EncodingMemo:
    """The field encodings of the last model packed and of the one being packed, by content
    (SHA-256 of the bytes, and the width): a field with the same bytes as one of those takes its
    encoding instead of being coded again, the same result (an encoding is a function of the bytes
    and the width).  A run packs models that share many tensors (quantize's size bound and its
    candidate: the same int8 weights)."""

    def __init__(self) -> None:
        self._last: dict[tuple[bytes, int], EncodedTensor] = {}
        self._now: dict[tuple[bytes, int], EncodedTensor] = {}
        self.reused = 0  # fields taken from the last model's encodings (counted whatever the threads' timing)
        self._count = threading.Lock()

    def next_model(self) -> None:
        """A new model's pack starts: the last one's encodings are kept, older ones forgotten."""
        self._last, self._now = self._now, {}

    def encode(self, data: bytes, width: int) -> EncodedTensor:
        key = (hashlib.sha256(data).digest(), width)
        found = self._last.get(key)
        if found is not None:
            with self._count:
                self.reused += 1
        else:
            found = self._now.get(key)  # the same bytes earlier in this model (when already coded)
        if found is None:
            found = encode_tensor_data(data, width)
        self._now[key] = found
        return found


class _FieldEncoder:
    """The fields' encodings in the order they are added: on PACK_THREADS threads without a spool
    (a spool's offsets follow the encoding order: there, one at a time)."""

    def __init__(self, spool, memo: EncodingMemo | None = None):
        self.spool, self.memo = spool, memo
        self.pool = ThreadPoolExecutor(PACK_THREADS) if spool is None and PACK_THREADS > 1 else None
        self.pending: deque = deque()
        self.fields: list[_Field] = []

    def add(self, *args) -> None:
        if self.pool is None:
            self.fields.append(_field(*args, self.spool, self.memo))
            return
        self.pending.append(self.pool.submit(_field, *args, None, self.memo))
        while len(self.pending) > PACK_THREADS:
            self.fields.append(self.pending.popleft().result())

    def finish(self) -> list[_Field]:
        while self.pending:
            self.fields.append(self.pending.popleft().result())
        if self.pool is not None:
            self.pool.shutdown()
        return self.fields


def _encode_fields(
    fields: list[_Field], rows: list[dict], memo: EncodingMemo | None = None
) -> tuple[list[fmt.Section], list[dict], list[dict]]:
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
        joined, width = b"".join(fields[i].data for i in members), fields[members[0]].width
        together = encode_tensor_data(joined, width) if memo is None else memo.encode(joined, width)
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


def _external_indices(model: onnx.ModelProto) -> set[int]:
    return {i for i, ref in enumerate(iter_tensors(model)) if ref.proto.data_location == T.EXTERNAL}


def _held_indices(model: onnx.ModelProto, external: set[int]) -> set[int]:
    """The tensors of a model too large for one message whose data, held in raw_data, is taken
    out of the graph and streamed (none when the model fits)."""
    if fits_in_one_message(model):
        return set()
    return {
        i
        for i, ref in enumerate(iter_tensors(model))
        if i not in external
        and ref.proto.HasField("raw_data")
        and all(d.name in ("raw_data", "data_location") for d, _ in ref.proto.ListFields() if d.name in DATA_FIELDS)
    }


def streamed_chunks(
    model: onnx.ModelProto, base_dir: Path | None = None, external: set[int] = frozenset(), held: set[int] | None = None
) -> list:
    """The model's serialization with every tensor inline, as chunks: bytes, or payloads whose
    ``read()`` gives one external (or large ``held``) tensor's bytes when its turn comes, so the
    serialization never exists whole.  ``held`` None: as ``_held_indices`` chooses."""
    held = _held_indices(model, external) if held is None else held
    if not external and not held:
        return [model.SerializeToString()]
    with_markers = copy_without_data(model, external | held)
    payloads = {}
    for index, (ref, target) in enumerate(zip(iter_tensors(model), iter_tensors(with_markers))):
        if index in external:
            key = marker(index)
            payloads[key] = _ExternalPayload(ref.proto, base_dir, external_data_span(ref.proto, base_dir)[2])
            inline_data(target.proto, key)
        elif index in held:
            key = marker(index)
            payloads[key] = _HeldPayload(ref.proto)
            _restore_held(target.proto, ref.proto, key)
    return spliced_chunks(with_markers.SerializeToString(), payloads)


def chunk_bytes(chunk) -> bytes:
    """One chunk of ``streamed_chunks`` as bytes."""
    return chunk.read() if isinstance(chunk, _ExternalPayload) else chunk


def _model_digest(
    model: onnx.ModelProto, base_dir: Path | None, external: set[int], held: set[int] = frozenset()
) -> tuple[int, str]:
    """(length, SHA-256) of the model's serialization with every tensor inline, streamed
    (``streamed_chunks``)."""
    try:
        chunks = streamed_chunks(model, base_dir, external, held)
    except (EncodeError, ValueError, OverflowError):  # over protobuf's 2 GiB limit (upb raises EncodeError)
        raise CompressorError(
            "models larger than protobuf's 2 GiB limit must keep their tensors in external data to be packed"
        ) from None
    digest = hashlib.sha256()
    length = 0
    for chunk in chunks:
        data = chunk_bytes(chunk)
        digest.update(data)
        length += len(data)
    return length, digest.hexdigest()


def _restore_held(target: onnx.TensorProto, source: onnx.TensorProto, raw_data: bytes) -> None:
    """A held tensor's data back into its data-less copy (data_location as it was)."""
    target.raw_data = raw_data
    if source.HasField("data_location"):
        target.data_location = source.data_location


def pack_model(
    model: onnx.ModelProto, base_dir: str | os.PathLike | None = None, *, spool=None, memo: EncodingMemo | None = None
) -> tuple[bytes, dict]:
    """Encode a model as container bytes; returns (bytes, stats).

    Tensors in external data (a model loaded with ``external_data=False``) are read from
    ``base_dir`` one at a time; see ``pack_file`` for a container that is never in memory whole.
    `memo`: the encodings of the model packed before with it, reused for the same bytes."""
    if memo is not None:
        memo.next_model()
    sections, version, parts = _pack(model, base_dir, spool, memo)
    data = fmt.write_container(sections, version)
    return data, _pack_stats(len(data), sections, *parts)


def _pack(model: onnx.ModelProto, base_dir, spool, memo=None) -> tuple[list[fmt.Section], tuple[int, int], tuple]:
    """The container's sections, its version and the stats' parts (without the container length)."""
    external = _external_indices(model)
    if external and base_dir is None:
        name = next(ref.name for i, ref in enumerate(iter_tensors(model)) if i in external)
        raise CompressorError(
            f"tensor {name!r} has external data that is not loaded (load the model with compressor.graph.load_model)"
        )
    base_dir = None if base_dir is None else Path(base_dir)
    held = _held_indices(model, external)
    model_length, model_sha256 = _model_digest(model, base_dir, external, held)
    stripped = copy_without_data(model, external | held)
    refs = list(iter_tensors(model))
    stripped_refs = list(iter_tensors(stripped))
    products = find_products([ref.proto for ref in refs])
    encoder = _FieldEncoder(spool, memo)
    rows: list[dict] = []
    kept_bytes: dict[int, int] = {}  # data bytes of the tensors left in the graph section
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
        external_data = read_external_data(tensor, base_dir) if index in external else None
        if external_data is not None:
            target.proto.data_location = T.DEFAULT  # as load_model leaves a loaded tensor
        elif index in held:  # streamed like an external tensor; left out of the graph copy
            external_data = tensor.raw_data
            if tensor.HasField("data_location"):
                target.proto.data_location = tensor.data_location
        kept = 0
        for field_name in DATA_FIELDS:
            if external_data is not None:
                data = external_data if field_name == "raw_data" else None
            else:
                data = field_bytes(tensor, field_name)
            layout = field_layout(tensor.data_type, dims, field_name)
            if data is None:
                continue
            if layout is None or len(data) < MIN_SECTION_BYTES or layout[0] * layout[1] != len(data):
                # Too small, or inconsistent with its shape: left in the graph, untouched.
                if external_data is not None:
                    target.proto.raw_data = data
                kept += len(data)
                continue
            width, count = layout
            target.proto.ClearField(field_name)
            operands = products.get(index) if field_name == "raw_data" else None
            encoder.add(index, tensor, field_name, data, width, count, operands)
        kept_bytes[index] = kept
        del external_data
    fields = encoder.finish()
    sections, entries, field_stats = _encode_fields(fields, rows, memo)
    tensor_stats = []
    by_tensor: dict[int, list[dict]] = {}
    for f, stat in zip(fields, field_stats):
        by_tensor.setdefault(f.index, []).append(stat)
    for index in range(len(refs)):
        if index in by_tensor:
            tensor_stats.extend(by_tensor[index])
            continue
        tensor_stats.append({**rows[index], "field": None, "section": 1, "bytes_before": kept_bytes[index],
                             "bytes_after": None, "bits_per_weight": None, "encoding": "graph",
                             "detail": "in graph section", "params": {}, "streams": [], "candidates": {}})  # fmt: skip
    graph_bytes = stripped.SerializeToString()
    graph_codec, graph_payload = compress_best(graph_bytes)
    shared = len({e["section"] for e in entries}) < len(entries)
    version = fmt.format_version(sections, fmt.SHARED_SECTIONS_VERSION if shared else None)
    manifest = manifest_bytes(version, model_length, model_sha256, entries)
    manifest_codec, manifest_payload = STORED, manifest
    zstd_manifest = compress(manifest, ZSTD)
    if len(zstd_manifest) < len(manifest):
        manifest_codec, manifest_payload = ZSTD, zstd_manifest
    all_sections = [
        fmt.Section(fmt.KIND_MANIFEST, manifest_codec, manifest_payload, len(manifest)),
        fmt.Section(fmt.KIND_GRAPH, graph_codec, graph_payload, len(graph_bytes)),
        *sections,
    ]
    parameters = sum(num_values(ref.proto.dims) for ref in refs)
    return all_sections, version, (model_length, tensor_stats, graph_codec, len(graph_bytes), parameters)


def container_chunks(sections: list[fmt.Section], version: tuple[int, int]):
    """The bytes ``format.write_container`` returns, as chunks: spooled payloads are copied from
    their file piece by piece, so the container is never in memory whole."""
    version = max(fmt.format_version(sections), version or (1, 0))
    offset = fmt.HEADER_BYTES + fmt.ENTRY_BYTES * len(sections)
    table = []
    for s in sections:
        if not registry.known(s.codec) or s.kind not in fmt.KIND_NAMES:
            raise ValueError(f"bad section kind/codec {s.kind}/{s.codec}")
        crc = s.payload.crc32 if isinstance(s.payload, _Spooled) else zlib.crc32(s.payload)
        table.append(fmt._ENTRY.pack(s.kind, s.codec, 0, crc, offset, len(s.payload), s.decoded_length))
        offset += len(s.payload)
    total = offset + fmt.TRAILER_BYTES
    table_bytes = b"".join(table)
    head = fmt._HEADER.pack(fmt.MAGIC, *version, 0, total, len(sections), 0)[:28]
    digest = hashlib.sha256()
    for chunk in (head + struct.pack("<I", zlib.crc32(table_bytes, zlib.crc32(head))), table_bytes):
        digest.update(chunk)
        yield chunk
    for s in sections:
        for chunk in s.payload.chunks() if isinstance(s.payload, _Spooled) else [s.payload]:
            digest.update(chunk)
            yield chunk
    yield digest.digest()


def _pack_stats(container_bytes: int, sections, model_bytes, tensor_stats, graph_codec, graph_raw, parameters) -> dict:
    streams = [s for t in tensor_stats for s in t["streams"]]
    coded = sum(s["coded_bytes"] for s in streams)
    bound = sum(s["entropy_bound_bytes"] for s in streams)
    tensor_bytes = sum(len(s.payload) for s in sections[2:])
    overhead = fmt.HEADER_BYTES + fmt.ENTRY_BYTES * len(sections) + fmt.TRAILER_BYTES
    # The non-Huffman part of the tensor sections: codebooks, layout headers, general-purpose payloads.
    other = tensor_bytes - coded
    return {
        "model_bytes": model_bytes,
        "container_bytes": container_bytes,
        "ratio": round(model_bytes / container_bytes, 3),
        "parameters": parameters,
        "bits_per_weight": round(8 * container_bytes / parameters, 3) if parameters else None,
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
            "container_over_bound_pct": round(100 * (coded - bound) / (container_bytes - coded + bound), 2)
            if bound
            else None,
        },
        "tensors": tensor_stats,
    }


def pack_file(model_path: str | os.PathLike, out_path: str | os.PathLike) -> dict:
    """Load a model (the onnx checker runs), pack it and write the container atomically; returns the stats.

    The output must differ from the model and its external-data files.  External tensors are
    read one at a time and large encoded payloads wait in an unnamed temp file, so memory
    holds the graph and about one tensor at a time, whatever the model's size."""
    model, external_files = load_model_and_files(model_path, external_data=False)
    check_outputs({"-o": out_path}, {"the input model": model_path, "the model's external data": external_files})
    base_dir = None if str(model_path) == "-" else model_folder(model_path)
    with tempfile.TemporaryFile(dir=Path(out_path).resolve().parent) as spool:
        sections, version, parts = _pack(model, base_dir, spool)
        length = [0]

        def counted():
            for chunk in container_chunks(sections, version):
                length[0] += len(chunk)
                yield chunk

        write_chunks_atomically(out_path, counted())
    stats = _pack_stats(length[0], sections, *parts)
    stats = {"input": str(model_path), "output": str(Path(out_path)), **stats}
    if str(model_path) != "-":
        stats["file_bytes"] = Path(model_path).stat().st_size
    return stats
