"""Safe model I/O and the weight view every pass iterates over.

* ``load_model`` / ``save_model``: defensive loading (external data confined to the
  model's folder, onnx checker), atomic saving (temp file + rename), external data
  when a model would exceed protobuf's 2 GB limit.
* ``iter_tensors``: every TensorProto in a model (initializers and Constant nodes,
  subgraphs included) in a deterministic order — what pack encodes.
* ``weights``: the float tensors with their consumers and their *role* (conv filter,
  Gemm B, MatMul constant, bias, BatchNorm parameter, recurrent W/R/B, ...) — what
  prune / share / quantize iterate over.  Shared tensors are one entry with several
  consumers.  Integer, boolean and shape tensors are never weights.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError, Message
from onnx import numpy_helper

from .errors import CompressorError, UsageError
from .node_order import sort_nodes
from .paths import TempOutput, atomic_write_bytes

PROTOBUF_LIMIT = 2**31 - 1
# Leave head-room under protobuf's hard limit: the graph itself needs bytes too.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
}

# Roles whose weights are multiplied into activations: prune and share act on these.
# "routed": a tensor whose values reach such inputs only through data-movement ops (an
# exporter's Slice + Concat reordering an LSTM's gates, say): its values are weights, but no
# one layer holds it whole, so it has no axes (per-layer passes measure it in weight space).
MATRIX_ROLES = ("conv_filter", "convtranspose_filter", "gemm_b", "matmul_const", "rnn_w", "rnn_r", "routed")
# Ops that only move their data input's values (input 0; Concat: every input).
MOVEMENT_OPS = ("Slice", "Split", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Flatten")


# --------------------------------------------------------------------------- I/O


def _check_external_location(location: str, base_dir: Path) -> Path:
    """Return the resolved path of an external-data file, refusing any escape from base_dir."""
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")):
        raise CompressorError(f"refusing external data with absolute path {location!r}")
    parts = Path(location.replace("\\", "/")).parts
    if ".." in parts:
        raise CompressorError(f"refusing external data path with '..': {location!r}")
    base = base_dir.resolve()
    target = (base / location).resolve()
    if target != base and base not in target.parents:
        raise CompressorError(f"refusing external data outside the model's folder: {location!r}")
    return target


def _tensors_with_external_data(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for ref in iter_tensors(model):
        if ref.proto.data_location == onnx.TensorProto.EXTERNAL:
            yield ref.proto


def _external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def external_data_span(tensor: onnx.TensorProto, base_dir: Path) -> tuple[Path, int, int]:
    """(file, offset, length) of an external tensor's bytes, checked: confined to base_dir and
    inside its file."""
    info = _external_info(tensor)
    path = _check_external_location(info.get("location", ""), base_dir)
    if not path.is_file():
        raise CompressorError(f"external data file not found: {info.get('location')!r}")
    try:
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise CompressorError(f"bad external data offset/length for tensor {tensor.name!r}")
    size = path.stat().st_size
    if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
        raise CompressorError(f"external data of tensor {tensor.name!r} lies outside its file")
    return path, offset, (length if length is not None else size - offset)


def read_external_data(tensor: onnx.TensorProto, base_dir: Path) -> bytes:
    """One external tensor's bytes (what its raw_data holds once loaded)."""
    path, offset, length = external_data_span(tensor, base_dir)
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise CompressorError(f"external data of tensor {tensor.name!r} lies outside its file")
    return data


def inline_data(tensor: onnx.TensorProto, data: bytes) -> None:
    """Make an external tensor hold its bytes in raw_data, as load_model does."""
    tensor.raw_data = data
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


def _load_external_data(model: onnx.ModelProto, base_dir: Path, read: bool = True) -> list[Path]:
    """Read every external tensor into the model (or only check where it lies); returns the files."""
    files: list[Path] = []
    for tensor in _tensors_with_external_data(model):
        path = external_data_span(tensor, base_dir)[0]
        if read:
            inline_data(tensor, read_external_data(tensor, base_dir))
        if path not in files:
            files.append(path)
    return files


# --------------------------------------------------------------------- sizes

_TENSOR_PATH = {  # message type -> its fields that can hold tensors (along iter_tensors' paths)
    "ModelProto": ("graph",),
    "GraphProto": ("node", "initializer"),
    "NodeProto": ("attribute",),
    "AttributeProto": ("t", "tensors", "g", "graphs"),
}
_TENSOR_ATTRIBUTES = {
    onnx.AttributeProto.TENSOR,
    onnx.AttributeProto.TENSORS,
    onnx.AttributeProto.GRAPH,
    onnx.AttributeProto.GRAPHS,
}
# raw_data of at least this many bytes (by the tensor's shape) is counted, not serialized.
_COUNTED_RAW_BYTES = 1 << 16


_SUBBYTE_TYPES = {
    getattr(onnx.TensorProto, n)
    for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
    if hasattr(onnx.TensorProto, n)
}


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _length_delimited(number: int, length: int) -> int:
    """Bytes of a length-delimited field: tag, length, payload."""
    return _varint_bytes(number << 3 | 2) + _varint_bytes(length) + length


