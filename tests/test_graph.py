"""graph: safe load/save (atomic, external data confined to the model's folder), the tensor walk,
and the weight view (roles, axes, groups, sharing, Identity, subgraphs) on every zoo graph."""

from __future__ import annotations

import os
from pathlib import Path

import graphs
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor import graph
from compressor.errors import CompressorError, UsageError
from compressor.passes.selection import prunable_weights

# =========================================================================== load / save


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def same_model(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    """Same graph and the same tensor values (a model loaded from external data stores its
    tensors with an explicit data_location, so the bytes of the protos differ)."""

    def strip(m):
        m2 = onnx.ModelProto()
        m2.CopyFrom(m)
        for ref in graph.iter_tensors(m2):
            ref.proto.ClearField("raw_data")
            ref.proto.ClearField("data_location")
            del ref.proto.external_data[:]
        return m2.SerializeToString()

    values = lambda m: [(r.name, numpy_helper.to_array(r.proto).tobytes()) for r in graph.iter_tensors(m)]
    return strip(a) == strip(b) and values(a) == values(b)


def test_save_then_load_roundtrips_bit_identically(tmp_path):
    model = graphs.conv_net()
    out = graph.save_model(model, tmp_path / "m.onnx")
    assert out == tmp_path / "m.onnx"
    assert graph.load_model(out).SerializeToString() == model.SerializeToString()
    assert files_in(tmp_path) == ["m.onnx"], "no temp files left"


def test_save_refuses_to_overwrite_the_input_unless_asked(tmp_path):
    src = tmp_path / "m.onnx"
    graph.save_model(graphs.mlp(), src)
    before = src.read_bytes()
    other = graphs.conv_net()
    with pytest.raises(UsageError, match="refusing to overwrite the input model"):
        graph.save_model(other, src, input_path=src)
    link = tmp_path / "link.onnx"  # the same file under another name is still the input
    link.symlink_to(src)
    with pytest.raises(UsageError, match="refusing to overwrite"):
        graph.save_model(other, link, input_path=src)
    assert src.read_bytes() == before
    graph.save_model(other, src, input_path=src, overwrite_input=True)
    assert src.read_bytes() == other.SerializeToString()
    assert graph.save_model(other, tmp_path / "new.onnx", input_path="-").exists()  # stdin input: nothing to protect


def test_save_into_a_missing_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="output folder does not exist"):
        graph.save_model(graphs.mlp(), tmp_path / "nope" / "m.onnx")


def test_a_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old contents")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(graph.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        graph.save_model(graphs.mlp(), target)
    monkeypatch.undo()
    assert target.read_bytes() == b"old contents"
    assert files_in(tmp_path) == ["m.onnx"]


def test_models_over_the_threshold_are_saved_with_external_data(tmp_path):
    model = graphs.mlp()
    before = model.SerializeToString()
    graph.save_model(model, tmp_path / "big.onnx", external_threshold=0)
    assert model.SerializeToString() == before, "the caller's model keeps its data in memory"
    assert files_in(tmp_path) == ["big.onnx", "big.onnx.data"]
    on_disk = onnx.load(tmp_path / "big.onnx", load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in on_disk.graph.initializer)
    assert same_model(graph.load_model(tmp_path / "big.onnx"), model)


# --------------------------------------------------------------------------- external data


