"""`compressor share`: per-tensor k-means weight sharing (Deep Compression's second stage)."""

from __future__ import annotations

import click

from ..data import load_dataset
from ..errors import UsageError
from ..graph import load_model_and_files, save_model
from ..kmeans import INITS
from ..passes.selection import DEFAULT_MIN_PARAMS
from ..passes.share import share
from ..paths import check_outputs
from .common import format_table, report_pass, warn


def _parse_bits(items: tuple[str, ...]) -> dict[str, int]:
    result: dict[str, int] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise UsageError(f"--bits expects NAME=BITS, got {item!r}")
        try:
            result[name] = int(value)
        except ValueError:
            raise UsageError(f"--bits {item}: bits must be an integer")
    return result


@click.command("share")
@click.argument("model", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the shared model.")
@click.option("--bits-conv", type=int, default=8, show_default=True, help="Bits (2^bits centroids) for conv filters.")
@click.option(
    "--bits-fc",
    type=int,
    default=5,
    show_default=True,
    help="Bits for Gemm/MatMul, recurrent weights and Gather tables.",
)
@click.option(
    "--bits",
    "bits_items",
    multiple=True,
    metavar="NAME=B",
    help="Bits for one tensor (repeatable); overrides --min-params.",
)
@click.option(
    "--init",
    type=click.Choice(INITS),
    default="linear",
    show_default=True,
    help="Centroid initialisation: linear keeps large weights, density/random favour the bulk.",
)
@click.option("--refit", is_flag=True, help="Refit centroid values to minimise each layer's output error on --data.")
@click.option(
    "--bias-correction", is_flag=True, help="Lower each shared layer's bias by the mean output shift on --data."
)
@click.option(
    "--data",
    "data_path",
    type=click.Path(dir_okay=False),
    help=".npz calibration inputs for --refit / --bias-correction.",
)
@click.option("--exclude", default=None, metavar="REGEX", help="Leave tensors whose name matches REGEX unshared.")
@click.option(
    "--min-params",
    type=int,
    default=DEFAULT_MIN_PARAMS,
    show_default=True,
    help="Only share tensors with at least this many values.",
)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seed for --init random.")
@click.option("--json", "as_json", is_flag=True, help="Print the stats as one JSON object on stdout.")
def share_command(
    model,
    output,
    bits_conv,
    bits_fc,
    bits_items,
    init,
    refit,
    bias_correction,
    data_path,
    exclude,
    min_params,
    seed,
    as_json,
) -> None:
    """Cluster each weight tensor of MODEL into a small codebook (k-means) and write OUT."""
    if (refit or bias_correction) and not data_path:
        raise UsageError("--refit and --bias-correction need --data DATA.npz (calibration inputs)")
    if data_path and not (refit or bias_correction):
        warn("--data is only used with --refit or --bias-correction; ignored")
    bits_by_name = _parse_bits(bits_items)
    loaded, external_files = load_model_and_files(model, max_bytes=None)
    check_outputs(
        {"-o": output},
        {"the input model": model, "the model's external data": external_files, "--data": data_path},
    )
    data = load_dataset(data_path, loaded) if refit or bias_correction else None
    new_model, stats = share(
        loaded,
        bits_conv=bits_conv,
        bits_fc=bits_fc,
        bits_by_name=bits_by_name,
        init=init,
        seed=seed,
        exclude=exclude,
        min_params=min_params,
        refit_data=data if refit else None,
        bias_data=data if bias_correction else None,
    )
    save_model(new_model, output, input_path=model)
    report_pass(stats, as_json, lambda: _print_share_table(stats, output))


def _print_share_table(stats: dict, output: str) -> None:
    rows = []
    for t in stats["tensors"]:
        r = t["refit"]
        refit_cell = "-" if r is None else ("yes" if r["applied"] else "no")
        rows.append(
            [
                t["name"],
                t["role"],
                t["size"],
                t["bits"],
                t["codebook_size"],
                t["distinct"],
                t["zeros"],
                t["rmse"],
                t["rel_error"],
                refit_cell,
            ]
        )
    if rows:
        click.echo(
            format_table(
                rows, ["tensor", "role", "size", "bits", "codebook", "distinct", "zeros", "rmse", "rel_err", "refit"]
            )
        )
    for s in stats["skipped"]:
        click.echo(f"skipped {s['name']} ({s['role']}, {s['size']} values): {s['reason']}")
    for t in stats["tensors"]:
        r = t["refit"]
        if r is not None and not r["applied"] and "output_rel_error_kmeans" not in r:
            click.echo(f"refit skipped for {t['name']}: {r['reason']}")
    click.echo(f"shared {stats['shared_tensors']} tensors ({stats['shared_params']} values) -> {output}")


COMMANDS = [share_command]