def _expected_raw_bytes(tensor: onnx.TensorProto) -> int | None:
    """The raw_data length a tensor's type and shape call for (None: unknown type)."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None
    count = 1
    for d in tensor.dims:
        count *= int(d)
    return count * itemsize if tensor.data_type not in _SUBBYTE_TYPES else None


def _tensor_bytes(tensor: onnx.TensorProto, base_dir: Path | None, held: bool) -> int:
    external = tensor.data_location == onnx.TensorProto.EXTERNAL and not held
    expected = None if external else _expected_raw_bytes(tensor)
    if not external and (expected is None or expected < _COUNTED_RAW_BYTES or not tensor.HasField("raw_data")):
        return tensor.ByteSize()
    stub = tensor_without(tensor, ("raw_data", "external_data", "data_location"))
    if external:
        stub.data_location = onnx.TensorProto.DEFAULT  # as load_model leaves it
        info = _external_info(tensor)
        if info.get("length"):
            length = int(info["length"])
        elif base_dir is not None:
            length = external_data_span(tensor, base_dir)[2]
        else:
            length = _expected_raw_bytes(tensor) or 0
    else:
        length = expected  # raw_data's length is the one its shape calls for (the checker's rule)
    return stub.ByteSize() + _length_delimited(9, length)


def _message_bytes(message: Message, base_dir: Path | None, held: bool = False) -> int:
    """Serialized size of ``message``; external tensors count as loaded unless ``held``."""
    if isinstance(message, onnx.TensorProto):
        return _tensor_bytes(message, base_dir, held)
    if isinstance(message, onnx.NodeProto) and not any(a.type in _TENSOR_ATTRIBUTES for a in message.attribute):
        return message.ByteSize()
    path = _TENSOR_PATH.get(type(message).__name__, ())
    stub = type(message)()
    total = 0
    for descriptor, value in message.ListFields():
        if descriptor.name not in path:
            _copy_field(stub, descriptor, value)
            continue
        for item in [value] if isinstance(value, Message) else value:
            total += _length_delimited(descriptor.number, _message_bytes(item, base_dir, held))
    return total + stub.ByteSize()


def model_bytes(model: onnx.ModelProto, base_dir: str | os.PathLike | None = None) -> int:
    """The size of the model's serialization with every tensor's data inline, without
    serializing it: the skeleton's bytes plus each large tensor's payload, counted.

    External tensors count as loaded (their length from the external-data record, or
    their file under ``base_dir``); an in-memory raw_data counts the length its shape calls
    for.  Never builds the > 2 GB message protobuf cannot hold, never copies a tensor."""
    return _message_bytes(model, None if base_dir is None else Path(base_dir))


def fits_in_one_message(model: onnx.ModelProto, threshold: int | None = None) -> bool:
    """Whether the model (its tensors inline) may be serialized as one message: at most
    ``threshold`` bytes (None: EXTERNAL_DATA_THRESHOLD, read when called).  A model over it
    is written with external data and checked or shape-inferred on its skeleton."""
    return model_bytes(model) <= (EXTERNAL_DATA_THRESHOLD if threshold is None else threshold)


def without_large_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model itself when it fits in one message, else a copy whose large tensors hold no
    data (name, type and dims kept): what onnx's shape inference serializes."""
    return model if fits_in_one_message(model) else copy_without_data(model, _large_tensors(model))


def _large_tensors(model: onnx.ModelProto) -> set[int]:
    """iter_tensors positions of the tensors whose data is counted, not serialized, in model_bytes."""
    return {
        i for i, ref in enumerate(iter_tensors(model)) if (_expected_raw_bytes(ref.proto) or 0) >= _COUNTED_RAW_BYTES
    }


def large_tensor_positions(model: onnx.ModelProto) -> set[int]:
    """iter_tensors positions of the tensors a skeleton of the model leaves empty (its weights)."""
    return _large_tensors(model)


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(True for _ in _tensors_with_external_data(model))


def _inline_raw_tensors(model: onnx.ModelProto) -> set[int]:
    """iter_tensors positions of the large tensors (as _large_tensors) held inline with raw_data
    as their only value field, of the length their type and dims call for (read without copying
    the bytes out: from the serialized sizes)."""
    out = set()
    for i, ref in enumerate(iter_tensors(model)):
        t = ref.proto
        expected = _expected_raw_bytes(t)
        if (
            expected is None
            or expected < _COUNTED_RAW_BYTES
            or t.data_location == onnx.TensorProto.EXTERNAL
            or not t.HasField("raw_data")
        ):
            continue
        stub = tensor_without(t, ("raw_data",))
        if any(len(getattr(stub, f)) for f in _TYPED_FIELD_NAMES):
            continue
        if t.ByteSize() - stub.ByteSize() == _length_delimited(_RAW_DATA_NUMBER, expected):
            out.add(i)
    return out


