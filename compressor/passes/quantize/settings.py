"""The quantize pass's settings: one frozen object instead of a long parameter list."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ... import quant_math as qm


@dataclass(frozen=True)
class QuantizeSettings:
    """How `quantize` quantizes a model (see its docstring for what each one does)."""

    activations: str | None = None  # "static" | "dynamic" | "none"; None: static with calibration data, else none
    per_channel: bool = True  # weight scales per output channel
    symmetric: bool = True  # weight zero point 0
    calibration: str = "minmax"  # activation ranges: "minmax" | "percentile" | "entropy"
    percentile: float = qm.DEFAULT_PERCENTILE  # for calibration "percentile"
    exclude: str | re.Pattern | None = None  # regex on node names (or first output) kept in float
    min_output_snr: float | None = None  # mixed precision: layers float as needed for this output SNR (dB)
    activation_type: str = "uint8"  # what ORT fuses on x86; or "int8"
    quantize_attention: bool = True  # MatMuls between two activations
    weight_type: str = "int8"
    reduce_range: bool | None = None  # 7-bit weights; None: measured in static mode, else 7-bit
    activation_range: tuple[int, int] | None = None  # an explicit activation integer range (experiments)
    small_constants: bool = False  # biases of float ops and norm parameters as per-tensor int8
    check: bool = True  # load the result in ORT and measure its integer-kernel coverage
    # A size bound, not a model to keep: weight-only, every weight on the reduced range the
    # integer kernels read (see quantize.size_bound); no calibration, no ORT run.
    size_bound: bool = False


DEFAULT_SETTINGS = QuantizeSettings()
