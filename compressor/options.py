"""Typed, frozen options of a run: one dataclass per stage and the gate, and the recipe of them all.

Each dataclass is the one table of its options: the field's type, its default (the one for a run
with data; `defaults_for` says what changes without data), and its check.  Values are validated
once, where they enter (a TOML recipe or the CLI), by `check_value`; errors name the option as
the recipe spells it ("recipe: 'prune.sparsity' must be in [0, 1)"), whichever way it was given.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .errors import UsageError
from .measure import DEFAULT_MAX_KL, DEFAULT_MIN_SNR_DB
from .passes.channel_plan import DEFAULT_ALIGN, DEFAULT_MAX_RATIO
from .passes.selection import DEFAULT_MIN_PARAMS
from .sequences import is_recurrent_spec

# Points of top-1 accuracy (labeled data) or of top-1 agreement (unlabeled inputs) the whole run
# may spend (the output SNR floor, DEFAULT_MIN_SNR_DB, is the judge's).
DEFAULT_BUDGET_POINTS = 1.0
# Budget of the data-guided pruning search (sensitivity curves + budget search) in nominal
# seconds (measure.nominal_seconds: counted work, never the clock); bigger models get a coarser
# ladder and a subset of the data for the search (see stages/prune.py).
DEFAULT_PRUNE_SECONDS = 120.0

Check = tuple[Callable[[typing.Any], bool], str]  # (is the value acceptable, what it must be)

UNIT_INTERVAL: Check = (lambda v: 0.0 <= v < 1.0, "in [0, 1)")
NON_NEGATIVE: Check = (lambda v: v >= 0, ">= 0")
POSITIVE: Check = (lambda v: v > 0, "> 0")
BITS: Check = (lambda v: 1 <= v <= 8, "between 1 and 8")
RANK_RATIO: Check = (lambda v: 0.0 < v <= 1.0, "in (0, 1]")


def _is_regex(value: str) -> bool:
    try:
        re.compile(value)
    except re.error:
        return False
    return True


REGEX: Check = (_is_regex, "a valid regular expression")


def _is_metric_spec(value: str) -> bool:
    module, sep, func = value.rpartition(":")
    return bool(sep and module and func.isidentifier())


METRIC_SPEC: Check = (_is_metric_spec, "MODULE:FUNCTION or path/to/file.py:FUNCTION")
RECURRENT_SPEC: Check = (is_recurrent_spec, "'auto', 'none' or OUT=IN[,OUT=IN...]")


def _option(default, *, choices: tuple | None = None, check: Check | None = None, shown_when_set: bool = False):
    """`shown_when_set`: as_dict (the report's recipe) leaves the option out while it has its default."""
    return field(default=default, metadata={"choices": choices, "check": check, "shown_when_set": shown_when_set})


def _given():
    # The keys the user gave (a stage may treat them as fixed) travel with the options but are
    # not options themselves: not in as_dict, not settable from a recipe.
    return field(default=frozenset(), compare=False, repr=False, metadata={"internal": True})


class _Section:
    """as_dict: the options as the report's recipe shows them (one dict per stage)."""

    def as_dict(self) -> dict:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not f.metadata.get("internal")
            and not (f.metadata.get("shown_when_set") and getattr(self, f.name) == f.default)
        }


@dataclass(frozen=True)
class PruneOptions(_Section):
    enabled: bool = True
    budget: float | None = _option(None, check=NON_NEGATIVE)  # points; None: a share of the gate's budget
    sparsity: float | None = _option(None, check=UNIT_INTERVAL)  # a fixed ratio instead of the search
    scope: str = _option("global", choices=("global", "layer", "random"))
    exclude: str | None = _option(None, check=REGEX)  # node or tensor names kept as they are
    min_params: int = _option(DEFAULT_MIN_PARAMS, check=NON_NEGATIVE)
    seed: int = _option(0, check=NON_NEGATIVE)  # numpy's generators take non-negative seeds
    max_seconds: float = _option(DEFAULT_PRUNE_SECONDS, check=POSITIVE)  # nominal seconds, not the clock
    # Wall-clock seconds: when set, the search is sized on the measured time instead (the one
    # plan that depends on the machine and its load; the report says so).
    time_limit: float | None = _option(None, check=POSITIVE, shown_when_set=True)
    compensate: bool = True
    # Whole-model runs measuring each layer's gain, by which the search weights its layer errors
    # (search/layer_gains.py; 0: unweighted).
    gain_runs: int = _option(0, check=NON_NEGATIVE, shown_when_set=True)
    given: frozenset[str] = _given()