def check_model(model: onnx.ModelProto) -> None:
    """Run onnx's checker; raise CompressorError with its message on one line.

    A model loaded with its external data left in its files is checked as held (its
    graph and the external records), so a model of any size is checked in the memory of
    its graph; so is one held in memory over the limit (its large tensors as empty ones)."""
    external = {i for i, ref in enumerate(iter_tensors(model)) if ref.proto.data_location == onnx.TensorProto.EXTERNAL}
    if not fits_in_one_message(model):  # held in memory over the limit: its large tensors as external ones
        external |= _large_tensors(model)
    # Large inline tensors held as raw_data alone: the checker reads only which value field a
    # tensor sets, never the bytes, so each is checked as a one-element stand-in (dims of 1, one
    # element of raw_data) instead of serializing every weight byte for it (twice: the
    # serialization and the checker's parse).
    inline = _inline_raw_tensors(model) - external
    if external or inline:
        # Checked in memory, the graph only (external_data_span made the file checks, confined to
        # the model's folder): for the checker, each external tensor is an empty one of its rank.
        model = copy_without_data(model, external | inline)
        for index, ref in enumerate(iter_tensors(model)):
            if index in external:
                ref.proto.dims[:] = [0] * len(ref.proto.dims)
                ref.proto.raw_data = b""
            elif index in inline:
                ref.proto.dims[:] = [1] * len(ref.proto.dims)
                ref.proto.raw_data = bytes(onnx.helper.tensor_dtype_to_np_dtype(ref.proto.data_type).itemsize)
    try:
        if _message_bytes(model, None, held=True) < PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "validation failed"
        raise CompressorError(f"invalid ONNX model (onnx checker): {first}")


def load_model(path: str | os.PathLike, check: bool = True, max_bytes: int | None = PROTOBUF_LIMIT) -> onnx.ModelProto:
    """Load a model from a path (or '-' for stdin), with external data confined to its folder
    (a model over ``max_bytes`` with its data is refused: see load_model_and_files)."""
    return load_model_and_files(path, check, max_bytes=max_bytes)[0]


def load_model_and_files(
    path: str | os.PathLike,
    check: bool = True,
    *,
    external_data: bool = True,
    max_bytes: int | None = PROTOBUF_LIMIT,
) -> tuple[onnx.ModelProto, list[Path]]:
    """load_model, and the external-data files it read (outputs must not overwrite them).

    ``external_data=False`` leaves external tensors in their files (checked, not read): a
    model of any size in the memory of its graph; read them one by one with
    ``read_external_data(tensor, model_folder(path))``.  Otherwise a model of more than
    ``max_bytes`` with its data (None: no limit) is refused before its data is read."""
    if str(path) == "-":
        data = sys.stdin.buffer.read()
        base_dir = None
        label = "<stdin>"
    else:
        p = Path(path)
        if not p.exists():
            raise UsageError(f"no such file: {path}")
        if p.is_dir():
            raise UsageError(f"is a directory, not an ONNX file: {path}")
        data = p.read_bytes()
        base_dir = p.resolve().parent
        label = str(path)
    if not data:
        raise CompressorError(f"not an ONNX model (empty file): {label}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise CompressorError(f"not an ONNX model (cannot parse protobuf): {label}") from e
    del data  # the file's bytes: a second copy of every weight beside the parsed model
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise CompressorError(f"not an ONNX model (no graph): {label}")
    files: list[Path] = []
    external = has_external_data(model)
    if external:
        if base_dir is None:
            raise UsageError("a model with external data cannot be read from stdin")
        files = _load_external_data(model, base_dir, read=False)
    sort_nodes(model.graph)  # a graph out of order (ONNX Runtime runs it) in order: nothing else changes
    if check:
        check_model(model)
    if external and external_data:
        size = model_bytes(model, base_dir)
        if max_bytes is not None and size > max_bytes:
            raise CompressorError(
                f"{label} is {size:,} bytes with its external data: this command holds a whole model in memory, "
                f"up to {max_bytes:,} bytes (protobuf's 2 GiB limit); pack, unpack and inspect stream larger models"
            )
        _load_external_data(model, base_dir)
    return model, files


def model_folder(path: str | os.PathLike) -> Path:
    """The folder a model's external-data locations are relative to."""
    return Path(path).resolve().parent


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    input_path: str | os.PathLike | None = None,
    overwrite_input: bool = False,
    external_threshold: int | None = None,
) -> Path:
    """Write a model atomically: temp file in the target folder, then rename.

    Refuses to overwrite ``input_path`` unless ``overwrite_input``.  Models larger than
    ``external_threshold`` (None: EXTERNAL_DATA_THRESHOLD, near protobuf's 2 GB limit) are
    written with their tensors in ``<name>.data`` beside them, tensor by tensor.
    """
    out = Path(path)
    if input_path is not None and str(input_path) != "-" and _same_file(out, input_path) and not overwrite_input:
        raise UsageError(f"refusing to overwrite the input model {out} (choose another -o)")
    folder = out.resolve().parent
    if not folder.is_dir():
        raise UsageError(f"output folder does not exist: {folder}")
    if not fits_in_one_message(model, external_threshold):
        in_memory = (
            (i, ref.proto.raw_data) for i, ref in enumerate(iter_tensors(model)) if ref.proto.HasField("raw_data")
        )
        write_external_model(model, out, in_memory)
        return out
    data = model.SerializeToString()
    atomic_write_bytes(out, data)
    return out


# Tensors with fewer bytes stay inside the graph file (onnx's own default).
EXTERNAL_MIN_BYTES = 1024
EXTERNAL_ALIGNMENT = 64