def rewrite_external(path: str | Path, **changes) -> None:
    """Edit the external_data entries (location/offset/length) of every tensor, data untouched."""
    model = onnx.load(path, load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key in changes:
                value = changes[entry.key]
                entry.value = value(entry.value) if callable(value) else str(value)
    Path(path).write_bytes(model.SerializeToString())


def test_external_data_model_loads_with_its_data(tmp_path):
    path = graphs.external_data_model(tmp_path)
    assert sorted(files_in(tmp_path)) == ["mlp.onnx", "mlp.onnx.data"]
    model = graph.load_model(path)
    assert all(t.data_location == TensorProto.DEFAULT for t in model.graph.initializer)
    assert same_model(model, graphs.mlp())


def test_external_data_in_a_subfolder_or_behind_an_inside_symlink_is_fine(tmp_path):
    path = graphs.external_data_model(tmp_path)
    (tmp_path / "weights").mkdir()
    os.replace(tmp_path / "mlp.onnx.data", tmp_path / "weights" / "w.bin")
    rewrite_external(path, location="weights/w.bin")
    assert same_model(graph.load_model(path), graphs.mlp())
    (tmp_path / "alias.bin").symlink_to(tmp_path / "weights" / "w.bin")
    rewrite_external(path, location="alias.bin")
    assert same_model(graph.load_model(path), graphs.mlp())


def _escape_absolute(folder: Path, outside: Path) -> str:
    return str(outside / "mlp.onnx.data")


def _escape_dotdot(folder: Path, outside: Path) -> str:
    return f"../{outside.name}/mlp.onnx.data"


def _escape_file_symlink(folder: Path, outside: Path) -> str:
    (folder / "link.data").symlink_to(outside / "mlp.onnx.data")
    return "link.data"


def _escape_dir_symlink(folder: Path, outside: Path) -> str:
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    return "linked/mlp.onnx.data"


@pytest.mark.parametrize("escape, message", [
    (_escape_absolute, "absolute path"),
    (_escape_dotdot, "'..'"),
    (_escape_file_symlink, "outside the model's folder"),
    (_escape_dir_symlink, "outside the model's folder"),
])  # fmt: skip
def test_external_data_escaping_the_model_folder_is_refused(tmp_path, escape, message):
    folder, outside = tmp_path / "model", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    path = graphs.external_data_model(folder)
    os.replace(folder / "mlp.onnx.data", outside / "mlp.onnx.data")  # the data really is out there
    rewrite_external(path, location=escape(folder, outside))
    with pytest.raises(CompressorError, match="refusing external data") as info:
        graph.load_model(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not isinstance(info.value, UsageError)


@pytest.mark.parametrize("changes, message", [
    ({"length": lambda v: str(int(v) + 10**6)}, "lies outside its file"),
    ({"offset": 10**9}, "lies outside its file"),
    ({"offset": -4}, "lies outside its file"),
    ({"offset": "four"}, "bad external data offset"),
    ({"location": "missing.bin"}, "external data file not found"),
])  # fmt: skip
def test_external_data_that_does_not_fit_its_file_is_an_error(tmp_path, changes, message):
    path = graphs.external_data_model(tmp_path)
    rewrite_external(path, **changes)
    with pytest.raises(CompressorError, match=message):
        graph.load_model(path)


# --------------------------------------------------------------------------- not ONNX


def _checker_failure() -> bytes:
    # Well-formed protobuf, but a node reads a value nobody defines: onnx's checker says no.
    g = helper.make_graph(
        [helper.make_node("Relu", ["nowhere"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"\xff\xff\xff\xff garbage \x00\x01", "not an ONNX model"),
    (b"name,value\n1,2\n", "not an ONNX model"),
    (graphs.mlp().SerializeToString()[:300], "not an ONNX model"),  # truncated download
    (numpy_helper.from_array(np.ones(4, np.float32), "t").SerializeToString(), "not an ONNX model"),  # other protobuf
    (_checker_failure(), "onnx checker"),
])  # fmt: skip
def test_corrupt_empty_and_non_onnx_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(CompressorError, match=message) as info:
        graph.load_model(path)
    assert "\n" not in str(info.value) and not isinstance(info.value, UsageError)


def test_missing_paths_and_folders_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        graph.load_model(tmp_path / "absent.onnx")
    with pytest.raises(UsageError, match="is a directory"):
        graph.load_model(tmp_path)


# =========================================================================== tensor walk


def test_iter_tensors_finds_constants_and_subgraph_tensors():
    refs = list(graph.iter_tensors(graphs.constant_weights_conv()))
    assert {r.name for r in refs if r.kind == "constant"} == {
        "c1.weight",
        "c1.bias",
        "c2.weight",
        "fc.weight",
        "fc.bias",
    }
    assert all(r.node is not None and r.node.op_type == "Constant" for r in refs if r.kind == "constant")

    refs = list(graph.iter_tensors(graphs.if_subgraph_model()))
    where = {r.name: r.graph_path for r in refs}
    assert where["then.weight"] == where["then.bias"] == "if/then_branch"
    assert where["else.weight"] == "if/else_branch"
    assert where["head.weight"] == where["trunk.weight"] == ""
    # initializers, then Constants, graph by graph: the main graph first
    assert [r.graph_path for r in refs] == sorted([r.graph_path for r in refs], key=lambda p: p != "")


def test_iter_graphs_names_subgraphs_by_node():
    paths = [p for p, _ in graph.iter_graphs(graphs.if_subgraph_model().graph)]
    assert paths[0] == "" and sorted(paths[1:]) == ["if/else_branch", "if/then_branch"]


# =========================================================================== weight view

# Every float tensor of every zoo graph and the role weights() gives it.
ROLES = {
    "mlp": {
        "fc1.weight": "gemm_b",
        "fc1.bias": "bias",
        "fc2.weight": "gemm_b",
        "fc2.bias": "bias",
        "fc3.weight": "gemm_b",
        "fc3.bias": "bias",
    },
    "mlp_matmul_shared": {
        "shared.weight": "matmul_const",
        "block0.bias": "bias",
        "block1.bias": "bias",
        "head.weight": "matmul_const",
        "head.bias": "bias",
    },
    "mlp_with_preprocessing": {
        "pre.mean": "elementwise",
        "pre.std": "elementwise",  # act on the input, not a MatMul
        "fc1.weight": "matmul_const",
        "fc1.bias": "bias",
        "fc2.weight": "matmul_const",
        "fc2.bias": "bias",
        "fc3.weight": "matmul_const",
        "fc3.bias": "bias",
    },
    "conv_net": {
        "conv1.weight": "conv_filter",
        "conv1.bias": "bias",
        "conv2.weight": "conv_filter",
        "conv2.bias": "bias",
        "fc1.weight": "gemm_b",
        "fc1.bias": "bias",
        "fc2.weight": "gemm_b",
        "fc2.bias": "bias",
    },
    "depthwise_resnet": {
        "stem.weight": "conv_filter",
        "stem.bias": "bias",
        "dw.weight": "conv_filter",
        "dw_bn.scale": "batchnorm",
        "dw_bn.bias": "batchnorm",
        "dw_bn.mean": "batchnorm",
        "dw_bn.var": "batchnorm",
        "pw.weight": "conv_filter",
        "pw.bias": "bias",
        "fc.weight": "gemm_b",
        "fc.bias": "bias",
    },
    "transformer_encoder": {
        "tok_emb": "embedding",
        "pos_emb": "elementwise",
        "ln1.weight": "norm",
        "ln1.bias": "norm",
        "attn.q.weight": "matmul_const",
        "attn.q.bias": "bias",
        "attn.k.weight": "matmul_const",
        "attn.k.bias": "bias",
        "attn.v.weight": "matmul_const",
        "attn.v.bias": "bias",
        "attn.scale": "elementwise",
        "attn.out.weight": "matmul_const",
        "attn.out.bias": "bias",
        "ln2.weight": "norm",
        "ln2.bias": "norm",
        "ffn.fc1.weight": "matmul_const",
        "ffn.fc1.bias": "bias",
        "gelu.sqrt2": "elementwise",
        "gelu.one": "elementwise",
        "gelu.half": "elementwise",
        "ffn.fc2.weight": "matmul_const",
        "ffn.fc2.bias": "bias",
        "classifier.weight": "matmul_const",
        "classifier.bias": "bias",
    },
    "gru_model": {
        "rnn.W": "rnn_w",
        "rnn.R": "rnn_r",
        "rnn.B": "rnn_b",
        "head.weight": "matmul_const",
        "head.bias": "bias",
    },
    "streaming_vad_model": {
        "sr_ref": "elementwise",
        "gru.W": "rnn_w",
        "gru.R": "rnn_r",
        "head.weight": "matmul_const",
        "head.bias": "bias",
    },
    "lstm_model": {
        "rnn.W": "rnn_w",
        "rnn.R": "rnn_r",
        "rnn.B": "rnn_b",
        "head.weight": "matmul_const",
        "head.bias": "bias",
    },
    "constant_weights_conv": {
        "c1.weight": "conv_filter",
        "c1.bias": "bias",
        "c2.weight": "conv_filter",
        "fc.weight": "matmul_const",
        "fc.bias": "bias",
    },
    "if_subgraph_model": {
        "trunk.weight": "matmul_const",
        "trunk.bias": "bias",
        "half": "other",
        "head.weight": "matmul_const",
        "then.weight": "matmul_const",
        "then.bias": "bias",
        "else.weight": "matmul_const",
        "else.bias": "bias",
    },
    # int8 weights are not float: only the scales and the float biases are listed
    "quantized_qdq_model": {
        "x.scale": "quant_param",
        "fc1.weight_scale": "quant_param",
        "fc1.bias": "bias",
        "fc1.out.scale": "quant_param",
        "fc2.weight_scale": "quant_param",
        "fc2.bias": "bias",
    },
    "integer_input_model": {
        "center": "elementwise",
        "spread": "elementwise",
        "fc1.weight": "matmul_const",
        "fc1.bias": "bias",
        "fc2.weight": "matmul_const",
        "fc2.bias": "bias",
    },
    "fp16_model": {"fc1.weight": "matmul_const", "fc1.bias": "bias", "fc2.weight": "matmul_const", "fc2.bias": "bias"},
}


def test_the_role_table_covers_every_builder():
    assert set(ROLES) == set(graphs.BUILDERS)


@pytest.mark.parametrize("name", sorted(ROLES))
def test_weight_roles_on_every_zoo_graph(name):
    ws = graph.weights(graphs.BUILDERS[name]())
    assert {w.name: w.role for w in ws} == ROLES[name]
    assert len({w.name for w in ws}) == len(ws), "a tensor is one weight, however many uses"
    for w in ws:
        assert w.is_matrix == (w.role in graph.MATRIX_ROLES)
        if w.role not in ("mixed", "unused"):  # every use agrees with the weight's role
            assert {c.role for c in w.consumers} == {w.role}, w.name


@pytest.mark.parametrize("opset", graphs.OPSETS)
def test_weight_roles_at_every_opset(opset):
    roles = {w.name: w.role for w in graph.weights(graphs.opset_model(opset))}
    assert {k: v for k, v in roles.items() if v in graph.MATRIX_ROLES} == {
        "conv.weight": "conv_filter",
        "fc1.weight": "gemm_b",
        "fc2.weight": "gemm_b",
    }
    assert roles["conv.bias"] == roles["fc1.bias"] == "bias" and roles["bn.var"] == "batchnorm"
    assert ("relu6.min" in roles) == (opset >= 11)  # Clip's bounds became inputs at opset 11


def by_name(model) -> dict[str, graph.Weight]:
    return {w.name: w for w in graph.weights(model)}


def test_conv_filters_axes_and_depthwise_group():
    ws = by_name(graphs.depthwise_resnet())
    dw, pw = ws["dw.weight"], ws["pw.weight"]
    assert (dw.role, dw.group, dw.shape, dw.out_axis, dw.in_axis) == ("conv_filter", 48, (48, 1, 3, 3), 0, 1)
    assert (pw.role, pw.group, pw.out_axis, pw.in_axis) == ("conv_filter", 1, 0, 1)
    assert ws["dw_bn.scale"].out_axis == 0 and ws["dw_bn.scale"].ops == ["BatchNormalization"]


def _gemm(trans_b: int) -> onnx.ModelProto:
    w = np.ones((32, 48) if trans_b else (48, 32), np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=trans_b)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_gemm_b_axes_follow_trans_b():
    w = by_name(_gemm(1))["w"]
    assert (w.role, w.out_axis, w.in_axis) == ("gemm_b", 0, 1)  # [out, in]
    w = by_name(_gemm(0))["w"]
    assert (w.role, w.out_axis, w.in_axis) == ("gemm_b", 1, 0)  # [in, out]


def test_matmul_and_recurrent_axes():
    ws = by_name(graphs.transformer_encoder())
    assert (ws["attn.q.weight"].out_axis, ws["attn.q.weight"].in_axis) == (1, 0)
    assert ws["tok_emb"].role == "embedding" and not ws["tok_emb"].is_matrix
    for name in ("gru_model", "lstm_model"):
        ws = by_name(graphs.BUILDERS[name]())
        for key in ("rnn.W", "rnn.R"):
            assert (ws[key].out_axis, ws[key].in_axis) == (1, 2) and ws[key].is_matrix
        assert not ws["rnn.B"].is_matrix


def test_a_shared_weight_is_one_entry_with_two_consumers():
    w = by_name(graphs.mlp_matmul_shared())["shared.weight"]
    assert [(c.node.name, c.input_index) for c in w.consumers] == [("block0.matmul", 1), ("block1.matmul", 1)]
    assert w.role == "matmul_const" and not w.via_identity


def test_constants_reached_through_identity_are_weights_of_their_real_consumer():
    ws = by_name(graphs.constant_weights_conv())
    c2 = ws["c2.weight"]
    assert c2.ref.kind == "constant" and c2.via_identity and c2.role == "conv_filter"
    assert [c.node.op_type for c in c2.consumers] == ["Conv"]  # the Identity itself is not a consumer
    assert ws["c1.weight"].ref.kind == "constant" and not ws["c1.weight"].via_identity


def test_outer_scope_weights_used_in_subgraphs():
    ws = by_name(graphs.if_subgraph_model())
    head = ws["head.weight"]
    assert head.ref.graph_path == "" and head.role == "matmul_const"
    assert sorted(c.graph_path for c in head.consumers) == ["if/else_branch", "if/then_branch"]
    assert ws["then.weight"].ref.graph_path == "if/then_branch"
    assert [c.graph_path for c in ws["then.weight"].consumers] == ["if/then_branch"]
    # then.bias is added to the branch's MatMul output: a bias, found across the scope
    assert ws["then.bias"].role == "bias"


def test_integer_tensors_are_weights_only_on_request():
    model = graphs.transformer_encoder()
    assert "attn.split_shape" not in by_name(model)
    roles = {w.name: w.role for w in graph.weights(model, include_non_float=True)}
    assert roles["attn.split_shape"] == roles["attn.merge_shape"] == "shape"


# --------------------------------------------------------------------------- the bias of an Add


def _add_after(producer_nodes, bias: np.ndarray, swap=False, extra_nodes=(), inits=()):
    """x[N,16] -> producer_nodes -> 'h'; Add(h, b) (or Add(b, h)) -> y."""
    add = helper.make_node("Add", ["b", "h"] if swap else ["h", "b"], ["y"], name="add")
    g = helper.make_graph(
        list(producer_nodes) + [add] + list(extra_nodes),
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(bias, "b"), *inits],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


W16x8 = numpy_helper.from_array(np.ones((16, 8), np.float32), "w")
MATMUL = helper.make_node("MatMul", ["x", "w"], ["h"], name="mm")


@pytest.mark.parametrize("swap", [False, True])
def test_a_1d_constant_added_to_a_matmul_output_is_a_bias(swap):
    w = by_name(_add_after([MATMUL], np.zeros(8, np.float32), swap=swap, inits=[W16x8]))["b"]
    assert (w.role, w.out_axis, w.is_matrix) == ("bias", 0, False)
    assert graph.role_of(w.consumers[0].node, w.consumers[0].input_index, w.shape) == ("elementwise", None, None, 1), (
        "without the graph's context role_of cannot tell"
    )


def test_bias_after_gemm_uses_trans_b_for_the_output_width():
    gemm = helper.make_node("Gemm", ["x", "w"], ["h"], transB=1)
    w_t = numpy_helper.from_array(np.ones((8, 16), np.float32), "w")
    assert by_name(_add_after([gemm], np.zeros(8, np.float32), inits=[w_t]))["b"].role == "bias"
    assert by_name(_add_after([gemm], np.zeros(16, np.float32), inits=[w_t]))["b"].role == "elementwise"


def test_bias_after_a_dequantized_matmul_weight():
    q = numpy_helper.from_array(np.ones((16, 8), np.int8), "wq")
    s = numpy_helper.from_array(np.array(0.1, np.float32), "ws")
    dq = helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"])
    mm = helper.make_node("MatMul", ["x", "w"], ["h"])
    assert by_name(_add_after([dq, mm], np.zeros(8, np.float32), inits=[q, s]))["b"].role == "bias"


def test_bias_after_conv_needs_a_known_last_dim():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 7])
    conv = helper.make_node("Conv", ["x", "w"], ["h"], kernel_shape=[1, 1])
    add = helper.make_node("Add", ["h", "b"], ["y"])
    inits = [
        numpy_helper.from_array(np.ones((4, 2, 1, 1), np.float32), "w"),
        numpy_helper.from_array(np.zeros(7, np.float32), "b"),
    ]
    g = helper.make_graph([conv, add], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert by_name(model)["b"].role == "elementwise"  # the width of h is not known from the filter
    model.graph.value_info.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 4, 5, 7]))
    assert by_name(model)["b"].role == "bias"


