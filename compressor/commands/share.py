"""CLI for the share stage (being built; see the issue tracker)."""

COMMANDS = []
