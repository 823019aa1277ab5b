"""describe: what a container holds, from its table, manifest and graph (tensors are not decoded)."""

from __future__ import annotations

import os
from collections import Counter

from ..codec import CorruptData
from ..graph import iter_tensors
from . import format as fmt
from .coders import registry
from .layout import MAX_GRAPH_BYTES, dtype_name, num_values
from .manifest import read_manifest
from .unpack import parse_graph, read_container_file


def describe_container(path: str | os.PathLike) -> dict:
    """A JSON-able description of a container file: sections, and per tensor its encoding and sizes."""
    data = read_container_file(path)
    container = fmt.read_container(data)
    manifest = read_manifest(container)
    graph_entry = container.sections[1]
    if graph_entry.decoded_length > MAX_GRAPH_BYTES:
        raise CorruptData("graph section declares more than 2 GiB")
    model = parse_graph(container)
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
        coder = registry.get(entry.codec)
        ref = refs[rec["tensor"]] if rec["tensor"] < len(refs) else None
        values = max(num_values(rec["dims"]), 1)
        size = rec["width"] * rec["elements"]
        # A shared section's stored bytes are attributed in proportion to each record's size.
        stored = entry.stored_length * size / entry.decoded_length if entry.decoded_length else entry.stored_length
        if not coder.shareable:  # the section is this record's alone
            size, stored = entry.decoded_length, entry.stored_length
        tensors.append(
            {
                "name": rec["name"],
                "kind": ref.kind if ref else None,
                "graph_path": ref.graph_path if ref else None,
                "dtype": dtype_name(rec["data_type"]),
                "shape": rec["dims"],
                "field": rec["field"],
                "section": rec["section"],
                "encoding": coder.name,
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
