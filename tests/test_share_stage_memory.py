"""The share stage holds no more than it uses: covariances captured on another model are freed."""

from __future__ import annotations

import dataclasses

import numpy as np
from graphs import make_model, vi
from onnx import helper, numpy_helper
from stage_contexts import measured_context, self_labeled

from compressor.options import Recipe
from compressor.search.layer_inputs import LayerInputs
from compressor.stages import share as stage
from compressor.stages.ladder import StageContext


def _mlp(seed: int = 0):
    rng = np.random.default_rng(seed)
    w1 = rng.laplace(size=(64, 128)).astype(np.float32) / 8
    w2 = rng.laplace(size=(128, 10)).astype(np.float32) / 8
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    return make_model(nodes, [vi("x", ["N", 64])], [vi("y", ["N", 10])], inits)


def _context(model, layer_inputs: LayerInputs) -> StageContext:
    data = self_labeled(model, np.random.default_rng(1).normal(size=(64, 64)).astype(np.float32))
    return measured_context(
        model, data, "accuracy", 1.0, lambda m: len(m.SerializeToString()), layer_inputs=layer_inputs
    )


def test_covariances_of_another_model_are_released_before_the_search():
    model, other = _mlp(0), _mlp(1)
    layer_inputs = LayerInputs()
    ctx = _context(model, layer_inputs)
    layer_inputs.keep(other, ctx.calib_data, {"w1": object()})  # captured on another model (pruned since)
    opts = dataclasses.replace(Recipe.for_mode("accuracy").share, min_params=0)
    stage.per_tensor_attempt(stage.shareable_weights(model, None, 0), opts, ctx)
    assert layer_inputs.layers(other, ctx.calib_data) == {}


def test_covariances_of_the_stages_model_are_kept_for_it():
    model = _mlp(0)
    layer_inputs = LayerInputs()
    ctx = _context(model, layer_inputs)
    layer_inputs.keep(model, ctx.calib_data, {"w1": "captured"})
    opts = dataclasses.replace(Recipe.for_mode("accuracy").share, min_params=0)
    stage.per_tensor_attempt(stage.shareable_weights(model, None, 0), opts, ctx)
    assert layer_inputs.layers(model, ctx.calib_data) == {"w1": "captured"}
