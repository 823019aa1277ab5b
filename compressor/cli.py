"""The `compressor` command: a click group.  Commands live in compressor/commands/,
one module per stage; they parse options, call a pass and print.  This module turns
errors into one line on stderr and an exit code (0 ok, 1 failure, 2 usage, 3 gate).
"""

from __future__ import annotations

import signal
import sys
import threading

import click

from .commands import eval as eval_cmd
from .commands import finetune as finetune_cmd
from .commands import inspect as inspect_cmd
from .commands import lowrank as lowrank_cmd
from .commands import pack as pack_cmd
from .commands import prune as prune_cmd
from .commands import quantize as quantize_cmd
from .commands import run as run_cmd
from .commands import share as share_cmd
from .errors import CompressorError
from .version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="compressor")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
def cli(debug: bool) -> None:
    """Compress ONNX models: prune, share, quantize, pack."""


for module in (inspect_cmd, eval_cmd, prune_cmd, share_cmd, quantize_cmd, pack_cmd, run_cmd, finetune_cmd):
    for command in module.COMMANDS:
        cli.add_command(command)
for command in lowrank_cmd.COMMANDS:
    cli.add_command(command)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that every cleanup runs (temp files, workers)."""


def _raise_terminated(_signum, _frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return _main(argv, debug)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str], debug: bool) -> int:
    try:
        cli.main(args=argv, prog_name="compressor", standalone_mode=False)
    except click.exceptions.Exit as e:
        return int(e.exit_code or 0)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort as e:
        # click turns an interrupt into Abort: give back the signal's exit code.
        if isinstance(e.__cause__, Terminated):
            click.echo("error: terminated", err=True)
            return 128 + signal.SIGTERM
        if isinstance(e.__cause__, KeyboardInterrupt):
            click.echo("error: interrupted", err=True)
            return 130
        click.echo("error: aborted", err=True)
        return 1
    except CompressorError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except Terminated:
        click.echo("error: terminated", err=True)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as e:  # never a traceback for users; --debug shows it
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        click.echo(f"error: internal error: {type(e).__name__}: {msg} (rerun with --debug for details)", err=True)
        return 1
    return 0


def entry_point() -> None:
    sys.exit(main())
