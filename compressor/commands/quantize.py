"""CLI for the quantize stage (being built; see the issue tracker)."""

COMMANDS = []