def write_external_model(model: onnx.ModelProto, out: Path, tensors: Iterable[tuple[int, object]]) -> None:
    """Write ``model`` as ``out`` + ``out.data``, both atomically (named only when both are complete).

    ``tensors`` yields (index in iter_tensors order, bytes-like data) in any order, one at a
    time: those tensors get this data (the others keep what they hold).  Tensors of at least
    EXTERNAL_MIN_BYTES go to the data file, 64-byte aligned.  The caller's model is not
    changed: the graph file is a copy without the moved data.  An exception raised by
    ``tensors`` (e.g. a failed check once all were seen) leaves nothing behind.
    """
    data_name = out.name + ".data"
    folder = out.resolve().parent
    data_file = TempOutput(folder / data_name)
    graph_file = None
    try:
        offset = 0
        spans: dict[int, tuple[int, int]] = {}
        inline: dict[int, bytes] = {}
        for index, raw in tensors:
            size = raw.nbytes if isinstance(raw, memoryview | np.ndarray) else len(raw)
            if size < EXTERNAL_MIN_BYTES:
                inline[index] = bytes(raw)
                continue
            pad = (-offset) % EXTERNAL_ALIGNMENT
            data_file.write(b"\0" * pad)
            offset += pad
            data_file.write(raw)
            spans[index] = (offset, size)
            offset += size
            del raw
        skeleton_model = copy_without_data(model, set(spans) | set(inline))
        for index, ref in enumerate(iter_tensors(skeleton_model)):
            t = ref.proto
            if index in inline:
                t.raw_data = inline[index]
            elif index in spans:
                t.data_location = onnx.TensorProto.EXTERNAL
                start, length = spans[index]
                for k, v in (("location", data_name), ("offset", str(start)), ("length", str(length))):
                    e = t.external_data.add()
                    e.key, e.value = k, v
        graph_file = TempOutput(out)
        graph_file.write(skeleton_model.SerializeToString())
        data_file.link()
        graph_file.link()
        os.replace(data_file.path, folder / data_name)
        os.replace(graph_file.path, out)
    except BaseException:
        data_file.discard()
        if graph_file is not None:
            graph_file.discard()
        raise


def copy_without_data(model: onnx.ModelProto, indices: set[int]) -> onnx.ModelProto:
    """A copy of the model in which the tensors at these iter_tensors positions hold no data
    (raw_data, typed fields and external records cleared; name, type and dims kept), made
    without copying their data."""
    copy = onnx.ModelProto()
    for descriptor, value in model.ListFields():
        if descriptor.name != "graph":
            _copy_field(copy, descriptor, value)
    copy.graph.CopyFrom(_copy_graph(model.graph, indices, [0]))
    return copy


_TYPED_FIELD_NAMES = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")
_RAW_DATA_NUMBER = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
_DATA_FIELD_NAMES = (
    "raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data",
    "external_data", "data_location",
)  # fmt: skip


def _copy_graph(message: onnx.GraphProto, indices: set[int], counter: list[int]) -> onnx.GraphProto:
    """Copy a graph, numbering its tensors in iter_tensors order (the graph's initializers,
    then its Constant nodes' values, then its subgraphs depth first); ``counter`` is the next number."""
    copy = onnx.GraphProto()
    for descriptor, value in message.ListFields():
        if descriptor.name not in ("initializer", "node"):
            _copy_field(copy, descriptor, value)
    for t in message.initializer:
        copy.initializer.add().CopyFrom(_tensor_copy(t, counter[0] in indices))
        counter[0] += 1
    # Constant values are numbered after the initializers; subgraphs after their graph.
    constants = []
    for node in message.node:
        new = copy.node.add()
        if not any(a.type in _TENSOR_ATTRIBUTES for a in node.attribute):
            new.CopyFrom(node)
            continue
        for descriptor, value in node.ListFields():
            if descriptor.name != "attribute":
                _copy_field(new, descriptor, value)
        for attr in node.attribute:
            a = new.attribute.add()
            if attr.type not in _TENSOR_ATTRIBUTES:
                a.CopyFrom(attr)
                continue
            for descriptor, value in attr.ListFields():
                if descriptor.name not in ("t", "g", "graphs"):
                    _copy_field(a, descriptor, value)
            if attr.HasField("t"):
                is_value = node.op_type == "Constant" and node.domain in ("", "ai.onnx") and attr.name == "value"
                constants.append((a, attr, is_value))
    for a, attr, is_value in constants:
        if is_value:
            a.t.CopyFrom(_tensor_copy(attr.t, counter[0] in indices))
            counter[0] += 1
        else:
            a.t.CopyFrom(attr.t)
    for new, node in zip(copy.node, message.node):
        for a, attr in zip(new.attribute, node.attribute):
            if attr.HasField("g"):
                a.g.CopyFrom(_copy_graph(attr.g, indices, counter))
            for g in attr.graphs:
                a.graphs.add().CopyFrom(_copy_graph(g, indices, counter))
    return copy


def _tensor_copy(tensor: onnx.TensorProto, strip: bool) -> onnx.TensorProto:
    if not strip:
        return tensor
    return tensor_without(tensor, _DATA_FIELD_NAMES)


