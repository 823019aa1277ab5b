"""What a model's output is, and how far a candidate's output is from the original's.

The judge (measure.py) asks each output of the original model its kind, once, and measures
every candidate's output against it with that kind's measure (pure numpy, streamed over the
samples in float32 chunks with float64 sums: no float64 copy of a whole output):

=============  ======================================================  ===============================================
kind           recognised by (on the original's output)                 judged by (fidelity mode, no labels)
=============  ======================================================  ===============================================
``classes``    float [N, C] (trailing 1s allowed) whose rows are        top-1 agreement (points) and the mean KL
               probabilities or log-probabilities (any C >= 2), or      divergence of the class probabilities (softmax
               raw scores with C >= MIN_RAW_CLASSES                     of raw scores) at most ``gate.max_kl``
``positions``  float [N, ..., C], rank >= 3, rows (log-)probabilities   top-1 agreement per position, counted where
               over the last axis: CTC and sequence decoders; or raw    the original is confident (its top-1 probability
               scores over C >= MIN_RAW_POSITION_CLASSES classes whose  ahead of the runner-up's by POSITION_MARGIN:
               softmax rows are peaked (their median top-1 at least     a near-tie, a blank/character boundary of CTC,
               PEAKED_TOP1) on more than one class (CTC logits),        is what a decoder's merging absorbs); and the
               when no other kind fits                                  mean KL per position, in points (one point per
                                                                        POSITION_KL_PER_POINT nats: a continuous
                                                                        measure the few sequences of a verdict cannot
                                                                        pass on counts alone), at most ``gate.max_kl``
``map``        float [N, 1, H, W] or [N, H, W], H and W >=              region F1: the connected regions above
               MIN_MAP_SIDE, every value in [0, 1]: a sigmoid map       MAP_THRESHOLD matched (IoU >= REGION_IOU) to
                                                                        the original's own regions as pseudo-labels
                                                                        (points = 100 x (1 - F1)); moved edges are free
``detections`` float [N, A, K], A >= MIN_ANCHORS rows (anchors), 5 <=  the anchors' decisions (score = objectness x
               K < A columns: 4 box values, then scores in [0, 1]       best class above DECISION_THRESHOLD), a change
               (objectness, classes; YOLO-style heads), when no         counted where the original's score is
               other kind fits                                          DETECTION_MARGIN from it (points = 100 x changes
                                                                        / the original's detections: near-threshold
                                                                        anchors are duplicates NMS drops), and the
                                                                        boxes' SNR at least ``gate.min_snr_db``,
                                                                        weighted by the original's score of each
                                                                        anchor (a background anchor's box is noise the
                                                                        decoding drops)
``embedding``  float [N, ..., D] rows of unit L2 norm                   the correlation of the rows' pairwise cosine
                                                                        similarities (``embedding_similarity``: points =
                                                                        100 x (1 - Pearson's r)), and centred SNR at
                                                                        least ``embedding_similarity.MIN_SNR_DB`` (a sanity
                                                                        floor, weaker than ``gate.min_snr_db``)
``probability`` float [N] or [N, 1], every value in [0, 1]: a sigmoid  the decision risk (``decision_risk``: each
               (voice activity, binary classifier)                      decision > DECISION_THRESHOLD counts 1 when it
                                                                        flipped, else by how close it came in logits;
                                                                        points = an upper confidence bound of the rate
                                                                        over the rows, or a recurrent model's
                                                                        sequences), never below 100 - agreement %, and
                                                                        centred SNR at least ``gate.min_snr_db``
``regressor``  float [N], [N, 1], or [N, C] raw scores with             centred SNR at least ``gate.min_snr_db``
               C < MIN_RAW_CLASSES (few columns and no softmax
               structure: quality scores, coordinates, ...)
``values``     any other float output                                   centred SNR at least ``gate.min_snr_db``
``exact``      integer and bool outputs (indices, shapes)               not measured
=============  ======================================================  ===============================================

Centred SNR: the noise relative to the output's variation across samples, per output:
signal = sum over samples and positions of (ref - mean over samples of ref)^2, noise =
sum (out - ref)^2.  Raw SNR (signal = sum ref^2) lets a regressor whose scores sit near a large
mean lose all its ranking while "20 dB"; centred SNR counts the noise against what tells the
samples apart.  With a single sample (no variation to measure) it falls back to the raw SNR.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from . import decision_risk as risk
from . import embedding_similarity

# Raw (not probability) scores over fewer columns than this are a regressor's: a 3-output
# quality model is no 3-class classifier, and top-1 agreement over its columns means nothing.
MIN_RAW_CLASSES = 10
# A probability map: spatial sides at least this long, thresholded here (the usual text and
# segmentation threshold: the original's regions above it are the pseudo-labels).
MIN_MAP_SIDE = 16
MAP_THRESHOLD = 0.3
# Regions of a map: smaller ones are specks a detector drops; a candidate region finds a
# reference one at this intersection over union: stricter than the usual 0.5 of a detection
# match, because the reference is the original's own region, not the truth, and a region that
# drifts from it by IoU 0.5 can lose its match with the truth (benchmarks/README.md, ppocr_det).
MIN_REGION_PIXELS = 9
REGION_IOU = 0.8
# Raw per-position scores: a vocabulary-sized last axis (wider than the hidden states of common
# encoders, whose rows are no class scores) whose softmax rows are peaked, on more than one class.
MIN_RAW_POSITION_CLASSES = 1000
PEAKED_TOP1 = 0.5
# A position's top-1 change counts where the original's top-1 probability leads the runner-up's
# by at least this: flips at near-ties (CTC's blank/character boundaries) leave the decoded
# sequence as it was, and counting them stopped compression the task tolerated (benchmarks/README.md).
POSITION_MARGIN = 0.5
# The mean KL per position (nats) that costs one point of the budget: a sequence is wrong when
# any of its positions is, and most positions (CTC's blanks) hold still, so a small mean KL
# already changes whole sequences (the exchange rate is measured in benchmarks/README.md).
POSITION_KL_PER_POINT = 0.04
# A probability column is a decision at this threshold (a thresholded sigmoid: speech / not).
DECISION_THRESHOLD = 0.5
# Values handled per chunk (bounded memory whatever the output's size).
CHUNK_VALUES = 1 << 21
# Rows sampled to recognise (log-)probabilities and unit-norm rows.
SAMPLED_ROWS = 256

# A detection head: at least this many anchor rows, 4 box columns, then score columns.
MIN_ANCHORS = 64
BOX_COLUMNS = 4
# An anchor's decision change counts where the original's score is this far from
# DECISION_THRESHOLD: the scores' SNR floor rejected settings that kept the task's boxes, whose
# decoding keeps one anchor per object (benchmarks/README.md, ddddocr_det).
DETECTION_MARGIN = 0.3

KINDS = ("classes", "positions", "map", "detections", "embedding", "probability", "regressor", "values", "exact")
TOP1_KINDS = ("classes", "positions")
SNR_KINDS = ("detections", "probability", "regressor", "values")


def _sample_rows(output: np.ndarray) -> np.ndarray:
    rows = output.reshape(-1, output.shape[-1])
    return rows[:: max(1, len(rows) // SAMPLED_ROWS)].astype(np.float64)


def row_form(output: np.ndarray) -> str | None:
    """How the last axis holds a distribution: "probs", "logprobs", or None (raw values)."""
    if output.ndim < 1 or output.shape[-1] < 2 or output.size == 0:
        return None
    values = _sample_rows(output)
    if not np.all(np.isfinite(values)):
        return None
    if values.min() >= -1e-6 and np.allclose(values.sum(axis=-1), 1.0, atol=1e-3):
        return "probs"
    if values.max() <= 1e-6 and np.allclose(np.log(np.exp(values).sum(axis=-1)), 0.0, atol=1e-3):
        return "logprobs"
    return None


def _unit_rows(output: np.ndarray) -> bool:
    values = _sample_rows(output)
    return output.shape[-1] >= 2 and bool(np.allclose(np.linalg.norm(values, axis=-1), 1.0, atol=1e-3))


def output_kind(output: np.ndarray) -> str:
    """The kind of an output (see the module's table), from its shape and values."""
    if output.dtype.kind != "f":
        return "exact"
    if output.ndim == 0 or output.shape[0] == 0 or output.size == 0:
        return "values"
    if output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1):
        lo, hi = _min_max(output)
        return "probability" if 0.0 <= lo and hi <= 1.0 else "regressor"
    if all(d == 1 for d in output.shape[2:]):  # [N, C] (or [N, C, 1, 1])
        scores = output.reshape(output.shape[0], output.shape[1])
        if scores.shape[1] == 1:
            return "regressor"
        if row_form(scores) is not None:
            return "classes"
        if _unit_rows(scores):
            return "embedding"
        return "classes" if scores.shape[1] >= MIN_RAW_CLASSES else "regressor"
    if output.ndim >= 3 and row_form(output) is not None:
        return "positions"
    spatial = output.shape[-2:]
    if (output.ndim == 3 or (output.ndim == 4 and output.shape[1] == 1)) and min(spatial) >= MIN_MAP_SIDE:
        lo, hi = _min_max(output)
        if lo >= 0.0 and hi <= 1.0:
            return "map"
    if _unit_rows(output):
        return "embedding"
    if _detection_rows(output):
        return "detections"
    if output.ndim >= 3 and output.shape[-1] >= MIN_RAW_POSITION_CLASSES and _peaked_rows(output):
        return "positions"
    return "values"


