"""The report of a `compressor run`: built as a dict (the JSON of ``--report``, keys documented
in README.md) from the stage rows, and rendered as terminal tables or a self-contained HTML page.

HTML plots use matplotlib (``pip install compressor[report]``), embedded as base64 PNGs so the
page is one file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from . import graph
from .errors import UsageError
from .measure import RUN_KEYS, Measure
from .present import format_table, to_json
from .quant_math import sortable
from .version import __version__

# The HTML histogram's resolution, and at most this many centroids drawn over it.
HIST_BINS = 120
MAX_PLOTTED_CENTROIDS = 256
NO_DATA_NOTE = (
    "no data given: nothing was measured; only data-free steps were applied "
    "(int8 per-channel weight-only quantization and lossless packing)"
)


@dataclass
class StageRow:
    """One row of the report's stage table: what a stage did to the model and what it cost."""

    stage: str
    applied: bool
    bytes: int
    metrics: dict
    seconds: float = 0.0
    options: dict = field(default_factory=dict)
    note: str = ""
    attempts: list = field(default_factory=list)
    stats: dict | None = None
    packed_bytes: int | None = None  # what this stage's model packs to (the container it would give)
    # Why the stage was not applied: [{"measure", "value", "limit", "by"}] (stages/ladder.rejection),
    # and the metrics of the attempt that says so (the gentlest measured).
    rejected_by: list = field(default_factory=list)
    rejected_metrics: dict | None = None
    # Bytes of container the stage cost on purpose (run.objective "int8-kernels" keeping a
    # quantize result that packs larger than its input).
    cost_bytes: int | None = None
    # Multiply-accumulates (batch 1) of this stage's model (``model_macs``; None: no layer's shape known).
    macs: int | None = None


@dataclass(frozen=True)
class RunResult:
    """What build_report needs of a run besides its stage rows."""

    model_path: str
    original: onnx.ModelProto
    original_bytes: int
    mode: str
    budget: float
    measure: Measure
    final_model: onnx.ModelProto
    pack_stats: dict | None
    container: dict | None
    gate: dict
    recipe: dict
    shared_model: onnx.ModelProto | None = None  # the model after share, when share was applied


def build_report(run: RunResult, rows: list[StageRow]) -> dict:
    """The report dict (timing in "seconds" is added by the caller)."""
    stages = [_stage_entry(r, run.original_bytes) for r in rows]
    applied = [s["stage"] + (f" ({s['setting']})" if s["setting"] else "") for s in stages[1:] if s["applied"]]
    measure, mode = run.measure, run.mode
    report = {
        "compressor_version": __version__,
        "model": str(run.model_path),
        "mode": mode,
        "measured": mode != "none",
        "samples": measure.data.size if measure.data is not None else 0,
        "budget_points": run.budget if mode != "none" else None,
        "min_snr_db": measure.min_snr_db if measure.snr_gated else None,
        "guard": measure.describe(),
        "original_bytes": int(run.original_bytes),
        "stages": stages,
        "applied": applied,
        "layers": per_layer(run.original, run.final_model, run.pack_stats, quantized_names(rows)),
        "container": run.container,
        "gate": run.gate,
        "recipe": run.recipe,
        "pack": _pack_summary(run.pack_stats),
        "plots": plot_data(run.original, run.shared_model),
        "prune_search": next((r.stats.get("search_plan") for r in rows if r.stage == "prune" and r.stats), None),
        "share_search": next((r.stats.get("search_plan") for r in rows if r.stage == "share" and r.stats), None),
        # The share ladder's partial rung (stages/partial_share.py): which tensors stayed unshared, why.
        "share_partial": next((r.stats.get("partial") for r in rows if r.stage == "share" and r.stats), None),
        # The share ladder's fine rung (stages/fine_share.py): the codebook of the subgraphs' weights.
        "share_fine": next((r.stats.get("fine") for r in rows if r.stage == "share" and r.stats), None),
    }
    if mode == "none":
        report["note"] = NO_DATA_NOTE
    return report


def _stage_entry(r: StageRow, original_bytes: int) -> dict:
    packed = r.packed_bytes if r.stage != "pack" else int(r.bytes)
    return {
        "stage": r.stage,
        "applied": r.applied,
        "bytes": int(r.bytes),
        "ratio": original_bytes / r.bytes if r.bytes else None,
        "packed_bytes": packed,
        "packed_ratio": original_bytes / packed if (r.packed_bytes or r.stage == "pack") else None,
        **{k: r.metrics.get(k) for k in RUN_KEYS},
        "seconds": round(r.seconds, 3),
        "setting": r.options.get("setting"),
        "note": r.note,
        "attempts": r.attempts,
        "rejected_by": r.rejected_by,
        "cost_bytes": r.cost_bytes,
        "macs": r.macs,
        # A fine-tune's row: the accuracy before and after it, its training, its further rounds.
        **({"finetune": r.stats} if r.stage == "finetune" and r.stats else {}),
        # The structured stage's row: parameters and MACs (batch 1) before and after it.
        **({"structured": structured_totals(r.stats)} if r.stage == "structured" and r.stats else {}),
    }


