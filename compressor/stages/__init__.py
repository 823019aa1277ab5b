"""The run's lossy stages, in the order they run.

A stage is one module with ``NAME`` (its recipe section in compressor/options.py) and
``run(options, ctx: StageContext) -> StageResult``, which builds its ladder of attempts and hands
it to ``ladder.run_ladder``.  Adding a stage: one module, one entry in STAGES, its options.
"""

from __future__ import annotations

from . import lowrank, prune, quantize, share
from .ladder import StageContext, StageResult

STAGES = (prune, lowrank, share, quantize)

__all__ = ["STAGES", "StageContext", "StageResult"]
