"""`compressor quantize`: 8-bit QDQ quantization (static, dynamic or weight-only), calibrated,
with Q/DQ folding; reports integer-kernel coverage in ONNX Runtime, size and accuracy."""

from __future__ import annotations

import math
import os

import click

from ..data import load_dataset
from ..errors import UsageError
from ..evaluate import accuracy, evaluate, run_model
from ..graph import load_model_and_files, save_model
from ..passes.quantize import QuantizeSettings, quantize
from ..paths import check_outputs
from .common import format_table, human_bytes, report_pass, warn


@click.command("quantize")
@click.argument("model", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the quantized model."
)
@click.option(
    "--calib",
    "calib_path",
    type=click.Path(dir_okay=False),
    help=".npz calibration inputs (enables static activations).",
)
@click.option(
    "--activations",
    type=click.Choice(["static", "dynamic", "none"]),
    default=None,
    help="Activation quantization [default: static with --calib, else none (weight-only)].",
)
@click.option(
    "--per-channel/--per-tensor",
    default=True,
    show_default=True,
    help="Weight scales per output channel or per tensor.",
)
@click.option(
    "--symmetric/--asymmetric", default=True, show_default=True, help="Weight zero point 0 (symmetric) or fitted."
)
@click.option(
    "--calibration",
    type=click.Choice(["minmax", "percentile", "entropy"]),
    default="minmax",
    show_default=True,
    help="How activation ranges are taken from the calibration data.",
)
@click.option(
    "--percentile", type=float, default=99.999, show_default=True, help="Percentile for --calibration percentile."
)
@click.option(
    "--exclude", default=None, metavar="REGEX", help="Keep nodes whose name (or output) matches REGEX in float."
)
@click.option(
    "--min-output-snr",
    type=float,
    default=None,
    metavar="DB",
    help="Mixed precision: keep in float the layers needed for the output SNR on the calibration data to reach DB "
    "(static; layers ranked without running the model, then group testing: O(log layers) ORT runs).",
)
@click.option(
    "--reduce-range/--full-range",
    default=None,
    help="7-bit weights ([-64, 64]; ORT's u8s8 kernels saturate with 8 bits on x86 CPUs without VNNI) or 8-bit "
    "(VNNI / ARM).  [default: with --calib, whichever gives the higher output SNR on it here; else 7-bit]",
)
@click.option(
    "--small-constants/--float-small-constants",
    default=False,
    show_default=True,
    help="Also store biases of float ops and LayerNorm parameters (16+ values) as per-tensor int8 "
    "(smaller, slightly less exact; run does it under its budget).",
)
@click.option("--no-attention", is_flag=True, help="Leave MatMuls between two activations (attention) in float.")
@click.option(
    "--data",
    "data_path",
    type=click.Path(dir_okay=False),
    help=".npz test data: accuracy / fidelity next to the float model.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the stats as one JSON object on stdout.")
def quantize_command(
    model,
    output,
    calib_path,
    activations,
    per_channel,
    symmetric,
    calibration,
    percentile,
    exclude,
    min_output_snr,
    reduce_range,
    small_constants,
    no_attention,
    data_path,
    as_json,
) -> None:
    """Quantize MODEL to int8 (QuantizeLinear/DequantizeLinear) and write OUT."""
    if activations == "static" and not calib_path:
        raise UsageError("--activations static needs --calib CALIB.npz")
    if calib_path and activations in ("dynamic", "none"):
        warn(f"--calib is not used with --activations {activations}")
    if min_output_snr is not None and not math.isfinite(min_output_snr):
        raise UsageError(f"--min-output-snr must be a finite number of dB, got {min_output_snr}")
    if min_output_snr is not None and not (calib_path and activations in (None, "static")):
        raise UsageError("--min-output-snr needs static activations (--calib)")
    loaded, external_files = load_model_and_files(model, max_bytes=None)
    check_outputs(
        {"-o": output},
        {
            "the input model": model,
            "the model's external data": external_files,
            "--calib": calib_path,
            "--data": data_path,
        },
    )
    calib = load_dataset(calib_path, loaded) if calib_path and activations in (None, "static") else None
    data = load_dataset(data_path, loaded) if data_path else None
    settings = QuantizeSettings(
        activations=activations,
        per_channel=per_channel,
        symmetric=symmetric,
        calibration=calibration,
        percentile=percentile,
        exclude=exclude,
        min_output_snr=min_output_snr,
        reduce_range=reduce_range,
        small_constants=small_constants,
        quantize_attention=not no_attention,
    )
    new_model, stats = quantize(loaded, calib, settings)
    save_model(new_model, output, input_path=model)
    stats["output"] = output
    stats["file_bytes"] = os.path.getsize(output)
    if data is not None:
        reference = run_model(loaded, data)
        stats["float_eval"] = {
            "samples": data.size,
            "accuracy": accuracy(reference[0], data.labels) if data.labels is not None else None,
        }
        stats["eval"] = evaluate(new_model, data, reference_outputs=reference)
    report_pass(stats, as_json, lambda: _print_report(stats))