@pytest.mark.parametrize("case", ["2d", "wrong_length", "scalar", "after_relu", "sub", "mixed_use"])
def test_constants_that_are_not_biases_stay_elementwise(case):
    relu = helper.make_node("Relu", ["x"], ["h"])
    if case == "2d":  # a [1, 8] tensor broadcasts the same way, but the rule is 1-D
        model = _add_after([MATMUL], np.zeros((1, 8), np.float32), inits=[W16x8])
    elif case == "wrong_length":
        model = _add_after([MATMUL], np.zeros(1, np.float32), inits=[W16x8])
    elif case == "scalar":
        model = _add_after([MATMUL], np.array(0.5, np.float32), inits=[W16x8])
    elif case == "after_relu":
        model = _add_after([relu], np.zeros(16, np.float32))
    elif case == "sub":
        model = _add_after([MATMUL], np.zeros(8, np.float32), inits=[W16x8])
        model.graph.node[-1].op_type = "Sub"
    else:  # the same tensor is also added to a non-MatMul value: a bias for one use only
        extra = [helper.make_node("Add", ["y", "b"], ["z"])]
        model = _add_after([MATMUL], np.zeros(8, np.float32), extra_nodes=extra, inits=[W16x8])
    role = by_name(model)["b"].role
    assert role == ("mixed" if case == "mixed_use" else "elementwise"), case