def _peaked_rows(output: np.ndarray) -> bool:
    """Rows of raw scores whose softmax is peaked (median top-1 at least PEAKED_TOP1), with more
    than one top-1 class among them (a hidden state's one outlier channel is no class)."""
    values = _sample_rows(output)
    if not np.all(np.isfinite(values)):
        return False
    probs = np.exp(_log_probs(values, None))
    return bool(np.median(probs.max(axis=-1)) >= PEAKED_TOP1 and len(np.unique(probs.argmax(axis=-1))) > 1)


def _detection_rows(output: np.ndarray) -> bool:
    """[N, A, K] anchor rows of 4 box values then scores in [0, 1] (not all box values in [0, 1]:
    then it would be a map or plain probabilities)."""
    if output.ndim != 3 or not BOX_COLUMNS < output.shape[2] < output.shape[1] or output.shape[1] < MIN_ANCHORS:
        return False
    lo, hi = _min_max(output[..., BOX_COLUMNS:])
    return 0.0 <= lo and hi <= 1.0


def _min_max(output: np.ndarray) -> tuple[float, float]:
    lo, hi = math.inf, -math.inf
    for chunk in _chunks(output):
        lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
    return lo, hi


def _chunk_rows(output: np.ndarray) -> int:
    per_sample = max(1, output.size // max(output.shape[0], 1)) if output.ndim else 1
    return max(1, CHUNK_VALUES // per_sample)


def _chunks(*arrays: np.ndarray) -> Iterator:
    """The arrays cut along axis 0 into bounded float32 chunks (one array: the chunk alone)."""
    first = arrays[0]
    if first.ndim == 0:
        chunk = tuple(np.asarray(a, dtype=np.float32).reshape(1) for a in arrays)
        yield chunk[0] if len(arrays) == 1 else chunk
        return
    step = _chunk_rows(first)
    for start in range(0, first.shape[0], step):
        chunk = tuple(np.asarray(a[start : start + step], dtype=np.float32) for a in arrays)
        yield chunk[0] if len(arrays) == 1 else chunk


def _db(signal: float, noise: float) -> float:
    if not math.isfinite(noise):
        return -math.inf
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@dataclass(frozen=True)
class Reference:
    """What the measures need of one original output, computed once: its kind, and its
    centred and raw powers (float outputs) or class-row form (class scores)."""

    kind: str
    centred_power: float = 0.0
    raw_power: float = 0.0
    form: str | None = None  # classes / positions: "probs", "logprobs" or None (raw scores)
    score_power: float = 0.0  # detections: centred power of the anchors' scores
    box_power: float = 0.0  # detections: score-weighted centred power of the boxes
    class_power: float = 0.0  # detections: and of the class columns
    units: int = 0  # probability: rows cycle over this many sequences (recurrent data), 0: each row a unit
    # positions: the rows where the original's top-1 leads by POSITION_MARGIN (where a flip counts);
    # detections: the anchors whose score is DETECTION_MARGIN from the decision threshold
    confident: np.ndarray | None = field(default=None, compare=False, repr=False)


def reference_of(output: np.ndarray, kind: str | None = None, units: int = 0) -> Reference:
    """The measures' view of one original output (its kind detected unless given); `units`:
    the sequences its rows cycle over (recurrent data, see ``decision_risk.unit_rates``)."""
    kind = kind or output_kind(output)
    if kind == "exact":
        return Reference(kind)
    centred, raw = centred_and_raw_power(output)
    if kind == "probability":
        return Reference(kind, centred, raw, units=units)
    form = row_form(output) if kind in TOP1_KINDS else None
    if kind == "detections":
        score_power, _ = centred_and_raw_power(anchor_scores(output))
        box_power, class_power = _weighted_powers(output)
        scores = anchor_scores(output)
        confident = np.abs(scores - DECISION_THRESHOLD) >= DETECTION_MARGIN
        return Reference(kind, centred, raw, form, score_power, box_power, class_power, confident=confident)
    if kind == "positions":
        return Reference(kind, centred, raw, form, confident=confident_rows(output, form))
    return Reference(kind, centred, raw, form)


def confident_rows(output: np.ndarray, form: str | None, margin: float = POSITION_MARGIN) -> np.ndarray:
    """Per row of class scores: does the top-1 probability lead the runner-up's by `margin`."""
    rows = _score_rows(output)
    parts = []
    for chunk in _chunks(rows):
        top2 = np.sort(np.exp(_log_probs(chunk, form)), axis=-1)[:, -2:]
        parts.append(top2[:, 1] - top2[:, 0] >= margin)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def anchor_scores(output: np.ndarray) -> np.ndarray:
    """Each anchor row's detection score (float32), what a decoder thresholds: objectness x the
    best class score (the objectness alone when there is no class column)."""
    scores = np.asarray(output[..., BOX_COLUMNS:], dtype=np.float32)
    return scores[..., 0] * scores[..., 1:].max(axis=-1) if scores.shape[-1] > 1 else scores[..., 0]


def _column_groups(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The box columns, and the class columns after the objectness (maybe none).
    return chunk[..., :BOX_COLUMNS], chunk[..., BOX_COLUMNS + 1 :]


def _weighted_powers(output: np.ndarray) -> tuple[float, float]:
    """(boxes, classes): sum over anchors of score x (value - the score-weighted mean)^2,
    streamed: where the original sees nothing, neither says anything."""
    weight = 0.0
    totals = [np.zeros(output.shape[-1], dtype=np.float64)]
    for chunk in _chunks(output):
        w = anchor_scores(chunk)[..., None].astype(np.float64)
        weight += float(w.sum())
        totals[0] += (w * chunk).sum(axis=(0, 1))
    if weight <= 0.0:
        return 0.0, 0.0
    mean = (totals[0] / weight).astype(np.float32)
    powers = [0.0, 0.0]
    for chunk in _chunks(output):
        w = anchor_scores(chunk)[..., None]
        for i, group in enumerate(_column_groups((chunk - mean) ** 2 * w)):
            powers[i] += float(np.sum(group, dtype=np.float64))
    return powers[0], powers[1]


def detection_change_points(reference: np.ndarray, output: np.ndarray, ref: Reference) -> float:
    """100 x the anchors whose decision (score > DECISION_THRESHOLD) changed where the original
    was confident (``ref.confident``), over the original's detections (at least one)."""
    changed = detections = 0
    for r, o, confident in zip(_chunks(reference), _chunks(output), _split_rows(ref.confident, reference)):
        before, after = anchor_scores(r) > DECISION_THRESHOLD, anchor_scores(o) > DECISION_THRESHOLD
        changed += int(np.count_nonzero((before != after) & confident))
        detections += int(np.count_nonzero(before))
    return 100.0 * changed / max(detections, 1)


def _split_rows(mask: np.ndarray | None, like: np.ndarray) -> Iterator[np.ndarray]:
    # `mask` ([N, ...] per sample) cut as _chunks cuts `like` along axis 0.
    step = _chunk_rows(like)
    for start in range(0, like.shape[0], step):
        yield mask[start : start + step] if mask is not None else True


def detection_box_snr_db(reference: np.ndarray, output: np.ndarray, ref: Reference) -> float:
    """The boxes' SNR weighted by the original's score of each anchor (the scores' SNR when the
    original sees nothing): their decisions are judged by ``detection_change_points``."""
    if ref.box_power <= 0:
        return detection_snr_db(reference, output, ref)
    noise = 0.0
    for r, o in _chunks(reference, output):
        weighted = (o - r)[..., :BOX_COLUMNS] ** 2 * anchor_scores(r)[..., None]
        noise += float(np.sum(weighted, dtype=np.float64))
    return _db(ref.box_power, noise)


def detection_snr_db(reference: np.ndarray, output: np.ndarray, ref: Reference) -> float:
    """The worst of three SNRs: the anchors' detection scores (centred), and the boxes' and the
    class scores' weighted by the original's score of each anchor (a box where the original
    sees nothing is noise its decoding drops)."""
    score_noise, noises = 0.0, [0.0, 0.0]
    for r, o in _chunks(reference, output):
        d = anchor_scores(o) - anchor_scores(r)
        score_noise += float(np.sum(d * d, dtype=np.float64))
        weighted = (o - r) ** 2 * anchor_scores(r)[..., None]
        for i, group in enumerate(_column_groups(weighted)):
            noises[i] += float(np.sum(group, dtype=np.float64))
    snrs = [_db(ref.score_power if ref.score_power > 0 else ref.raw_power, score_noise)]
    snrs += [_db(power, noise) for power, noise in zip((ref.box_power, ref.class_power), noises) if power > 0]
    return min(snrs)


def centred_and_raw_power(output: np.ndarray) -> tuple[float, float]:
    """(sum of (x - mean over samples)^2, sum of x^2) of a float output, streamed."""
    if output.ndim == 0 or output.shape[0] <= 1:
        raw = sum(float(np.sum(c * c, dtype=np.float64)) for c in _chunks(output))
        return 0.0, raw
    total = np.zeros(output.shape[1:], dtype=np.float64)
    raw = 0.0
    for chunk in _chunks(output):
        total += chunk.sum(axis=0, dtype=np.float64)
        raw += float(np.sum(chunk * chunk, dtype=np.float64))
    mean = (total / output.shape[0]).astype(np.float32)
    centred = 0.0
    for chunk in _chunks(output):
        d = chunk - mean
        centred += float(np.sum(d * d, dtype=np.float64))
    return centred, raw


def noise_power(reference: np.ndarray, output: np.ndarray) -> float:
    """sum (out - ref)^2, streamed (inf when the output has non-finite values)."""
    if reference.shape != output.shape:
        raise ValueError(f"output shapes differ from the reference: {output.shape} vs {reference.shape}")
    noise = 0.0
    for ref, out in _chunks(reference, output):
        d = out - ref
        noise += float(np.sum(d * d, dtype=np.float64))
    return noise if math.isfinite(noise) else math.inf


def centred_snr_db(reference: np.ndarray, output: np.ndarray, ref: Reference | None = None) -> float:
    """The output's SNR against the reference's variation across samples, in dB (the raw
    SNR when the reference does not vary: one sample, a constant output)."""
    ref = ref or reference_of(reference, "values")
    noise = noise_power(reference, output)
    return _db(ref.centred_power if ref.centred_power > 0 else ref.raw_power, noise)


def raw_snr_db(reference: np.ndarray, output: np.ndarray, ref: Reference | None = None) -> float:
    """The SNR against the reference's raw power (for comparison in reports)."""
    ref = ref or reference_of(reference, "values")
    return _db(ref.raw_power, noise_power(reference, output))


def _log_probs(rows: np.ndarray, form: str | None) -> np.ndarray:
    """Log-probabilities (float64) of rows of class scores in `form`."""
    rows = rows.astype(np.float64)
    if form == "logprobs":
        return rows
    if form == "probs":
        return np.log(np.clip(rows, 1e-12, None))
    shifted = rows - rows.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _score_rows(output: np.ndarray) -> np.ndarray:
    # Class scores as rows: [N, C] for classes (trailing 1s dropped), [N * positions, C] for positions.
    if all(d == 1 for d in output.shape[2:]):
        return output.reshape(output.shape[0], output.shape[1])
    return output.reshape(-1, output.shape[-1])


def top1_agreement(reference: np.ndarray, output: np.ndarray, counted: np.ndarray | None = None) -> float:
    """Percent of rows (samples, or positions) whose top-1 class is unchanged; with `counted`
    (a bool per row), a change counts only on those rows (the others agree by definition)."""
    ref_rows, out_rows = _score_rows(reference), _score_rows(output)
    if len(ref_rows) == 0:
        return 100.0
    changed, start = 0, 0
    for r, o in _chunks(ref_rows, out_rows):
        flips = r.argmax(-1) != o.argmax(-1)
        if counted is not None:
            flips &= counted[start : start + len(r)]
        changed, start = changed + int(np.count_nonzero(flips)), start + len(r)
    return 100.0 * (len(ref_rows) - changed) / len(ref_rows)


def mean_kl(reference: np.ndarray, output: np.ndarray, form: str | None = None) -> float:
    """Mean over rows of KL(p_ref || p_out) in nats, p the class probabilities of each row
    (softmax of raw scores; `form` as ``row_form`` of the reference)."""
    ref_rows, out_rows = _score_rows(reference), _score_rows(output)
    if len(ref_rows) == 0:
        return 0.0
    total = 0.0
    for r, o in _chunks(ref_rows, out_rows):
        log_p, log_q = _log_probs(r, form), _log_probs(o, form)
        total += float(np.sum(np.exp(log_p) * (log_p - log_q)))
    kl = total / len(ref_rows)
    return max(kl, 0.0) if math.isfinite(kl) else math.inf


def _components(mask: np.ndarray) -> np.ndarray:
    """Connected regions (4-neighbours) of each image of `mask` ([n, H, W] bool): every pixel's
    region label, unique across the images, 0 for the background."""
    # Imported on first use: only maps need it, and loading scipy costs half a second.  scipy
    # comes with scikit-learn, a dependency.
    from scipy import ndimage

    labels = np.zeros(mask.shape, dtype=np.int64)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]  # within one image only
    ndimage.label(mask, structure=structure, output=labels)
    return labels


def _region_areas(labels: np.ndarray, background: int) -> dict[int, int]:
    values, counts = np.unique(labels[labels != background], return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts) if c >= MIN_REGION_PIXELS}


def map_f1(
    reference: np.ndarray, output: np.ndarray, threshold: float = MAP_THRESHOLD, iou: float = REGION_IOU
) -> float:
    """Region F1 of `output`'s map against the reference's own regions as pseudo-labels: the
    connected regions above `threshold` (at least MIN_REGION_PIXELS pixels), a region found
    when a candidate region overlaps it with IoU >= REGION_IOU (what a detector's boxes
    are scored by: moved edges cost nothing, a split, merged, lost or new region does).
    1.0 when neither has any region."""
    found = n_ref = n_out = 0
    for r, o in _chunks(reference, output):
        shape = (-1, *r.shape[-2:])
        rp, op = (r > threshold).reshape(shape), (o > threshold).reshape(shape)
        background = 0
        ref_labels, out_labels = _components(rp), _components(op)
        ref_areas, out_areas = _region_areas(ref_labels, background), _region_areas(out_labels, background)
        n_ref, n_out = n_ref + len(ref_areas), n_out + len(out_areas)
        both = rp & op
        stride = int(out_labels.max()) + 1
        pairs, overlaps = np.unique(ref_labels[both] * stride + out_labels[both], return_counts=True)
        for pair, overlap in zip(pairs.tolist(), overlaps.tolist()):
            a, b = ref_areas.get(pair // stride), out_areas.get(pair % stride)
            if a is not None and b is not None and overlap >= iou * (a + b - overlap):
                found += 1
    if n_ref == 0 and n_out == 0:
        return 1.0
    return 2.0 * found / (n_ref + n_out)


def decision_agreement(reference: np.ndarray, output: np.ndarray, threshold: float = DECISION_THRESHOLD) -> float:
    """Percent of values on the same side of `threshold` as the reference's."""
    if reference.size == 0:
        return 100.0
    same = sum(int(np.count_nonzero((r > threshold) == (o > threshold))) for r, o in _chunks(reference, output))
    return 100.0 * same / reference.size


def compare(reference: np.ndarray, output: np.ndarray, ref: Reference) -> dict:
    """Every measure of one output that its kind is judged by: top1_agreement and kl (classes,
    positions; for positions kl_points, the KL in points of the budget), map_f1 (maps),
    top1_agreement of the decisions and decision_risk (probability), similarity_points
    (embeddings, ``embedding_similarity``), and for every float output centred_snr_db and
    raw_snr_db.  Detections: top1_agreement is 100 minus ``detection_change_points``,
    centred_snr_db the boxes' ``detection_box_snr_db``."""
    if reference.shape != output.shape:
        raise ValueError(f"output shapes differ from the reference: {output.shape} vs {reference.shape}")
    result: dict = {"kind": ref.kind}
    if ref.kind == "exact":
        return result
    noise = noise_power(reference, output)
    result["centred_snr_db"] = _db(ref.centred_power if ref.centred_power > 0 else ref.raw_power, noise)
    result["raw_snr_db"] = _db(ref.raw_power, noise)
    if ref.kind == "detections":
        result["centred_snr_db"] = detection_box_snr_db(reference, output, ref)
        # budgeted as top-1 agreement
        result["top1_agreement"] = 100.0 - detection_change_points(reference, output, ref)
    if ref.kind in TOP1_KINDS:
        result["top1_agreement"] = top1_agreement(reference, output, ref.confident)
        result["kl"] = mean_kl(reference, output, ref.form)
        if ref.kind == "positions":
            result["kl_points"] = result["kl"] / POSITION_KL_PER_POINT
    elif ref.kind == "map":
        result["map_f1"] = map_f1(reference, output)
    elif ref.kind == "probability":
        result["top1_agreement"] = decision_agreement(reference, output)
        result["decision_risk"] = risk.decision_risk(reference, output, ref.units, DECISION_THRESHOLD)
    elif ref.kind == "embedding":
        result["similarity_points"] = embedding_similarity.similarity_points(reference, output)
    elif ref.kind == "regressor":
        result["centred_snr_db"] = _db(
            ref.centred_power or ref.raw_power, regressor_noise_bound(reference, output, ref.units)
        )
    return result


def regressor_noise_bound(reference: np.ndarray, output: np.ndarray, units: int = 0) -> float:
    """The noise power of a regressor's output at its upper confidence bound over the units
    (rows, or a recurrent model's sequences): a few verdict samples whose noise happens to be
    small must not pass a candidate whose noise on other inputs is larger (a regressor's task,
    a ranking say, moves with the noise of each sample)."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(output, dtype=np.float64)
    if ref.ndim == 0 or ref.shape[0] < 2:
        return noise_power(reference, output)
    per_row = np.square(out - ref).reshape(ref.shape[0], -1).sum(axis=1)
    if not np.all(np.isfinite(per_row)):
        return math.inf
    rates = risk.unit_rates(per_row, units)
    per_unit = rates * (len(per_row) / len(rates))  # each unit's summed noise
    return max(float(per_row.sum()), len(per_unit) * risk.mean_upper_bound(per_unit))