def _print_report(stats: dict) -> None:
    rows = [[r["node"], r["op"], r["status"], r["reason"] or ""] for r in stats["nodes"]]
    if rows:
        click.echo(format_table(rows, ["node", "op", "status", "note"]))
    wrows = [
        [
            w["name"],
            w["scheme"],
            w["symbols"],
            w["codebook_size"],
            w["merged_centroids"],
            w["clamped_nonzero"],
            w["rel_error"],
        ]
        for w in stats["weights"]
    ]
    if wrows:
        click.echo("")
        click.echo(format_table(wrows, ["weight", "scheme", "symbols", "codebook", "merged", "clamped", "rel_err"]))
    click.echo("")
    fold = stats.get("folding")
    if fold:
        moved = ", ".join(f"{k} {v}" for k, v in fold["moved_to_integers"].items()) or "none"
        click.echo(
            f"Q/DQ folding: {fold['dq_q_pairs_removed']} DQ->Q pairs removed ({fold['clamps_removed']} Relu/Clip folded; "
            f"ops moved to integers: {moved})"
        )
    if stats.get("weight_range_snr_db"):
        m = stats["weight_range_snr_db"]
        show = lambda v: "exact" if v is None else f"{v:.1f} dB"
        click.echo(
            f"weight range: {'7-bit' if stats['reduce_range'] else '8-bit'} (calibration output SNR: "
            f"7-bit {show(m['reduced'])}, 8-bit {show(m['full'])})"
        )
    mixed = stats.get("mixed_precision")
    if mixed:
        click.echo(
            f"mixed precision: {mixed['kept_float']} of {mixed['layers_ranked']} layers kept float for "
            f"{mixed['floor_db']:g} dB ({mixed['probes']} runs): {', '.join(stats['kept_float_mixed']) or 'none'}"
        )
    cov = stats.get("coverage")
    if cov:
        frac = "-" if cov["fraction"] is None else f"{100 * cov['fraction']:.0f}%"
        ints = ", ".join(f"{k} {v}" for k, v in cov["integer"].items()) or "none"
        floats = ", ".join(f"{k} {v}" for k, v in cov["float"].items()) or "none"
        click.echo(f"integer kernels in ORT: {frac} of Conv/Gemm/MatMul (integer: {ints}; float: {floats})")
    if "eval" in stats:
        f, q = stats["float_eval"], stats["eval"]
        if q.get("accuracy") is not None and f.get("accuracy") is not None:
            click.echo(f"accuracy: {q['accuracy']:.2f}% (float {f['accuracy']:.2f}%)")
        agree = "-" if q.get("top1_agreement") is None else f"{q['top1_agreement']:.2f}%"
        snr = "-" if q.get("snr_db") is None else f"{q['snr_db']:.1f} dB"
        click.echo(f"fidelity to float: top-1 agreement {agree}, SNR {snr}")
    click.echo(
        f"{stats['mode']} quantization: {human_bytes(stats['bytes_before'])} -> {human_bytes(stats['file_bytes'])} -> {stats['output']}"
    )


COMMANDS = [quantize_command]
