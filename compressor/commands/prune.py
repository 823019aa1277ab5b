"""`compressor prune` (magnitude pruning, or per-tensor ratios within an accuracy budget) and
`compressor sensitivity` (each tensor pruned alone on a ladder of ratios, measured with ORT)."""

from __future__ import annotations

import math

import click

from ..data import load_dataset
from ..errors import UsageError
from ..graph import load_model_and_files, save_model
from ..passes.magnitude import check_sparsity
from ..passes.prune import prune
from ..passes.selection import DEFAULT_MIN_PARAMS
from ..passes.structured import DEFAULT_ALIGN, DEFAULT_MAX_RATIO, structured_prune
from ..paths import atomic_write_bytes, check_outputs
from ..search.prune_budget import prune_to_budget
from ..search.sensitivity import parse_ratios, sensitivity
from ..search.structured_budget import DEFAULT_MAX_EVALS, structured_to_budget
from .common import emit_json, format_table, report_pass, to_json, warn


def _print_prune_table(stats: dict, output: str) -> None:
    rows = [
        [t["name"], t["role"], t["params"], t["zeros_before"], t["zeros_after"], t["sparsity"] * 100.0]
        for t in stats["tensors"]
    ]
    if rows:
        click.echo(format_table(rows, ["tensor", "role", "params", "zeros before", "zeros after", "sparsity %"]))
    for s in stats["skipped"]:
        click.echo(f"skipped {s['name']} ({s['role']}, {s['params']} values): {s['reason']}")
    macs = stats["macs"]
    if macs["total_macs"]:
        click.echo(
            f"MACs at batch 1: {macs['total_macs']:,} -> {macs['total_nonzero_macs']:,} nonzero "
            f"({macs['total_nonzero_macs'] / macs['total_macs'] * 100:.1f}%)"
        )
    budget = stats.get("budget")
    if budget:
        final = budget["final"]
        what = "accuracy drop" if budget["metric"] == "accuracy" else "top-1 disagreement"
        base = budget["baseline"]
        if budget["metric"] == "accuracy":
            measured = f"accuracy {base['accuracy']:.2f}% -> {final['accuracy']:.2f}%"
        elif final["top1_agreement"] is not None:
            measured = f"top-1 agreement with the original {final['top1_agreement']:.2f}%"
        else:
            measured = f"output SNR {final['snr_db']:.1f} dB"
        click.echo(
            f"budget {budget['budget_points']:g} points: {measured}, {what} {final['drop']:.2f} points "
            f"({budget['evaluations']} candidates measured)"
        )
    totals = stats["totals"]
    click.echo(
        f"pruned {totals['pruned_tensors']} tensors: {totals['zeros_after']:,} of {totals['params']:,} values zero "
        f"({totals['sparsity'] * 100:.2f}%) -> {output}"
    )


def _print_structured_table(stats: dict, output: str) -> None:
    rows = [[", ".join(g["sources"]), g["channels"], g["kept"]] for g in stats["groups"]]
    if rows:
        click.echo(format_table(rows, ["channel group (producers)", "channels", "kept"]))
    for g in stats["untouchable"]:
        click.echo(f"left as is: {', '.join(g['sources'])} ({g['channels']} channels): {g['blocked']}")
    if stats.get("head_groups_left"):
        click.echo(f"left as is: {stats['head_groups_left']} attention head group(s) (--heads to prune them)")
    budget = stats.get("budget")
    if budget:
        final = budget["final"]
        click.echo(
            f"budget {budget['budget_points']:g} points: {budget['metric']} drop {final['drop']:.2f} points "
            f"({budget['evaluations']} candidates measured)"
        )
    t = stats["totals"]
    click.echo(
        f"removed {t['removed_channels']} of {t['channels']} channels: params {t['params_before']:,} -> "
        f"{t['params_after']:,}, MACs at batch 1 {t['macs_before']:,} -> {t['macs_after']:,}"
        + (
            f" (of the layers with known shapes; {t['macs_unknown_layers']} unknown)"
            if t.get("macs_unknown_layers")
            else ""
        )
        + f" -> {output}"
    )


