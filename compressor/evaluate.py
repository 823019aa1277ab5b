"""Everything measured runs through ONNX Runtime: sessions, batched inference,
accuracy, fidelity to a reference, latency, and capture of intermediate tensors.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from . import graph, output_kinds, session_arrays
from .data import Dataset, fixed_batch_size
from .errors import CompressorError
from .heap import give_back

DEFAULT_BATCH = 256
# One batch of captured intermediate tensors (or of a run's outputs held for a comparison) stays
# under this many bytes: memory is bounded by the model's tensors per sample, not by the data.
CAPTURE_BYTES = 256 << 20
# A whole-model run holds the model's intermediate tensors for the batch: at most this many bytes
# of them per byte of input is assumed when `run_model` picks its batch (see run_batch_size).
ACTIVATION_BYTES_PER_INPUT_BYTE = 32
# SNR sums are taken over float32 chunks of this many values into float64 accumulators.
SNR_CHUNK = 1 << 20

# ORT work done by this process: sessions built and runs (batches) executed; stages report
# the difference around their work (see ``ort_counts``).
ORT_COUNTS = {"sessions": 0, "runs": 0}


def ort_counts() -> dict[str, int]:
    """A copy of the ORT counters (sessions built, runs executed) so far."""
    return dict(ORT_COUNTS)


def make_session(
    model: onnx.ModelProto | str | bytes,
    threads: int = 0,
    optimized_path: str | None = None,
    level: str = "all",
    external_threshold: int | None = None,
    arena: bool = True,
    outputs: Sequence[str] = (),
):
    """An ORT InferenceSession on the CPU, built from a ModelProto, bytes or a path.

    A ModelProto over ``external_threshold`` bytes (None: graph.EXTERNAL_DATA_THRESHOLD;
    protobuf cannot serialize one over 2 GB) is saved with external data in a temp folder,
    tensor by tensor, and loaded from there.  `arena` False: no CPU memory arena (buffers
    freed after each run instead of kept and grown in powers of two: what captures of many
    large intermediate tensors need).  `outputs`: intermediate values of a ModelProto's main
    graph the session outputs too (``with_outputs``; added to the skeleton when its weights
    are handed over as arrays, so the model is not copied whole for it)."""
    # Imported on first use: loading ORT is slow, and commands that never run a model (pack,
    # inspect, quantize without calibration) should not pay for it.
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = arena
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[level]
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    if outputs and not isinstance(model, onnx.ModelProto):
        raise TypeError("outputs are added to a ModelProto only")
    if isinstance(model, onnx.ModelProto) and not graph.fits_in_one_message(model, external_threshold):
        model = with_outputs(model, outputs) if outputs else model
        # Prepacked weights would be a second copy of every MatMul/Gemm weight in ORT's memory.
        opts.add_session_config_entry("session.disable_prepacking", "1")
        if optimized_path:  # ORT's own serialization has protobuf's limit too
            name = Path(optimized_path).name + ".data"
            opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", name)
        with tempfile.TemporaryDirectory(prefix="compressor-session-") as folder:
            path = Path(folder) / "model.onnx"
            graph.save_model(model, path, external_threshold=external_threshold)
            return _session(ort, str(path), opts)
    if isinstance(model, onnx.ModelProto) and not optimized_path:
        parts = session_arrays.split_large_initializers(model)
        if parts is not None:
            _add_outputs(parts.skeleton, outputs)
            return _array_session(ort, parts, opts)
    if outputs:
        model = with_outputs(model, outputs)
    return _session(ort, model.SerializeToString() if isinstance(model, onnx.ModelProto) else model, opts)


def _array_session(ort, parts: session_arrays.SessionParts, opts):
    """A session of the skeleton with the large initializers given as arrays (session_arrays).

    The arrays are held by the session for as long as it lives only when ORT reads them in
    place; an ORT that copies them into its own buffers (``session_arrays.ort_copies_arrays``)
    holds the weights once, and ours are let go as soon as the session is built."""
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in parts.arrays.values()]
    opts.add_external_initializers(list(parts.arrays), values)
    session = _session(ort, parts.skeleton.SerializeToString(), opts)
    if not session_arrays.ort_copies_arrays():
        session.compressor_arrays = values
    return session


def _session(ort, src: str | bytes, opts):
    ORT_COUNTS["sessions"] += 1
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises several exception types for invalid graphs
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompressorError(f"ONNX Runtime cannot load the model: {msg}")


def batch_size_for(model: onnx.ModelProto, wanted: int = DEFAULT_BATCH) -> int:
    return fixed_batch_size(model) or wanted


def run_batch_size(model: onnx.ModelProto, data: Dataset, wanted: int = DEFAULT_BATCH) -> int:
    """The batch of a whole-model run: the model's fixed batch, else `wanted`, fewer when the
    intermediate tensors of a batch would exceed CAPTURE_BYTES: per sample the larger of
    ACTIVATION_BYTES_PER_INPUT_BYTE per input byte and the largest node's tensors
    (``node_activation_bytes``)."""
    fixed = fixed_batch_size(model)
    if fixed or data.per_sample:
        return fixed or wanted
    per_sample = sum(int(v[:1].nbytes) for v in data.inputs.values())
    shapes = {k: v[:1].shape for k, v in data.inputs.items()}
    per_sample = max(ACTIVATION_BYTES_PER_INPUT_BYTE * per_sample, node_activation_bytes(model, shapes))
    return min(wanted, bounded_batch_size(per_sample, data.size))


def node_activation_bytes(model: onnx.ModelProto, sample_shapes: dict[str, tuple[int, ...]] | None = None) -> int:
    """The bytes one sample's inputs and outputs of the main graph's largest node take (what
    must be live at once while it runs), from shapes inferred at batch 1 with the inputs'
    dynamic dims as in `sample_shapes` (one sample's shape per input); 0 when unknown.  A long
    input through a wide conv (a spectrogram model) makes this far more than its input."""
    key = (hash(tuple(o for n in model.graph.node for o in n.output)), tuple(sorted((sample_shapes or {}).items())))
    if key not in _ACTIVATION_BYTES:
        _ACTIVATION_BYTES.clear()  # one model (and its candidates' structure) at a time
        _ACTIVATION_BYTES[key] = _largest_node_bytes(model, sample_shapes or {})
    return _ACTIVATION_BYTES[key]


_ACTIVATION_BYTES: dict[tuple, int] = {}


def value_shapes(model: onnx.ModelProto, sample_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Static shapes of the main graph's values for one sample: shapes inferred at batch 1
    with the inputs' other dynamic dims as in `sample_shapes`; {} when inference fails."""
    floats = {
        t.name for t in model.graph.initializer if t.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    }
    m = graph.with_input_dims(graph.skeleton(model, floats), sample_shapes)
    try:
        return graph.infer_shapes_batch1(m)
    except Exception:  # shape inference is best effort
        return {}


def _largest_node_bytes(model: onnx.ModelProto, sample_shapes: dict[str, tuple[int, ...]]) -> int:
    shapes = value_shapes(model, sample_shapes)
    inits = {t.name for t in model.graph.initializer}
    largest = 0
    for node in model.graph.node:
        names = dict.fromkeys(n for n in (*node.input, *node.output) if n and n not in inits)
        elements = sum(int(np.prod(shapes[n], dtype=np.int64)) for n in names if n in shapes)
        largest = max(largest, elements * 4)  # float32 for the estimate
    return largest


def bounded_batch_size(bytes_per_sample: int, samples: int, budget: int | None = None) -> int:
    """Samples per batch so that one batch of tensors taking `bytes_per_sample` each sample
    stays under `budget` bytes (default CAPTURE_BYTES; at least 1, at most `samples`)."""
    budget = CAPTURE_BYTES if budget is None else budget
    return int(max(1, min(max(samples, 1), budget // max(int(bytes_per_sample), 1))))


def run_batches(
    session,
    data: Dataset,
    batch_size: int,
    output_names: Sequence[str] | None = None,
    extra_feed: dict[str, np.ndarray] | None = None,
) -> Iterator[list[np.ndarray]]:
    """Run the session batch by batch; yields the list of outputs for each batch.
    `extra_feed`: more inputs fed with every batch (weights fed as inputs, see measure.py).
    Recurrent data (``Dataset.recurrent``) runs step by step, see ``run_sequence``."""
    if data.recurrent:
        yield from run_sequence(session, data, output_names, extra_feed)
        return
    for feed in data.batches(batch_size):
        if extra_feed:
            feed.update(extra_feed)
        yield run_once(session, feed, output_names)


def run_sequence(
    session,
    data: Dataset,
    output_names: Sequence[str] | None = None,
    extra_feed: dict[str, np.ndarray] | None = None,
) -> Iterator[list[np.ndarray]]:
    """Run the steps of recurrent data in order, each fed the state the model itself gave at
    the step before (its outputs `data.recurrent` names), so that what a candidate loses
    through its state accumulates as when it is deployed.  The stored state is fed at the
    first step and wherever it is all zeros (a sequence starts there)."""
    wanted = list(output_names) if output_names else [o.name for o in session.get_outputs()]
    fetch = list(dict.fromkeys([*wanted, *(out for out, _ in data.recurrent)]))
    carried: dict[str, np.ndarray] = {}
    for feed in data.batches(1):
        if extra_feed:
            feed.update(extra_feed)
        for name, state in carried.items():
            if np.any(feed[name]):
                if state.shape != feed[name].shape:
                    raise CompressorError(
                        f"recurrent state {name!r}: the model gives shape {state.shape}, the data {feed[name].shape}"
                    )
                feed[name] = state
        outs = dict(zip(fetch, run_once(session, feed, fetch)))
        carried = {inp: np.asarray(outs[out]) for out, inp in data.recurrent}
        yield [outs[name] for name in wanted]


def run_once(session, feed: dict[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
    """One counted ORT run; its failure is a CompressorError."""
    ORT_COUNTS["runs"] += 1
    try:
        return session.run(list(output_names) if output_names else None, feed)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompressorError(f"ONNX Runtime failed to run the model: {msg}")


def run_model(
    model: onnx.ModelProto | object,
    data: Dataset,
    batch_size: int | None = None,
    extra_feed: dict[str, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """All outputs of the model (or session) over the whole dataset, concatenated along the batch
    axis; `extra_feed` is fed with every batch."""
    made = not hasattr(model, "run")
    session = make_session(model) if made else model
    if batch_size is None:
        batch_size = run_batch_size(model, data) if isinstance(model, onnx.ModelProto) else DEFAULT_BATCH
    chunks: list[list[np.ndarray]] = []
    for outs in run_batches(session, data, batch_size, extra_feed=extra_feed):
        chunks.append(outs)
    if made:
        del session  # its weights' arrays and ORT's packed copies: given back before the next is built
        give_back()
    if not chunks:
        return []
    # Batches are joined along axis 0; scalar outputs (one per run) are stacked.
    return [
        np.concatenate([c[i] for c in chunks], axis=0) if chunks[0][i].ndim else np.stack([c[i] for c in chunks])
        for i in range(len(chunks[0]))
    ]


def top1(output: np.ndarray) -> np.ndarray:
    """Predicted class per sample: argmax over the last axis (or the values if already labels)."""
    if output.ndim == 1 and output.dtype.kind in "iu":
        return output.astype(np.int64)
    flat = output.reshape(output.shape[0], -1) if output.ndim > 2 else output
    if flat.ndim == 1:
        return (flat > 0).astype(np.int64)
    return np.argmax(flat, axis=-1)


def accuracy(output: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    pred = top1(output)
    if pred.shape[0] != labels.shape[0]:
        raise CompressorError(f"model gives {pred.shape[0]} predictions for {labels.shape[0]} labels")
    return float(np.mean(pred == labels) * 100.0)


def snr_powers(reference: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(signal power, noise power) of `actual` against `reference`: sums of squares taken over
    chunks in float64, without a float64 copy of the whole arrays."""
    ref, act = np.asarray(reference).reshape(-1), np.asarray(actual).reshape(-1)
    signal = noise = 0.0
    for start in range(0, ref.size, SNR_CHUNK):
        r = ref[start : start + SNR_CHUNK].astype(np.float64)
        d = r - act[start : start + SNR_CHUNK]
        signal += float(np.dot(r, r))
        noise += float(np.dot(d, d))
    return signal, noise


def snr_from_powers(signal_power: float, noise_power: float) -> float:
    """10 log10(signal / noise) in dB: inf without noise, -inf without signal."""
    if noise_power == 0.0:
        return float("inf")
    if signal_power == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(signal_power / noise_power))


def snr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    """Signal-to-noise ratio of `actual` against `reference`, in dB (inf when identical)."""
    return snr_from_powers(*snr_powers(reference, actual))


def reported(value) -> float | None:
    """A measured number as stats report it: 2 decimals, None when absent or not finite (the
    SNR of an exact copy is inf)."""
    return None if value is None or not np.isfinite(value) else round(float(value), 2)


def score_layout(output: np.ndarray) -> str | None:
    """How an output holds class scores, if it does: ``"classes"`` ([N, C] probabilities, or
    raw scores over at least ``output_kinds.MIN_RAW_CLASSES`` classes), ``"positions"``
    ([N, ..., C] (log-)probabilities over the last axis: OCR and speech decoders), None
    otherwise (regressors, maps, embeddings: see ``output_kinds`` for the rules and what
    they are judged by).  Only for these is top-1 agreement meaningful."""
    kind = output_kinds.output_kind(output)
    return kind if kind in output_kinds.TOP1_KINDS else None


def looks_like_class_scores(output: np.ndarray) -> bool:
    return score_layout(output) is not None


def top1_agreement(reference: np.ndarray, output: np.ndarray) -> float | None:
    """Percent of samples (or positions) whose top-1 class is unchanged; None if not class scores."""
    if score_layout(reference) is None:
        return None
    return output_kinds.top1_agreement(reference, output)


def fidelity(reference_outputs: list[np.ndarray], outputs: list[np.ndarray]) -> dict:
    """Agreement of the first output's top-1, max abs error, and the worst SNR over all float
    outputs, against the raw power (snr_db) and centred on the samples' mean (centred_snr_db,
    see output_kinds)."""
    ref0, out0 = reference_outputs[0], outputs[0]
    result: dict = {}
    result["top1_agreement"] = top1_agreement(ref0, out0) if ref0.shape == out0.shape else None
    errs, snrs, centred = [], [], []
    for r, o in zip(reference_outputs, outputs):
        if r.shape != o.shape:
            raise CompressorError(f"output shapes differ from the reference: {o.shape} vs {r.shape}")
        if r.dtype.kind == "f":
            errs.append(float(np.max(np.abs(r.astype(np.float64) - o.astype(np.float64)))) if r.size else 0.0)
            ref = output_kinds.reference_of(r, "values")
            snrs.append(output_kinds.raw_snr_db(r, o, ref))
            centred.append(output_kinds.centred_snr_db(r, o, ref))
        else:
            errs.append(float(np.max(np.abs(r.astype(np.int64) - o.astype(np.int64)))) if r.size else 0.0)
    result["max_abs_error"] = max(errs) if errs else 0.0
    result["snr_db"] = min(snrs) if snrs else None
    result["centred_snr_db"] = min(centred) if centred else None
    return result


# The largest batch `eval --latency-batch` builds (the samples are repeated up to it in memory).
MAX_LATENCY_BATCH = 4096


def latency_ms(session, data: Dataset, batch_size: int, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of one inference at the given batch size, in milliseconds."""
    if data.per_sample:  # one run is one sample's feed, whatever its batch
        feed = next(data.batches(1))
    else:
        idx = np.arange(batch_size) % data.size
        feed = {**data.constants, **{k: v[idx] for k, v in data.inputs.items()}}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


# Batches of the before/after latency a run reports when a stage changed the model's shapes.
SPEEDUP_BATCHES = (1, 64)


def speedup(before: onnx.ModelProto, after: onnx.ModelProto, data: Dataset, threads: int = 1) -> dict:
    """Median ORT latency (ms) of two models at SPEEDUP_BATCHES, same thread count, their runs
    interleaved so that load on the machine hits both alike; the speedup is before / after."""
    sessions = [make_session(before, threads=threads), make_session(after, threads=threads)]
    result = {"threads": threads}
    for batch in SPEEDUP_BATCHES if not data.per_sample else (1,):
        rounds = [[latency_ms(s, data, batch, repeats=5, warmup=1) for s in sessions] for _ in range(3)]
        ms_before = statistics.median(r[0] for r in rounds)
        ms_after = statistics.median(r[1] for r in rounds)
        result[f"batch{batch}"] = {
            "before_ms": round(ms_before, 4),
            "after_ms": round(ms_after, 4),
            "speedup": round(ms_before / ms_after, 3) if ms_after > 0 else None,
        }
    return result


def evaluate(
    model: onnx.ModelProto,
    data: Dataset,
    reference_outputs: list[np.ndarray] | None = None,
    batch_size: int | None = None,
) -> dict:
    """Accuracy (with labels) and fidelity (with reference outputs) of a model on a dataset."""
    outputs = run_model(model, data, batch_size)
    result: dict = {"samples": data.size}
    result["accuracy"] = accuracy(outputs[0], data.labels) if data.labels is not None else None
    if reference_outputs is not None:
        result.update(fidelity(reference_outputs, outputs))
    return result


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of the model that also outputs the given intermediate values (main graph)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _add_outputs(m, names)
    return m


def _add_outputs(m: onnx.ModelProto, names: Sequence[str]) -> None:
    existing = {o.name for o in m.graph.output}
    for name in names:
        if name not in existing:
            vi = m.graph.output.add()
            vi.name = name  # type left unset: ORT accepts untyped extra outputs
            existing.add(name)


def capture(
    model: onnx.ModelProto, names: Sequence[str], data: Dataset, batch_size: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Yield, batch by batch, the values of intermediate tensors `names` (never all in memory).
    Batches as ``capture_with_feeds`` makes them unless `batch_size` is given.  When one
    sample's values of all `names` would pass CAPTURE_BYTES, they are captured in groups
    (``capture_groups``), one pass over the data each: a batch then holds its group's names."""
    for group in capture_groups(model, names, data):
        for _, values in capture_with_feeds(model, group, data, batch_size):
            yield values


def capture_groups(model: onnx.ModelProto, names: Sequence[str], data: Dataset) -> list[list[str]]:
    """`names` cut, in order, into groups whose values for one sample take at most
    CAPTURE_BYTES // 2 together (ORT holds a run's outputs besides its working tensors), from
    the shapes inferred with the data's dims; one group when they fit or the shapes are unknown."""
    names = list(dict.fromkeys(names))
    shapes = value_shapes(model, data.sample_shapes()) if names else {}
    sizes = [4 * int(np.prod(shapes[n], dtype=np.int64)) if n in shapes else 0 for n in names]
    if sum(sizes) <= CAPTURE_BYTES // 2:
        return [names] if names else []
    groups: list[list[str]] = [[]]
    held = 0
    for name, size in zip(names, sizes):
        if groups[-1] and held + size > CAPTURE_BYTES // 2:
            groups.append([])
            held = 0
        groups[-1].append(name)
        held += size
    return groups


def capture_with_feeds(
    model: onnx.ModelProto,
    names: Sequence[str],
    data: Dataset,
    batch_size: int | None = None,
    budget: int | None = None,
    extra: Sequence[str] = (),
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Yield (feed, values of `names` and `extra`) batch by batch, one pass over the data.

    Without `batch_size` (and unless the model fixes its batch), the first batch is one
    sample: the bytes its captures of `names` take set the size of the following batches, so
    that one batch of captures stays under `budget` bytes (see ``bounded_batch_size``).
    `extra` (small values, the model's outputs say) are captured too but leave the batches as
    `names` alone make them.
    """
    names = list(dict.fromkeys(names))
    wanted = list(dict.fromkeys([*names, *extra]))
    session = make_session(model, arena=False, outputs=wanted)
    fixed = fixed_batch_size(model)
    if batch_size is None and not fixed and not data.per_sample and data.size > 1:
        first = data.take(1)
        feed = next(first.batches(1))
        values = dict(zip(wanted, run_once(session, feed, wanted)))
        yield feed, values
        data = data.select(slice(1, None))
        batch_size = bounded_batch_size(sum(int(np.asarray(values[n]).nbytes) for n in names), data.size, budget)
    for feed in data.batches(batch_size or fixed or DEFAULT_BATCH):
        yield feed, dict(zip(wanted, run_once(session, feed, wanted)))


def evaluate_with_latency(
    model: onnx.ModelProto,
    data: Dataset,
    reference: onnx.ModelProto | None = None,
    batch_size: int = DEFAULT_BATCH,
    latency_batch: int | None = 64,
) -> dict:
    """What `compressor eval` prints: accuracy, fidelity to `reference`, median latency."""
    session = make_session(model)
    outputs = run_model(session, data, batch_size)
    result: dict = {"samples": data.size}
    result["accuracy"] = accuracy(outputs[0], data.labels) if data.labels is not None else None
    if reference is not None:
        ref_outputs = run_model(make_session(reference), data, batch_size_for(reference))
        if data.labels is not None:
            result["reference_accuracy"] = accuracy(ref_outputs[0], data.labels)
        result.update(fidelity(ref_outputs, outputs))
    if latency_batch:
        fixed = fixed_batch_size(model)
        result["latency_ms_batch1"] = latency_ms(session, data, fixed or 1)
        if not fixed:
            result[f"latency_ms_batch{latency_batch}"] = latency_ms(session, data, latency_batch, repeats=10)
    return result
