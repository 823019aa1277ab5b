"""Recurrent models: states fed back are found, each step runs with the model's own state, and
the held-out split is by sequence (compressor.sequences, evaluate.run_sequence)."""

from __future__ import annotations

import json

import graphs
import numpy as np
import onnx
import pytest

from compressor import graph
from compressor.cli import main
from compressor.data import Dataset, load_dataset
from compressor.errors import UsageError
from compressor.evaluate import make_session, run_model
from compressor.pipeline import _with_recurrence, run_pipeline, verdict_and_search
from compressor.sequences import names_pair, recurrent_pairs, sequence_axes, split_sequences
from compressor.variants import with_arrays

STEPS, CLIPS = 12, 8


def sequence_data(model: onnx.ModelProto, steps: int = STEPS, clips: int = CLIPS, seed: int = 0) -> Dataset:
    """Steps of `clips` sequences side by side, with the state the model itself gave before
    each step stored (what a data file made from the original model holds)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((steps, clips, 64)).astype(np.float32)
    session = make_session(model)
    state = np.zeros((1, clips, 32), np.float32)
    states = []
    for step in x:
        states.append(state)
        _, state = session.run(None, {"x": step, "state": state, "sr": np.array(16000)})
    return Dataset({"x": x, "state": np.stack(states)}, None, {"sr": np.array(16000)}, per_sample=True)


def by_hand(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The probabilities of the steps run in order with the model's own state, from zero."""
    session = make_session(model)
    state = np.zeros((1, x.shape[1], 32), np.float32)
    probs = []
    for step in x:
        prob, state = session.run(None, {"x": step, "state": state, "sr": np.array(16000)})
        probs.append(prob)
    return np.concatenate(probs)


def perturbed(model: onnx.ModelProto) -> onnx.ModelProto:
    w = next(w for w in graph.weights(model) if w.name == "gru.R")
    return with_arrays(model, [w], {"gru.R": w.array() * 1.5})


def test_names_of_a_state_fed_back():
    for out, inp in [
        ("stateN", "state"),
        ("state_out", "state_in"),
        ("hn", "h0"),
        ("state_new", "state"),
        ("c_n", "c0"),
    ]:
        assert names_pair(out, inp), (out, inp)
    for out, inp in [("output", "input"), ("state", "state"), ("prob", "state"), ("stateN", "x")]:
        assert not names_pair(out, inp), (out, inp)


def test_pairs_found_given_or_turned_off():
    model = graphs.streaming_vad_model()
    data = sequence_data(model)
    assert recurrent_pairs(model, data) == (("state_out", "state"),)
    assert recurrent_pairs(model, data, "none") == ()
    assert recurrent_pairs(model, data, "state_out=state") == (("state_out", "state"),)
    with pytest.raises(UsageError, match="no output 'nope'"):
        recurrent_pairs(model, data, "nope=state")
    with pytest.raises(UsageError, match="not an input"):
        recurrent_pairs(model, data, "state_out=sr")
    batched = Dataset({"x": data.inputs["x"][0], "state": data.inputs["state"][0]}, None, data.constants)
    assert recurrent_pairs(model, batched) == ()  # steps need the per-sample layout


def test_each_step_is_fed_the_models_own_state():
    model = graphs.streaming_vad_model()
    data = sequence_data(model)
    fed_back = _with_recurrence(model, data, "auto")
    assert fed_back.recurrent == (("state_out", "state"),)
    # the original gives the stored states: both ways agree
    assert np.array_equal(run_model(model, fed_back)[0], run_model(model, data)[0])
    # a candidate's error accumulates through its own state, invisible with the stored one
    other = perturbed(model)
    own, stored = run_model(other, fed_back)[0], run_model(other, data)[0]
    np.testing.assert_allclose(own, by_hand(other, data.inputs["x"]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(own, stored, atol=1e-4)


def test_a_stored_zero_state_starts_a_sequence():
    model = graphs.streaming_vad_model()
    first, second = sequence_data(model, steps=5, seed=1), sequence_data(model, steps=7, seed=2)
    both = Dataset(
        {k: np.concatenate([first.inputs[k], second.inputs[k]]) for k in first.inputs},
        None,
        first.constants,
        per_sample=True,
        recurrent=(("state_out", "state"),),
    )
    other = perturbed(model)
    expected = np.concatenate([by_hand(other, first.inputs["x"]), by_hand(other, second.inputs["x"])])
    np.testing.assert_allclose(run_model(other, both)[0], expected, rtol=1e-5, atol=1e-6)
    # a shorter prefix (a search's subset) keeps the order
    assert both.spread(4).recurrent and np.array_equal(both.spread(4).inputs["x"], both.inputs["x"][:4])


def test_the_held_out_split_is_by_sequence():
    model = graphs.streaming_vad_model()
    data = _with_recurrence(model, sequence_data(model), "auto")
    assert sequence_axes(model, data) == {"x": 0, "state": 1}
    verdict, search, index = verdict_and_search(None, data, True, model)
    assert index is None and verdict.size == search.size == STEPS  # every step of half the sequences
    assert np.array_equal(verdict.inputs["x"], data.inputs["x"][:, 1::2])
    assert np.array_equal(search.inputs["state"], data.inputs["state"][:, :, 0::2])
    assert verdict.recurrent == data.recurrent
    assert split_sequences(model, data, min_each=CLIPS) is None  # too few sequences to split


def test_the_run_judges_with_the_models_own_state(tmp_path):
    model = graphs.streaming_vad_model()
    data = sequence_data(model)
    path, npz = tmp_path / "vad.onnx", tmp_path / "seq.npz"
    onnx.save(model, path)
    np.savez(npz, x=data.inputs["x"], state=data.inputs["state"], sr=np.array(16000))
    assert load_dataset(npz, model).per_sample
    report = run_pipeline(str(path), str(tmp_path / "vad.cmpz"), calib_path=str(npz))
    guard = report["guard"]
    assert guard["recurrent"] == ["state_out=state"] and guard["held_out"]
    assert guard["verdict_samples"] == STEPS and report["container"]["verified"] == "outputs"
    off = run_pipeline(str(path), str(tmp_path / "off.cmpz"), {"gate": {"recurrent": "none"}}, calib_path=str(npz))
    assert off["guard"]["recurrent"] is None


def test_cli_recurrent_option(tmp_path, capsys):
    model = graphs.streaming_vad_model()
    data = sequence_data(model)
    path, npz = tmp_path / "vad.onnx", tmp_path / "seq.npz"
    onnx.save(model, path)
    np.savez(npz, x=data.inputs["x"], state=data.inputs["state"], sr=np.array(16000))
    assert main(["run", str(path), "-o", str(tmp_path / "a.cmpz"), "--calib", str(npz), "--recurrent", "x"]) == 2
    assert "OUT=IN" in capsys.readouterr().err
    args = ["run", str(path), "-o", str(tmp_path / "b.cmpz"), "--calib", str(npz), "--json", "-q"]
    assert main([*args, "--recurrent", "state_out=state"]) == 0
    assert json.loads(capsys.readouterr().out)["guard"]["recurrent"] == ["state_out=state"]
