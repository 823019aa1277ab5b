"""`compressor inspect`: what is in an ONNX model (or a .cmpz container)."""

from __future__ import annotations

from pathlib import Path

import click

from ..container import MAGIC, describe_container, format_container_table
from ..graph import load_model, load_model_and_files, model_folder
from ..inspect_model import describe_model
from .common import emit_json, format_table, human_bytes


def _is_container(path: str) -> bool:
    if path == "-":
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def inspect_command(model: str, as_json: bool) -> None:
    """Show the weights, ops, MACs and sizes of MODEL (an .onnx file or a .cmpz container)."""
    if _is_container(model):
        desc = describe_container(model)
        emit_json(desc) if as_json else click.echo(format_container_table(desc))
        return
    if model == "-":
        desc = describe_model(load_model(model))
    else:  # external tensors are read one at a time: models of any size
        loaded, _ = load_model_and_files(model, external_data=False)
        desc = describe_model(loaded, Path(model).stat().st_size, model_folder(model))
    if as_json:
        emit_json(desc)
        return
    click.echo(f"model: {model}  opset {desc['opset']}  ir {desc['ir_version']}  {desc['producer']}")
    for kind in ("inputs", "outputs"):
        click.echo(f"{kind}: " + ", ".join(f"{io['name']} {io['dtype']}{io['shape']}" for io in desc[kind]))
    click.echo("")
    rows = [
        [
            w["name"],
            w["role"],
            ",".join(w["ops"]),
            "x".join(map(str, w["shape"])),
            w["params"],
            w["bytes"],
            w["sparsity"],
            w["distinct_values"],
        ]
        for w in desc["weights"]
    ]
    click.echo(format_table(rows, ["weight", "role", "op", "shape", "params", "bytes", "sparsity", "distinct"]))
    t = desc["totals"]
    click.echo("")
    click.echo(f"float parameters: {t['float_params']:,}  ({human_bytes(t['float_bytes'])}), zeros: {t['zeros']:,}")
    click.echo("tensor bytes by dtype: " + ", ".join(f"{k} {human_bytes(v)}" for k, v in t["bytes_by_dtype"].items()))
    if desc["file_bytes"] is not None:
        click.echo(f"file size: {desc['file_bytes']:,} bytes")
    click.echo("ops: " + ", ".join(f"{k} {v}" for k, v in desc["ops"].items()))
    if desc["macs"]:
        click.echo("")
        click.echo(
            format_table(
                [[m["node"], m["op"], m["weight"], m["macs"]] for m in desc["macs"]],
                ["node", "op", "weight", "MACs (batch 1)"],
            )
        )
        unknown = t["macs_unknown"]
        why = "; the inputs have dynamic dims (height, width, length)" if t.get("dynamic_input_dims") else ""
        missing = f"  ({unknown} layer(s) of unknown shape not counted{why})" if unknown else ""
        click.echo(f"total MACs (batch 1): {t['macs']:,}{missing}")


COMMANDS = [inspect_command]
