"""`compressor lowrank`: Gemm/MatMul weights (and 1x1 convs) factorised into two products of
lower rank, at a fixed rank ratio or per layer within an accuracy budget."""

from __future__ import annotations

import math

import click

from ..data import load_dataset
from ..errors import UsageError
from ..graph import load_model_and_files, save_model
from ..passes.lowrank import check_rank_ratio, lowrank
from ..passes.selection import DEFAULT_MIN_PARAMS
from ..paths import check_outputs
from ..search.lowrank_budget import MAX_SEARCH_RUNS, lowrank_to_budget
from .common import format_table, report_pass, warn


def _print_lowrank_table(stats: dict, output: str) -> None:
    rows = [
        [
            t["name"],
            t["op"],
            "x".join(str(d) for d in t["shape"]),
            f"{t['rank']}/{t['full_rank']}",
            t["params"],
            t["factored_params"],
            t["error"] * 100.0,
            t["method"],
        ]
        for t in stats["tensors"]
    ]
    if rows:
        click.echo(
            format_table(rows, ["tensor", "op", "shape", "rank", "params", "factored", "layer error %", "measured by"])
        )
    for s in stats["skipped"]:
        click.echo(f"skipped {s['name']} ({s['role']}, {s['params']} values): {s['reason']}")
    budget = stats.get("budget")
    if budget:
        final = budget["final"]
        if budget["metric"] == "accuracy":
            measured = f"accuracy {budget['baseline_accuracy']:.2f}% -> {final['accuracy']:.2f}%"
        else:
            measured = f"top-1 agreement with the original {final['top1_agreement'] or 0:.2f}%"
        click.echo(
            f"budget {budget['budget_points']:g} points: {measured}, loss {final['drop']:.2f} points "
            f"({budget['whole_model_runs']} candidates measured)"
        )
    totals = stats["totals"]
    click.echo(
        f"factorised {totals['factored_tensors']} tensors: {totals['params_before']:,} -> {totals['params_after']:,} "
        f"values; model {totals['model_params_before']:,} -> {totals['model_params_after']:,} -> {output}"
    )


@click.command("lowrank")
@click.argument("model", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the model.")
@click.option(
    "--rank-ratio",
    type=float,
    default=None,
    help="Rank of every factorised weight as a fraction of its full rank, in (0, 1] (default 0.25 without --budget).",
)
@click.option(
    "--budget",
    type=float,
    default=None,
    metavar="POINTS",
    help="Choose a rank per layer from its output-error curve, keeping the measured accuracy drop within POINTS.",
)
@click.option("--data", "data_path", type=click.Path(dir_okay=False), help=".npz inputs (and labels 'y') for --budget.")
@click.option(
    "--calib",
    "calib_path",
    type=click.Path(dir_okay=False),
    help=".npz calibration inputs: the layers' input covariances (whitened SVD); default --data.",
)
@click.option(
    "--refit", is_flag=True, help="Solve each second factor again by least squares on the calibration inputs."
)
@click.option("--exclude", default=None, metavar="REGEX", help="Leave tensors whose name matches REGEX as they are.")
@click.option(
    "--min-params",
    type=int,
    default=DEFAULT_MIN_PARAMS,
    show_default=True,
    help="Only factorise tensors with at least this many values.",
)
@click.option(
    "--max-evals",
    type=click.IntRange(1),
    default=MAX_SEARCH_RUNS,
    show_default=True,
    help="Candidate models measured by the --budget search.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the stats as one JSON object on stdout.")
def lowrank_command(
    model, output, rank_ratio, budget, data_path, calib_path, refit, exclude, min_params, max_evals, as_json
) -> None:
    """Write each Gemm/MatMul weight (and 1x1 conv) of MODEL as two lower-rank factors, where that saves values."""
    if budget is not None:
        if rank_ratio is not None:
            raise UsageError("give either --rank-ratio or --budget, not both")
        if not data_path:
            raise UsageError("--budget needs --data DATA.npz to measure the accuracy drop")
        if not math.isfinite(budget) or budget < 0:
            raise UsageError(f"--budget must be a non-negative number of points, got {budget}")
    else:
        rank_ratio = check_rank_ratio(0.25 if rank_ratio is None else rank_ratio)
        if refit and not (data_path or calib_path):
            raise UsageError("--refit needs --calib (or --data) calibration inputs")
    loaded, external_files = load_model_and_files(model)
    check_outputs(
        {"-o": output},
        {
            "the input model": model,
            "the model's external data": external_files,
            "--data": data_path,
            "--calib": calib_path,
        },
    )
    data = load_dataset(data_path, loaded) if data_path else None
    calib = load_dataset(calib_path, loaded) if calib_path else None
    if budget is not None:
        new_model, stats = lowrank_to_budget(
            loaded,
            data,
            budget,
            calib=calib,
            max_evals=max_evals,
            exclude=exclude,
            min_params=min_params,
            refit=refit,
        )
    else:
        if data is not None and calib is None:
            warn("--data without --budget: used as calibration inputs for the whitened SVD")
        new_model, stats = lowrank(
            loaded, rank_ratio, data=calib or data, exclude=exclude, min_params=min_params, refit=refit
        )
    save_model(new_model, output, input_path=model)
    report_pass(stats, as_json, lambda: _print_lowrank_table(stats, output))


COMMANDS = [lowrank_command]
