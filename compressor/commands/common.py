"""Helpers shared by the command modules: JSON on stdout, plain tables, option types."""

from __future__ import annotations

import sys

import click

from ..present import format_table, human_bytes, jsonable, to_json

__all__ = ["emit_json", "format_table", "human_bytes", "jsonable", "report_pass", "stderr_is_tty", "to_json", "warn"]


def emit_json(obj) -> None:
    """One JSON object on stdout (numbers as numbers)."""
    click.echo(to_json(obj))


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def warn(msg: str) -> None:
    click.echo(f"warning: {msg}", err=True)


def report_pass(stats: dict, as_json: bool, print_table) -> None:
    """After a pass wrote its model: its warnings on stderr, then its stats as JSON or a table."""
    for message in stats["warnings"]:
        warn(message)
    if as_json:
        emit_json(stats)
    else:
        print_table()
