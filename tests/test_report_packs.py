"""Work a run does once, not twice: `run` packs only the models a decision compares or the run
keeps, above a size (the report's packed column of the others is then unmeasured, the container
the same bytes); share's search takes the reference outputs prune's search ran on the same model."""

import graphs
import numpy as np
import onnx
import pytest

from compressor import pipeline
from compressor.container import pack
from compressor.data import Dataset, load_dataset
from compressor.errors import CompressorError
from compressor.evaluate import ORT_COUNTS, run_model
from compressor.graph import load_model
from compressor.measure import Judge
from compressor.pipeline import run_pipeline
from compressor.search.layer_inputs import LayerInputs


@pytest.mark.parametrize("prune", [False, True])
def test_models_only_the_report_would_pack_are_not_packed_above_the_size_and_the_container_is_the_same(
    tmp_path, monkeypatch, prune
):
    model, data = graphs.two_layer_mlp_files(tmp_path)
    overrides = {"prune": {"enabled": prune, "min_params": 0}, "share": {"min_params": 0}}
    full = run_pipeline(str(model), str(tmp_path / "full.cmpz"), data_path=str(data), overrides=overrides)
    monkeypatch.setattr(pipeline, "REPORT_PACK_MAX_BYTES", 0)
    lean = run_pipeline(str(model), str(tmp_path / "lean.cmpz"), data_path=str(data), overrides=overrides)

    assert (tmp_path / "lean.cmpz").read_bytes() == (tmp_path / "full.cmpz").read_bytes()
    assert all(s["packed_bytes"] is not None for s in full["stages"]) and "column" not in full["packs"]
    assert lean["packs"]["models"] < full["packs"]["models"]
    # The original's pack was the report's alone: not measured, no estimate, and the report says so.
    assert lean["stages"][0]["stage"] == "original" and lean["stages"][0]["packed_bytes"] is None
    assert lean["stages"][0]["packed_ratio"] is None
    assert "not measured" in lean["packs"]["column"]
    # What a decision compared or the run writes is still measured, the same as before.
    for a, b in zip(full["stages"], lean["stages"]):
        assert b["packed_bytes"] in (None, a["packed_bytes"])
    assert lean["stages"][-1]["packed_bytes"] == full["stages"][-1]["packed_bytes"]


def test_share_search_takes_the_reference_prune_ran_when_pruning_left_the_model_as_it_was(tmp_path, monkeypatch):
    # Unlabeled data: the searches run on half the samples, the verdict on the other half.
    model, data = graphs.two_layer_mlp_files(tmp_path)
    runs = []
    of_model = Judge.of_model.__func__

    def counted(cls, m, d, batch_size=None, reference=None):
        runs.append((d.size, reference is None))
        return of_model(cls, m, d, batch_size, reference)

    monkeypatch.setattr(Judge, "of_model", classmethod(counted))
    overrides = {
        "prune": {"min_params": 0, "budget": 0.0},
        "share": {"min_params": 0},
        "quantize": {"enabled": False},
        "gate": {"max_kl": 0.0},
    }
    report = run_pipeline(str(model), str(tmp_path / "m.cmpz"), data_path=str(data), overrides=overrides)
    stages = {s["stage"]: s for s in report["stages"]}
    # Pruning found nothing within the budget: share's input is the original itself.
    assert report["guard"]["held_out"] and not stages["prune"]["applied"]
    searched = report["guard"]["search_samples"]
    # prune's search (every attempt) and share's judge against the original's outputs on the
    # search half: run once, then handed over.
    ran = [r for r in runs if r[0] == searched]
    assert ran.count((searched, True)) == 1 and ran.count((searched, False)) >= 2


def test_a_kept_reference_is_for_the_same_model_and_data_only():
    model, other = onnx.ModelProto(), onnx.ModelProto()
    data, more = Dataset({"x": np.zeros((2, 1))}, None), Dataset({"x": np.zeros((2, 1))}, None)
    kept = LayerInputs()
    kept.keep_reference(model, data, [np.ones(2)])
    assert kept.reference(model, data)[0].tolist() == [1.0, 1.0]
    assert kept.reference(other, data) is None and kept.reference(model, more) is None
    assert kept.take_reference(model, data)[0].tolist() == [1.0, 1.0]  # its last reader takes it
    assert kept.reference(model, data) is None
    kept.keep_reference(model, data, [np.ones(2)])
    kept.release()
    assert kept.reference(model, data) is None


def test_the_container_is_verified_on_its_first_batch_bit_for_bit(tmp_path):
    # The unpacked model hashes to the measured one: its first batch must give the same outputs;
    # the other batches would repeat the last stage's own run.
    model_path, data_path = graphs.two_layer_mlp_files(tmp_path)
    model = load_model(model_path)
    data = load_dataset(data_path, model)
    data = Dataset({"x": np.concatenate([data.inputs["x"]] * 5)}, None)  # 320 samples: several batches
    outputs = run_model(model, data)
    runs = ORT_COUNTS["runs"]
    _, _, verified = pipeline._pack_and_verify(model, data, outputs)
    assert verified == "outputs" and ORT_COUNTS["runs"] - runs == 1
    wrong = [o.copy() for o in outputs]
    wrong[0][0, 0] += 1.0
    with pytest.raises(CompressorError, match="does not reproduce"):
        pipeline._pack_and_verify(model, data, wrong)


@pytest.mark.parametrize("threads", [2, 3])
def test_a_pack_on_threads_is_the_same_bytes_as_one_at_a_time(monkeypatch, threads):
    model = graphs.depthwise_resnet()  # many tensors of several sizes and coders
    monkeypatch.setattr(pack, "PACK_THREADS", 1)
    alone, stats = pack.pack_model(model)
    monkeypatch.setattr(pack, "PACK_THREADS", threads)
    together, threaded_stats = pack.pack_model(model)
    assert together == alone and threaded_stats == stats


def test_a_field_with_the_last_packed_models_bytes_takes_its_encoding_and_the_container_is_the_same(monkeypatch):
    model = graphs.depthwise_resnet()
    alone, _ = pack.pack_model(model)
    memo = pack.EncodingMemo()
    first, _ = pack.pack_model(model, memo=memo)
    assert first == alone and memo.reused == 0
    coded = []
    encode = pack.encode_tensor_data
    monkeypatch.setattr(pack, "encode_tensor_data", lambda data, width: coded.append(width) or encode(data, width))
    again, _ = pack.pack_model(model, memo=memo)  # every field as in the model before: nothing coded again
    assert again == alone and memo.reused > 0 and not coded
    other = onnx.ModelProto()
    other.CopyFrom(model)
    tensor = other.graph.initializer[0]
    values = onnx.numpy_helper.to_array(tensor) + 1
    tensor.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), tensor.name))
    changed, _ = pack.pack_model(other, memo=memo)
    assert changed == pack.pack_model(other)[0] and len(coded) >= 1  # the changed tensor is coded afresh
