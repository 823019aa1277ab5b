"""The judge: measures a candidate model against the original on the evaluation data.

Every search and the run's stage ladders ask it the same questions: what did this candidate
lose (points of accuracy or of top-1 agreement, and output SNR), and is that within the budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx

from .data import Dataset
from .evaluate import accuracy, fidelity, looks_like_class_scores, run_model


@dataclass
class Measure:
    """Measures a candidate model against the original on the evaluation data."""

    data: Dataset | None
    mode: str  # "accuracy" | "fidelity" | "none"
    budget: float
    min_snr_db: float
    explicit_snr: bool = False  # the recipe set gate.min_snr_db: apply it to every output
    reference_outputs: list[np.ndarray] | None = None
    reference_accuracy: float | None = None

    def __post_init__(self) -> None:
        self.last_outputs: list[np.ndarray] | None = None
        # The SNR floor gates only outputs that are not class scores (see `start`).
        self.snr_gated = False
        # Raised by a stage the user fixed explicitly that overshot the budget, so that later
        # stages are judged on not making things worse rather than skipped wholesale.
        self.allowance = 0.0
        self.eval_seconds = 0.0

    def start(self, model: onnx.ModelProto) -> dict:
        if self.data is None:
            return {"accuracy": None, "accuracy_drop": None, "top1_agreement": None, "snr_db": None}
        t0 = time.perf_counter()
        self.reference_outputs = run_model(model, self.data)
        self.eval_seconds = time.perf_counter() - t0  # sizes the pruning search (see _prune_search_plan)
        # Class scores ([N, C] logits or probabilities) are budgeted by top-1 agreement alone:
        # logit SNR falls fast under pruning while the decisions hold (LeNet-5 pruned to a
        # 0.3-point drop has 4 dB).  Detectors, regressors, embeddings and sequences have no
        # meaningful top-1, so for them the output SNR floor is what protects the model.
        first = self.reference_outputs[0] if self.reference_outputs else None
        looks_like_scores = first is not None and looks_like_class_scores(first)
        self.snr_gated = self.mode == "fidelity" and (self.explicit_snr or not looks_like_scores)
        if self.data.labels is not None:
            self.reference_accuracy = accuracy(self.reference_outputs[0], self.data.labels)
        self.last_outputs = self.reference_outputs
        return {
            "accuracy": self.reference_accuracy,
            "accuracy_drop": 0.0 if self.reference_accuracy is not None else None,
            "top1_agreement": 100.0 if looks_like_scores else None,
            "snr_db": None,
        }

    def __call__(self, model: onnx.ModelProto) -> tuple[dict, list[np.ndarray] | None]:
        if self.data is None:
            return {"accuracy": None, "accuracy_drop": None, "top1_agreement": None, "snr_db": None}, None
        outputs = run_model(model, self.data)
        fid = fidelity(self.reference_outputs, outputs)
        acc = accuracy(outputs[0], self.data.labels) if self.data.labels is not None else None
        metrics = {
            "accuracy": acc,
            "accuracy_drop": (self.reference_accuracy - acc) if acc is not None else None,
            "top1_agreement": fid["top1_agreement"],
            "snr_db": fid["snr_db"],
        }
        return metrics, outputs

    def loss(self, metrics: dict) -> float | None:
        """The budgeted loss in points: accuracy drop, or 100 - top-1 agreement."""
        if self.mode == "accuracy":
            return metrics["accuracy_drop"]
        if self.mode == "fidelity":
            if metrics["top1_agreement"] is None:
                return 0.0
            return 100.0 - metrics["top1_agreement"]
        return None

    def within(self, metrics: dict, budget: float | None = None) -> bool:
        if self.mode == "none":
            return True
        budget = max(self.budget if budget is None else budget, self.allowance)
        if self.loss(metrics) > budget + 1e-9:
            return False
        if self.snr_gated and metrics["snr_db"] is not None and metrics["snr_db"] < self.min_snr_db:
            return False
        return True
