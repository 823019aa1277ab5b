"""The judge: measures candidates of a model against the original on the evaluation data.

Every search (sensitivity curves, prune's and share's budget searches) and the run's stage
ladders ask it the same questions: what did this candidate lose (points of accuracy or of
top-1 agreement, output SNR, relative output noise), and is that within the budget.

* ``Judge``: the reference outputs on the data, the scores of a candidate's outputs, the loss
  in points (``loss_points``) and the budget check (``within_budget``).  ``Measure`` is the
  run's name for it.
* ``VariantRunner``: candidates that differ from the model only in some weights, run fast
  (one ONNX Runtime session with those weights fed as inputs, see ``variants``).
* ``Trials``: a search's measured candidates, each measured once, at most ``max_evals``.
* ``search_allowance``: the largest allowance whose candidate fits (grow, shrink, then bisect).
* ``load_metric``: a user's task metric (``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION``).

What each output is judged by without labels (class scores, per-position scores, probability
maps, embeddings, regressors) is the table of ``output_kinds``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from . import decision_risk, embedding_similarity, graph, output_kinds
from .data import Dataset
from .errors import CompressorError, UsageError
from .evaluate import (
    DEFAULT_BATCH,
    accuracy,
    make_session,
    run_batch_size,
    run_model,
)
from .variants import feedable, weights_as_inputs, with_arrays

# Centred output SNR floor (dB) for outputs that have no top-1 to count (regressors,
# embeddings, other values; see output_kinds).
DEFAULT_MIN_SNR_DB = 20.0
# Mean KL divergence (nats) of the class probabilities allowed for class scores, besides the
# top-1 agreement: a continuous measure, so that a few samples cannot pass on counts alone
# (chosen on the sample models in fidelity mode, see benchmarks/README.md).
DEFAULT_MAX_KL = 0.3
# Slack on the budget comparison: a loss equal to the budget up to float rounding fits.
BUDGET_SLACK = 1e-9
# The cost model that sizes the searches (``nominal_seconds``): plans come from counts (samples,
# model size), never from the clock, so that the same input gives the same container under any
# load.  One evaluation of n samples costs (MACs per sample + SAMPLE_OVERHEAD_MACS) x n x
# NOMINAL_SECONDS_PER_MAC plus NOMINAL_SECONDS_PER_PARAMETER per weight (the session's build),
# in "nominal seconds".  The constants were fitted once to ONNX Runtime's wall time on the
# development machine, so that the sample models and the bench's large ones keep the plans they
# had when the plans were measured; they are never re-measured.
NOMINAL_SECONDS_PER_MAC = 3.5e-11
SAMPLE_OVERHEAD_MACS = 200_000
NOMINAL_SECONDS_PER_PARAMETER = 2e-8
# Keys of the run's metrics (``Judge.__call__``) and of the searches' (``Judge.measure_*``).
RUN_KEYS = (
    "accuracy",
    "accuracy_drop",
    "top1_agreement",
    "snr_db",
    "raw_snr_db",
    "kl",
    "map_f1",
    "task_score",
    "decision_risk",
    "kl_points",
    "similarity_points",
    "embedding_snr_db",
)
SEARCH_KEYS = (
    "accuracy",
    "top1_agreement",
    "snr_db",
    "drop",
    "rel_noise",
    "kl",
    "map_f1",
    "decision_risk",
    "kl_points",
    "similarity_points",
    "embedding_snr_db",
)
EMPTY_RUN_METRICS = dict.fromkeys(RUN_KEYS)


# --------------------------------------------------------------------------- pure rules


def loss_points(
    mode: str,
    accuracy_drop: float | None,
    top1_agreement: float | None,
    map_f1: float | None = None,
    task_drop: float | None = None,
    decision_risk: float | None = None,
    kl_points: float | None = None,
    similarity_points: float | None = None,
) -> float | None:
    """The budgeted loss in points: the accuracy drop ("accuracy"), the user metric's drop
    ("metric"), in "fidelity" the worst of 100 - top-1 agreement, 100 x (1 - map F1), the
    decision risk of probability outputs, the per-position KL in points
    (output_kinds.POSITION_KL_PER_POINT) and the similarity points of embeddings (0 when no
    output has any: the SNR floor guards it), None ("none")."""
    if mode == "accuracy":
        return accuracy_drop
    if mode == "metric":
        return task_drop
    if mode == "fidelity":
        losses = [100.0 - top1_agreement] if top1_agreement is not None else []
        losses += [100.0 * (1.0 - map_f1)] if map_f1 is not None else []
        losses += [decision_risk] if decision_risk is not None else []
        losses += [kl_points] if kl_points is not None else []
        losses += [similarity_points] if similarity_points is not None else []
        return max(losses, default=0.0)
    return None


def within_budget(loss: float, snr_db: float | None, budget: float, min_snr_db: float | None = None) -> bool:
    """Loss within `budget` points and, when a floor is given, the SNR at least `min_snr_db`
    (an SNR of None, no float output, passes).  NaN never fits."""
    if not (loss <= budget + BUDGET_SLACK):
        return False
    return min_snr_db is None or snr_db is None or snr_db >= min_snr_db


def relative_noise(reference: np.ndarray, output: np.ndarray) -> float | None:
    """||out - ref||^2 / ||ref||^2: smooth, and close to additive over small independent
    perturbations of different layers (what the budget allocations use); None when not float."""
    if reference.dtype.kind != "f" or reference.shape != output.shape:
        return None
    ref64 = reference.astype(np.float64).ravel()
    signal = float(np.dot(ref64, ref64))
    diff = ref64 - output.astype(np.float64).ravel()
    noise = float(np.dot(diff, diff))
    if not math.isfinite(noise):
        return math.inf
    return noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)


def model_work(model: onnx.ModelProto) -> tuple[int, int]:
    """(multiply-accumulates of one sample, float parameters) of a model.  The MACs are
    ``graph.node_macs`` at batch 1; a node whose shapes are unknown, and a float initializer no
    counted node uses (recurrent weights, ...), count as their number of parameters."""
    float_inits = {
        t.name: int(np.prod(t.dims, dtype=np.int64))
        for t in model.graph.initializer
        if t.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    }
    try:
        rows = graph.node_macs(graph.skeleton(model, set(float_inits)))
    except Exception:  # shape inference is best effort
        rows = []
    counted = {r["weight"] for r in rows if r["macs"] is not None}
    macs = sum(r["macs"] for r in rows if r["macs"] is not None)
    macs += sum(size for name, size in float_inits.items() if name not in counted)
    return macs, sum(float_inits.values())


def nominal_seconds(model: onnx.ModelProto, samples: int) -> float:
    """The nominal seconds of one evaluation of `model` on `samples` samples: the cost model
    the search plans are sized with (see NOMINAL_SECONDS_PER_MAC), a function of counts only."""
    macs, parameters = model_work(model)
    return (
        macs + SAMPLE_OVERHEAD_MACS
    ) * samples * NOMINAL_SECONDS_PER_MAC + parameters * NOMINAL_SECONDS_PER_PARAMETER


# --------------------------------------------------------------------------- the judge


@dataclass
class Judge:
    """Measures candidate models against the original's outputs on `data`.

    The run builds it from the recipe (`mode`, `budget`, `min_snr_db`, `max_kl`, `metric`) and
    calls ``start`` with the original; a search builds it with ``Judge.of_model`` (mode from
    the data's labels).  `data` is where the verdict is taken; `search_data` (default `data`)
    is what the run's searches and calibration may tune on, disjoint from `data` when the run
    holds samples out (see pipeline).  `batch_size`: None runs each model at its own
    (``evaluate.batch_size_for``).  Mode "metric": the loss is the user's `metric` (see
    ``load_metric``), called with the outputs and `metric_arrays` (the data file's arrays).
    """

    data: Dataset | None
    mode: str  # "accuracy" | "fidelity" | "metric" | "none"
    budget: float = 0.0
    min_snr_db: float = DEFAULT_MIN_SNR_DB
    explicit_snr: bool = False  # the recipe set gate.min_snr_db: apply it to every output
    reference_outputs: list[np.ndarray] | None = None
    reference_accuracy: float | None = None
    batch_size: int | None = None
    max_kl: float = DEFAULT_MAX_KL
    metric: Callable | None = None
    metric_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    search_data: Dataset | None = None

    def __post_init__(self) -> None:
        self.last_outputs: list[np.ndarray] | None = None
        if self.search_data is None:
            self.search_data = self.data
        # The SNR floor gates only outputs that are not class scores (see `start`).
        self.snr_gated = False
        self.kl_gated = False
        self.embedding_gated = False  # embeddings' sanity floor (embedding_similarity.MIN_SNR_DB), see `start`
        # Raised by a stage the user fixed explicitly that overshot the budget, so that later
        # stages are judged on not making things worse rather than skipped wholesale.
        self._allowance = 0.0
        self.kl_allowance = 0.0
        self._last_kl: float | None = None
        self.reference_score: float | None = None
        self.eval_seconds = 0.0  # wall time of the reference run (prune.time_limit's plan only)
        self.eval_cost = 0.0  # nominal seconds of one evaluation on the search data: sizes the searches
        self.runs = 0  # candidates measured by measure_model / measure_session
        self._baseline: dict | None = None
        self._references: tuple[int, list[output_kinds.Reference]] | None = None
        # Batch size for sessions (a model with weights as inputs can look fixed-batch): the original's.
        self._session_batch = self.batch_size

    @property
    def allowance(self) -> float:
        return self._allowance

    @allowance.setter
    def allowance(self, value: float) -> None:
        # Set by the ladder when a stage the user fixed overshot: the KL it reached (the last
        # candidate measured) becomes the KL allowance of the later stages too.
        self._allowance = value
        if self._last_kl is not None and math.isfinite(self._last_kl):
            self.kl_allowance = max(self.kl_allowance, self._last_kl)

    @classmethod
    def of_model(
        cls,
        model: onnx.ModelProto,
        data: Dataset,
        batch_size: int | None = None,
        reference: list[np.ndarray] | None = None,
    ) -> Judge:
        """A search's judge: loss in accuracy points with labels, else in top-1 disagreement.
        `reference`: the model's outputs on `data`, when the caller already has them."""
        judge = cls(
            data,
            "accuracy" if data.labels is not None else "fidelity",
            batch_size=batch_size or run_batch_size(model, data),
        )
        judge.reference_outputs = reference if reference is not None else judge.outputs(make_session(model))
        if data.labels is not None:
            judge.reference_accuracy = accuracy(judge.reference_outputs[0], data.labels)
        return judge

    # ---- running

    def outputs(self, model, extra_feed: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """All outputs of a model (or an ORT session, then fed `extra_feed` too) on the data."""
        batch_size = self.batch_size
        if batch_size is None and not isinstance(model, onnx.ModelProto):
            batch_size = self._session_batch or DEFAULT_BATCH
        return run_model(model, self.data, batch_size, extra_feed)

    # ---- scoring

    @property
    def references(self) -> list[output_kinds.Reference]:
        """Each reference output's kind and powers (output_kinds), computed once."""
        if self._references is None or self._references[0] != id(self.reference_outputs):
            refs = [output_kinds.reference_of(r, units=self._sequences(r)) for r in self.reference_outputs or []]
            self._references = (id(self.reference_outputs), refs)
        return self._references[1]

    def _sequences(self, output: np.ndarray) -> int:
        # Recurrent data in the per-sample layout: each sample (step) gives one row per
        # sequence, so the rows cycle over the sequences (the decision risk's units).
        if self.data is None or not self.data.recurrent or np.ndim(output) == 0 or self.data.size == 0:
            return 0
        rows = int(np.shape(output)[0])
        return rows // self.data.size if rows % self.data.size == 0 else 0

    @property
    def kinds(self) -> list[str]:
        return [r.kind for r in self.references]

    def _snr_output(self, ref: output_kinds.Reference) -> bool:
        # The outputs the SNR floor gates: those without a task measure of their own, or every
        # float output when the recipe set the floor.
        return ref.kind in output_kinds.SNR_KINDS or (self.explicit_snr and ref.kind != "exact")

    @property
    def gates_snr(self) -> bool:
        return any(self._snr_output(r) for r in self.references)

    @property
    def gates_embedding_snr(self) -> bool:
        """Embedding outputs held to their sanity floor (``embedding_similarity.MIN_SNR_DB``): in
        fidelity mode, unless the recipe's floor gates them already."""
        return self.mode == "fidelity" and any(
            r.kind == "embedding" and not self._snr_output(r) for r in self.references
        )

    def embedding_snr_fits(self, metrics: dict) -> bool:
        """The embeddings' centred SNR at least their sanity floor (when it gates; NaN fails)."""
        snr = metrics.get("embedding_snr_db")
        return not self.gates_embedding_snr or snr is None or snr >= embedding_similarity.MIN_SNR_DB

    def scores(self, outputs: list[np.ndarray]) -> dict:
        """Every measure of `outputs` against the reference: accuracy, accuracy_drop,
        top1_agreement (worst of the class-score outputs), kl (worst mean KL of their class
        probabilities), map_f1 (worst of the probability maps), snr_db (worst centred SNR of the
        outputs the floor gates; of all float outputs when it gates none), raw_snr_db (worst
        SNR against the raw power, for comparison), task_score (the user metric),
        decision_risk (worst of the probability outputs, ``decision_risk``), drop (the loss in
        points) and rel_noise (first output)."""
        if len(outputs) != len(self.reference_outputs):
            raise CompressorError(f"the model gives {len(outputs)} outputs, the original {len(self.reference_outputs)}")
        per = []
        for r, o, ref in zip(self.reference_outputs, outputs, self.references):
            try:
                per.append(output_kinds.compare(r, o, ref))
            except ValueError as e:
                raise CompressorError(str(e))
        gated = [m for m, ref in zip(per, self.references) if self._snr_output(ref)] or per
        acc = accuracy(outputs[0], self.data.labels) if self.data.labels is not None else None
        accuracy_drop = (self.reference_accuracy - acc) if acc is not None else None
        task_score = self._task_score(outputs) if self.metric is not None else None
        task_drop = None
        if task_score is not None and self.reference_score is not None:
            task_drop = 100.0 * (self.reference_score - task_score) if math.isfinite(task_score) else math.inf
        top1 = _worst(per, "top1_agreement", min)
        map_f1 = _worst(per, "map_f1", min)
        risk = _worst(per, "decision_risk", max)
        kl_points = _worst(per, "kl_points", max)
        similarity = _worst(per, "similarity_points", max)
        embeddings = [m for m, ref in zip(per, self.references) if ref.kind == "embedding"]
        return {
            "accuracy": acc,
            "accuracy_drop": accuracy_drop,
            "top1_agreement": top1,
            "snr_db": _worst(gated, "centred_snr_db", min),
            "raw_snr_db": _worst(per, "raw_snr_db", min),
            "kl": _worst(per, "kl", max),
            "map_f1": map_f1,
            "task_score": task_score,
            "decision_risk": risk,
            "kl_points": kl_points,
            "similarity_points": similarity,
            "embedding_snr_db": _worst(embeddings, "centred_snr_db", min),
            "drop": loss_points(self.mode, accuracy_drop, top1, map_f1, task_drop, risk, kl_points, similarity),
            "rel_noise": relative_noise(self.reference_outputs[0], outputs[0]),
        }

    def _task_score(self, outputs: list[np.ndarray]) -> float:
        try:
            value = float(self.metric(list(outputs), self.metric_arrays))
        except UsageError:
            raise
        except Exception as e:  # the user's code: any failure is theirs to fix
            raise UsageError(f"--metric failed: {type(e).__name__}: {_first_line(e)}")
        return value

    @property
    def baseline(self) -> dict:
        """The search metrics of the reference itself (drop 0, SNR inf)."""
        if self._baseline is None:
            self._baseline = _pick(self.scores(self.reference_outputs), SEARCH_KEYS)
        return self._baseline

    def measure_session(self, session, extra_feed: dict[str, np.ndarray] | None = None) -> dict:
        """The search metrics (``SEARCH_KEYS``) of a session fed `extra_feed` with every batch."""
        self.runs += 1
        return _pick(self.scores(self.outputs(session, extra_feed or {})), SEARCH_KEYS)

    def measure_model(self, model: onnx.ModelProto) -> dict:
        return self.measure_session(make_session(model))

    def fits(self, metrics: dict, budget: float, min_snr_db: float | None = None) -> bool:
        """Search metrics within `budget` points (and the SNR floor, when given and some output
        is gated by it)."""
        floor = min_snr_db if self.gates_snr else None
        return within_budget(metrics["drop"], metrics.get("snr_db"), budget, floor) and self.embedding_snr_fits(metrics)

    # ---- the run's surface

    def start(self, model: onnx.ModelProto) -> dict:
        """Measure the original: its outputs become the reference; returns the run's metrics."""
        if self.data is None:
            return dict(EMPTY_RUN_METRICS)
        self._session_batch = self.batch_size or run_batch_size(model, self.data)
        t0 = time.perf_counter()
        self.reference_outputs = self.outputs(model)
        self.eval_seconds = (time.perf_counter() - t0) * self.search_data.size / max(self.data.size, 1)
        self.eval_cost = nominal_seconds(model, self.search_data.size)
        self._baseline = None
        # Class scores are budgeted by top-1 agreement and the KL of their probabilities: logit
        # SNR falls fast under pruning while the decisions hold (LeNet-5 pruned to a 0.3-point
        # drop has 4 dB).  Maps by the F1 of their regions; regressors, embeddings and other
        # values by the centred SNR floor (see output_kinds).
        kinds = self.kinds
        self.snr_gated = self.mode == "fidelity" and self.gates_snr
        self.kl_gated = self.mode == "fidelity" and any(k in output_kinds.TOP1_KINDS for k in kinds)
        self.embedding_gated = self.gates_embedding_snr
        if self.data.labels is not None:
            self.reference_accuracy = accuracy(self.reference_outputs[0], self.data.labels)
        if self.metric is not None:
            self.reference_score = self._task_score(self.reference_outputs)
            if not math.isfinite(self.reference_score):
                raise UsageError(f"--metric returned {self.reference_score} for the original model (needs a number)")
        self.last_outputs = self.reference_outputs
        metrics = _pick(self.scores(self.reference_outputs), RUN_KEYS)
        return {
            **metrics,
            "accuracy_drop": 0.0 if self.reference_accuracy is not None else None,
            "snr_db": None,
            "embedding_snr_db": None,
        }

    def __call__(self, model: onnx.ModelProto) -> tuple[dict, list[np.ndarray] | None]:
        """The run's metrics (``RUN_KEYS``) of a candidate model, and its outputs."""
        if self.data is None:
            return dict(EMPTY_RUN_METRICS), None
        outputs = self.outputs(model)
        metrics = _pick(self.scores(outputs), RUN_KEYS)
        self._last_kl = metrics["kl"]
        return metrics, outputs

    def loss(self, metrics: dict) -> float | None:
        """The budgeted loss in points of the run's metrics (see ``loss_points``)."""
        task_drop = None
        if metrics.get("task_score") is not None and self.reference_score is not None:
            task_drop = 100.0 * (self.reference_score - metrics["task_score"])
        if self.mode == "metric" and task_drop is None:
            task_drop = 0.0  # the original's own row
        return loss_points(
            self.mode,
            metrics["accuracy_drop"],
            metrics["top1_agreement"],
            metrics.get("map_f1"),
            task_drop,
            metrics.get("decision_risk"),
            metrics.get("kl_points"),
            metrics.get("similarity_points"),
        )

    def within(self, metrics: dict, budget: float | None = None) -> bool:
        """The run's metrics within `budget` (default the run's), never below the allowance,
        and (for outputs the SNR floor gates) above the floor, (for class scores) the KL
        of their probabilities at most max_kl."""
        if self.mode == "none":
            return True
        budget = max(self.budget if budget is None else budget, self.allowance)
        floor = self.min_snr_db if self.snr_gated else None
        if not within_budget(self.loss(metrics), metrics["snr_db"], budget, floor):
            return False
        if self.embedding_gated and not self.embedding_snr_fits(metrics):
            return False
        kl = metrics.get("kl")
        return not (self.kl_gated and kl is not None and not kl <= max(self.max_kl, self.kl_allowance))

    def describe(self) -> dict:
        """What the verdict is taken on and by which measures (the report's "guard")."""
        if self.data is None:
            return {"verdict_samples": 0, "search_samples": 0}
        verdict, search = self.data.size, self.search_data.size
        # One decision is one row of the output: a sample of per-sample data (steps of
        # recurrent sequences, say) holds a batch of them.
        outputs = self.reference_outputs
        rows = int(np.shape(outputs[0])[0]) if outputs and np.ndim(outputs[0]) else verdict
        return {
            "verdict_samples": verdict,
            "search_samples": search,
            "held_out": self.search_data is not self.data,
            "verdict_rows": rows,
            "resolution_points": round(100.0 / max(rows, 1), 3),
            "output_kinds": self.kinds,
            "max_kl": self.max_kl if self.kl_gated else None,
            "min_snr_db": self.min_snr_db if self.snr_gated else None,
            "map_threshold": output_kinds.MAP_THRESHOLD if "map" in self.kinds and self.mode == "fidelity" else None,
            "metric": getattr(self.metric, "spec", None) if self.metric is not None else None,
            "reference_score": self.reference_score,
            # States fed back: each step of the data is run with the candidate's own state.
            "recurrent": [f"{o}={i}" for o, i in self.data.recurrent] or None,
            "decision_risk": self._describe_risk(),
            # Embeddings: points from the correlation of their pairwise cosines, and a sanity floor.
            "embedding": {"max_rows": embedding_similarity.MAX_ROWS, "min_snr_db": embedding_similarity.MIN_SNR_DB}
            if self.embedding_gated
            else None,
        }

    def _describe_risk(self) -> dict | None:
        """The decision risk's bound (probability outputs in fidelity mode): its confidence,
        and the independent units it is taken over (rows, or a recurrent model's sequences)."""
        probability = [
            (r, ref) for r, ref in zip(self.reference_outputs or [], self.references) if ref.kind == "probability"
        ]
        if self.mode != "fidelity" or not probability:
            return None
        output, ref = probability[0]
        units = decision_risk.unit_count(int(np.shape(output)[0]), ref.units)
        return {
            "confidence": decision_risk.CONFIDENCE,
            "unit": "sequence" if ref.units >= 1 and units == ref.units else "row",
            "units": units,
            "threshold": output_kinds.DECISION_THRESHOLD,
        }


Measure = Judge  # the run's name for the judge


def _worst(per: list[dict], key: str, pick) -> float | None:
    values = [m[key] for m in per if m.get(key) is not None]
    return pick(values) if values else None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"


def load_metric(spec: str) -> Callable:
    """The task metric `spec` names: ``package.module:function`` (imported) or
    ``path/to/file.py:function`` (loaded from the file).  The callable takes (outputs: list of
    arrays in the model's output order, arrays: dict of the data file's arrays) and returns a
    score, higher is better, a fraction in [0, 1].  Any problem is one UsageError line."""
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise UsageError(f"--metric {spec!r}: expected MODULE:FUNCTION or path/to/file.py:FUNCTION")
    try:
        if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise UsageError(f"--metric {spec!r}: no such file {module_name}")
            name = f"compressor_user_metric_{path.stem}"
            loader_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except UsageError:
        raise
    except Exception as e:  # the user's module: any import failure is theirs to fix
        raise UsageError(f"--metric {spec!r}: cannot import {module_name}: {type(e).__name__}: {_first_line(e)}")
    func = getattr(module, func_name, None)
    if func is None:
        raise UsageError(f"--metric {spec!r}: {module_name} has no {func_name!r}")
    if not callable(func):
        raise UsageError(f"--metric {spec!r}: {func_name!r} is not callable")

    def metric(outputs: list[np.ndarray], arrays: dict[str, np.ndarray]) -> float:
        value = func(outputs, arrays)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise UsageError(f"--metric {spec!r} returned {type(value).__name__}, not a number")
        return float(value)  # non-finite: the judge refuses it for the original, fails a candidate

    metric.spec = spec
    return metric


def _pick(metrics: dict, keys: Sequence[str]) -> dict:
    return {k: metrics[k] for k in keys}


# --------------------------------------------------------------------------- variants


class VariantRunner:
    """Measures the model with some of the `selected` weights replaced by given arrays, fast.

    One ORT session where every selected weight is an input (no model copy, no session build
    per candidate).  When some weight cannot be fed (a name defined twice), or with
    ``rebuild=True``, each candidate is built as a real model instead.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        judge: Judge,
        selected: Sequence[graph.Weight],
        originals: dict[str, np.ndarray] | None = None,
        rebuild: bool = False,
    ):
        """`originals`: the selected weights' arrays by name, when the caller holds them already."""
        self.model = model
        self.judge = judge
        self.selected = list(selected)
        self.originals = originals if originals is not None else {w.name: w.array() for w in self.selected}
        fast = not rebuild and len(feedable(model, self.selected)) == len(self.selected)
        self.session = make_session(weights_as_inputs(model, self.selected)) if fast else None

    def measure_arrays(self, arrays: dict[str, np.ndarray]) -> dict:
        """The search metrics of the model with the selected weights named in `arrays` replaced
        by those values (the others as they are)."""
        if self.session is None:
            return self.judge.measure_model(with_arrays(self.model, self.selected, arrays))
        return self.judge.measure_session(
            self.session, {w.name: arrays.get(w.name, self.originals[w.name]) for w in self.selected}
        )

    def close(self) -> None:
        """Let go of the session and the selected weights' arrays (a large model's copy of them)."""
        self.session = None
        self.originals = {}


# --------------------------------------------------------------------------- searches


class Trials:
    """A search's measured candidates, by key: each measured once, at most `max_evals` of them.

    ``measure(key, run, record)`` returns the metrics (with ``"within_budget"`` from `fits`),
    cached, or None once the evaluations are spent; `record(metrics)` is called for each new one.
    """

    def __init__(self, fits: Callable[[dict], bool], max_evals: int):
        self.fits = fits
        self.max_evals = max_evals
        self.seen: dict[Hashable, dict] = {}

    @property
    def exhausted(self) -> bool:
        return len(self.seen) >= self.max_evals

    def measure(
        self, key: Hashable, run: Callable[[], dict], record: Callable[[dict], None] | None = None
    ) -> dict | None:
        if key in self.seen:
            return self.seen[key]
        if self.exhausted:
            return None
        metrics = dict(run())
        metrics["within_budget"] = self.fits(metrics)
        self.seen[key] = metrics
        if record is not None:
            record(metrics)
        return metrics


def search_allowance(
    fits: Callable[[float], bool | None],
    start: float,
    grow: Callable[[float], float | None],
    shrink: Callable[[float], float | None],
    geometric: bool,
    resolution: float,
    max_steps: int | None = None,
) -> tuple[float | None, float | None]:
    """The largest allowance `a` with ``fits(a)``, for a `fits` that is (roughly) true below
    some allowance and false above it; returns (largest fitting, smallest failing) tried.

    From `start`: while every allowance tried fits, the next is ``grow(a)``; while none does,
    ``shrink(a)`` (None from either stops the search: nothing more to gain, or nothing fits);
    then bisection between the two, geometric (while the fitting one is > 0) or linear, until
    they are `resolution` apart (as a ratio - 1, or a difference).  ``fits(a)`` returning None
    (out of evaluations) stops the search, as does `max_steps` calls of it.
    """
    lo = hi = None  # largest fitting / smallest failing allowance so far
    allowance = start
    steps = 0
    while max_steps is None or steps < max_steps:
        steps += 1
        ok = fits(allowance)
        if ok is None:
            break
        if ok:
            lo = allowance
        else:
            hi = allowance
        if hi is None:
            allowance = grow(allowance)
        elif lo is None:
            allowance = shrink(allowance)
        elif geometric and lo > 0:
            allowance = None if hi / lo < 1.0 + resolution else math.sqrt(lo * hi)
        else:
            allowance = None if hi - lo <= resolution else (lo + hi) / 2.0
        if allowance is None:
            break
    return lo, hi
