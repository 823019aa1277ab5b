"""`compressor pack` / `compressor unpack`: a model <-> its Huffman-coded .cmpz container (FORMAT.md)."""

from __future__ import annotations

import click

from ..container import format_pack_table, pack_file, unpack_file
from ..paths import check_outputs
from .common import emit_json


@click.command("pack")
@click.argument("model", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The container to write (.cmpz).")
@click.option("--json", "as_json", is_flag=True, help="Print the pack report as one JSON object on stdout.")
def pack_command(model: str, output: str, as_json: bool) -> None:
    """Pack MODEL losslessly into a checksummed, entropy-coded container."""
    stats = pack_file(model, output)
    if as_json:
        emit_json(stats)
        return
    click.echo(format_pack_table(stats))
    click.echo(f"wrote {output}")


@click.command("unpack")
@click.argument("container", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The ONNX model to write.")
@click.option(
    "--verify",
    is_flag=True,
    help="Check that the unpacked model is bit-identical to the packed one (SHA-256 recorded at pack time).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def unpack_command(container: str, output: str, verify: bool, as_json: bool) -> None:
    """Unpack CONTAINER back into the exact ONNX model it was packed from."""
    check_outputs({"-o": output}, {"the container": container})
    info = unpack_file(container, output, verify=verify)
    if as_json:
        emit_json(info)
        return
    checked = "  verified: bit-identical to the packed model (SHA-256)" if info["verified"] else ""
    click.echo(f"wrote {output}: {info['model_bytes']:,} bytes, {info['tensors']} tensors restored{checked}")


COMMANDS = [pack_command, unpack_command]