def tensor_without(tensor: onnx.TensorProto, names: Sequence[str]) -> onnx.TensorProto:
    """A copy of the tensor without the fields `names`, read field by field: ListFields would
    copy every field's value out of the message, a large raw_data included."""
    stub = onnx.TensorProto()
    for descriptor in tensor.DESCRIPTOR.fields:
        if descriptor.name in names:
            continue
        value = getattr(tensor, descriptor.name)
        if hasattr(value, "extend") and not isinstance(value, (str, bytes)):
            if len(value):
                _copy_field(stub, descriptor, value)
        elif tensor.HasField(descriptor.name):
            _copy_field(stub, descriptor, value)
    return stub


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy (passes never mutate their input model)."""
    return _copy(model)


# ------------------------------------------------------------------ tensor walk


@dataclass
class TensorRef:
    """One TensorProto inside a model, and where it lives."""

    proto: onnx.TensorProto
    name: str
    kind: str  # "initializer" | "constant"
    graph_path: str  # "" for the main graph, e.g. "If_0/then_branch" for a subgraph
    node: onnx.NodeProto | None = None  # the Constant node, for kind == "constant"


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for i, g in enumerate(attr.graphs):
                yield f"{attr.name}[{i}]", g


def iter_graphs(graph: onnx.GraphProto, path: str = "") -> Iterator[tuple[str, onnx.GraphProto]]:
    """The graph and all its subgraphs, depth first, with a readable path."""
    yield path, graph
    for i, node in enumerate(graph.node):
        for attr_name, sub in _subgraphs(node):
            node_id = node.name or f"{node.op_type}_{i}"
            sub_path = f"{path}/{node_id}/{attr_name}" if path else f"{node_id}/{attr_name}"
            yield from iter_graphs(sub, sub_path)


def iter_tensors(model: onnx.ModelProto) -> Iterator[TensorRef]:
    """Every TensorProto of the model: initializers, then Constant 'value' tensors, graph by graph."""
    for path, graph in iter_graphs(model.graph):
        for t in graph.initializer:
            yield TensorRef(t, t.name, "initializer", path)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        yield TensorRef(attr.t, node.output[0], "constant", path, node)


# ------------------------------------------------------------------ weight view


@dataclass
class Consumer:
    node: onnx.NodeProto
    input_index: int
    graph_path: str
    role: str = "other"  # what this use makes of the tensor (role_of, with the graph's context)


@dataclass
class Weight:
    """A float tensor of the model, with everything a pass needs to know about it."""

    name: str
    ref: TensorRef
    consumers: list[Consumer] = field(default_factory=list)
    role: str = "other"
    group: int = 1  # Conv/ConvTranspose group
    out_axis: int | None = None  # output-channel axis for per-channel schemes
    in_axis: int | None = None  # reduction (input) axis of a matrix weight
    via_identity: bool = False  # reached its consumer through Identity nodes

    @property
    def proto(self) -> onnx.TensorProto:
        return self.ref.proto

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.proto.dims)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def dtype(self) -> np.dtype:
        return onnx.helper.tensor_dtype_to_np_dtype(self.proto.data_type)

    @property
    def ops(self) -> list[str]:
        return sorted({c.node.op_type for c in self.consumers})

    @property
    def is_matrix(self) -> bool:
        """Weights multiplied into activations (what prune and share act on)."""
        return self.role in MATRIX_ROLES

    def array(self) -> np.ndarray:
        return numpy_helper.to_array(self.proto)

    def set_array(self, values: np.ndarray) -> None:
        """Replace the tensor's values in place (same name, dtype and shape; stored as raw_data)."""
        set_tensor_values(self.proto, values)


def set_tensor_values(proto: onnx.TensorProto, values: np.ndarray) -> None:
    """Replace a TensorProto's data in place, keeping name, dtype and shape."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(proto.data_type)
    values = np.asarray(values)
    if tuple(values.shape) != tuple(proto.dims):
        raise ValueError(f"shape mismatch for {proto.name}: {values.shape} vs {tuple(proto.dims)}")
    if sys.byteorder == "little" and dtype in _PLAIN_DTYPES:
        # What from_array + CopyFrom give (name, dims, type and raw_data; every other field
        # cleared), written in place: no second message holding a copy of the bytes.
        name, data_type = proto.name, proto.data_type
        proto.Clear()
        proto.name, proto.data_type = name, data_type
        proto.dims.extend(values.shape)
        proto.raw_data = values.astype(dtype, copy=False).tobytes()
        return
    new = numpy_helper.from_array(values.astype(dtype, copy=False), proto.name)
    new.data_type = proto.data_type
    proto.CopyFrom(new)


# numpy dtypes whose raw_data is their bytes as they are (no packing, no strings).
_PLAIN_DTYPES = frozenset(
    np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.uint8, np.int16, np.uint16, np.int32,
                          np.uint32, np.int64, np.uint64)
)  # fmt: skip


# Ops whose output an Add can carry a bias into (MatMul + Add is how exporters spell Linear).
_BIAS_PRODUCERS = ("MatMul", "Gemm", "Conv")


def _output_last_dim(
    producer: onnx.NodeProto, producers: dict[str, onnx.NodeProto], shapes: dict[str, tuple[int | None, ...]]
) -> int | None:
    """Static size of the last axis of `producer`'s first output, when it can be told."""
    out = producer.output[0] if producer.output else ""
    if shapes.get(out) and shapes[out][-1] is not None:
        return shapes[out][-1]
    b_name = producer.input[1] if len(producer.input) > 1 else ""
    dq = producers.get(b_name)
    if b_name not in shapes and dq is not None and dq.op_type == "DequantizeLinear":
        b_name = dq.input[0]  # a QDQ model's weight: the shape of its integer initializer
    b = shapes.get(b_name)
    if producer.op_type == "MatMul" and b is not None and len(b) >= 2:
        return b[-1]
    if producer.op_type == "Gemm" and b is not None and len(b) == 2:
        trans_b = any(a.name == "transB" and a.i for a in producer.attribute)
        return b[0] if trans_b else b[1]
    return None  # Conv: the last axis is spatial, known only from value_info


