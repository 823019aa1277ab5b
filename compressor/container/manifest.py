"""The manifest section: which tensor field each tensor section restores (FORMAT.md §5.1, §5.3)."""

from __future__ import annotations

import json

from ..codec import CorruptData
from . import format as fmt
from .layout import DATA_FIELDS

MANIFEST_FORMAT = "cmpz"
MAX_MANIFEST_BYTES = 256 << 20


def manifest_bytes(version: tuple[int, int], model_bytes: int, model_sha256: str, records: list[dict]) -> bytes:
    """The manifest as written: canonical JSON (sorted keys, no spaces, ASCII)."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": list(version),
        "model_bytes": model_bytes,
        "model_sha256": model_sha256,
        "tensors": records,
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def read_manifest(container: fmt.Container) -> dict:
    """The checked manifest of a container (CorruptData with one line if anything is off)."""
    entry = container.sections[0]
    if entry.decoded_length > MAX_MANIFEST_BYTES:
        raise CorruptData(f"manifest declares {entry.decoded_length} bytes (limit {MAX_MANIFEST_BYTES})")
    raw = fmt.decode_section(container, entry)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CorruptData("manifest is not valid UTF-8 JSON") from None
    check_manifest(manifest, len(container.sections), container.version)
    return manifest


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_manifest(manifest, section_count: int, version: tuple[int, int]) -> None:
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
