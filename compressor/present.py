"""Presentation helpers shared by the CLI and the reports: JSON-able values, plain text tables, byte sizes.

Below the CLI: report.py, batch.py and the container's tables use these; commands/common.py
re-exports them for the command modules.
"""

from __future__ import annotations

import json
import math

import numpy as np


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else (None if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def to_json(obj, indent: int | None = 2) -> str:
    return json.dumps(jsonable(obj), indent=indent, sort_keys=False)


def format_table(rows: list[list], headers: list[str]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    numeric = [
        all(isinstance(r[i], (int, float, np.integer, np.floating)) or r[i] is None for r in rows) if rows else False
        for i in range(len(headers))
    ]

    def line(vals):
        return "  ".join(v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(vals)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and abs(v) < 0.01:
            return f"{v:.2e}"
        return f"{v:.2f}"
    return str(v)


def human_bytes(n: int | float) -> str:
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
