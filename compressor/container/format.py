"""The .cmpz byte format: header, section table, sections, SHA-256 trailer (FORMAT.md).

This module knows bytes only: it writes a list of sections into a container and reads
one back, refusing anything malformed with ``CorruptData`` (a one-line CompressorError)
before allocating for it.  Section codecs are looked up in the coder registry
(``coders.registry``); what the sections mean (manifest, graph, tensors) is the business
of the ONNX side of ``compressor.container`` (pack, unpack, describe).

Layout::

    header (32 bytes) | section table (32 bytes per section) | section payloads | SHA-256 (32 bytes)
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

from ..codec import CorruptData
from .coders import registry

MAGIC = b"\x89CMPZ\r\n\x1a"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0  # what the packer writes unless it uses a later feature (see format_version)
SUPPORTED_VERSIONS = ((1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7))
HEADER_BYTES = 32
ENTRY_BYTES = 32
TRAILER_BYTES = 32
MAX_SECTIONS = 1 << 24

KIND_MANIFEST = 1
KIND_GRAPH = 2
KIND_TENSOR = 3
KIND_NAMES = {KIND_MANIFEST: "manifest", KIND_GRAPH: "graph", KIND_TENSOR: "tensor"}

# Section codecs are the registered coders (coders/): each says the first version that has
# it, and a container is written as the oldest version that has every codec it uses, so
# older readers still read what needs nothing newer.
# Manifest records sharing one tensor section (FORMAT.md §5.3.1) need this version.
SHARED_SECTIONS_VERSION = (1, 3)

_HEADER = struct.Struct("<8sHHIQII")  # magic, major, minor, flags, container_length, section_count, crc32
_ENTRY = struct.Struct("<BBHIQQQ")  # kind, codec, reserved, crc32, offset, stored_length, decoded_length


@dataclass
class Section:
    """One section to write: its payload as stored and the length it decodes to."""

    kind: int
    codec: int
    payload: bytes
    decoded_length: int


@dataclass
class SectionEntry:
    """One row of a container's section table, as read (and checked)."""

    index: int
    kind: int
    codec: int
    crc32: int
    offset: int
    stored_length: int
    decoded_length: int

    @property
    def kind_name(self) -> str:
        return KIND_NAMES[self.kind]

    @property
    def codec_name(self) -> str:
        return registry.name_of(self.codec)


def write_container(sections: list[Section], version: tuple[int, int] | None = None) -> bytes:
    """Serialize sections into a container (deterministic: the same sections give the same bytes).

    The version is the oldest that has every codec used (see format_version), or ``version``
    when the caller uses a later feature of the manifest."""
    version = max(format_version(sections), version or (1, 0))
    count = len(sections)
    offset = HEADER_BYTES + ENTRY_BYTES * count
    table = []
    for s in sections:
        if not registry.known(s.codec) or s.kind not in KIND_NAMES:
            raise ValueError(f"bad section kind/codec {s.kind}/{s.codec}")
        table.append(_ENTRY.pack(s.kind, s.codec, 0, zlib.crc32(s.payload), offset, len(s.payload), s.decoded_length))
        offset += len(s.payload)
    total = offset + TRAILER_BYTES
    table_bytes = b"".join(table)
    head = _HEADER.pack(MAGIC, *version, 0, total, count, 0)[:28]
    header = head + struct.pack("<I", zlib.crc32(table_bytes, zlib.crc32(head)))
    body = b"".join([header, table_bytes, *(s.payload for s in sections)])
    return body + hashlib.sha256(body).digest()


def format_version(sections, at_least: tuple[int, int] | None = None) -> tuple[int, int]:
    """The version a container with these sections is written as (see write_container)."""
    return max([(FORMAT_MAJOR, FORMAT_MINOR), at_least or (1, 0)] + [registry.min_version(s.codec) for s in sections])


@dataclass
class Container:
    """A checked container: its section table and a view of its bytes."""

    data: memoryview
    version: tuple[int, int]
    sections: list[SectionEntry]

    def payload(self, entry: SectionEntry) -> memoryview:
        return self.data[entry.offset : entry.offset + entry.stored_length]


