"""Recurrent models: a state output fed back as an input at the next step.

A model that carries a state (an LSTM VAD: ``state`` in, ``stateN`` out) is deployed step by
step, each step fed the state the model gave at the step before.  Judged with the state stored
in the data file (the original model's), a candidate's error never accumulates through its
state; judged with its own, it does (``evaluate.run_sequence``).  The data holds the steps in
the per-sample layout (``data.Dataset``): sample i = step i of B sequences run side by side.

* ``recurrent_pairs``: the (output, input) pairs, given (``gate.recurrent = "OUT=IN,..."``,
  CLI ``--recurrent``) or found (``"auto"``): an output named after a per-sample input
  (``state`` -> ``stateN``/``state_out``/``state_new``, ``h0`` -> ``hn``, ``state_in`` ->
  ``state_out``) of the same element type and compatible shape, each output and input in one
  pair only; ``"none"`` turns it off.
* ``confirmed``: the pairs whose output has the stored state's shape on the first step.
* ``split_sequences``: the held-out split of recurrent data is by sequence (along the axis
  holding the B sequences), never by step.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import onnx

from .data import Dataset
from .errors import UsageError
from .evaluate import run_once
from .graph import graph_inputs

# The spellings of a state fed back: the output is the input's name with one of
# STATE_OUT_SUFFIXES added, or with one of STATE_IN_SUFFIXES replaced by it (compared
# lowercase, without separators).
STATE_OUT_SUFFIXES = ("n", "out", "new", "next", "1")
STATE_IN_SUFFIXES = ("in", "0", "prev", "old")
AUTO, NONE = "auto", "none"


def _normal(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def names_pair(output: str, input_: str) -> bool:
    """Whether `output` is named as the next value of state `input_` (see STATE_OUT_SUFFIXES)."""
    o, i = _normal(output), _normal(input_)
    if not i or o == i:
        return False
    stems = [i] + [i[: -len(p)] for p in STATE_IN_SUFFIXES if i.endswith(p) and len(i) > len(p)]
    return any(o == stem + s for stem in stems for s in STATE_OUT_SUFFIXES)


def is_recurrent_spec(value: str) -> bool:
    """ "auto", "none" or "OUT=IN[,OUT=IN...]" (the recipe's check)."""
    if value in (AUTO, NONE):
        return True
    try:
        parse_pairs(value)
    except UsageError:
        return False
    return True


def parse_pairs(spec: str) -> tuple[tuple[str, str], ...]:
    """ "OUT=IN,OUT2=IN2" -> (("OUT", "IN"), ("OUT2", "IN2"))."""
    pairs = []
    for part in spec.split(","):
        out, sep, inp = part.strip().partition("=")
        if not sep or not out.strip() or not inp.strip():
            raise UsageError(f"--recurrent {spec!r}: expected OUT=IN[,OUT=IN...], 'auto' or 'none'")
        pairs.append((out.strip(), inp.strip()))
    return tuple(pairs)


def _dims(vi: onnx.ValueInfoProto) -> list[int | None] | None:
    """Declared dims (None: not static), or None when the rank is unknown."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]


def compatible(output: onnx.ValueInfoProto, input_: onnx.ValueInfoProto) -> bool:
    """Same element type; same rank and static dims where both declare them."""
    if output.type.tensor_type.elem_type != input_.type.tensor_type.elem_type:
        return False
    a, b = _dims(output), _dims(input_)
    if a is None or b is None or not a:
        return True
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def recurrent_pairs(model: onnx.ModelProto, data: Dataset, spec: str = AUTO) -> tuple[tuple[str, str], ...]:
    """The (output, input) pairs of states fed back (see the module's doc); () when none."""
    if spec == NONE:
        return ()
    outputs = {o.name: o for o in model.graph.output}
    inputs = {vi.name: vi for vi in graph_inputs(model) if vi.name in data.inputs}
    if spec != AUTO:
        pairs = parse_pairs(spec)
        for out, inp in pairs:
            if out not in outputs:
                raise UsageError(f"--recurrent {out}={inp}: the model has no output {out!r}")
            if inp not in inputs:
                raise UsageError(f"--recurrent {out}={inp}: {inp!r} is not an input the data feeds per sample")
        if not data.per_sample:
            raise UsageError(
                "--recurrent needs per-sample data (an array per input with one more leading axis: the steps)"
            )
        return pairs
    if not data.per_sample:
        return ()
    found = [(o, i) for o in outputs for i in inputs if names_pair(o, i) and compatible(outputs[o], inputs[i])]
    outs, ins = Counter(o for o, _ in found), Counter(i for _, i in found)
    return tuple((o, i) for o, i in found if outs[o] == 1 and ins[i] == 1)


def confirmed(session, data: Dataset, pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The `pairs` whose output, on the first step, has the shape and type of the stored state."""
    if not pairs:
        return ()
    feed = next(data.batches(1))
    values = run_once(session, feed, [o for o, _ in pairs])
    return tuple(
        (o, i)
        for (o, i), v in zip(pairs, values)
        if np.asarray(v).shape == feed[i].shape and np.asarray(v).dtype == feed[i].dtype
    )


def sequence_axes(model: onnx.ModelProto, data: Dataset) -> dict[str, int] | None:
    """The axis of each input's per-sample feed that holds the sequences run side by side: the
    one non-static axis of each input whose size all inputs share; None when there is not
    exactly one such size."""
    declared = {vi.name: _dims(vi) for vi in graph_inputs(model)}
    free: dict[str, dict[int, int]] = {}  # input -> {axis: size} of its non-static axes
    for name, arr in data.inputs.items():
        dims = declared.get(name)
        free[name] = {
            ax: n for ax, n in enumerate(arr.shape[1:]) if dims is None or ax >= len(dims) or dims[ax] is None
        }
    if not free:
        return None
    common = set.intersection(*(set(sizes.values()) for sizes in free.values()))
    unique = [b for b in common if all(list(sizes.values()).count(b) == 1 for sizes in free.values())]
    if len(unique) != 1:
        return None
    return {name: next(ax for ax, n in sizes.items() if n == unique[0]) for name, sizes in free.items()}


def select_sequences(data: Dataset, axes: dict[str, int], index: np.ndarray) -> Dataset:
    """The sequences at `index` (every step of each), same layout, constants and pairs."""
    return Dataset(
        {k: np.ascontiguousarray(np.take(v, index, axis=1 + axes[k])) for k, v in data.inputs.items()},
        None,
        data.constants,
        data.per_sample,
        data.recurrent,
    )


def split_sequences(model: onnx.ModelProto, data: Dataset, min_each: int) -> tuple[Dataset, Dataset] | None:
    """(verdict, search) of recurrent data: the odd sequences held out for the verdict, the even
    ones searched on; None when the sequences' axis is not clear or either part would hold
    fewer than `min_each` sequences."""
    axes = sequence_axes(model, data)
    if axes is None:
        return None
    count = data.inputs[next(iter(axes))].shape[1 + next(iter(axes.values()))]
    if count < 2 * min_each:
        return None
    index = np.arange(count)
    return select_sequences(data, axes, index[1::2]), select_sequences(data, axes, index[0::2])
