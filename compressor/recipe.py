"""Recipes: which stages `compressor run` applies, with which options (TOML, stdlib tomllib).

A recipe has one table per stage plus an optional ``[gate]`` and ``[run]``::

    [prune]
    budget = 1.0          # accuracy (or fidelity) points; or `sparsity = 0.8` for a fixed ratio
    scope = "global"

    [lowrank]
    enabled = true        # Gemm/MatMul weights as two low-rank factors (off by default)

    [structured]
    enabled = true        # whole channels removed first (off by default); objective "size" or "speed"

    [share]
    bits_conv = 8
    bits_fc = 5

    [quantize]
    activations = "static"

    [pack]
    enabled = true

    [gate]
    max_accuracy_drop = 1.0

    [run]
    objective = "size"    # or "int8-kernels" (see options.OBJECTIVES)

Every stage has ``enabled``.  Keys left out take the defaults of compressor/options.py, some of
which depend on the data available (``options.defaults_for``).  Unknown tables, unknown keys and
bad values are errors that name the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from .errors import UsageError
from .options import validate_overrides


def read_recipe(path: str | Path) -> dict:
    """Parse and validate a TOML recipe; returns {section: {key: value}} with only the keys given."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"no such recipe: {path}")
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"recipe {path}: {e}")
    except UnicodeDecodeError:
        raise UsageError(f"recipe {path} is not UTF-8 text (TOML is UTF-8)")
    except OSError as e:
        raise UsageError(f"cannot read recipe {path}: {e.strerror}")
    return validate_overrides(raw)