def read_container(data, *, verify_checksums: bool = True) -> Container:
    """Parse and check a container's structure; raises CorruptData with one line on any defect.

    Checked, in order: magic, format version, declared length (truncation, trailing
    garbage), SHA-256, header/table CRC32, the table itself (kinds, codecs, contiguous
    offsets inside the file, the manifest then graph first), and every section's CRC32.
    """
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
    size = len(view)
    if size < len(MAGIC) or bytes(view[: len(MAGIC)]) != MAGIC:
        raise CorruptData("not a .cmpz container (bad magic)")
    if size < HEADER_BYTES + TRAILER_BYTES:
        raise CorruptData(f"truncated container ({size} bytes, shorter than a header)")
    _, major, minor, flags, declared, count, header_crc = _HEADER.unpack_from(view, 0)
    if (major, minor) not in SUPPORTED_VERSIONS:
        known = ", ".join(f"{a}.{b}" for a, b in SUPPORTED_VERSIONS)
        raise CorruptData(f"unsupported container format version {major}.{minor} (this reader knows {known})")
    if declared > size:
        raise CorruptData(f"truncated container ({size} of {declared} bytes)")
    if declared < size:
        raise CorruptData(f"trailing garbage after the container ({size - declared} bytes after byte {declared})")
    if verify_checksums and hashlib.sha256(view[: size - TRAILER_BYTES]).digest() != bytes(
        view[size - TRAILER_BYTES :]
    ):
        raise CorruptData("checksum mismatch (SHA-256): the container is corrupted")
    if flags != 0:
        raise CorruptData(f"unknown header flags {flags:#x}")
    if not 2 <= count <= MAX_SECTIONS or HEADER_BYTES + ENTRY_BYTES * count + TRAILER_BYTES > size:
        raise CorruptData(f"section table of {count} entries does not fit the container")
    table_end = HEADER_BYTES + ENTRY_BYTES * count
    if verify_checksums and zlib.crc32(view[HEADER_BYTES:table_end], zlib.crc32(view[:28])) != header_crc:
        raise CorruptData("checksum mismatch (CRC32 of header and section table)")
    sections = []
    expected_offset = table_end
    for i in range(count):
        kind, codec, reserved, crc, offset, stored, decoded = _ENTRY.unpack_from(view, HEADER_BYTES + ENTRY_BYTES * i)
        where = f"section {i}"
        if kind not in KIND_NAMES or not registry.known(codec) or reserved != 0:
            raise CorruptData(f"{where}: unknown kind {kind} or codec {codec}")
        coder = registry.get(codec)
        wanted_kind = KIND_MANIFEST if i == 0 else KIND_GRAPH if i == 1 else KIND_TENSOR
        if kind != wanted_kind:
            raise CorruptData(f"{where}: is a {KIND_NAMES[kind]} section, {KIND_NAMES[wanted_kind]} expected")
        if kind != KIND_TENSOR and not coder.generic:
            raise CorruptData(f"{where}: codec {coder.name} is only for tensors")
        needs = coder.min_version
        if (major, minor) < needs:
            raise CorruptData(f"{where}: a {coder.name} section needs format {needs[0]}.{needs[1]}")
        if coder.payload_bytes is not None and stored != coder.payload_bytes:
            raise CorruptData(
                f"{where}: a {coder.name} section has {coder.payload_bytes} bytes of payload, not {stored}"
            )
        if offset != expected_offset or stored > size - TRAILER_BYTES - offset:
            raise CorruptData(f"{where}: offset {offset} / length {stored} do not fit the container")
        if coder.stored_is_decoded and stored != decoded:
            raise CorruptData(f"{where}: {coder.name} section of {stored} bytes declares {decoded}")
        expected_offset = offset + stored
        sections.append(SectionEntry(i, kind, codec, crc, offset, stored, decoded))
    if expected_offset != size - TRAILER_BYTES:
        raise CorruptData(f"{size - TRAILER_BYTES - expected_offset} bytes between the last section and the checksum")
    container = Container(view, (major, minor), sections)
    if verify_checksums:
        for entry in sections:
            if zlib.crc32(container.payload(entry)) != entry.crc32:
                raise CorruptData(f"checksum mismatch (CRC32) in section {entry.index} ({entry.kind_name})")
    return container


def decode_section(container: Container, entry: SectionEntry, width: int = 1) -> bytes:
    """The decoded bytes of a section (exactly ``entry.decoded_length`` of them).

    ``width`` is the element width the manifest declares for a tensor section; the
    payload's own width byte must agree with it.
    """
    decoded = decode_section_buffer(container, entry, width)
    return decoded if isinstance(decoded, bytes) else decoded.tobytes()


def decode_section_buffer(container: Container, entry: SectionEntry, width: int = 1, context=None):
    """Like ``decode_section`` but tensor layouts come back as a numpy array (no copy to bytes).

    ``context`` (a coders.registry.DecodeContext) gives the values of other tensors to a
    coder that refers to them (a product)."""
    what = f"section {entry.index} ({entry.kind_name}, {entry.codec_name})"
    return registry.get(entry.codec).decode(container.payload(entry), entry.decoded_length, width, what, context)


def section_details(container: Container, entry: SectionEntry) -> dict:
    """What a tensor section's header says (width, gap width, codebook size, ...), without decoding it."""
    return registry.get(entry.codec).details(container.payload(entry))
