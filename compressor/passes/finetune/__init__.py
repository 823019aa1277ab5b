"""finetune: distillation of a compressed model from its original (the optional `finetune` extra).

The front of the torch side, free of torch: it checks that torch is installed (else one line
saying how to install it), computes the teacher's outputs with ONNX Runtime, and hands the
training to train.py, imported only then, so that a run without fine-tuning never loads torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable

import numpy as np
import onnx

from ...data import Dataset
from ...errors import UsageError
from ...evaluate import run_model

INSTALL_HINT = "fine-tuning needs torch: pip install 'compressor[finetune]' (torch==2.13.0, CPU)"
# The torch-side module, loaded by name once torch is known to be there.
TRAINER = "compressor.passes.finetune.train"
DEFAULT_EPOCHS = 3
DEFAULT_LR = 1e-3  # the same as run's [finetune] lr

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def require_torch() -> None:
    if not torch_available():
        raise UsageError(INSTALL_HINT)


def teacher_outputs(teacher: onnx.ModelProto, train: Dataset) -> list[np.ndarray]:
    """The original model's outputs on the training inputs (one ONNX Runtime pass)."""
    return run_model(teacher, train)


def finetune(
    model: onnx.ModelProto,
    teacher: onnx.ModelProto | list[np.ndarray],
    train: Dataset,
    *,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    progress: bool | None = None,
    log: Log = _quiet,
) -> tuple[onnx.ModelProto, dict]:
    """(a copy of `model` whose initializers were trained to match `teacher`, stats).

    `teacher`: the original model, or its outputs on `train` already computed.  `progress`:
    a bar per epoch on stderr; None: when stderr is a terminal."""
    require_torch()
    if epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {epochs}")
    if not lr > 0:
        raise UsageError(f"--lr must be > 0, got {lr}")
    trainer = importlib.import_module(TRAINER)
    targets = teacher_outputs(teacher, train) if isinstance(teacher, onnx.ModelProto) else teacher
    show = sys.stderr.isatty() if progress is None else progress
    settings = trainer.Settings(epochs=epochs, lr=lr, seed=seed, progress=show)
    return trainer.finetune(model, targets, train, settings, log)
