"""The run's lossy stages, in the order they run.

A stage is one module with ``NAME`` (its recipe section in compressor/options.py) and
``run(options, ctx: StageContext) -> StageResult``, which builds its ladder of attempts and hands
it to ``ladder.run_ladder``.  Adding a stage: one module, one entry in STAGES, its options.
"""

from __future__ import annotations

from . import finetune, lowrank, prune, quantize, share, structured
from .ladder import StageContext, StageResult

# The fine-tunes (optional: no row unless the recipe asks) follow prune and share, as the paper
# retrains; low-rank (opt-in) factorises the pruned model before share.  Structured pruning
# (opt-in) comes first: unstructured pruning then zeroes weights of the channels that remain.
STAGES = (structured, prune, finetune.AFTER_PRUNE, lowrank, share, finetune.AFTER_SHARE, quantize)

__all__ = ["STAGES", "StageContext", "StageResult"]
