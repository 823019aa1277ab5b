"""The run's input model let go while the later stages run, and read again from its file after.

A large model's original is the first stage's input and is read again once the stages are done
(the retry without pruning, the report's per-layer rows and plots, the floor), but no stage
after the first reads it (the fine-tune's teacher aside: then it stays held).  Held, it is one
more copy of every weight through share's and quantize's searches.  When the model came from a
file without external data, the route holds the original's skeleton instead
(``graph.copy_without_data``: names, types and dims) from the first stage that changed the
model on, and the model is read again from its file when the stages are done: the same bytes
(the file's size, modification time and inode unchanged) load to the same model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from .. import graph
from ..errors import CompressorError

# Originals up to this many bytes stay held: reading one again saves little.
HOLD_MAX_BYTES = 64 << 20


def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass
class HeldOriginal:
    """An original the stages may let go (``let_go``) and the pipeline reads again (``read_again``)."""

    path: str
    stamp: tuple[int, int, int]
    skeleton: onnx.ModelProto | None = None  # what the route holds while the original is let go

    @classmethod
    def for_run(
        cls, path: str, external_files: list[Path], model_bytes: int, teacher_needed: bool
    ) -> HeldOriginal | None:
        """None when the original stays held: from stdin, with external data, small, or the
        fine-tune's teacher."""
        if path == "-" or external_files or model_bytes <= HOLD_MAX_BYTES or teacher_needed:
            return None
        return cls(path, _stamp(path))

    def let_go(self, models: list[onnx.ModelProto], *others: list[onnx.ModelProto]) -> None:
        """Once the last model is not the original (models[0]), put its skeleton in its place, in
        `models` and in the `others` lists holding it (the original's memory goes with its last
        reference)."""
        if self.skeleton is not None or models[-1] is models[0]:
            return
        original = models[0]
        self.skeleton = graph.copy_without_data(original, graph.large_tensor_positions(original))
        for held in (models, *others):
            for i, m in enumerate(held):
                if m is original:
                    held[i] = self.skeleton

    def read_again(self, *held: list[onnx.ModelProto]) -> onnx.ModelProto | None:
        """The original read from its file, put back in place of its skeleton in the `held` lists;
        None when it was never let go."""
        if self.skeleton is None:
            return None
        if _stamp(self.path) != self.stamp:
            raise CompressorError(f"{self.path} changed during the run: cannot read the original model again")
        original, _ = graph.load_model_and_files(self.path, max_bytes=None)
        for models in held:
            for i, m in enumerate(models):
                if m is self.skeleton:
                    models[i] = original
        self.skeleton = None
        return original
