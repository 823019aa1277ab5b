"""`compressor run` (one model, the whole pipeline) and `compressor batch` (a model zoo)."""

from __future__ import annotations

import sys

import click

from .. import api
from ..errors import CompressorError, GateFailed
from ..options import validate_overrides
from ..pipeline import GateFailedWithReport, run_pipeline
from ..recipe import read_recipe
from ..report import format_report
from .common import emit_json


def _overrides(
    recipe_path,
    sparsity,
    scope,
    budget,
    bits_conv,
    bits_fc,
    activations,
    no_prune,
    no_share,
    no_quantize,
    seed,
    objective,
    metric,
    recurrent,
    finetune=None,
    train_path=None,
) -> dict:
    overrides = read_recipe(recipe_path) if recipe_path else {}
    cli = {
        "prune": {"sparsity": sparsity, "scope": scope, "budget": budget, "seed": seed},
        "share": {"bits_conv": bits_conv, "bits_fc": bits_fc, "seed": seed},
        "quantize": {"activations": activations},
        "run": {"objective": objective},
        "gate": {"metric": metric, "recurrent": recurrent},
        "finetune": {"epochs": finetune, "train": train_path},
    }
    for stage, flag in (("prune", no_prune), ("share", no_share), ("quantize", no_quantize)):
        if flag:
            cli[stage]["enabled"] = False
    cli = {s: {k: v for k, v in t.items() if v is not None} for s, t in cli.items()}
    cli = validate_overrides({s: t for s, t in cli.items() if t})
    for section, table in cli.items():
        overrides.setdefault(section, {}).update(table)
    return overrides


class Progress:
    """Stage lines on stderr, and on a terminal a bar for long loops, redrawn in place."""

    WIDTH = 30

    def __init__(self, lines: bool, bar: bool):
        self.lines, self.bar, self.open = lines, bar, False

    def __call__(self, msg: str) -> None:
        if self.lines:
            self._close()
            click.echo(f"  {msg}", err=True)

    def step(self, label: str, done: int, total: int) -> None:
        if not self.bar:
            return
        filled = self.WIDTH * done // max(total, 1)
        click.echo(f"\r  {label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total}", err=True, nl=False)
        self.open = True
        if done >= total:
            self._close()

    def _close(self) -> None:
        if self.open:
            click.echo("", err=True)
            self.open = False


def _progress(quiet: bool, verbose: bool) -> Progress:
    # Progress goes to stderr when it is a terminal (or with --verbose); CI logs stay clean.
    # The bar is drawn only on a terminal: a redrawn line is noise in a log file.
    tty = sys.stderr.isatty()
    return Progress(lines=not quiet and (verbose or tty), bar=not quiet and tty)


# The pipeline flags both commands take, turned into one dict of recipe overrides.
STAGE_FLAGS = (
    "sparsity",
    "scope",
    "budget",
    "bits_conv",
    "bits_fc",
    "activations",
    "no_prune",
    "no_share",
    "no_quantize",
    "seed",
    "objective",
    "metric",
    "recurrent",
    "finetune",
    "train_path",
)


def stage_options(command):
    """The pipeline's options; the command gets them as `overrides` (the recipe with the flags
    on top, validated) beside `recipe_path`, `quiet` and `verbose`."""

    def with_overrides(**kwargs):
        flags = {name: kwargs.pop(name) for name in STAGE_FLAGS}
        return command(overrides=_overrides(kwargs["recipe_path"], **flags), **kwargs)

    # click shows the callback's docstring as the command's help.
    with_overrides.__doc__ = command.__doc__
    f = with_overrides
    for decorator in reversed(
        [
            click.option(
                "--recipe",
                "recipe_path",
                type=click.Path(dir_okay=False),
                help="TOML recipe (stages and their options).",
            ),
            click.option(
                "--sparsity", type=float, help="Prune to this fixed sparsity instead of the data-guided budget."
            ),
            click.option(
                "--scope", type=click.Choice(["global", "layer", "random"]), help="Pruning scope with --sparsity."
            ),
            click.option("--budget", type=float, help="Points of accuracy (or agreement) that pruning may spend."),
            click.option(
                "--bits-conv",
                type=int,
                help="k-means bits for conv filters, fixed (default: searched per tensor "
                "and tried uniform, the smaller within budget; see README).",
            ),
            click.option(
                "--bits-fc",
                type=int,
                help="k-means bits for fully-connected/MatMul weights, fixed (default: searched).",
            ),
            click.option(
                "--activations", type=click.Choice(["static", "dynamic", "none"]), help="Activation quantization."
            ),
            click.option("--no-prune", is_flag=True, help="Skip pruning."),
            click.option("--no-share", is_flag=True, help="Skip weight sharing."),
            click.option("--no-quantize", is_flag=True, help="Skip quantization."),
            click.option("--seed", type=click.IntRange(0), help="Seed for every randomised step."),
            click.option(
                "--metric",
                help="Task metric MODULE:FUNCTION (or path/to/file.py:FUNCTION): called with (outputs, the data "
                "file's arrays), returns a score in [0, 1], higher is better; the budget is its drop in points.",
            ),
            click.option(
                "--recurrent",
                help="States the model feeds back, OUT=IN[,OUT=IN...] ('auto': found by name and shape, the default; "
                "'none'): per-sample data then runs its steps in order, each fed the model's own state.",
            ),
            click.option(
                "--objective",
                type=click.Choice(["size", "int8-kernels"]),
                help="What the run optimises: the smallest container (size, the default) or int8 kernels at run "
                "time (int8-kernels: the quantized model is kept even when it packs larger; the report says the cost).",
            ),
            click.option(
                "--finetune",
                type=click.IntRange(1),
                metavar="EPOCHS",
                help="Fine-tune (distil from the original) for EPOCHS after prune and after share, then compress "
                "further while within budget (needs the finetune extra: pip install 'compressor[finetune]').",
            ),
            click.option(
                "--train",
                "train_path",
                type=click.Path(dir_okay=False),
                help="Training inputs for --finetune (.npz; with y: labels used).  Default: the --calib inputs.",
            ),
            click.option("--quiet", "-q", is_flag=True, help="No progress output."),
            click.option("--verbose", "-v", is_flag=True, help="Progress output even when stderr is not a terminal."),
        ]
    ):
        f = decorator(f)
    return f