@dataclass(frozen=True)
class ShareOptions(_Section):
    enabled: bool = True
    bits_conv: int = _option(8, check=BITS)
    bits_fc: int = _option(5, check=BITS)
    init: str = _option("linear", choices=("linear", "density", "random"))
    refit: bool = False
    bias_correction: bool = False
    exclude: str | None = _option(None, check=REGEX)  # node or tensor names kept as they are
    min_params: int = _option(DEFAULT_MIN_PARAMS, check=NON_NEGATIVE)
    seed: int = _option(0, check=NON_NEGATIVE)  # numpy's generators take non-negative seeds
    # The per-tensor search's candidates: k-means widths, uniform grids (ECUQ), or both ("auto").
    method: str = _option("auto", choices=("kmeans", "uniform", "auto"), shown_when_set=True)
    rd_factor: float = _option(0.05, check=NON_NEGATIVE, shown_when_set=True)  # uniform: λ / step²
    gain_runs: int = _option(0, check=NON_NEGATIVE, shown_when_set=True)  # as prune.gain_runs
    given: frozenset[str] = _given()

    @property
    def adaptive(self) -> bool:
        """A stage whose lossy settings the user fixed runs as asked; scoping keys (exclude,
        min_params, seed) keep the fallback ladder."""
        return not self.given & {"bits_conv", "bits_fc", "init", "refit"}


@dataclass(frozen=True)
class QuantizeOptions(_Section):
    enabled: bool = True
    activations: str = _option("static", choices=("static", "dynamic", "none"))
    per_channel: bool = True
    symmetric: bool = True
    calibration: str = _option("minmax", choices=("minmax", "percentile", "entropy"))
    small_constants: bool = True
    exclude: str | None = _option(None, check=REGEX)  # node or tensor names kept as they are
    given: frozenset[str] = _given()

    @property
    def adaptive(self) -> bool:
        return not self.given & {"activations", "per_channel", "symmetric", "calibration"}


@dataclass(frozen=True)
class LowRankOptions(_Section):
    """Low-rank factorisation of Gemm/MatMul weights (and 1x1 convs), before share (stages/lowrank.py).
    Opt-in: it competes with share for the budget, and wins or loses by model (benchmarks/README.md)."""

    enabled: bool = False
    budget: float | None = _option(None, check=NON_NEGATIVE)  # points; None: a share of the gate's budget
    rank_ratio: float | None = _option(None, check=RANK_RATIO)  # a fixed rank ratio instead of the search
    refit: bool = False  # the second factors solved again by least squares on the calibration inputs
    exclude: str | None = _option(None, check=REGEX)  # node or tensor names kept as they are
    min_params: int = _option(DEFAULT_MIN_PARAMS, check=NON_NEGATIVE)
    given: frozenset[str] = _given()


# What the structured stage is kept for (recipe `[structured] objective`): a smaller container,
# or fewer MACs (a faster model) whatever the container costs (the report says how much).
STRUCTURED_OBJECTIVES = ("size", "speed")
SHARE_OF_BUDGET: Check = (lambda v: 0.0 < v <= 1.0, "in (0, 1]")
CHANNEL_CAP: Check = (lambda v: 0.0 < v < 1.0, "in (0, 1)")


@dataclass(frozen=True)
class StructuredOptions(_Section):
    """Structured pruning (whole channels, neurons, heads removed), first of the stages
    (stages/structured.py).  Opt-in: unstructured pruning and share often buy more bytes."""

    enabled: bool = False
    budget_share: float = _option(0.45, check=SHARE_OF_BUDGET)  # of the gate's budget
    max_ratio: float = _option(DEFAULT_MAX_RATIO, check=CHANNEL_CAP)  # no group loses more
    align: int = _option(DEFAULT_ALIGN, check=POSITIVE)  # kept channels a multiple of this
    heads: bool = False  # attention heads too
    objective: str = _option("size", choices=STRUCTURED_OBJECTIVES)
    exclude: str | None = _option(None, check=REGEX)  # node or tensor names kept as they are
    given: frozenset[str] = _given()


@dataclass(frozen=True)
class PackOptions(_Section):
    enabled: bool = True
    given: frozenset[str] = _given()


@dataclass(frozen=True)
class GateOptions(_Section):
    max_accuracy_drop: float | None = _option(None, check=NON_NEGATIVE)
    budget: float = _option(DEFAULT_BUDGET_POINTS, check=NON_NEGATIVE)
    min_snr_db: float = DEFAULT_MIN_SNR_DB
    # The guard (see measure.Judge and output_kinds): the KL allowed for class scores besides
    # their top-1 agreement; the verdict taken on held-out samples (one data set: split by
    # index between the searches and the verdict); a user task metric as the loss.
    max_kl: float = _option(DEFAULT_MAX_KL, check=NON_NEGATIVE)
    hold_out: bool = True
    metric: str | None = _option(None, check=METRIC_SPEC, shown_when_set=True)
    # States fed back (see sequences): "auto" finds them by name and shape in per-sample data.
    recurrent: str = _option("auto", check=RECURRENT_SPEC, shown_when_set=True)
    given: frozenset[str] = _given()

    @property
    def explicit_snr(self) -> bool:
        """The recipe set the SNR floor: it applies to every output (see Measure)."""
        return "min_snr_db" in self.given


