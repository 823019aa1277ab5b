"""The `product` codec (FORMAT.md §7.3): a float32 tensor stored as a scalar tensor times another."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from compressor.codec import CorruptData
from compressor.container import find_products, pack_model, product_values, unpack_bytes, unpack_container
from compressor.container import format as fmt
from compressor.container.coders import planes, product, registry


def scales_model(n=96, seed=0) -> onnx.ModelProto:
    """Tensors as a quantized Conv leaves them: weight scales, an input scale, their product."""
    rng = np.random.default_rng(seed)
    w_scale = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    x_scale = np.float32(0.0173)
    inits = [
        numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.array(x_scale), "x_scale"),
        numpy_helper.from_array(product_values(x_scale, w_scale), "b_scale"),
        numpy_helper.from_array(
            (product_values(x_scale, w_scale) * np.float32(1.0000001)).astype(np.float32), "near_miss"
        ),
        numpy_helper.from_array(rng.uniform(1, 2, n).astype(np.float32), "other"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "w_scale"], ["a"]),
        helper.make_node("Mul", ["a", "b_scale"], ["b"]),
        helper.make_node("Mul", ["b", "x_scale"], ["c"]),
        helper.make_node("Add", ["c", "near_miss"], ["d"]),
        helper.make_node("Add", ["d", "other"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [n])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_only_exact_products_are_found():
    model = scales_model()
    assert find_products(list(model.graph.initializer)) == {2: (1, 0)}  # b_scale = x_scale x w_scale


def test_a_product_section_round_trips_bit_for_bit_in_both_decoders():
    model = scales_model()
    data, stats = pack_model(model)
    container = fmt.read_container(data)
    assert container.version >= (1, 1)  # 1.2 if the other tensors went to planes sections
    codecs = [registry.name_of(e.codec) for e in container.sections[2:]]
    assert codecs.count("product") == 1
    assert next(e for e in container.sections if e.codec == product.ID).stored_length == 8
    assert unpack_container(data, verify=True)[0].SerializeToString() == model.SerializeToString()
    assert unpack_bytes(data) == model.SerializeToString()


def test_without_products_the_container_needs_no_1_1():
    model = scales_model()
    del model.graph.initializer[2]
    model.graph.initializer.append(numpy_helper.from_array(np.full(96, 3.0, np.float32), "b_scale"))
    data, _ = pack_model(model)
    container = fmt.read_container(data)
    codecs = {e.codec for e in container.sections}
    assert product.ID not in codecs
    shared = (
        len(json.loads(fmt.decode_section(container, container.sections[0]))["tensors"]) > len(container.sections) - 2
    )
    # The oldest version with every feature used: planes 1.2, shared sections 1.3.
    assert container.version == max((1, 0), (1, 2) if planes.ID in codecs else (1, 0), (1, 3) if shared else (1, 0))


def _rebuild(data: bytes, payload: bytes | None = None) -> bytes:
    c = fmt.read_container(data)
    sections = [fmt.Section(e.kind, e.codec, bytes(c.payload(e)), e.decoded_length) for e in c.sections]
    if payload is not None:
        i = next(i for i, e in enumerate(c.sections) if e.codec == product.ID)
        sections[i] = fmt.Section(fmt.KIND_TENSOR, product.ID, payload, sections[i].decoded_length)
    return fmt.write_container(sections, c.version)


@pytest.mark.parametrize(
    "scalar, vector, match",
    [
        (999, 0, "operand tensor 999"),
        (0, 0, "not FLOAT with 1 values"),  # the vector as the scalar
        (1, 1, "not FLOAT with 96 values"),  # the scalar as the vector
        (1, 2, "itself a product"),  # the product itself
        (1, 4, None),  # a valid but different operand: decodes, then fails the SHA-256
    ],
)
def test_lying_product_operands_are_refused(scalar, vector, match):
    data, _ = pack_model(scales_model())
    lied = _rebuild(data, product.PAYLOAD.pack(scalar, vector))
    if match is None:
        with pytest.raises(Exception, match="verification failed"):
            unpack_container(lied, verify=True)
    else:
        with pytest.raises(CorruptData, match=match):
            unpack_container(lied)
        with pytest.raises(CorruptData, match=match):
            unpack_bytes(lied)


def test_a_product_section_needs_version_1_1_and_eight_bytes():
    data, _ = pack_model(scales_model())
    with pytest.raises(CorruptData, match="8 bytes of payload"):
        fmt.read_container(_rebuild(data, b"\0" * 12))
    c = fmt.read_container(data)
    manifest = json.loads(fmt.decode_section(c, c.sections[0]))
    assert manifest["version"] == list(c.version) and c.version >= (1, 1)
    older = bytearray(data)
    older[10:12] = (0).to_bytes(2, "little")
    with pytest.raises(CorruptData, match="a (product|planes) section needs format 1.[12]"):
        fmt.read_container(bytes(older), verify_checksums=False)


def test_a_quantized_cnn_stores_its_bias_scales_as_products():
    import graphs

    from compressor.passes.quantize import quantize

    model = graphs.depthwise_resnet(c=64)  # 64 channels: each bias scale is a 256-byte section
    q, _ = quantize(model, calib=graphs.make_inputs(model, 16, 0))
    data, stats = pack_model(q)
    products = [t for t in stats["tensors"] if t["encoding"] == "product"]
    assert products and all(t["name"].endswith("_scale") for t in products)
    assert unpack_bytes(data) == q.SerializeToString()


def pairwise_find_products(values, min_bytes):
    """find_products as first written: every vector against every other of its size (the
    reference the bucketed search must agree with exactly, or containers would change)."""
    scalars, groups = {}, {}
    for i, item in enumerate(values):
        if item is None:
            continue
        vector, ndim = item
        if vector.size == 1:
            scalars.setdefault(vector.tobytes(), i)
        elif ndim == 1 and 4 * vector.size >= min_bytes and np.all(np.isfinite(vector)) and np.all(vector > 0):
            groups.setdefault(vector.size, []).append((i, vector))
    if not scalars:
        return {}
    scalar_values = np.frombuffer(b"".join(scalars), dtype="<f4")
    order = np.argsort(scalar_values, kind="stable")
    sorted_values, scalar_index = scalar_values[order].astype(np.float64), [list(scalars.values())[k] for k in order]
    found, operand_of = {}, set()
    for _, group in sorted(groups.items()):
        if len(group) < 2:
            continue
        firsts = np.array([v[0] for _, v in group], dtype=np.float64)
        for ti, (t_index, t) in enumerate(group):
            if t_index in operand_of:
                continue
            ratios = t[0] / firsts
            at = np.searchsorted(sorted_values, ratios)
            right, left = np.minimum(at, len(sorted_values) - 1), np.maximum(at - 1, 0)
            near = np.minimum(np.abs(sorted_values[right] - ratios), np.abs(sorted_values[left] - ratios))
            for bi in np.flatnonzero(near <= 1e-6 * ratios):
                b_index, b = group[bi]
                if bi == ti or b_index in found:
                    continue
                lo = np.searchsorted(sorted_values, ratios[bi] * (1 - 1e-6))
                hi = np.searchsorted(sorted_values, ratios[bi] * (1 + 1e-6), side="right")
                match = next(
                    (
                        k
                        for k in range(lo, hi)
                        if np.array_equal(product_values(sorted_values[k], b).view("<u4"), t.view("<u4"))
                    ),
                    None,
                )
                if match is not None:
                    found[t_index] = (scalar_index[match], b_index)
                    operand_of.add(b_index)
                    break
    return found


def many_scales(seed: int, n: int = 600) -> list:
    """Vectors of three sizes, scalars, exact products (of vectors, of products, of copies),
    near misses, identical vectors, subnormal and tiny first elements."""
    rng = np.random.default_rng(seed)
    values, vectors, scalars = [], [], []
    for _ in range(n):
        kind = rng.integers(0, 8)
        if kind == 0 or not scalars:
            s = np.array(rng.choice([1.0, 0.5, rng.uniform(1e-3, 10)]), np.float32)
            scalars.append(s.reshape(1))
            values.append((s.reshape(1), 0))
            continue
        if kind <= 3 or not vectors:
            v = rng.uniform(1e-3, 1, rng.choice([64, 65, 96])).astype(np.float32)
            if kind == 3:
                v[: rng.integers(1, 3)] = np.float32(rng.choice([1e-45, 3e-44, 1e-40, 1e-38]))
        elif kind == 4:
            v = vectors[rng.integers(len(vectors))].copy()
        else:
            v = product_values(scalars[rng.integers(len(scalars))][0], vectors[rng.integers(len(vectors))])
            if kind == 7:
                v = v.copy()
                v[rng.integers(v.size)] = np.nextafter(v[0], np.float32(2))
        vectors.append(v)
        values.append((v, 1))
    return values


@pytest.mark.parametrize("seed", range(6))
def test_finding_products_by_buckets_agrees_with_comparing_every_pair(seed):
    values = many_scales(seed)
    found = product.find_products(values, 256)
    assert found == pairwise_find_products(values, 256)
    assert len(found) > 20
