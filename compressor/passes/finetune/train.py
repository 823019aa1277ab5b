"""Distillation with torch: the student's initializers trained to match the teacher's outputs.

The model is run by the interpreter (interpret.py); what it trains is a set of parametrised
tensors, each keeping the constraints the earlier passes put on it:

* dense: every value trains;
* masked (pruned): the zeros stay zero (value = parameter x fixed 0/1 mask);
* shared (a tensor holding at most SHARED_MAX_VALUES distinct non-zero values, as share leaves
  it): one parameter per centroid, value = codebook[index] with the zeros fixed, so each
  centroid's gradient is the sum of its weights' gradients (the gather's backward);
* integer weights behind DequantizeLinear (QDQ models) train as floats in integer units and
  are snapped back to their grid forward with a straight-through rounding, and on write-back.

The loss per output, against the teacher's outputs (computed once, with ONNX Runtime):
class scores (output_kinds "classes" / "positions"): KL divergence on softened probabilities
(temperature T, scaled by T^2, Hinton et al.); any other float output: mean squared error over
the teacher's variance.  With labels, cross-entropy on the first class-score output is added.
Adam with a cosine decay of the step size, seeded shuffles, deterministic algorithms on one thread: the same inputs give the same
bytes.  Only initializer values change; they are written back by name.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from ... import graph as graph_mod
from ...data import Dataset
from ...errors import CompressorError
from ...output_kinds import TOP1_KINDS, output_kind, row_form
from .interpret import QUANT_RANGE, Graph, as_torch_feeds

# Roles of the float tensors that train (graph.weights): everything that multiplies or shifts
# activations; constants of the arithmetic (eps, 0.5, sqrt(2)) and quantization parameters stay.
TRAINED_ROLES = graph_mod.MATRIX_ROLES + (
    "gemm_a",
    "matmul_const_a",
    "bias",
    "batchnorm",
    "norm",
    "embedding",
    "prelu_slope",
)
# A tensor with at most this many distinct non-zero values (and many more values) is shared.
# An integer weight always has few values; it counts as shared with at most an eighth of its range.
SHARED_MAX_VALUES = 256
SHARED_MIN_REPEAT = 4
SHARED_INTEGER_SHARE = 8
PROGRESS_WIDTH = 30

Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    epochs: int = 3
    lr: float = 1e-3
    seed: int = 0
    batch_size: int = 64
    temperature: float = 2.0
    progress: bool = False  # a bar per epoch on stderr (a terminal only: the caller decides)


@dataclass
class Trainable:
    """One initializer, parametrised so that its constraint holds whatever the optimiser does."""

    name: str
    kind: str  # "dense" | "masked" | "shared"
    param: torch.Tensor
    mask: torch.Tensor | None = None
    index: torch.Tensor | None = None  # shared: 0 = a zero, c = centroid c - 1
    integer: tuple[int, int] | None = None  # integer weight: its (low, high) range
    scale: float = 1.0  # the optimiser's step for this tensor, relative to the rest

    def value(self) -> torch.Tensor:
        if self.kind == "shared":
            codebook = torch.cat([torch.zeros(1, dtype=self.param.dtype), self.param])
            return codebook[self.index]
        if self.kind == "masked":
            return self.param * self.mask
        return self.param

    def array(self, dtype: np.dtype) -> np.ndarray:
        values = self.value().detach().numpy()
        if self.integer is not None:
            values = np.clip(np.round(values), *self.integer)
        return values.astype(dtype)


def parametrise(name: str, values: np.ndarray, integer: tuple[int, int] | None = None, zero: float = 0.0) -> Trainable:
    """The Trainable for one tensor's values (`zero`: the value a pruned entry holds)."""
    flat = values.astype(np.float32)
    nonzero = flat != zero
    distinct = np.unique(flat[nonzero])
    most = SHARED_MAX_VALUES if integer is None else (integer[1] - integer[0] + 1) // SHARED_INTEGER_SHARE
    if flat.ndim >= 1 and 1 < distinct.size <= most and flat.size >= SHARED_MIN_REPEAT * distinct.size:
        index = np.zeros(flat.shape, np.int64)
        index[nonzero] = np.searchsorted(distinct, flat[nonzero]) + 1
        if zero != 0.0:  # an integer weight whose zero point is not 0: the pruned value is a centroid too
            distinct = np.concatenate([[zero], distinct]).astype(np.float32)
            index[nonzero] += 1
            index[~nonzero] = 1
        param = torch.tensor(distinct, requires_grad=True)
        return Trainable(name, "shared", param, index=torch.from_numpy(index), integer=integer)
    if flat.ndim >= 2 and not nonzero.all():
        mask = torch.from_numpy(nonzero.astype(np.float32))
        if zero != 0.0:
            raise CompressorError(f"cannot fine-tune {name!r}: a pruned integer weight with a non-zero zero point")
        return Trainable(name, "masked", torch.tensor(flat, requires_grad=True), mask=mask, integer=integer)
    return Trainable(name, "dense", torch.tensor(flat, requires_grad=True), integer=integer)


