"""What keeps a large model's run in bounded memory gives the same results: the checker on
stand-ins of large inline tensors, shape inference without the weights' data, k-means on
float32 values without a float64 copy."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor import graph, kmeans
from compressor.errors import CompressorError


def _identity_model(values: np.ndarray):
    t = numpy_helper.from_array(values, "W")
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(values.shape))
    g = helper.make_graph([helper.make_node("Identity", ["W"], ["y"])], "g", [], [out], [t])
    return helper.make_model(g)


def test_check_model_stands_in_for_large_inline_tensors():
    model = _identity_model(np.ones((300, 300), np.float32))
    assert graph._inline_raw_tensors(model) == {0}
    graph.check_model(model)


def test_check_model_still_rejects_a_short_raw_data():
    model = _identity_model(np.ones((300, 300), np.float32))
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    assert graph._inline_raw_tensors(model) == set()  # checked as it is
    with pytest.raises(CompressorError, match="too small"):
        graph.check_model(model)


def test_infer_shapes_batch1_reads_dims_of_large_tensors():
    w = np.ones((300, 400), np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 300])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "g",
        [x],
        [y],
        [numpy_helper.from_array(w, "W")],
    )
    shapes = graph.infer_shapes_batch1(helper.make_model(g))
    assert shapes["h"] == (1, 400) and shapes["y"] == (1, 400) and shapes["W"] == (300, 400)


@pytest.mark.parametrize("k", [4, 32])
def test_kmeans_on_float32_values_is_the_float64_result(k):
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(20_000) * 0.05).astype(np.float32)
    a = kmeans.kmeans_1d(values, k, hist_threshold=1000, return_iterations=True)
    b = kmeans.kmeans_1d(values.astype(np.float64), k, hist_threshold=1000, return_iterations=True)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_share_array_keeps_float32_values_and_gives_the_same_result():
    rng = np.random.default_rng(1)
    values = (rng.standard_normal(30_000) * 0.05).astype(np.float32)
    values[rng.random(values.size) < 0.3] = 0
    kept = kmeans.share_array(values, 16, hist_threshold=1000)
    # the float64 path: the same values as float64 (clustered in float64 either way)
    ref = kmeans.share_array(values.astype(np.float64), 16, hist_threshold=1000)
    assert np.array_equal(kept.labels, ref.labels)
    assert np.array_equal(kept.centroids, ref.centroids)
    assert np.array_equal(kept.counts, ref.counts)


def test_last_built_lets_go_of_the_last_model_while_building_and_rebuilds_it_on_a_failure():
    from compressor.errors import CompressorError as Failed
    from compressor.stages.partial_share import LastBuilt

    last = LastBuilt()
    calls = []

    def first():
        calls.append("first")
        return "model A", {"a": 1}

    def failing():
        assert last.model is None  # the one before is not held while this one is built
        raise Failed("no")

    last.wrap("A", first)()
    with pytest.raises(Failed):
        last.wrap("B", failing)()
    assert (last.label, last.model, last.stats) == ("A", "model A", {"a": 1})
    assert calls == ["first", "first"]  # built again


def test_a_let_go_original_is_read_again_and_the_run_is_the_same(tmp_path, monkeypatch):
    import small_models

    from compressor import pipeline
    from compressor.stages import held_original

    model, data = small_models.labeled_mlp(tmp_path)

    def run(tag: str) -> tuple[bytes, dict]:
        out = tmp_path / f"{tag}.cmpz"
        report = pipeline.run_pipeline(str(model), str(out), data_path=str(data))
        return out.read_bytes(), report

    held_bytes, held_report = None, None
    read_again = held_original.HeldOriginal.read_again
    seen = []

    def recorded(self, *lists):
        seen.append(self.skeleton is not None)
        return read_again(self, *lists)

    monkeypatch.setattr(held_original.HeldOriginal, "read_again", recorded)
    monkeypatch.setattr(held_original, "HOLD_MAX_BYTES", 0)
    held_bytes, held_report = run("held")
    # let go after the first stage that changed the model, and again while the container is packed
    # and verified (read again for the report)
    assert seen == [True, True]
    monkeypatch.setattr(held_original, "HOLD_MAX_BYTES", 1 << 40)
    kept_bytes, kept_report = run("kept")
    assert held_bytes == kept_bytes
    assert _timeless(held_report["stages"]) == _timeless(kept_report["stages"])
    assert held_report["layers"] == kept_report["layers"] and held_report["plots"] == kept_report["plots"]


def _timeless(value):
    """A report part without its measured times."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k not in ("seconds", "eval_seconds")}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def test_the_original_is_not_read_again_when_its_file_changed(tmp_path):
    from compressor.stages.held_original import HeldOriginal

    path = tmp_path / "m.onnx"
    original = _identity_model(np.ones((300, 300), np.float32))
    onnx_save = __import__("onnx").save
    onnx_save(original, path)
    held = HeldOriginal(str(path), (0, 0, 0))
    models = [original, "another"]
    held.let_go(models)
    assert models[0] is held.skeleton
    with pytest.raises(CompressorError, match="changed during the run"):
        held.read_again(models)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int8, np.uint8, np.int32, np.int64, np.bool_])
def test_set_tensor_values_gives_what_from_array_and_copy_from_gave(dtype):
    rng = np.random.default_rng(0)
    start = numpy_helper.from_array((rng.standard_normal((3, 4)) * 10).astype(dtype), "t")
    start.doc_string = "dropped as before"
    values = (rng.standard_normal((3, 4)) * 10).astype(np.float64)  # cast to the tensor's type
    expected = numpy_helper.from_array(values.astype(dtype), start.name)
    expected.data_type = start.data_type
    graph.set_tensor_values(start, values)
    assert start.SerializeToString() == expected.SerializeToString()


def test_used_levels_counted_in_chunks_are_the_distinct_non_zero_levels(monkeypatch):
    from compressor.passes import share

    monkeypatch.setattr(share, "STATS_CHUNK", 7)
    levels = np.array([0, -3, 5, 5, 0, 2, -3, 9, 0, 0, 1, 2, -7], np.int64)
    assert share._used_levels(levels).tolist() == [-7, -3, 1, 2, 5, 9]


def test_give_back_returns_freed_heap_pages_or_does_nothing():
    from compressor import heap

    block = np.ones(1 << 20)  # a block in the heap, freed
    del block
    heap.give_back()
