"""CLI for the prune stage (being built; see the issue tracker)."""

COMMANDS = []