def model_macs(model: onnx.ModelProto, sample_shapes: Mapping[str, Sequence[int]] | None = None) -> int | None:
    """MACs (batch 1) of the model's Conv/ConvTranspose/Gemm/MatMul layers (``graph.node_macs``,
    dynamic input dims from `sample_shapes`) over those of known shape; None when there is
    none.  Shapes are inferred on a copy without the float weights' data (integer constants
    such as Reshape targets kept)."""
    floats = {t.name for t in model.graph.initializer if t.data_type in graph.FLOAT_TYPES}
    rows = graph.node_macs(graph.skeleton(model, floats), sample_shapes)
    counted = [row["macs"] for row in rows if row["macs"] is not None]
    return int(sum(counted)) if counted else None


def mac_reduction(report: dict) -> str | None:
    """'MACs (batch 1): 2,293,000 -> 1,012,345 (2.3x fewer, structured pruning)' when a
    structured stage applied, else None."""
    stages = report.get("stages") or []
    if not any(s["stage"] == "structured" and s["applied"] for s in stages):
        return None
    known = [s["macs"] for s in stages if s.get("macs") is not None]
    if len(known) < 2 or not known[-1]:
        return None
    return f"MACs (batch 1): {known[0]:,} -> {known[-1]:,} ({known[0] / known[-1]:.1f}x fewer, structured pruning)"


def speed_line(report: dict) -> str | None:
    """'ORT latency, 1 thread: batch 1 0.41 -> 0.17 ms (2.4x), batch 64 ...' when the run measured it."""
    speed = report.get("speed")
    if not speed:
        return None
    parts = [
        f"batch {key[5:]} {v['before_ms']:.3g} -> {v['after_ms']:.3g} ms ({v['speedup']:.2f}x)"
        for key, v in speed.items()
        if key.startswith("batch") and v.get("speedup")
    ]
    return f"ORT latency, {speed['threads']} thread(s): " + ", ".join(parts) if parts else None


def partial_lines(partial: dict) -> list[str]:
    """The share stage's partial rung in words: what it kept shared and each tensor it left unshared."""
    kept, left = partial["kept"], partial["left_unshared"]
    lines = [f"share kept {len(kept)} of {len(kept) + len(left)} tensors of {partial['from']} shared; left unshared:"]
    lines += [f"  {t['name']}: {t['why']}" for t in left]
    return lines


def fine_lines(fine: dict) -> list[str]:
    """The share stage's fine rung in words: the codebook, the untaken branches' source, what stayed as it was."""
    rows = fine["tensors"]
    shared = [t for t in rows if t.get("centroids")]
    untaken = [t for t in rows if t.get("unused")]
    if fine.get("per_weight"):
        ks = sorted({t["centroids"] for t in shared})
        lines = [
            f"share: k-means {ks[0]}-{ks[-1]} centroids per weight (the output noise of {fine['centroids']} for all)"
            f" on {len(shared)} weights read in subgraphs"
        ]
    else:
        lines = [f"share: k-means {fine['centroids']} centroids on {len(shared)} weights read in subgraphs"]
    if untaken:
        lines[0] += f"; {len(untaken)} of untaken If branches as {untaken[0]['from']}"
    lines += [
        f"  {t['name']}: left as it was (shared it would pack to {t['packed']:,} bytes, unshared {t['unshared']:,})"
        for t in rows
        if not t.get("centroids") and not t.get("unused")
    ]
    return lines


def structured_totals(stats: dict) -> dict:
    """What the structured stage removed: channels, parameters and MACs (batch 1) before/after."""
    keys = ("channels", "removed_channels", "params_before", "params_after", "macs_before", "macs_after")
    return {k: stats.get("totals", {}).get(k) for k in keys}


def _bits_of(values: np.ndarray) -> int | None:
    nonzero = values[values != 0]
    distinct = np.unique(sortable(nonzero)).size
    if distinct == 0:
        return 0
    return int(np.ceil(np.log2(distinct))) if distinct > 1 else 1