def _is_add_bias(
    node: onnx.NodeProto,
    index: int,
    shape: tuple[int, ...],
    producers: dict[str, onnx.NodeProto],
    shapes: dict[str, tuple[int | None, ...]],
) -> bool:
    """A 1-D constant added to a MatMul/Gemm/Conv output along its last axis: a bias."""
    if node.op_type != "Add" or len(node.input) != 2 or len(shape) != 1 or index not in (0, 1):
        return False
    producer = producers.get(node.input[1 - index])
    if producer is None or producer.op_type not in _BIAS_PRODUCERS or producer.domain not in ("", "ai.onnx"):
        return False
    return _output_last_dim(producer, producers, shapes) == shape[0]


def role_of(
    node: onnx.NodeProto,
    index: int,
    shape: tuple[int, ...],
    producers: dict[str, onnx.NodeProto] | None = None,
    shapes: dict[str, tuple[int | None, ...]] | None = None,
) -> tuple[str, int | None, int | None, int]:
    """Role, output axis, input axis and group of a tensor used as input `index` of `node`.

    `producers` (value name -> node, the graph's and its enclosing graphs') and `shapes`
    (value name -> static shape, constants included) are the context that tells a bias
    added after a MatMul/Gemm/Conv from any other elementwise constant; without them such
    a tensor is "elementwise".
    """
    op = node.op_type
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.type != onnx.AttributeProto.GRAPH}
    rank = len(shape)
    if node.domain not in ("", "ai.onnx"):
        return "other", None, None, 1
    if op == "Conv":
        if index == 1:
            return "conv_filter", 0, 1, int(attrs.get("group", 1))
        if index == 2:
            return "bias", 0, None, 1
    elif op == "ConvTranspose":
        if index == 1:
            return "convtranspose_filter", 1, 0, int(attrs.get("group", 1))
        if index == 2:
            return "bias", 0, None, 1
    elif op == "Gemm":
        if index == 1 and rank == 2:
            trans_b = int(attrs.get("transB", 0))
            return "gemm_b", (0 if trans_b else 1), (1 if trans_b else 0), 1
        if index == 0 and rank == 2:
            trans_a = int(attrs.get("transA", 0))
            return "gemm_a", (1 if trans_a else 0), (0 if trans_a else 1), 1
        if index == 2:
            return "bias", (rank - 1 if rank else None), None, 1
    elif op == "MatMul":
        if index == 1 and rank >= 2:
            return "matmul_const", rank - 1, rank - 2, 1
        if index == 0 and rank >= 2:
            return "matmul_const_a", rank - 2, rank - 1, 1
    elif op in ("BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization"):
        if index >= 1:
            return ("batchnorm" if op == "BatchNormalization" else "norm"), (0 if rank else None), None, 1
    elif op in ("LSTM", "GRU", "RNN"):
        if index == 1:
            return "rnn_w", 1, 2, 1
        if index == 2:
            return "rnn_r", 1, 2, 1
        if index == 3:
            return "rnn_b", None, None, 1
        return "rnn_state", None, None, 1
    elif op == "Gather" and index == 0:
        return "embedding", None, None, 1
    elif op in ("QuantizeLinear", "DequantizeLinear") and index >= 1:
        return "quant_param", None, None, 1
    elif op == "PRelu" and index == 1:
        return "prelu_slope", None, None, 1
    elif op in ("Reshape", "Expand", "Tile", "Slice", "Pad", "Resize", "Upsample", "ConstantOfShape", "Range", "TopK"):
        if index >= 1:
            return "shape", None, None, 1
    elif op in ("Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min"):
        if producers is not None and _is_add_bias(node, index, shape, producers, shapes or {}):
            return "bias", 0, None, 1
        return "elementwise", None, None, 1
    return "other", None, None, 1


_ROLE_PRIORITY = MATRIX_ROLES + ("gemm_a", "matmul_const_a", "embedding")


