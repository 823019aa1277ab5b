"""Objective size: the mixed-precision rungs quantize only the layers whose int8 form packs
smaller than their input form.

Quantize's mixed-precision rungs (stages/quantize.py) keep the noisiest layers float and
quantize the others, chosen by noise alone.  After share, a layer's int8 form can pack larger
than its shared form (a narrow codebook quantized per channel has more symbols): quantizing it
adds bytes and noise, so under objective size such a rung builds a candidate larger than its
input, only for the ladder to reject it by size after the rung's whole-model runs.  Here the
two containers the stage packs anyway (its input, and a plain static candidate, every layer
quantized) say per weight tensor what each form costs; the layers that grow are excluded from
the mixed rungs (kept float, as in the input), and when no layer shrinks the rungs are not
built at all (nothing they may quantize)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import onnx

from ..errors import CompressorError

# The int8 tensors quantize writes for a weight W (passes/quantize/weights.py): W[_T]_quantized,
# W[_T]_scale, W[_T]_zero_point, maybe with a scope suffix.
_PARTS = r"(?:_T)?_(?:quantized|scale|zero_point)(?:_\d+)?"


def tensor_bytes(pack_stats: Mapping) -> dict[str, int]:
    """Packed bytes per tensor name from a packing's stats (pack_model's); a tensor written into
    the graph section (small ones) has no bytes of its own and is left out: undecided."""
    out: dict[str, int] = {}
    for t in pack_stats.get("tensors", []):
        if t.get("bytes_after") is not None:
            out[t["name"]] = out.get(t["name"], 0) + int(t["bytes_after"])
    return out


def int8_bytes(weight: str, quantized: Mapping[str, int]) -> int | None:
    """Packed bytes of `weight`'s int8 tensors in a quantized container (None: not quantized)."""
    pattern = re.compile(re.escape(weight) + _PARTS + "$")
    found = [b for name, b in quantized.items() if pattern.match(name)]
    return sum(found) if found else None


def growing_weights(float_bytes: Mapping[str, int], quantized: Mapping[str, int], weights: Iterable[str]) -> set[str]:
    """The weights whose int8 tensors pack to more bytes than the weight did in the input."""
    grown = set()
    for name in weights:
        q = int8_bytes(name, quantized)
        if q is not None and name in float_bytes and q > float_bytes[name]:
            grown.add(name)
    return grown


def consumer_outputs(model: onnx.ModelProto, weights: set[str]) -> list[str]:
    """What quantize's exclude matches of the main graph's nodes that read one of `weights`: a
    node's name, else its first output (a Conv's output becomes its BatchNorm's when folded;
    its name stays)."""
    return [n.name or n.output[0] for n in model.graph.node if (n.name or n.output) and weights.intersection(n.input)]


def exclude_pattern(user: str | None, outputs: list[str]) -> str | None:
    """The user's exclude regex extended by these node outputs (exact matches)."""
    if not outputs:
        return user
    ours = "^(?:" + "|".join(re.escape(o) for o in sorted(set(outputs))) + ")$"
    return f"(?:{user})|{ours}" if user else ours


class ShrinkingLayers:
    """What the mixed rungs may quantize, learnt from the stage's packings: `note(model, stats)`
    records each plain static candidate packed (its quantize stats and pack stats); `exclude()`
    gives the exclude pattern for a mixed rung, or raises when no layer shrinks."""

    def __init__(self, model: onnx.ModelProto, input_pack_stats: Mapping | None, user_exclude: str | None):
        self.model = model
        self.user = user_exclude
        self.float_bytes = tensor_bytes(input_pack_stats) if input_pack_stats else None
        self.grown: set[str] | None = None
        self.quantized_weights: set[str] = set()

    def note(self, quantize_stats: Mapping, pack_stats: Mapping | None) -> None:
        if self.float_bytes is None or pack_stats is None or self.grown is not None:
            return
        names = {w["name"] for w in quantize_stats.get("weights", [])}
        self.quantized_weights = names
        self.grown = growing_weights(self.float_bytes, tensor_bytes(pack_stats), names)

    def exclude(self) -> str | None:
        """The mixed rung's exclude pattern (the user's when nothing was learnt)."""
        if self.grown is None:
            return self.user
        if self.quantized_weights and self.grown >= self.quantized_weights:
            raise CompressorError(
                f"every layer's int8 form packs larger than its input form ({len(self.grown)} weights): "
                "nothing to quantize smaller, not built (objective size)"
            )
        return exclude_pattern(self.user, consumer_outputs(self.model, self.grown))

    def summary(self) -> str | None:
        if not self.grown:
            return None
        return f"{len(self.grown)} of {len(self.quantized_weights)} weights kept float in mixed precision: their int8 form packs larger"
