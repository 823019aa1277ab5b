"""The layers' input covariances of a run, captured once and handed from stage to stage.

Prune's layer errors and share's rate curves both need each weighted layer's input covariance
C = XᵀX on the calibration data (``layer_error.capture_layers``): one whole-model capture run
each, the costliest single runs of a search (every layer's input of every sample).  A run keeps
what the first capture found here; a later stage takes a layer from it when the covariance is
still the one its own capture would measure:

* exactly, when the stage's model is the one captured or a model a stage declared to have
  its weights and graph (``same_weights``: prune that kept nothing, say);
* approximately (``approximate=True``), when the stages in between changed weights: a layer's
  input then comes from pruned layers upstream, and its covariance moves a little.  The
  covariances only rank candidates and estimate their errors; every decision is a measured
  whole-model run (benchmarks/README.md, "Run speed", measured what reuse changes).

Layers are keyed by weight name and by the data they were captured on (the same Dataset
object); nothing is captured here, the callers capture what is missing and ``keep`` it.

The same holds for a search's reference, a model's outputs on the searches' data: prune's
search runs the original once for it; when pruning left the model as it was, share's search
takes it from here instead of running the same model over the same samples again.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..data import Dataset
from ..passes.layers import Layer


class LayerInputs:
    """Captured layers (``passes.layers.Layer`` with their covariance) by weight name, with the
    model and data they were captured on."""

    def __init__(self) -> None:
        self._models: list[onnx.ModelProto] = []  # the captured model and those with its weights
        self._data: Dataset | None = None
        self._layers: dict[str, Layer] = {}
        self._reference: tuple[onnx.ModelProto, Dataset, list[np.ndarray]] | None = None

    def _exact(self, model: onnx.ModelProto) -> bool:
        return any(m is model for m in self._models)

    def keep(self, model: onnx.ModelProto, data: Dataset, layers: dict[str, Layer]) -> None:
        """Remember `layers` captured on `model` over `data` (added to those of the same model
        and data; a capture on another model or data starts afresh)."""
        if not self._exact(model) or data is not self._data:
            self._models, self._data, self._layers = [model], data, {}
        self._layers.update(layers)

    def same_weights(self, model: onnx.ModelProto, other: onnx.ModelProto) -> None:
        """`other` has the weights and graph of `model`: what was captured on one holds for both."""
        if self._exact(model) and not self._exact(other):
            self._models.append(other)

    def layers(self, model: onnx.ModelProto, data: Dataset, approximate: bool = False) -> dict[str, Layer]:
        """The kept layers valid for `model` over `data`: those captured on its weights and
        graph, or with `approximate` any captured on `data` (see module docstring)."""
        if data is not self._data or not (approximate or self._exact(model)):
            return {}
        return dict(self._layers)

    def keep_reference(self, model: onnx.ModelProto, data: Dataset, outputs: list[np.ndarray]) -> None:
        """Remember `model`'s outputs on `data` (a search's reference; one model's at a time)."""
        self._reference = (model, data, outputs)

    def reference(self, model: onnx.ModelProto, data: Dataset) -> list[np.ndarray] | None:
        """`model`'s outputs on `data` when kept (the same model and Dataset objects), else None."""
        kept = self._reference
        return kept[2] if kept is not None and kept[0] is model and kept[1] is data else None

    def take_reference(self, model: onnx.ModelProto, data: Dataset) -> list[np.ndarray] | None:
        """``reference``, forgotten here (its last reader holds it from now on)."""
        kept = self.reference(model, data)
        self._reference = None
        return kept

    def release(self) -> None:
        """Forget the covariances, the reference and the models."""
        self._models, self._data, self._layers = [], None, {}
        self._reference = None