@click.command("run")
@click.argument("model", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The container to write (.cmpz).")
@click.option(
    "--data", "data_path", type=click.Path(dir_okay=False), help="Evaluation data (.npz; with y: accuracy budget)."
)
@click.option("--calib", "calib_path", type=click.Path(dir_okay=False), help="Calibration inputs (.npz).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the JSON report here.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write a self-contained HTML report here.")
@click.option(
    "--max-accuracy-drop", type=float, help="Fail (exit 3, no container) if the measured drop exceeds this many points."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@stage_options
def run_command(
    model,
    output,
    data_path,
    calib_path,
    report_path,
    html_path,
    max_accuracy_drop,
    as_json,
    recipe_path,
    overrides,
    quiet,
    verbose,
):
    """Compress MODEL with the whole pipeline and write a container plus a report."""
    failure = None
    try:
        report = run_pipeline(
            model,
            output,
            overrides,
            data_path,
            calib_path,
            max_accuracy_drop,
            log=_progress(quiet, verbose),
            report_path=report_path,
            html_path=html_path,
            recipe_path=recipe_path,
        )
    except GateFailedWithReport as e:
        report, failure = e.report, e
    # --quiet silences the progress only: the result is what the user ran the command for.
    if as_json:
        emit_json(report)
    else:
        click.echo(format_report(report))
    if failure is not None:
        raise GateFailed(str(failure))


@click.command("batch")
@click.argument("models", nargs=-1, required=True)
@click.option(
    "-o",
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for containers, reports and the summary.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, exists=True),
    help="Folder with <model>_test.npz / <model>.npz and <model>_calib.npz.",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Models compressed in parallel processes (on this machine; see --scheduler).",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Run one task per model on the Dask cluster at ADDRESS (e.g. tcp://HOST:8786) instead; "
    "its workers must see the models, data and output folder at the same paths. "
    "Needs the dask extra: pip install 'compressor[dask]'.",
)
@click.option("--max-accuracy-drop", type=float, help="Per-model gate (exit 3 for that model).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@stage_options
def batch_command(
    models,
    output_dir,
    data_dir,
    jobs,
    scheduler,
    max_accuracy_drop,
    as_json,
    recipe_path,
    overrides,
    quiet,
    verbose,
):
    """Compress every model of MODELS (files, folders or globs) into OUTPUT_DIR; resumable."""
    progress = _progress(quiet, verbose)
    summary = api.batch(
        models,
        output_dir,
        scheduler=scheduler,
        jobs=jobs,
        data_dir=data_dir,
        recipe=overrides,
        max_accuracy_drop=max_accuracy_drop,
        log=progress,
        step=lambda done, total, failed: progress.step(f"models ({failed} failed)", done, total),
    )
    if as_json:
        emit_json(summary)
    elif not quiet:
        for m in summary["models"]:
            ratio = f"{m['ratio']:.1f}x" if m.get("ratio") else "-"
            click.echo(f"{m['status']:8} {ratio:>7}  {m['model']}" + (f"  ({m['error']})" if m.get("error") else ""))
        click.echo(
            f"{summary['ok']} ok, {summary['failed']} failed, {summary['skipped']} already done -> {output_dir}/summary.json"
        )
    if summary["failed"]:
        n, total = summary["failed"], len(summary["models"])
        if any(m["status"] == "failed" for m in summary["models"]):
            raise CompressorError(f"{n} of {total} models failed (see {output_dir}/summary.json)")
        raise GateFailed(f"{n} of {total} models failed the gate (see {output_dir}/summary.json)")


COMMANDS = [run_command, batch_command]
