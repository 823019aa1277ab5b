"""`compressor finetune`: distil a compressed model from its original (needs the `finetune` extra)."""

from __future__ import annotations

import click

from ..data import load_dataset
from ..errors import UsageError
from ..graph import graph_inputs, load_model_and_files, save_model
from ..passes.finetune import DEFAULT_EPOCHS, DEFAULT_LR, finetune, require_torch
from ..paths import check_outputs
from .common import emit_json, format_table


@click.command("finetune")
@click.argument("model", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--teacher", required=True, type=click.Path(dir_okay=False), help="The original model, whose outputs are matched."
)
@click.option(
    "--train",
    "train_path",
    required=True,
    type=click.Path(dir_okay=False),
    help=".npz training inputs (with 'y' labels: cross-entropy is added).",
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the model.")
@click.option("--epochs", type=click.IntRange(1), default=DEFAULT_EPOCHS, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_LR, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seed of the shuffles.")
@click.option("--json", "as_json", is_flag=True, help="Print the stats as one JSON object on stdout.")
def finetune_command(model, teacher, train_path, output, epochs, lr, seed, as_json) -> None:
    """Train MODEL's weights to match TEACHER's outputs on --train, keeping pruned zeros and
    shared values; write OUT (the same graph, new initializer values)."""
    require_torch()
    student, external_files = load_model_and_files(model)
    original, teacher_files = load_model_and_files(teacher)
    check_outputs(
        {"-o": output},
        {
            "the input model": model,
            "the model's external data": external_files,
            "--teacher": teacher,
            "the teacher's external data": teacher_files,
            "--train": train_path,
        },
    )
    names = [i.name for i in graph_inputs(student)]
    if names != [i.name for i in graph_inputs(original)] or len(student.graph.output) != len(original.graph.output):
        raise UsageError("--teacher must have the model's inputs and outputs (the model before compression)")
    train = load_dataset(train_path, student)
    log = (lambda _m: None) if as_json else (lambda m: click.echo(m, err=True))
    new_model, stats = finetune(student, original, train, epochs=epochs, lr=lr, seed=seed, log=log)
    save_model(new_model, output, input_path=model)
    if as_json:
        emit_json(stats)
        return
    rows = [[e + 1, loss] for e, loss in enumerate(stats["losses"])]
    click.echo(format_table(rows, ["epoch", "loss"]))
    t = stats["tensors"]
    click.echo(
        f"fine-tuned {t['dense']} dense, {t['masked']} pruned and {t['shared']} shared tensors "
        f"({stats['trained_values']} values) on {stats['samples']} samples in {stats['seconds']:.1f} s -> {output}"
    )


COMMANDS = [finetune_command]