# What a run optimises (recipe `[run] objective`, CLI --objective):
# - "size" (default): the smallest container within the budget.  A quantize result that packs
#   larger than its input is not kept (int8 kernels are given up; the report says by how many
#   bytes it lost), and the int8-weights-only floor replaces the result when it packs smaller.
# - "int8-kernels": the QDQ model is kept for its int8 kernels at run time even when it packs
#   larger; the report says what that cost in bytes.
OBJECTIVES = ("size", "int8-kernels")


@dataclass(frozen=True)
class RunOptions(_Section):
    objective: str = _option("size", choices=OBJECTIVES)
    given: frozenset[str] = _given()


@dataclass(frozen=True)
class FinetuneOptions(_Section):
    """Distillation after prune and after share (`run --finetune EPOCHS`, the `finetune` extra).
    Trains on `train` (an .npz; default: the --calib inputs, never --data), then prunes further
    / shares with fewer bits while a fine-tuned result stays within the budget (`further`)."""

    epochs: int = _option(0, check=NON_NEGATIVE)  # 0: no fine-tuning
    train: str | None = _option(None, shown_when_set=True)
    lr: float = _option(1e-3, check=POSITIVE)
    seed: int = _option(0, check=NON_NEGATIVE)
    further: bool = True
    given: frozenset[str] = _given()

    @property
    def enabled(self) -> bool:
        return self.epochs > 0


SECTIONS: dict[str, type[_Section]] = {
    "prune": PruneOptions,
    "share": ShareOptions,
    "quantize": QuantizeOptions,
    "pack": PackOptions,
    "gate": GateOptions,
    "run": RunOptions,
    "finetune": FinetuneOptions,
    "lowrank": LowRankOptions,
    "structured": StructuredOptions,
}
STAGES = ("prune", "share", "quantize", "pack")


def defaults_for(mode: str) -> dict[str, dict]:
    """The defaults that depend on the data: mode 'accuracy' (labels), 'fidelity' (unlabeled
    inputs) or 'none'.  Without data only data-free steps that cannot wreck a model run: int8
    per-channel weight-only quantization and lossless packing."""
    measured = mode != "none"
    return {
        "prune": {"enabled": measured},
        "share": {"enabled": measured},
        "quantize": {"activations": "static" if measured else "none", "small_constants": measured},
    }


@dataclass(frozen=True)
class Recipe:
    prune: PruneOptions = PruneOptions()
    share: ShareOptions = ShareOptions()
    quantize: QuantizeOptions = QuantizeOptions()
    pack: PackOptions = PackOptions()
    gate: GateOptions = GateOptions()
    run: RunOptions = RunOptions()
    finetune: FinetuneOptions = FinetuneOptions()
    lowrank: LowRankOptions = LowRankOptions()
    structured: StructuredOptions = StructuredOptions()

    @classmethod
    def for_mode(cls, mode: str, overrides: Mapping[str, Mapping] | None = None) -> Recipe:
        """The defaults for `mode` with `overrides` ({section: {key: value}}, checked here) on top."""
        overrides = validate_overrides(overrides or {})
        defaults = defaults_for(mode)
        sections = {}
        for name, options in SECTIONS.items():
            given = overrides.get(name, {})
            sections[name] = options(**{**defaults.get(name, {}), **given, "given": frozenset(given)})
        return cls(**sections)

    def as_dict(self) -> dict:
        return {name: getattr(self, name).as_dict() for name in SECTIONS}


def _fields(section: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(SECTIONS[section]) if not f.metadata.get("internal")}


def _base_type(section: str, key: str) -> type:
    hint = typing.get_type_hints(SECTIONS[section])[key]
    if isinstance(hint, types.UnionType):
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


def check_value(section: str, key: str, value):
    """`value` for option `section.key`, checked (ints given for floats become floats)."""
    known = _fields(section)
    if key not in known:
        raise UsageError(f"recipe: unknown key '{section}.{key}' (known: {', '.join(known)})")
    if value is None:
        return None
    want = _base_type(section, key)
    name = f"recipe: '{section}.{key}'"
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is int and isinstance(value, bool) or not isinstance(value, want):
        raise UsageError(f"{name} must be {want.__name__}, got {value!r}")
    if want is float and not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value}")
    choices, check = known[key].metadata.get("choices"), known[key].metadata.get("check")
    if choices is not None and value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    if check is not None and not check[0](value):
        raise UsageError(f"{name} must be {check[1]}, got {value}")
    return value


def validate_overrides(raw: Mapping) -> dict:
    """{section: {key: value}} with every section, key and value checked; only the keys given."""
    result: dict = {}
    for section, table in raw.items():
        if section not in SECTIONS:
            raise UsageError(f"recipe: unknown section '{section}' (known: {', '.join(SECTIONS)})")
        if not isinstance(table, Mapping):
            raise UsageError(f"recipe: '{section}' must be a table")
        result[section] = {key: check_value(section, key, value) for key, value in table.items()}
    return result