def per_layer(
    original: onnx.ModelProto, final: onnx.ModelProto, pack_stats: dict | None, held_as: dict[str, str]
) -> list[dict]:
    """Per matrix weight of the original: what the final model holds for it, and its container bytes.

    `held_as` maps a weight to the int8 tensor quantize made of it (quantized_names); other
    weights are still held under their own name.
    """
    tensors = {r.name: r.proto for r in graph.iter_tensors(final)}
    packed = {t.get("name"): t for t in (pack_stats or {}).get("tensors", [])}
    layers = []
    for w in graph.weights(original):
        if not w.is_matrix:
            continue
        name = held_as.get(w.name, w.name)
        row = {"name": w.name, "role": w.role, "shape": list(w.shape), "params": w.size}
        if name in tensors:
            values = numpy_helper.to_array(tensors[name])
            row["sparsity"] = float(np.count_nonzero(values == 0) / values.size) if values.size else 0.0
            row["distinct_nonzero"] = int(np.unique(sortable(values[values != 0])).size)
            row["bits"] = _bits_of(values)
        p = packed.get(name)
        if p:
            row["container_bytes"] = p.get("bytes_after")
            bound = sum(st.get("entropy_bound_bytes", 0) for st in p.get("streams", []))
            row["entropy_bound_bytes"] = round(bound, 1) if p.get("streams") else None
            row["encoding"] = p.get("encoding")
        elif name not in tensors:
            _factored_row(row, w, tensors, packed, held_as)
        layers.append(row)
    return layers


