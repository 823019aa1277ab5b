"""Render a `compressor run` report: terminal tables and a self-contained HTML page.

The JSON report (``--report``) is the dict built by ``pipeline.build_report``; its keys are
documented in README.md.  HTML plots use matplotlib (``pip install compressor[report]``),
embedded as base64 PNGs so the page is one file.
"""

from __future__ import annotations

import base64
import html
import io

from .errors import UsageError
from .present import format_table, to_json

STAGE_HEADERS = [
    "stage",
    "onnx bytes",
    "ratio",
    "packed bytes",
    "packed ratio",
    "accuracy %",
    "agreement %",
    "SNR dB",
    "setting",
]


def _pct(v):
    return None if v is None else round(float(v), 2)


def stage_rows(report: dict) -> list[list]:
    rows = []
    for s in report["stages"]:
        rows.append(
            [
                s["stage"] + ("" if s["applied"] else " (skipped)"),
                s["bytes"],
                None if s["ratio"] is None else f"{s['ratio']:.1f}x",
                s.get("packed_bytes"),
                None if s.get("packed_ratio") is None else f"{s['packed_ratio']:.1f}x",
                _pct(s["accuracy"]),
                _pct(s["top1_agreement"]),
                None if s["snr_db"] is None or isinstance(s["snr_db"], str) else round(s["snr_db"], 1),
                s["setting"] or s["note"] or "",
            ]
        )
    return rows


def format_report(report: dict) -> str:
    out = [f"model: {report['model']}  ({report['original_bytes']:,} bytes)"]
    if report["measured"]:
        budget = f"budget {report['budget_points']:g} points"
        if report["mode"] == "fidelity":
            has_top1 = report["stages"][0].get("top1_agreement") is not None
            budget = f"{budget} of top-1 agreement" if has_top1 else ""
            if report.get("min_snr_db") is not None:
                budget += (", " if budget else "") + f"output SNR >= {report['min_snr_db']:g} dB"
        else:
            budget += " of top-1 accuracy"
        out.append(f"measured with ONNX Runtime on {report['samples']} samples ({budget})")
    else:
        out.append(report.get("note", "nothing measured"))
    out.append("")
    out.append(format_table(stage_rows(report), STAGE_HEADERS))
    layers = report.get("layers") or []
    if layers:
        out.append("")
        rows = [
            [
                layer["name"],
                layer["params"],
                _pct(100 * layer.get("sparsity", 0.0)),
                layer.get("bits"),
                layer.get("container_bytes"),
                layer.get("entropy_bound_bytes"),
            ]
            for layer in layers
        ]
        out.append(format_table(rows, ["layer", "params", "sparsity %", "bits", "container B", "entropy bound B"]))
    c = report.get("container")
    out.append("")
    if c:
        out.append(f"container: {c['path']}  {c['bytes']:,} bytes on disk, {c['ratio']:.1f}x smaller than the original")
    gate = report.get("gate") or {}
    if gate.get("max_accuracy_drop") is not None:
        out.append(
            f"gate --max-accuracy-drop {gate['max_accuracy_drop']:g}: "
            + ("passed" if gate["passed"] else f"FAILED: {gate['reason']}")
        )
    return "\n".join(out)


# --------------------------------------------------------------------------- HTML


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(report: dict) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--html needs matplotlib: pip install 'compressor[report]'")
    figs = []
    plots = report.get("plots") or {}
    if plots.get("hist_counts"):
        fig, ax = plt.subplots(figsize=(7, 3))
        edges = plots["hist_edges"]
        ax.bar(edges[:-1], plots["hist_counts"], width=edges[1] - edges[0], align="edge", color="#4477aa")
        for c in plots.get("centroids", []):
            ax.axvline(c, color="#cc3311", lw=0.6, alpha=0.7)
        ax.set_title(f"weights of {plots['layer']} (non-zero) and k-means centroids")
        ax.set_xlabel("weight value")
        ax.set_ylabel("count")
        figs.append(("Weight distribution and centroids", _png(fig)))
        plt.close(fig)
    layers = report.get("layers") or []
    if layers:
        fig, ax = plt.subplots(figsize=(7, 3))
        names = [layer["name"][-24:] for layer in layers]
        ax.bar(
            range(len(layers)),
            [100 * layer.get("sparsity", 0) for layer in layers],
            color="#228833",
            label="sparsity %",
        )
        ax2 = ax.twinx()
        ax2.plot(range(len(layers)), [layer.get("bits") or 0 for layer in layers], "o-", color="#aa3377", label="bits")
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("sparsity %")
        ax2.set_ylabel("bits per non-zero")
        ax.set_title("per-layer sparsity and bits")
        figs.append(("Per-layer sparsity and bits", _png(fig)))
        plt.close(fig)
    stages = report["stages"]
    fig, ax = plt.subplots(figsize=(7, 3))
    xs = list(range(len(stages)))
    ax.bar([x - 0.2 for x in xs], [s["bytes"] for s in stages], width=0.4, color="#66ccee", label="ONNX file")
    ax.bar(
        [x + 0.2 for x in xs], [s.get("packed_bytes") or 0 for s in stages], width=0.4, color="#ee6677", label="packed"
    )
    ax.set_xticks(xs)
    ax.set_xticklabels([s["stage"] for s in stages])
    ax.legend()
    ax.set_yscale("log")
    ax.set_ylabel("bytes")
    ax.set_title("size after each stage")
    figs.append(("Size of each stage", _png(fig)))
    plt.close(fig)
    return figs


def render_html(report: dict) -> str:
    headers = STAGE_HEADERS
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row) + "</tr>"
        for row in stage_rows(report)
    )
    figs = "".join(
        f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{b64}'/>"
        for t, b64 in _figures(report)
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>compressor report</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>"
        f"<h1>compressor report: {html.escape(report['model'])}</h1>"
        f"<pre>{html.escape(format_report(report))}</pre>"
        f"<table><tr>{''.join(f'<th>{h}</th>' for h in headers)}</tr>{table}</table>{figs}"
        f"<details><summary>JSON</summary><pre>{html.escape(to_json(report))}</pre></details>"
        "</body></html>"
    )
