"""unpack: a .cmpz container -> the exact ONNX model it was packed from.

Unpacking puts every stripped field back, so the model's ``SerializeToString()`` is
byte-identical to the original's (the manifest keeps its SHA-256, which ``verify``
checks).  ``unpack_file`` writes that serialization without loading big tensors into
protobuf: it splices the decoded arrays into the serialized graph (``splice``), which is
what makes unpacking faster than ``xz -d``.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError, EncodeError

from ..codec import CorruptData
from ..errors import CompressorError, UsageError
from ..graph import (
    EXTERNAL_DATA_THRESHOLD,
    EXTERNAL_MIN_BYTES,
    fits_in_one_message,
    iter_tensors,
    write_external_model,
)
from ..paths import write_chunks_atomically
from . import format as fmt
from .coders import registry
from .layout import MAX_GRAPH_BYTES, dtype_name, field_layout, field_present, num_values, set_field
from .manifest import read_manifest
from .pack import chunk_bytes, streamed_chunks
from .splice import SpliceFailed, marker, nbytes, spliced_chunks

T = onnx.TensorProto

# What a container may declare it decodes to, in all and per section, unless the caller
# says otherwise: twice what protobuf can hold in one model, so every container pack
# writes today fits, while a few hundred bytes cannot make unpack allocate gigabytes.
DEFAULT_MAX_DECODED_BYTES = 4 << 30


MAP_MIN_BYTES = 64 << 20  # containers from this size are mapped, not read into memory


def read_container_file(path: str | os.PathLike):
    """A container file's bytes (UsageError if there is no such file): read, or mapped
    read-only when large (the pages stay the file's, not the process's memory)."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no such file: {path}")
    if p.is_dir():
        raise UsageError(f"is a directory, not a container: {path}")
    if p.stat().st_size < MAP_MIN_BYTES:
        return p.read_bytes()
    with open(p, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def parse_graph(container: fmt.Container) -> onnx.ModelProto:
    """The graph section as a ModelProto (its tensor sections' fields still empty)."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(fmt.decode_section(container, container.sections[1]))
    except (DecodeError, RuntimeError, ValueError):
        raise CorruptData("graph section is not a valid ONNX ModelProto") from None
    return model


@dataclass
class _Plan:
    """A checked container: its graph (tensor fields still empty) and what goes where."""

    container: fmt.Container
    manifest: dict
    model: onnx.ModelProto
    records: list  # (TensorProto in model, manifest record, SectionEntry)
    tensors: list  # every TensorProto of the model, in the order of FORMAT.md §5.2.1


class DecodedSizeLimit(CompressorError):
    """A container declares more decoded bytes than the caller allows (``max_decoded_bytes``)."""


def check_decoded_sizes(container: fmt.Container, manifest: dict, limit: int | None) -> None:
    """Refuse, before anything is decoded, a container whose sections, in all or one by one,
    or whose model declare more than ``limit`` bytes (None: no limit)."""
    if limit is None:
        return
    hint = f"the limit is {limit:,} bytes (unpack --max-decoded-bytes)"
    for entry in container.sections:
        if entry.decoded_length > limit:
            raise DecodedSizeLimit(
                f"section {entry.index} ({entry.kind_name}) declares {entry.decoded_length:,} decoded bytes; {hint}"
            )
    declared = sum(s.decoded_length for s in container.sections)
    if declared > limit:
        raise DecodedSizeLimit(f"container declares {declared:,} decoded bytes in all; {hint}")
    if manifest["model_bytes"] > limit:
        raise DecodedSizeLimit(f"container declares a model of {manifest['model_bytes']:,} bytes; {hint}")


def _plan(data, max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES) -> _Plan:
    """Check everything that can be checked before decoding any tensor.

    Declared sizes are checked against each other, the limit, the graph (name, type,
    shape of each target tensor) and the file; nothing large is allocated before that.
    """
    container = fmt.read_container(data)
    manifest = read_manifest(container)
    graph_entry = container.sections[1]
    if graph_entry.decoded_length > MAX_GRAPH_BYTES:
        raise CorruptData(f"graph section declares {graph_entry.decoded_length} bytes (protobuf limit 2 GiB)")
    check_decoded_sizes(container, manifest, max_decoded_bytes)
    model = parse_graph(container)
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
        if field_present(tensor, rec["field"]) or tensor.data_location == T.EXTERNAL:
            raise CorruptData(f"{what}: the graph already holds data for {rec['name']!r}")
        layout = field_layout(rec["data_type"], rec["dims"], rec["field"])
        entry = container.sections[rec["section"]]
        coder = registry.get(entry.codec)
        if layout is None or layout != (rec["width"], rec["elements"]):
            raise CorruptData(
                f"{what}: {rec['elements']} elements of {rec['width']} bytes do not fit shape {rec['dims']}"
            )
        # The records of a section tile its decoded bytes, in order (FORMAT.md §5.3.1).
        start = filled[1] if filled[0] == rec["section"] else 0
        if rec.get("offset", 0) != start:
            raise CorruptData(f"{what}: offset {rec.get('offset', 0)}, {start} expected")
        if start and (not coder.shareable or records[-1][1]["width"] != rec["width"]):
            raise CorruptData(f"{what}: records sharing a section have one width and are not products")
        filled = (rec["section"], start + rec["width"] * rec["elements"])
        last_of_section = (
            rec is manifest["tensors"][-1] or manifest["tensors"][len(records) + 1]["section"] != rec["section"]
        )
        if filled[1] > entry.decoded_length or (last_of_section and filled[1] != entry.decoded_length):
            raise CorruptData(f"{what}: section declares {entry.decoded_length} bytes, its records need {filled[1]}")
        if coder.restores is not None and (rec["data_type"], rec["field"]) != coder.restores:
            data_type, field_name = coder.restores
            raise CorruptData(f"{what}: a {coder.name} section restores {dtype_name(data_type)} {field_name} only")
        records.append((tensor, rec, entry))
    return _Plan(container, manifest, model, records, [r.proto for r in refs])


class _Operands:
    """The DecodeContext of a section that refers to other tensors: their float32 values,
    from their own (already decoded) sections or from the graph (FORMAT.md §7.3)."""

    def __init__(self, plan: _Plan, section_of: dict, buffers: list, what: str):
        self.plan, self.section_of, self.buffers, self.what = plan, section_of, buffers, what

    def float32_values(self, index: int, elements: int) -> np.ndarray:
        plan, what = self.plan, self.what
        if index >= len(plan.tensors):
            raise CorruptData(f"{what}: operand tensor {index}, but the graph has {len(plan.tensors)} tensors")
        tensor = plan.tensors[index]
        if tensor.data_type != T.FLOAT or num_values(tensor.dims) != elements:
            raise CorruptData(f"{what}: operand tensor {index} is not FLOAT with {elements} values")
        if index in self.section_of:
            j = self.section_of[index]
            coder = registry.get(plan.records[j][2].codec)
            if coder.refers_to_tensors:
                raise CorruptData(f"{what}: operand tensor {index} is itself a {coder.name}")
            buffer = self.buffers[j]
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


def _decode_all(plan: _Plan) -> list:
    """Every record's decoded field (bytes or an element array).  Sections whose coder refers
    to other tensors (products) come last: they read the others' values."""
    buffers: list = [None] * len(plan.records)
    section_of = {rec["tensor"]: i for i, (_, rec, _) in enumerate(plan.records)}
    deferred = [i for i, (_, _, entry) in enumerate(plan.records) if registry.get(entry.codec).refers_to_tensors]
    decoded: dict[int, bytes | np.ndarray] = {}  # a shared section is decoded once
    for i, (_, rec, entry) in enumerate(plan.records):
        if registry.get(entry.codec).refers_to_tensors:
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
    for i in deferred:
        _, rec, entry = plan.records[i]
        context = _Operands(plan, section_of, buffers, f"section {rec['section']} ({entry.codec_name})")
        buffers[i] = _decode_buffer(plan, rec, entry, context)
    return buffers


class _LazyBuffers:
    """Each record's decoded field on demand, one section at a time (the last one is kept,
    for the records sharing it): what unpacking a large model holds instead of all of them."""

    def __init__(self, plan: _Plan):
        self.plan = plan
        self.section_of = {rec["tensor"]: i for i, (_, rec, _) in enumerate(plan.records)}
        self.last: tuple[int, bytes | np.ndarray] | None = None

    def __getitem__(self, i: int) -> bytes | np.ndarray:
        _, rec, entry = self.plan.records[i]
        if registry.get(entry.codec).refers_to_tensors:
            context = _Operands(self.plan, self.section_of, self, f"section {rec['section']} ({entry.codec_name})")
            return _decode_buffer(self.plan, rec, entry, context)
        if self.last is None or self.last[0] != rec["section"]:
            self.last = None  # free the previous section first
            self.last = (rec["section"], _decode_buffer(self.plan, rec, entry))
        whole = self.last[1]
        size = rec["width"] * rec["elements"]
        if rec.get("offset", 0) == 0 and size == entry.decoded_length:
            self.last = None  # the record is the whole section: nothing to keep
            return whole
        if isinstance(whole, bytes):
            return whole[rec["offset"] : rec["offset"] + size]
        first = rec["offset"] // rec["width"]
        return whole[first : first + rec["elements"]]


class _Decoded:
    """A splice payload: record ``i``'s field, decoded when its turn comes."""

    def __init__(self, i: int, length: int):
        self.i, self.length = i, length

    def __len__(self) -> int:
        return self.length


def _decode_buffer(plan: _Plan, rec: dict, entry, context=None) -> bytes | np.ndarray:
    try:
        return fmt.decode_section_buffer(plan.container, entry, rec["width"], context)
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


def serialize_model(model: onnx.ModelProto) -> bytes | None:
    """The model's bytes, or None when it is too large for one protobuf message."""
    try:
        return model.SerializeToString()
    except (EncodeError, ValueError, OverflowError):  # over protobuf's 2 GiB limit (upb raises EncodeError)
        return None


def _verify(chunks: list | None, info: dict) -> None:
    if chunks is None or any(c is None for c in chunks):
        raise CompressorError("cannot verify: the unpacked model is larger than protobuf's 2 GiB limit")
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        data = chunk_bytes(chunk)
        digest.update(data)
        size += nbytes(data)
        del data
    if size != info["model_bytes"] or digest.hexdigest() != info["model_sha256"]:
        raise CompressorError("verification failed: the unpacked model differs from the packed one (SHA-256)")


def unpack_container(
    data, *, verify: bool = False, max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES
) -> tuple[onnx.ModelProto, dict]:
    """Decode container bytes into the original model; returns (model, info).

    With ``verify`` the model's serialization is hashed and compared with the SHA-256
    the manifest recorded at pack time.  A container declaring more than
    ``max_decoded_bytes`` (None: no limit) is refused before anything is decoded.
    """
    plan = _plan(data, max_decoded_bytes)
    for (tensor, rec, _), buffer in zip(plan.records, _decode_all(plan)):
        set_field(
            tensor,
            rec["field"],
            buffer if isinstance(buffer, bytes) or rec["field"] != "raw_data" else buffer.tobytes(),
        )
    info = _info(plan)
    if verify:
        # A model too large for one message is hashed as streamed chunks, tensor by tensor.
        try:
            whole = fits_in_one_message(plan.model)
        except UnicodeDecodeError:  # protobuf parses a proto2 string field and refuses it when read
            raise CorruptData("graph section holds a string that is not UTF-8") from None
        _verify([serialize_model(plan.model)] if whole else streamed_chunks(plan.model), info)
        info["verified"] = True
    return plan.model, info


def _unpack_chunks(plan: _Plan) -> list:
    """The unpacked model's serialization as a list of byte chunks (see splice)."""
    payloads = {}
    for i, ((tensor, rec, _), buffer) in enumerate(zip(plan.records, _decode_all(plan))):
        if rec["field"] == "raw_data":
            key = marker(i)
            payloads[key] = buffer if isinstance(buffer, bytes) else buffer.view(np.uint8)
            tensor.raw_data = key
        else:
            set_field(tensor, rec["field"], buffer)
    return spliced_chunks(plan.model.SerializeToString(), payloads)


def unpack_bytes(data, *, max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES) -> bytes:
    """The unpacked model's serialization, built by splicing (what unpack_file writes)."""
    plan = _plan(data, max_decoded_bytes)
    try:
        chunks = _unpack_chunks(plan)
    except SpliceFailed:
        return unpack_container(data, max_decoded_bytes=max_decoded_bytes)[0].SerializeToString()
    return b"".join(chunks)


def _write_chunks(path: Path, chunks: list) -> None:
    """Atomic write (nothing is left behind on failure or kill), chunk by chunk."""
    write_chunks_atomically(path, (c if not isinstance(c, np.ndarray) else memoryview(c) for c in chunks))


def unpack_file(
    container_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    verify: bool = True,
    max_decoded_bytes: int | None = DEFAULT_MAX_DECODED_BYTES,
    external_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> dict:
    """Unpack a container file into an ONNX file (written atomically; nothing is left on failure).

    ``verify`` (the default) checks the model against the SHA-256 recorded at pack time
    before writing it; ``max_decoded_bytes`` bounds what the container may declare.  A model
    of more than ``external_threshold`` bytes is written with its tensors in ``<out>.data``
    (ONNX external data), decoded and written one tensor at a time."""
    out = Path(out_path)
    if out.exists() and Path(container_path).exists() and os.path.samefile(out, container_path):
        raise UsageError(f"refusing to overwrite the container {out} (choose another -o)")
    if not out.resolve().parent.is_dir():
        raise UsageError(f"output folder does not exist: {out.resolve().parent}")
    data_file = out.with_name(out.name + ".data")
    if data_file.exists() and Path(container_path).exists() and os.path.samefile(data_file, container_path):
        raise UsageError(f"refusing to overwrite the container {data_file} with the model's external data")
    data = read_container_file(container_path)
    declared = _plan_size(data)
    info = None
    if declared > external_threshold:
        info = _unpack_external(_plan(data, max_decoded_bytes), out, verify)
        return {"input": str(container_path), "output": str(out), "container_bytes": len(data), **info}
    plan = _plan(data, max_decoded_bytes)
    info = _info(plan)
    try:
        chunks = _unpack_chunks(plan)
    except SpliceFailed:
        chunks = None
    if chunks is not None:
        if verify:
            _verify(chunks, info)
            info["verified"] = True
        _write_chunks(out, chunks)
        return {"input": str(container_path), "output": str(out), "container_bytes": len(data), **info}
    # An unexpected graph layout: plain protobuf path.
    model, info = unpack_container(data, verify=verify, max_decoded_bytes=max_decoded_bytes)
    _write_chunks(out, [model.SerializeToString()])
    return {"input": str(container_path), "output": str(out), "container_bytes": len(data), **info}


def _unpack_external(plan: _Plan, out: Path, verify: bool) -> dict:
    """Write the model as ``out`` + ``out.data`` (ONNX external data), one tensor at a time.

    The model's serialization with every tensor inline (what the manifest's SHA-256 is of)
    is walked in order, as splice chunks, and hashed as it goes; each large raw_data field
    is decoded when its turn comes, written to the data file and dropped.  Nothing is named
    before the hash is checked."""
    info = _info(plan)
    buffers = _LazyBuffers(plan)
    payloads = {}
    record_of_tensor = {}
    for i, (tensor, rec, _) in enumerate(plan.records):
        size = rec["width"] * rec["elements"]
        if rec["field"] == "raw_data" and size >= EXTERNAL_MIN_BYTES:
            key = marker(i)
            payloads[key] = _Decoded(i, size)
            tensor.raw_data = key
            record_of_tensor[i] = rec["tensor"]
        else:
            buffer = buffers[i]
            set_field(
                tensor,
                rec["field"],
                buffer if isinstance(buffer, bytes) or rec["field"] != "raw_data" else buffer.tobytes(),
            )
    try:
        chunks = spliced_chunks(plan.model.SerializeToString(), payloads)
    except (SpliceFailed, EncodeError, ValueError) as e:
        raise CompressorError(f"cannot unpack this container's graph to external data ({e})") from None

    def tensors():
        digest = hashlib.sha256()
        length = 0
        for chunk in chunks:
            if isinstance(chunk, _Decoded):
                buffer = buffers[chunk.i]
                view = buffer if isinstance(buffer, bytes) else buffer.view(np.uint8)
                if verify:
                    digest.update(view)
                length += nbytes(view)
                yield record_of_tensor[chunk.i], view
                del buffer, view
            else:
                if verify:
                    digest.update(chunk)
                length += nbytes(chunk)
        if verify:
            if length != info["model_bytes"] or digest.hexdigest() != info["model_sha256"]:
                raise CompressorError("verification failed: the unpacked model differs from the packed one (SHA-256)")
            info["verified"] = True

    write_external_model(plan.model, out, tensors())
    return info


def _plan_size(data) -> int:
    """The model size the manifest declares (0 if it cannot be read: _plan reports why)."""
    try:
        return int(read_manifest(fmt.read_container(data, verify_checksums=False))["model_bytes"])
    except CompressorError:
        return 0
