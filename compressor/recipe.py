"""Recipes: which stages `compressor run` applies, with which options (TOML, stdlib tomllib).

A recipe has one table per stage plus an optional ``[gate]``::

    [prune]
    budget = 1.0          # accuracy (or fidelity) points; or `sparsity = 0.8` for a fixed ratio
    scope = "global"

    [share]
    bits_conv = 8
    bits_fc = 5

    [quantize]
    activations = "static"

    [pack]
    enabled = true

    [gate]
    max_accuracy_drop = 1.0

Every stage has ``enabled``.  Keys left out take the defaults below, which depend on the data
available (see ``default_recipe``).  Unknown tables, unknown keys and bad values are errors that
name the key.
"""

from __future__ import annotations

import copy
from pathlib import Path

from .errors import UsageError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

STAGES = ("prune", "share", "quantize", "pack")

# key -> (type, allowed values or None).  `float` keys also accept integers.
SCHEMA: dict[str, dict[str, tuple[type, tuple | None]]] = {
    "prune": {
        "enabled": (bool, None),
        "budget": (float, None),
        "sparsity": (float, None),
        "scope": (str, ("global", "layer", "random")),
        "exclude": (str, None),
        "min_params": (int, None),
        "seed": (int, None),
        "max_seconds": (float, None),
        "compensate": (bool, None),
    },
    "share": {
        "enabled": (bool, None),
        "bits_conv": (int, None),
        "bits_fc": (int, None),
        "init": (str, ("linear", "density", "random")),
        "refit": (bool, None),
        "bias_correction": (bool, None),
        "exclude": (str, None),
        "min_params": (int, None),
        "seed": (int, None),
    },
    "quantize": {
        "enabled": (bool, None),
        "activations": (str, ("static", "dynamic", "none")),
        "per_channel": (bool, None),
        "symmetric": (bool, None),
        "calibration": (str, ("minmax", "percentile", "entropy")),
        "small_constants": (bool, None),
        "exclude": (str, None),
    },
    "pack": {"enabled": (bool, None)},
    "gate": {
        "max_accuracy_drop": (float, None),
        "budget": (float, None),
        "min_snr_db": (float, None),
    },
}

# What `run` does with labeled data (budget in accuracy points) or unlabeled inputs (budget in
# top-1 agreement points plus an output SNR floor).  Without any data only data-free steps that
# cannot wreck a model run: int8 weight-only quantization, per channel, and lossless packing.
DEFAULT_BUDGET_POINTS = 1.0
DEFAULT_MIN_SNR_DB = 20.0
# Time the data-guided pruning search may take (sensitivity curves + budget search); bigger
# models get a coarser ladder and a subset of the data for the search (see pipeline).
DEFAULT_PRUNE_SECONDS = 120.0


def default_recipe(mode: str) -> dict:
    """The defaults for mode 'accuracy' (labels), 'fidelity' (unlabeled inputs) or 'none' (no data)."""
    measured = mode != "none"
    return {
        "prune": {
            "enabled": measured,
            "budget": None,
            "sparsity": None,
            "scope": "global",
            "exclude": None,
            "min_params": 1024,
            "seed": 0,
            "max_seconds": DEFAULT_PRUNE_SECONDS,
            "compensate": True,
        },
        "share": {
            "enabled": measured,
            "bits_conv": 8,
            "bits_fc": 5,
            "init": "linear",
            "refit": False,
            "bias_correction": False,
            "exclude": None,
            "min_params": 1024,
            "seed": 0,
        },
        "quantize": {
            "enabled": True,
            "activations": "static" if measured else "none",
            "per_channel": True,
            "symmetric": True,
            "calibration": "minmax",
            "small_constants": measured,
            "exclude": None,
        },
        "pack": {"enabled": True},
        "gate": {"max_accuracy_drop": None, "budget": DEFAULT_BUDGET_POINTS, "min_snr_db": DEFAULT_MIN_SNR_DB},
    }


def _check_value(section: str, key: str, value):
    if key not in SCHEMA[section]:
        raise UsageError(f"recipe: unknown key '{section}.{key}' (known: {', '.join(SCHEMA[section])})")
    want, allowed = SCHEMA[section][key]
    if value is None:
        return None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is int and isinstance(value, bool) or not isinstance(value, want):
        raise UsageError(f"recipe: '{section}.{key}' must be {want.__name__}, got {value!r}")
    if allowed is not None and value not in allowed:
        raise UsageError(f"recipe: '{section}.{key}' must be one of {', '.join(allowed)}, got {value!r}")
    if key == "sparsity" and not 0.0 <= value < 1.0:
        raise UsageError(f"recipe: '{section}.{key}' must be in [0, 1), got {value}")
    if key in ("budget", "max_accuracy_drop") and value < 0:
        raise UsageError(f"recipe: '{section}.{key}' must be >= 0, got {value}")
    if key.startswith("bits") and not 1 <= value <= 8:
        raise UsageError(f"recipe: '{section}.{key}' must be between 1 and 8, got {value}")
    if key == "max_seconds" and value <= 0:
        raise UsageError(f"recipe: '{section}.{key}' must be > 0, got {value}")
    if key == "min_params" and value < 0:
        raise UsageError(f"recipe: '{section}.{key}' must be >= 0, got {value}")
    return value


def read_recipe(path: str | Path) -> dict:
    """Parse and validate a TOML recipe; returns {section: {key: value}} with only the keys given."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"no such recipe: {path}")
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"recipe {path}: {e}")
    return validate_overrides(raw)


def validate_overrides(raw: dict) -> dict:
    result: dict = {}
    for section, table in raw.items():
        if section not in SCHEMA:
            raise UsageError(f"recipe: unknown section '{section}' (known: {', '.join(SCHEMA)})")
        if not isinstance(table, dict):
            raise UsageError(f"recipe: '{section}' must be a table")
        result[section] = {key: _check_value(section, key, value) for key, value in table.items()}
    return result


def merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for section, table in overrides.items():
        for key, value in table.items():
            out[section][key] = value
    return out