def test_role_of_is_public_and_the_private_name_is_gone():
    assert callable(graph.role_of) and not hasattr(graph, "_role_of")
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=4)
    assert graph.role_of(node, 1, (8, 1, 3, 3)) == ("conv_filter", 0, 1, 4)


def _lstm_through_slices(route_to_output: bool = False) -> onnx.ModelProto:
    """An exporter's LSTM: W [4H, I] is cut into two halves by Slice and put back in the other
    order by Concat, then Unsqueezed to [1, 4H, I] for the LSTM (PyTorch's gate order -> ONNX's)."""
    hidden, inputs = 4, 3
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4 * hidden, inputs)).astype(np.float32), "w")
    r = numpy_helper.from_array(rng.normal(size=(1, 4 * hidden, hidden)).astype(np.float32), "r")
    ints = {
        name: numpy_helper.from_array(np.array(v, np.int64), name)
        for name, v in {"s0": [0], "mid": [2 * hidden], "end": [4 * hidden], "ax0": [0]}.items()
    }
    nodes = [
        helper.make_node("Slice", ["w", "s0", "mid", "ax0"], ["lo"]),
        helper.make_node("Slice", ["w", "mid", "end", "ax0"], ["hi"]),
        helper.make_node("Concat", ["hi", "lo"], ["reordered"], axis=0),
        helper.make_node("Unsqueeze", ["reordered", "ax0"], ["w3"]),
        helper.make_node("LSTM", ["x", "w3", "r"], ["y"], hidden_size=hidden),
    ]
    outputs = [graphs.vi("y", [5, 1, 1, hidden])]
    if route_to_output:
        outputs.append(graphs.vi("lo", [2 * hidden, inputs]))
    return graphs.make_model(nodes, [graphs.vi("x", [5, 1, inputs])], outputs, [w, r, *ints.values()])


def test_weights_reaching_an_lstm_through_slice_and_concat_are_routed_matrix_weights():
    roles = {w.name: w.role for w in graph.weights(_lstm_through_slices())}
    assert roles["w"] == "routed" and roles["r"] == "rnn_r"
    selected, _ = prunable_weights(_lstm_through_slices(), min_params=1)
    assert {w.name for w in selected} == {"w", "r"}
    # Values that also leave the graph (or reach anything but a weight input) are not weights.
    leaking = _lstm_through_slices(route_to_output=True)
    assert {w.name: w.role for w in graph.weights(leaking)}["w"] not in graph.MATRIX_ROLES
    assert {w.name for w in prunable_weights(leaking, min_params=1)[0]} == {"r"}