def weights(model: onnx.ModelProto, include_non_float: bool = False) -> list[Weight]:
    """All float tensors of the model with their consumers and roles (subgraphs included).

    A name is resolved in the innermost graph that defines it, so an outer initializer
    used inside an If/Loop body is one weight with its consumers in the body.
    Identity nodes are followed so that ``Constant -> Identity -> Conv`` is a conv filter.
    """
    result: dict[int, Weight] = {}
    order: list[int] = []
    role_infos: dict[int, tuple] = {}  # id(Consumer) -> role_of(...) of that use

    def visit(
        graph: onnx.GraphProto,
        path: str,
        scope: dict[str, Weight],
        outer_producers: dict[str, onnx.NodeProto],
        outer_shapes: dict[str, tuple[int | None, ...]],
    ) -> None:
        local = dict(scope)
        # Names defined in this graph shadow outer ones.
        for inp in graph.input:
            local.pop(inp.name, None)
        for t in graph.initializer:
            local[t.name] = _new_weight(TensorRef(t, t.name, "initializer", path))
        for node in graph.node:
            for out in node.output:
                local.pop(out, None)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        local[node.output[0]] = _new_weight(TensorRef(attr.t, node.output[0], "constant", path, node))
        # Identity aliases: name -> weight.
        alias: dict[str, Weight] = {}
        for node in graph.node:
            if node.op_type == "Identity" and node.input and (node.input[0] in local or node.input[0] in alias):
                alias[node.output[0]] = alias.get(node.input[0]) or local[node.input[0]]
        # Context for role_of: who produces each value, and the static shapes known here.
        prods = {**outer_producers, **producers(graph)}
        consumers = consumers_of(graph)
        graph_outputs = {o.name for o in graph.output}
        shapes = {**outer_shapes, **_value_info_shapes(graph)}
        shapes.update({name: w.shape for name, w in local.items()})
        shapes.update({name: w.shape for name, w in alias.items()})
        for i, node in enumerate(graph.node):
            for idx, name in enumerate(node.input):
                if not name:
                    continue
                w = alias.get(name) or local.get(name)
                if w is None or node.op_type == "Identity":
                    continue
                info = role_of(node, idx, w.shape, prods, shapes)
                if info[0] == "other" and _moves_values(node, idx):
                    info = _routed_role(node, consumers, graph_outputs, prods, shapes)
                w.consumers.append(Consumer(node, idx, path, info[0]))
                role_infos[id(w.consumers[-1])] = info
                if name in alias:
                    w.via_identity = True
            for attr_name, sub in _subgraphs(node):
                node_id = node.name or f"{node.op_type}_{i}"
                sub_path = f"{path}/{node_id}/{attr_name}" if path else f"{node_id}/{attr_name}"
                visit(sub, sub_path, {**local, **alias}, prods, shapes)

    def _new_weight(ref: TensorRef) -> Weight:
        key = id(ref.proto)
        if key not in result:
            result[key] = Weight(ref.name, ref)
            order.append(key)
        return result[key]

    visit(model.graph, "", {}, {}, {})
    out = []
    for key in order:
        w = result[key]
        if w.proto.data_type not in FLOAT_TYPES and not include_non_float:
            continue
        _assign_role(w, [role_infos[id(c)] for c in w.consumers])
        out.append(w)
    return out


def _moves_values(node: onnx.NodeProto, index: int) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in MOVEMENT_OPS and (index == 0 or node.op_type == "Concat")


def _routed_role(
    node: onnx.NodeProto,
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]],
    graph_outputs: set[str],
    prods: dict[str, onnx.NodeProto],
    shapes: dict[str, tuple[int | None, ...]],
) -> tuple[str, int | None, int | None, int]:
    """("routed", ...) when every value `node` moves ends, through data-movement ops of this
    graph only, at a matrix-weight input (rnn_w, matmul_const, ...); else ("other", ...)."""
    seen: set[str] = set()
    frontier = [out for out in node.output if out]
    while frontier:
        value = frontier.pop()
        if value in seen:
            continue
        seen.add(value)
        uses = consumers.get(value, [])
        if not uses or value in graph_outputs:  # leaves the graph (or only into a subgraph)
            return "other", None, None, 1
        for user, index in uses:
            if _moves_values(user, index):
                frontier.extend(out for out in user.output if out)
                continue
            shape = shapes.get(value)
            if shape is None or any(d is None for d in shape):
                shape = (0, 0, 0) if user.op_type in ("LSTM", "GRU", "RNN") else None  # their rank is fixed
            if shape is None:
                return "other", None, None, 1
            role = role_of(user, index, tuple(int(d) for d in shape), prods, shapes)[0]
            if role not in MATRIX_ROLES:
                return "other", None, None, 1
    return "routed", None, None, 1


def _value_info_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int | None, ...]]:
    """Shapes recorded in the graph's value_info / inputs / outputs (None: a dynamic dim)."""
    result = {}
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            result[vi.name] = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim)
    return result


def _assign_role(w: Weight, roles: list[tuple]) -> None:
    """The weight's role from the roles of its uses (one role_of(...) tuple per consumer)."""
    if not roles:
        w.role = "unused"
        return
    names = {r[0] for r in roles}
    if len(names) == 1:
        role, out_axis, in_axis, group = roles[0]
        # Shared Conv filters with different groups are not one well-defined filter.
        if len({r[3] for r in roles}) > 1:
            role = "other"
        w.role, w.out_axis, w.in_axis, w.group = role, out_axis, in_axis, group
        return
    # Mixed uses (e.g. a tied embedding used by Gather and MatMul): a pass that reshapes
    # values for one use could break the other, so the tensor is not a matrix weight.
    w.role = "mixed"