def trainables(model: onnx.ModelProto, program: Graph) -> list[Trainable]:
    numeric = program.numeric_names()
    found = []
    main_graph = {t.name for t in model.graph.initializer} | set(program.constants)
    for w in graph_mod.weights(model):
        if w.role in TRAINED_ROLES and w.name not in numeric and w.name in main_graph and w.ref.graph_path == "":
            found.append(parametrise(w.name, w.array()))
    for node in program.nodes:
        name = node.inputs[0] if node.inputs else ""
        if node.op != "DequantizeLinear" or name not in program.constants:
            continue
        values = program.constants[name]
        elem = program.elem_types[name]
        if values.size <= 1 or elem not in QUANT_RANGE or any(t.name == name for t in found):
            continue
        zp = program.constants.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        zero = float(zp.reshape(-1)[0]) if zp is not None and np.all(zp == zp.reshape(-1)[0]) else None
        if zero is None:  # per-channel zero points: no single pruned value; kept dense
            found.append(Trainable(name, "dense", torch.tensor(values.astype(np.float32), requires_grad=True)))
        else:
            found.append(parametrise(name, values, QUANT_RANGE[elem], zero))
        found[-1].integer = QUANT_RANGE[elem]
        scale = program.constants[node.inputs[1]]
        found[-1].scale = 1.0 / float(np.median(np.abs(scale))) if np.any(scale) else 1.0
        program.trained_integers.add(name)
    return found


def _log_probs(output: torch.Tensor, form: str | None, temperature: float) -> torch.Tensor:
    if form == "probs":
        return torch.log_softmax(torch.log(output.clamp_min(1e-12)) / temperature, dim=-1)
    if form == "logprobs":
        return torch.log_softmax(output / temperature, dim=-1)
    return torch.log_softmax(output / temperature, dim=-1)


@dataclass(frozen=True)
class Target:
    """How one output is matched: its kind, its (log-)probability form, its teacher values."""

    kind: str
    form: str | None
    teacher: np.ndarray
    variance: float


def targets(teacher_outputs: list[np.ndarray]) -> list[Target]:
    found = []
    for out in teacher_outputs:
        kind = output_kind(out)
        form = row_form(out) if kind in TOP1_KINDS else None
        variance = float(np.var(out.astype(np.float64))) if out.dtype.kind == "f" and out.size else 1.0
        found.append(Target(kind, form, out, max(variance, 1e-12)))
    return found


def loss_of(
    outputs: list[torch.Tensor], goals: list[Target], index: np.ndarray, labels: np.ndarray | None, temperature: float
) -> torch.Tensor:
    total = torch.zeros(())
    labelled = False
    for out, goal in zip(outputs, goals):
        if goal.kind == "exact":
            continue
        teacher = torch.from_numpy(np.ascontiguousarray(goal.teacher[index], dtype=np.float32))
        if goal.kind in TOP1_KINDS:
            s = _log_probs(out.reshape(-1, out.shape[-1]), goal.form, temperature)
            t = _log_probs(teacher.reshape(-1, teacher.shape[-1]), goal.form, temperature)
            kl = F.kl_div(s, t, reduction="batchmean", log_target=True)
            total = total + kl * temperature**2
            if labels is not None and not labelled and goal.kind == "classes":
                rows = out.reshape(out.shape[0], -1)
                log_p = rows if goal.form == "logprobs" else _log_probs(rows, goal.form, 1.0)
                total = total + F.nll_loss(log_p, torch.from_numpy(labels[index]).long())
                labelled = True
        else:
            total = total + F.mse_loss(out, teacher) / goal.variance
    return total