@click.command("prune")
@click.argument("model", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the pruned model.")
@click.option(
    "--sparsity",
    type=float,
    default=None,
    help="Fraction of the prunable weights to zero, in [0, 1) (default 0.5 without --budget).",
)
@click.option(
    "--scope",
    type=click.Choice(["global", "layer", "random"]),
    default="global",
    show_default=True,
    help="global: one magnitude threshold over all tensors; layer: the same ratio per tensor; random: seeded baseline.",
)
@click.option("--exclude", default=None, metavar="REGEX", help="Leave tensors whose name matches REGEX unpruned.")
@click.option(
    "--min-params",
    type=int,
    default=DEFAULT_MIN_PARAMS,
    show_default=True,
    help="Only prune tensors with at least this many values.",
)
@click.option("--include-embeddings", is_flag=True, help="Also prune embeddings used by Gather.")
@click.option(
    "--budget",
    type=float,
    default=None,
    metavar="POINTS",
    help="Choose per-tensor ratios from sensitivity curves, keeping the measured accuracy drop within POINTS.",
)
@click.option("--data", "data_path", type=click.Path(dir_okay=False), help=".npz inputs (and labels 'y') for --budget.")
@click.option(
    "--max-evals", type=int, default=40, show_default=True, help="Candidate models measured by the --budget search."
)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seed for --scope random.")
@click.option(
    "--structured",
    is_flag=True,
    help="Remove whole output channels / neurons (smaller tensors, fewer MACs); --sparsity is then "
    "the fraction of the prunable channels removed.",
)
@click.option(
    "--max-ratio",
    type=float,
    default=DEFAULT_MAX_RATIO,
    show_default=True,
    help="With --structured: the largest fraction of any channel group removed.",
)
@click.option(
    "--align",
    type=click.IntRange(1),
    default=DEFAULT_ALIGN,
    show_default=True,
    help="With --structured: kept channel counts are multiples of this (ORT's fast conv layouts).",
)
@click.option(
    "--heads", is_flag=True, help="With --structured: also remove whole attention heads (q/k/v/out together)."
)
@click.option(
    "--calib",
    "calib_path",
    type=click.Path(dir_okay=False),
    help="With --structured: .npz inputs to rank channels by their measured effect and fold the removed "
    "channels' means into biases (default with --budget: the --data inputs).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the stats as one JSON object on stdout.")
def prune_command(
    model,
    output,
    sparsity,
    scope,
    exclude,
    min_params,
    include_embeddings,
    budget,
    data_path,
    max_evals,
    seed,
    structured,
    max_ratio,
    align,
    heads,
    calib_path,
    as_json,
) -> None:
    """Zero the smallest-magnitude weights of MODEL and write OUT (same graph, names and dtypes);
    with --structured, remove whole channels instead."""
    if budget is not None:
        if sparsity is not None:
            raise UsageError("give either --sparsity or --budget, not both")
        if not data_path:
            raise UsageError("--budget needs --data DATA.npz to measure the accuracy drop")
        if not math.isfinite(budget) or budget < 0:
            raise UsageError(f"--budget must be a non-negative number of points, got {budget}")
        if scope != "global":
            warn("--scope is ignored with --budget (per-tensor ratios are chosen from the sensitivity curves)")
    else:
        if data_path:
            warn("--data is only used with --budget; ignored")
        sparsity = 0.5 if sparsity is None else sparsity
        check_sparsity(sparsity)  # before reading the model: a usage error is a usage error
    loaded, external_files = load_model_and_files(model, max_bytes=None)
    check_outputs(
        {"-o": output},
        {
            "the input model": model,
            "the model's external data": external_files,
            "--data": data_path,
            "--calib": calib_path,
        },
    )
    if structured:
        calib = load_dataset(calib_path, loaded) if calib_path else None
        options = {"max_ratio": max_ratio, "exclude": exclude, "align": align, "calib": calib, "heads": heads}
        if budget is not None:
            evals = min(max_evals, DEFAULT_MAX_EVALS)
            new_model, stats = structured_to_budget(
                loaded, load_dataset(data_path, loaded), budget, max_evals=evals, **options
            )
        else:
            new_model, stats = structured_prune(loaded, sparsity, **options)
        save_model(new_model, output, input_path=model)
        report_pass(stats, as_json, lambda: _print_structured_table(stats, output))
        return
    if budget is not None:
        data = load_dataset(data_path, loaded)
        new_model, stats = prune_to_budget(
            loaded,
            data,
            budget,
            exclude=exclude,
            min_params=min_params,
            seed=seed,
            include_embeddings=include_embeddings,
            max_evals=max_evals,
        )
    else:
        new_model, stats = prune(
            loaded,
            sparsity,
            scope=scope,
            exclude=exclude,
            min_params=min_params,
            seed=seed,
            include_embeddings=include_embeddings,
        )
    save_model(new_model, output, input_path=model)
    report_pass(stats, as_json, lambda: _print_prune_table(stats, output))


def _print_sensitivity_table(stats: dict) -> None:
    metric = stats["metric"]
    base = stats["baseline"]
    if metric == "accuracy":
        click.echo(
            f"accuracy on {stats['samples']} samples, original {base['accuracy']:.2f}%; "
            "cells: accuracy % with the tensor alone pruned to each ratio"
        )
        key = "accuracy"
    elif base.get("top1_agreement") is not None:
        click.echo(
            f"no labels: top-1 agreement with the original on {stats['samples']} samples, % (output SNR in dB below)"
        )
        key = "top1_agreement"
    else:
        click.echo(f"no labels and no top-1: output SNR (dB) against the original on {stats['samples']} samples")
        key = "snr_db"
    headers = ["tensor", "role", "params"] + [f"{r:g}" for r in stats["ratios"]]
    rows = [[t["name"], t["role"], t["params"]] + [p[key] for p in t["curve"]] for t in stats["tensors"]]
    if rows:
        click.echo(format_table(rows, headers))
    if key == "top1_agreement":
        rows = [[t["name"], t["role"], t["params"]] + [p["snr_db"] for p in t["curve"]] for t in stats["tensors"]]
        click.echo(format_table(rows, headers))
    for s in stats["skipped"]:
        click.echo(f"skipped {s['name']} ({s['role']}, {s['params']} values): {s['reason']}")


@click.command("sensitivity")
@click.argument("model", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--data", "data_path", required=True, type=click.Path(dir_okay=False), help=".npz inputs (and labels 'y')."
)
@click.option(
    "--ratios", default=None, metavar="R1,R2,...", help="Pruning ratios to probe (default 0.3,0.5,0.7,0.8,0.9,0.95)."
)
@click.option("--exclude", default=None, metavar="REGEX", help="Skip tensors whose name matches REGEX.")
@click.option(
    "--min-params",
    type=int,
    default=DEFAULT_MIN_PARAMS,
    show_default=True,
    help="Only probe tensors with at least this many values.",
)
@click.option("--include-embeddings", is_flag=True, help="Also probe embeddings used by Gather.")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), help="Also write the JSON to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the curves as one JSON object on stdout.")
def sensitivity_command(model, data_path, ratios, exclude, min_params, include_embeddings, output, as_json) -> None:
    """Prune each weight tensor of MODEL alone at a ladder of ratios and measure the accuracy (or fidelity)."""
    ladder = parse_ratios(ratios)
    loaded, external_files = load_model_and_files(model)
    check_outputs(
        {"-o": output},
        {"the input model": model, "the model's external data": external_files, "--data": data_path},
    )
    data = load_dataset(data_path, loaded)
    stats = sensitivity(
        loaded, data, ratios=ladder, exclude=exclude, min_params=min_params, include_embeddings=include_embeddings
    )
    if not stats["tensors"]:
        warn("nothing to probe: no weight tensor qualifies")
    if output:
        atomic_write_bytes(output, (to_json(stats) + "\n").encode("utf-8"))
    if as_json:
        emit_json(stats)
        return
    _print_sensitivity_table(stats)


COMMANDS = [prune_command, sensitivity_command]