def _factored_row(row: dict, w: graph.Weight, tensors: dict, packed: dict, held_as: dict[str, str]) -> None:
    """A weight the lowrank stage wrote as two factors (passes/lowrank.py names them
    ``<name>.lowrank_a`` and ``_b``): its rank, and the factors' values, bits and bytes."""
    base = w.name.replace("/", "_")
    names = [held_as.get(f"{base}.lowrank_{k}", f"{base}.lowrank_{k}") for k in ("a", "b")]
    if not all(n in tensors for n in names):
        return
    arrays = [numpy_helper.to_array(tensors[n]) for n in names]
    values = np.concatenate([a.ravel() for a in arrays])
    row["lowrank_rank"] = int(values.size // max(w.shape[0] + w.shape[1], 1))
    row["factored_params"] = int(values.size)
    row["sparsity"] = float(np.count_nonzero(values == 0) / values.size) if values.size else 0.0
    row["distinct_nonzero"] = int(np.unique(sortable(values[values != 0])).size)
    row["bits"] = max(_bits_of(a) for a in arrays)
    found = [packed[n] for n in names if n in packed]
    if found:
        row["container_bytes"] = sum(p.get("bytes_after") or 0 for p in found)
        streams = [st for p in found for st in p.get("streams", [])]
        row["entropy_bound_bytes"] = (
            round(sum(st.get("entropy_bound_bytes", 0) for st in streams), 1) if streams else None
        )
        row["encoding"] = "+".join(str(p.get("encoding")) for p in found)


def quantized_names(rows: list[StageRow]) -> dict[str, str]:
    """Weight name -> its int8 tensor, from the stats of the applied quantize stage, or of the
    int8 floor when the run returned that (untransposed first)."""
    names: dict[str, str] = {}
    final = [r for r in rows if r.stage == "floor" and r.applied]
    for r in final or rows:
        if r.stage in ("quantize", "floor") and r.applied and r.stats:
            for w in sorted(r.stats.get("weights", []), key=lambda w: bool(w.get("transposed"))):
                if w.get("tensor"):
                    names.setdefault(w["name"], w["tensor"])
    return names


def _pack_summary(pack_stats: dict | None) -> dict | None:
    if not pack_stats:
        return None
    return {k: v for k, v in pack_stats.items() if k != "tensors"}


def plot_data(original: onnx.ModelProto, shared_model: onnx.ModelProto | None) -> dict:
    """Small arrays for the HTML plots: the histogram of the largest matrix weight's non-zero
    values and its k-means centroids, both from the shared model (from the original when share
    was not applied; then there are no centroids).  "source" says which model was drawn."""
    matrices = [w for w in graph.weights(original) if w.is_matrix]
    if not matrices:
        return {}
    biggest = max(matrices, key=lambda w: w.size)
    shared = graph.weight_by_name(shared_model).get(biggest.name) if shared_model is not None else None
    if shared is None and shared_model is not None:
        # The largest weight was replaced (by the lowrank stage's factors): the shared model's largest.
        held = [w for w in graph.weights(shared_model) if w.is_matrix]
        if held:
            biggest = shared = max(held, key=lambda w: w.size)
    drawn = shared if shared is not None else biggest
    values = drawn.array().astype(np.float32).ravel()
    finite = np.isfinite(values)
    # NaN/Inf weights cannot be binned: they are left out of the plot, and the plot data says how many.
    nonzero = values[finite & (values != 0)]
    counts, edges = np.histogram(nonzero, bins=HIST_BINS)
    centroids = []
    if shared is not None:
        shared_values = shared.array()
        shared_nonzero = shared_values[np.isfinite(shared_values) & (shared_values != 0)]
        centroids = np.unique(sortable(shared_nonzero)).astype(float).tolist()[:MAX_PLOTTED_CENTROIDS]
    plots = {
        "layer": biggest.name,
        "source": "shared" if shared is not None else "original",
        "hist_counts": counts.tolist(),
        "hist_edges": edges.tolist(),
        "centroids": centroids,
    }
    non_finite = int(values.size - np.count_nonzero(finite))
    if non_finite:
        plots["non_finite_values_left_out"] = non_finite
    return plots


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
        guard = report.get("guard") or {}
        if report["mode"] == "fidelity":
            first = report["stages"][0]
            has_top1 = first.get("top1_agreement") is not None
            has_map = first.get("map_f1") is not None
            what = " and ".join(
                ["top-1 agreement"] * has_top1 + [f"map region F1 at {guard.get('map_threshold')}"] * has_map
            )
            budget = f"{budget} of {what}" if what else ""
            if guard.get("max_kl") is not None:
                budget += f", class KL <= {guard['max_kl']:g}"
            risk = guard.get("decision_risk")
            if risk:
                budget += (
                    f" (decisions at {risk['threshold']:g}: near misses count, "
                    f"{100 * risk['confidence']:g} % bound over {risk['units']} {risk['unit']}s)"
                )
            if report.get("min_snr_db") is not None:
                budget += (", " if budget else "") + f"centred output SNR >= {report['min_snr_db']:g} dB"
        elif report["mode"] == "metric":
            budget += f" of the task metric {guard.get('metric')}"
        else:
            budget += " of top-1 accuracy"
        out.append(f"measured with ONNX Runtime on {report['samples']} samples ({budget})")
        if guard.get("verdict_samples"):
            searched = "held out from" if guard.get("held_out") else "the same as"
            rows = guard.get("verdict_rows", guard["verdict_samples"])
            unit = "one sample" if rows == guard["verdict_samples"] else f"one of their {rows} output rows"
            out.append(
                f"verdict on {guard['verdict_samples']} samples ({searched} the {guard['search_samples']} "
                f"the searches tuned on; {unit} = {guard['resolution_points']:g} points)"
            )
    else:
        out.append(report.get("note", "nothing measured"))
    out.append("")
    out.append(format_table(stage_rows(report), STAGE_HEADERS))
    layers = report.get("layers") or []
    if layers:
        out.append("")
        rows = [
            [
                layer["name"] + (f" (rank {layer['lowrank_rank']})" if layer.get("lowrank_rank") else ""),
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
    macs = mac_reduction(report)
    if macs:
        out.append(macs)
    speed = speed_line(report)
    if speed:
        out.append(speed)
    if c:
        out.append(f"container: {c['path']}  {c['bytes']:,} bytes on disk, {c['ratio']:.1f}x smaller than the original")
    floor, retry = report.get("floor"), report.get("retry")
    if floor:
        out.append(f"floor (int8 weights only): {floor['note']}")
    partial = report.get("share_partial")
    if partial:
        out.extend(partial_lines(partial))
    fine = report.get("share_fine")
    if fine:
        out.extend(fine_lines(fine))
    compared = report.get("structured_compare")
    if compared:
        out.append(
            f"later stages run with and without structured pruning: kept {compared['kept']} "
            f"({compared['packed_bytes_with']:,} vs {compared['packed_bytes_without']:,} bytes)"
        )
    if retry:
        out.append(
            f"retry without pruning ({retry['reason']}): kept {retry['kept']} "
            f"({retry['packed_bytes_with_pruning']:,} vs {retry['packed_bytes_without_pruning']:,} bytes)"
        )
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


def _pyplot():
    try:  # matplotlib is an optional extra (compressor[report]), needed only for the HTML report
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--html needs matplotlib: pip install 'compressor[report]'")
    return plt


def check_html_available() -> None:
    """Refuse --html before any work when matplotlib is missing (not after the pipeline ran)."""
    _pyplot()


def _figures(report: dict) -> list[tuple[str, str]]:
    plt = _pyplot()
    figs = []
    plots = report.get("plots") or {}
    if plots.get("hist_counts"):
        fig, ax = plt.subplots(figsize=(7, 3))
        edges = plots["hist_edges"]
        ax.bar(edges[:-1], plots["hist_counts"], width=edges[1] - edges[0], align="edge", color="#4477aa")
        for c in plots.get("centroids", []):
            ax.axvline(c, color="#cc3311", lw=0.6, alpha=0.7)
        if plots.get("source") == "shared":
            ax.set_title(f"non-zero weights of {plots['layer']} after share, and its k-means centroids")
        else:
            ax.set_title(f"non-zero weights of {plots['layer']} in the original model (share not applied)")
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