def _bar(epoch: int, epochs: int, done: int, steps: int, loss: float) -> str:
    filled = PROGRESS_WIDTH * done // max(steps, 1)
    return f"\rfine-tune epoch {epoch}/{epochs} [{'#' * filled}{'.' * (PROGRESS_WIDTH - filled)}] loss {loss:.4f}"


def finetune(
    model: onnx.ModelProto,
    teacher_outputs: list[np.ndarray],
    train: Dataset,
    settings: Settings,
    log: Log,
) -> tuple[onnx.ModelProto, dict]:
    """(a copy of `model` with its trained initializers, stats)."""
    if train.per_sample:
        raise CompressorError("cannot fine-tune on per-sample data: the samples must be stacked along axis 0")
    program = Graph(model)
    params = trainables(model, program)
    if not params:
        raise CompressorError("cannot fine-tune: the model has no float weights to train")
    goals = targets(teacher_outputs)
    labels = train.labels
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(settings.seed)
        generator = torch.Generator().manual_seed(settings.seed)
        groups = {}
        for p in params:
            groups.setdefault(p.scale, []).append(p.param)
        optimiser = torch.optim.Adam([{"params": v, "lr": settings.lr * s} for s, v in groups.items()])
        inputs = {k: v for k, v in train.inputs.items()}
        n = train.size
        batch = max(1, min(settings.batch_size, n))
        steps = (n + batch - 1) // batch
        # Cosine decay to zero over the whole fine-tune: the last steps polish instead of jumping.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps * settings.epochs)
        losses, started = [], time.perf_counter()
        for epoch in range(1, settings.epochs + 1):
            order = torch.randperm(n, generator=generator).numpy()
            total = 0.0
            for step in range(steps):
                index = np.sort(order[step * batch : (step + 1) * batch])
                feed = {**train.constants, **{k: v[index] for k, v in inputs.items()}}
                tensors = {p.name: p.value() for p in params}
                outputs = program.run(as_torch_feeds(feed), tensors)
                loss = loss_of(outputs, goals, index, labels, settings.temperature)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                total += float(loss.detach()) * len(index)
                if settings.progress:
                    sys.stderr.write(
                        _bar(epoch, settings.epochs, step + 1, steps, total / ((step * batch) + len(index)))
                    )
                    sys.stderr.flush()
            losses.append(total / n)
            if settings.progress:
                sys.stderr.write("\n")
            log(f"fine-tune: epoch {epoch}/{settings.epochs} loss {losses[-1]:.4f}")
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    result = write_back(model, params)
    stats = {
        "epochs": settings.epochs,
        "lr": settings.lr,
        "seed": settings.seed,
        "samples": n,
        "steps": steps * settings.epochs,
        "labels": labels is not None,
        "losses": [round(x, 6) for x in losses],
        "tensors": {kind: sum(p.kind == kind for p in params) for kind in ("dense", "masked", "shared")},
        "trained_values": int(sum(p.param.numel() for p in params)),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return result, stats


def write_back(model: onnx.ModelProto, params: list[Trainable]) -> onnx.ModelProto:
    """A copy of the model with the trained values in the tensors of the same names."""
    result = graph_mod.copy_model(model)
    by_name = {p.name: p for p in params}
    for ref in graph_mod.iter_tensors(result):
        if ref.graph_path == "" and ref.name in by_name:
            dtype = numpy_helper.to_array(ref.proto).dtype
            graph_mod.set_tensor_values(ref.proto, by_name[ref.name].array(dtype))
    return result
