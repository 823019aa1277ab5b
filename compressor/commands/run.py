"""CLI for the run stage (being built; see the issue tracker)."""

COMMANDS = []
