"""Every pass over every zoo graph: prune(0.5) -> share -> quantize(static) -> pack -> unpack.

The contract checked end to end: each stage returns a model that onnx's checker and ONNX
Runtime accept, with the original's output shapes and dtypes; nothing mutates its input;
stats are JSON-able; the container unpacks to the packed model bit for bit.  Ops or tensors a
pass cannot handle (already-quantized, float16, subgraphs) are left as they are and reported.
"""

from __future__ import annotations

import json

import graphs
import numpy as np
import pytest

from compressor import graph
from compressor.container import pack_model, unpack_container
from compressor.evaluate import fidelity, make_session, run_model
from compressor.passes.prune import prune
from compressor.passes.quantize import quantize
from compressor.passes.share import share

CASES = {name: build for name, build in graphs.BUILDERS.items()}
CASES.update({f"opset_model_{opset}": (lambda opset=opset: graphs.opset_model(opset)) for opset in graphs.OPSETS})


def check_runs_like(original, model, data_sets):
    """Runs in ORT on every data set, same output shapes and dtypes as the original, finite."""
    graph.check_model(model)
    session = make_session(model)
    for data in data_sets:
        ref, out = run_model(original, data), run_model(session, data)
        assert [(o.shape, o.dtype) for o in out] == [(r.shape, r.dtype) for r in ref]
        assert all(np.isfinite(o).all() for o in out)


def tensors(model) -> list[tuple[str, str, bytes]]:
    return [(r.graph_path, r.name, r.proto.SerializeToString()) for r in graph.iter_tensors(model)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_prune_share_quantize_pack_unpack(name):
    model = CASES[name]()
    pristine = model.SerializeToString()
    calib = graphs.make_inputs(model, 32, 0)
    # an odd and an even seed: the If model's flag takes both values, so both branches run
    data_sets = [graphs.make_inputs(model, 8, 1), graphs.make_inputs(model, 8, 2)]

    pruned, prune_stats = prune(model, 0.5)
    check_runs_like(model, pruned, data_sets)
    shared, share_stats = share(pruned)
    check_runs_like(model, shared, data_sets)
    quantized, quant_stats = quantize(shared, calib=calib)
    check_runs_like(model, quantized, data_sets)
    for stats in (prune_stats, share_stats, quant_stats):
        json.dumps(stats)
    assert model.SerializeToString() == pristine, "no pass mutates its input"

    blob, _ = pack_model(quantized)
    unpacked, info = unpack_container(blob, verify=True)
    assert info["verified"]
    assert tensors(unpacked) == tensors(quantized)  # every initializer and Constant, bit-identical
    assert unpacked.SerializeToString() == quantized.SerializeToString()
    check_runs_like(model, unpacked, data_sets)

    # What each stage did, or why it left the model alone.
    matrix = [w for w in graph.weights(model) if w.is_matrix and w.size >= 1024]
    if name == "quantized_qdq_model":  # nothing float to compress: every pass leaves it as it is
        assert prune_stats["tensors"] == [] and prune_stats["warnings"]
        assert share_stats["tensors"] == [] and share_stats["warnings"]
        assert quant_stats["already_quantized"] and quantized.SerializeToString() == model.SerializeToString()
    else:
        assert {r["name"] for r in prune_stats["tensors"]} == {w.name for w in matrix}
        # share also takes the tables only Gather reads (embeddings); prune leaves them
        tables = [w for w in graph.weights(model) if w.role == "embedding" and w.size >= 1024]
        assert {t["name"] for t in share_stats["tensors"]} == {w.name for w in matrix + tables}
    if name == "fp16_model":  # int8 QDQ is for float32 tensors: float16 MatMuls stay float, and say why
        assert {r["status"] for r in quant_stats["nodes"]} == {"float"}
        assert graph.weights(quantized)[0].dtype == np.float16
    elif name == "if_subgraph_model":
        assert quant_stats["subgraphs_left_float"] == ["if/else_branch", "if/then_branch"]
    elif name != "quantized_qdq_model":
        assert any(n.op_type == "DequantizeLinear" for n in quantized.graph.node)
    if name.startswith("opset_model_"):
        assert graph.opset_version(quantized) == max(13, int(name.rsplit("_", 1)[1]))  # per-channel needs 13


@pytest.mark.parametrize("name", sorted(CASES))
def test_pack_roundtrips_every_zoo_model_as_it_is(name):
    # Before any pass: Constant nodes, subgraph initializers, int8 / float16 / int64 tensors.
    model = CASES[name]()
    blob, stats = pack_model(model)
    unpacked, _ = unpack_container(blob, verify=True)
    assert unpacked.SerializeToString() == model.SerializeToString()
    data = graphs.make_inputs(model, 4, 0)
    for a, b in zip(run_model(model, data), run_model(unpacked, data)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert stats["tensors"] and len(blob) < len(model.SerializeToString())


def test_the_zoo_models_are_deterministic_and_valid():
    for name, build in CASES.items():
        a, b = build(), build()
        assert a.SerializeToString() == b.SerializeToString(), name
        graph.check_model(a)


def test_pipeline_output_stays_close_to_the_float_model_on_an_easy_graph():
    # Random weights are much less compressible than trained ones; on the depthwise ResNet
    # (BatchNorm folding, residual, average pooling) the whole chain still agrees on top-1.
    model = graphs.depthwise_resnet()
    data = graphs.make_inputs(model, 64, 1)
    out, _ = prune(model, 0.5)
    out, _ = share(out)
    out, _ = quantize(out, calib=graphs.make_inputs(model, 64, 0))
    f = fidelity(run_model(model, data), run_model(out, data))
    assert f["snr_db"] > 12 and f["top1_agreement"] >= 85, f
