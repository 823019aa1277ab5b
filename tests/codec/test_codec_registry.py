"""The coder registry: adding a coder is one module, and every registered coder round-trips."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from compressor.codec import CorruptData, estimate_best
from compressor.container import (
    describe_container,
    encode_tensor_data,
    format_container_table,
    format_pack_table,
    pack_model,
    unpack_bytes,
    unpack_container,
)
from compressor.container import format as fmt
from compressor.container.coders import generic, registry
from compressor.container.coders.registry import GENERIC_MARGIN, Candidate, EncodeRequest, generic_margin

# ------------------------------------------------------------------ a test-only coder, all in this module

FILL_ID = 250  # not a FORMAT.md codec: registered only while the test runs


def _fill_propose(request: registry.EncodeRequest, best: registry.Candidate | None) -> registry.Candidate | None:
    """Data made of one repeated byte is stored as that byte."""
    data = request.data
    if not data or data.count(data[:1]) != len(data):
        return None
    request.report("fill", 1, [])
    return registry.Candidate(FILL_ID, 1, lambda: data[:1], params={"byte": data[0]})


def _fill_decode(payload, decoded_length: int, width: int, what: str, context=None) -> bytes:
    if len(payload) != 1:
        raise CorruptData(f"{what}: a fill payload is one byte, not {len(payload)}")
    return bytes(payload) * decoded_length


FILL = registry.Coder(
    FILL_ID,
    "fill",
    _fill_decode,
    min_version=(1, 3),
    propose=_fill_propose,
    order=50,
    summary=lambda params: f"fill {params['byte']:#04x}",
    details=lambda payload: {"byte": bytes(payload)[0]} if len(payload) == 1 else {},
    details_text=lambda details: f"byte={details['byte']:#04x}" if "byte" in details else "",
)


@pytest.fixture
def fill_coder():
    registry.register(FILL)
    yield FILL
    registry.unregister(FILL_ID)


def _model_with_constant_tensor() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    sevens = numpy_helper.from_array(np.full((80, 64), 7, dtype=np.uint8), "sevens")
    noise = numpy_helper.from_array(rng.integers(0, 255, (80, 64), dtype=np.uint8), "noise")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "sevens"], ["y"]), helper.make_node("Add", ["y", "noise"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.UINT8, [80, 64])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.UINT8, [80, 64])],
        initializer=[sevens, noise],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_coder_from_one_module_packs_unpacks_and_describes(fill_coder, tmp_path):
    model = _model_with_constant_tensor()
    original = model.SerializeToString()
    data, stats = pack_model(model)
    container = fmt.read_container(data)
    assert [e.codec for e in container.sections[2:]].count(FILL_ID) == 1
    assert container.version == (1, 3)  # the coder's minimum version
    sevens = next(t for t in stats["tensors"] if t["name"] == "sevens")
    assert sevens["encoding"] == "fill" and sevens["detail"] == "fill 0x07" and sevens["bytes_after"] == 1
    assert "fill 0x07" in format_pack_table(stats)

    back, info = unpack_container(data, verify=True)
    assert info["verified"] and back.SerializeToString() == original
    assert unpack_bytes(data) == original

    path = tmp_path / "m.cmpz"
    path.write_bytes(data)
    desc = describe_container(path)
    row = next(t for t in desc["tensors"] if t["name"] == "sevens")
    assert row["encoding"] == "fill" and row["details"] == {"byte": 7}
    assert "byte=0x07" in format_container_table(desc)


def test_a_container_using_an_unregistered_coder_is_refused(fill_coder):
    data, _ = pack_model(_model_with_constant_tensor())
    registry.unregister(FILL_ID)
    try:
        with pytest.raises(CorruptData, match=f"codec {FILL_ID}"):
            fmt.read_container(data)
    finally:
        registry.register(FILL)


def test_a_coder_id_or_name_is_registered_once(fill_coder):
    with pytest.raises(ValueError, match="already registered"):
        registry.register(FILL)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.Coder(251, "fill", _fill_decode))
    with pytest.raises(ValueError, match="codec byte"):
        registry.register(registry.Coder(256, "wide", _fill_decode))


def test_the_format_codecs_are_registered():
    assert registry.names() == {
        0: "stored",
        1: "zstd",
        2: "xz",
        16: "dict",
        17: "sparse",
        18: "product",
        19: "planes",
        20: "dict-rans",
        21: "rows-lpc",
        22: "dft-rows",
        23: "dict-bins",
    }
    assert {c: registry.min_version(c) for c in registry.names()} == {
        0: (1, 0),
        1: (1, 0),
        2: (1, 0),
        16: (1, 0),
        17: (1, 0),
        18: (1, 1),
        19: (1, 2),
        20: (1, 4),
        21: (1, 5),
        22: (1, 6),
        23: (1, 7),
    }
    assert [c.name for c in registry.proposers()] == [
        "dict",
        "sparse",
        "stored",
        "planes",
        "dict-rans",
        "rows-lpc",
        "dict-bins",
        "dft-rows",
    ]
    generic = {name for cid, name in registry.names().items() if registry.get(cid).generic}
    assert generic == {"stored", "zstd", "xz"}


@settings(max_examples=80, deadline=None)
@given(
    width=st.sampled_from([1, 2, 4, 8]),
    count=st.integers(1, 400),
    distinct=st.integers(1, 300),
    zeros=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_chosen_encoding_decodes_through_the_registry(width, count, distinct, zeros, seed):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(f"<u{width}")
    palette = rng.integers(0, np.iinfo(dtype).max, distinct, dtype=dtype, endpoint=True)
    elements = palette[rng.integers(0, distinct, count)]
    elements[rng.random(count) < zeros] = 0
    data = elements.tobytes()
    encoded = encode_tensor_data(data, width)
    decoded = registry.get(encoded.codec).decode(memoryview(encoded.payload), len(data), width, "t", None)
    assert (decoded if isinstance(decoded, bytes) else decoded.tobytes()) == data
    sizes = [c["bytes"] for c in encoded.candidates.values() if not c.get("estimated")]
    assert len(encoded.payload) == min(sizes)


def _imports(path) -> set[str]:
    """Absolute names of the modules a compressor source file imports."""
    package = ".".join(path.relative_to(ROOT.parent).parent.parts)  # what "from ." means in this file
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            names.add(module)
    return names


ROOT = Path(__file__).resolve().parents[2] / "compressor"


@pytest.mark.parametrize(
    "path",
    [
        ROOT / "container" / "format.py",
        *sorted((ROOT / "container" / "coders").glob("*.py")),
        *sorted((ROOT / "codec").glob("*.py")),
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_format_and_the_codecs_import_no_model_code(path):
    allowed = ("compressor.errors", "compressor.codec", "compressor.container.coders", "compressor.container.format")
    for name in _imports(path):
        assert not name.startswith(("onnx", "google")), f"{path.name} imports {name}"
        if name.startswith("compressor"):
            assert name.startswith(allowed), f"{path.name} imports {name}"


def test_a_large_field_builds_a_general_purpose_codec_only_when_its_estimate_wins():
    # 17 MiB: zstd -19 of all of it would take long; its sampled estimate within the small-field
    # margin above the best coded layout no longer builds it, one below still does.
    rng = np.random.default_rng(0)
    data = rng.integers(0, 16, size=17 << 20, dtype=np.uint8).tobytes()
    _codec, estimate = estimate_best(data)
    assert generic_margin(len(data)) == 1.0 and generic_margin(1 << 20) == GENERIC_MARGIN
    above = Candidate(0, int(estimate / 1.05), lambda: b"")
    assert generic.propose(EncodeRequest(data, 1), above) is None
    small = data[: 1 << 20]
    _codec, small_estimate = estimate_best(small)
    assert generic.propose(EncodeRequest(small, 1), Candidate(0, int(small_estimate / 1.05), lambda: b"")) is not None
