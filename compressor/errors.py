"""Error types that the CLI turns into one-line messages and exit codes.

Exit codes (documented in README.md): 0 ok, 1 failure, 2 usage, 3 gate failed.
"""


class CompressorError(Exception):
    """A failure the user can act on (bad file, bad data, a pass that cannot run). Exit code 1."""

    exit_code = 1


class UsageError(CompressorError):
    """Bad options or arguments. Exit code 2."""

    exit_code = 2


class GateFailed(CompressorError):
    """A measured quality gate (e.g. --max-accuracy-drop) was not met. Exit code 3."""

    exit_code = 3
