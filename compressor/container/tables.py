"""Text tables of a pack report and of a container's description (for the CLI)."""

from __future__ import annotations

from ..present import format_table
from .coders import registry


def _detail(encoding: str, details: dict) -> str:
    """The inspect table's detail column: what the coder says of its section header."""
    try:
        return registry.by_name(encoding).details_text(details)
    except KeyError:
        return ""


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
         _detail(t["encoding"], t["details"])
         + (f"{' ' if t['details'] else ''}(section {t['section']}, shared)" if t["shared"] else ""),
         t["bytes_before"], t["bytes_after"], t["bits_per_weight"]]
        for t in desc["tensors"]
    ]  # fmt: skip
    lines.append(format_table(rows, ["tensor", "dtype", "shape", "encoding", "detail", "bytes", "packed", "bits/w"]))
    lines.append("")
    lines.append(
        format_table(
            [
                [s["index"], s["kind"], s["codec"], s["stored_bytes"], s["decoded_bytes"], s["crc32"]]
                for s in desc["sections"]
                if s["kind"] != "tensor"
            ],
            ["section", "kind", "codec", "stored", "decoded", "crc32"],
        )
    )
    return "\n".join(lines)


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
    lines = [format_table(rows, ["tensor", "shape", "encoding", "bytes", "packed", "bits/w", "huffman over H %"])]
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
            f"entropy-coded streams: {e['coded_bytes']:,} bytes vs entropy bound {e['entropy_bound_bytes']:,.0f} bytes"
            f" (+{e['overhead_pct']}%)"
        )
    per_weight = f", {stats['bits_per_weight']} bits per weight" if stats["bits_per_weight"] is not None else ""
    lines.append(
        f"model: {stats['model_bytes']:,} bytes -> container: {stats['container_bytes']:,} bytes ({stats['ratio']}x{per_weight})"
    )
    return "\n".join(lines)