def weight_by_name(model: onnx.ModelProto) -> dict[str, Weight]:
    return {w.name: w for w in weights(model)}


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def consumers_of(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    result: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name:
                result.setdefault(name, []).append((node, i))
    return result


def opset_version(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 0


# ------------------------------------------------------------------ shapes & MACs


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs (initializers listed as inputs in old opsets are excluded)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def with_input_dims(model: onnx.ModelProto, sample_shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy whose inputs' symbolic dimensions after the first (the batch axis, left as it
    is) are those of `sample_shapes` (input name -> one feed's shape); inputs missing from
    it, or of another rank, unchanged."""
    m = _copy(model)
    for vi in graph_inputs(m):
        shape = sample_shapes.get(vi.name)
        dims = vi.type.tensor_type.shape.dim
        if shape is None or len(shape) != len(dims):
            continue
        for d, n in zip(list(dims)[1:], list(shape)[1:]):
            if not d.HasField("dim_value") or d.dim_value <= 0:
                d.ClearField("dim_param")
                d.dim_value = int(n)
    return m


def dynamic_input_dims(model: onnx.ModelProto) -> bool:
    """Whether an input has a symbolic (or unknown) dimension besides its first, the batch."""
    return any(
        not d.HasField("dim_value") or d.dim_value <= 0
        for vi in graph_inputs(model)
        for d in list(vi.type.tensor_type.shape.dim)[1:]
    )


def infer_shapes_batch1(model: onnx.ModelProto, fill: int = 1) -> dict[str, tuple[int, ...]]:
    """Static shapes of every value, with the inputs' symbolic batch dimension set to 1 and
    every other symbolic input dimension to `fill`.  The large tensors are inferred on as
    empty ones of their dims (shape inference reads their dims, never their values): no copy
    and no serialization of the weights."""
    m = copy_without_data(model, _large_tensors(model))
    for vi in graph_inputs(m):
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if not d.HasField("dim_value") or d.dim_value <= 0:
                d.ClearField("dim_param")
                d.dim_value = 1 if axis == 0 else fill
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # shape inference is best effort (custom ops, etc.)
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    for t in m.graph.initializer:
        shapes[t.name] = tuple(t.dims)
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = tuple(a.t.dims)
    return shapes


def _layer_macs(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    try:
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            w = shapes[node.input[1]]
            return int(np.prod(out, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
        if node.op_type == "ConvTranspose":
            x = shapes[node.input[0]]
            w = shapes[node.input[1]]
            return int(np.prod(x, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
        if node.op_type == "Gemm":
            a = shapes[node.input[0]]
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            out = shapes[node.output[0]]
            return int(np.prod(out, dtype=np.int64)) * int(a[0] if trans_a else a[1])
        a = shapes[node.input[0]]
        out = shapes[node.output[0]]
        return int(np.prod(out, dtype=np.int64)) * int(a[-1])
    except (KeyError, IndexError):
        return None


MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def node_macs(model: onnx.ModelProto, sample_shapes: Mapping[str, Sequence[int]] | None = None) -> list[dict]:
    """Multiply-accumulates per Conv/ConvTranspose/Gemm/MatMul of the main graph at batch 1,
    with the inputs' other symbolic dimensions from `sample_shapes` (one feed's shape per
    input).  A layer whose MACs still depend on a symbolic input dimension (an image model with
    dynamic height and width, no sample shapes given) is None: its size is not known."""
    if sample_shapes:
        model = with_input_dims(model, sample_shapes)
    shapes = infer_shapes_batch1(model)
    # Inferred again with the remaining symbolic dims at two sizes far apart (strides and
    # pooling round small ones alike): a layer whose count moves depends on them and is None,
    # where one size for all would silently count a 1x1 image.  When inference fails at those
    # sizes (a fixed-size Reshape or position table), the counts at 1 stand.
    probes = [infer_shapes_batch1(model, fill=n) for n in (64, 128)] if dynamic_input_dims(model) else []
    if not all(probes):
        probes = []
    result = []
    for i, node in enumerate(model.graph.node):
        if node.op_type not in MAC_OPS:
            continue
        macs = _layer_macs(node, shapes)
        if macs is not None and probes and _layer_macs(node, probes[0]) != _layer_macs(node, probes[1]):
            macs = None
        result.append(
            {
                "node": node.name or f"{node.op_type}_{i}",
                "op": node.op_type,
                "weight": node.input[1] if len(node.input) > 1 else None,
                "macs": macs,
            }
        )
    return result


def skeleton(model: onnx.ModelProto, drop: set[str]) -> onnx.ModelProto:
    """A copy of the model without the data of the named main-graph initializers (dims and
    type kept): enough for shape inference, without copying the weights."""
    m = onnx.ModelProto()
    for descriptor, value in model.ListFields():
        if descriptor.name != "graph":
            _copy_field(m, descriptor, value)
    for descriptor, value in model.graph.ListFields():
        if descriptor.name != "initializer":
            _copy_field(m.graph, descriptor, value)
    for t in model.graph.initializer:
        if t.name in drop:
            stub = m.graph.initializer.add()
            stub.name, stub.data_type = t.name, t.data_type
            stub.dims.extend(t.dims)
        else:
            m.graph.initializer.add().CopyFrom(t)
    return m


def _copy_field(target, descriptor, value) -> None:
    # Checked on the value (FieldDescriptor's label API differs between protobuf versions).
    if isinstance(value, Message):
        getattr(target, descriptor.name).CopyFrom(value)
    elif hasattr(value, "extend") and not isinstance(value, (str, bytes)):
        getattr(target, descriptor.name).extend(value)
    else:
        setattr(target, descriptor.name, value)
