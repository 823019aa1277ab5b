"""`compressor eval`: accuracy, fidelity to a reference model, and latency, with ONNX Runtime."""

from __future__ import annotations

import click

from ..data import load_dataset
from ..evaluate import MAX_LATENCY_BATCH, batch_size_for, evaluate_with_latency
from ..graph import load_model
from .common import emit_json, format_table


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(dir_okay=False),
    help=".npz: one array per model input (or x), optional y labels.",
)
@click.option(
    "--reference", type=click.Path(dir_okay=False), help="Reference model for fidelity (agreement, max abs error, SNR)."
)
@click.option(
    "--batch-size", type=click.IntRange(1), default=None, help="Batch size for the accuracy run (default 256)."
)
@click.option(
    "--latency-batch",
    type=click.IntRange(1, MAX_LATENCY_BATCH),
    default=64,
    show_default=True,
    help="The larger batch size timed besides batch 1.",
)
@click.option("--no-latency", is_flag=True, help="Skip the latency measurement.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def eval_command(model, data_path, reference, batch_size, latency_batch, no_latency, as_json) -> None:
    """Measure MODEL on labeled (or unlabeled) data with ONNX Runtime."""
    loaded = load_model(model, max_bytes=None)
    data = load_dataset(data_path, loaded)
    ref_model = load_model(reference, max_bytes=None) if reference else None
    result = evaluate_with_latency(
        loaded, data, ref_model, batch_size or batch_size_for(loaded), None if no_latency else latency_batch
    )
    if as_json:
        emit_json(result)
        return
    rows = [[k, v] for k, v in result.items()]
    click.echo(format_table(rows, ["metric", "value"]))


COMMANDS = [eval_command]
