"""CLI for the pack stage (being built; see the issue tracker)."""

COMMANDS = []
