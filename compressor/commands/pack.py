"""`compressor pack` / `compressor unpack`: a model <-> its Huffman-coded .cmpz container (FORMAT.md)."""

from __future__ import annotations

import click

from ..container import DEFAULT_MAX_DECODED_BYTES, format_pack_table, pack_file, unpack_file
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


class ByteSize(click.ParamType):
    """A number of bytes: an integer with an optional binary suffix (K, M, G, T), or ``none``."""

    name = "bytes"
    SUFFIXES = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value is None:
            return value
        text = str(value).strip().upper().removesuffix("IB").removesuffix("B")
        if text == "NONE":
            return None
        digits, suffix = (text[:-1], text[-1]) if text[-1:] in self.SUFFIXES else (text, "")
        if not digits.isdigit() or int(digits) <= 0:
            self.fail(f"{value!r} is not a positive number of bytes (e.g. 4G, 512M, 1000000 or none)", param, ctx)
        return int(digits) << self.SUFFIXES[suffix]


@click.command("unpack")
@click.argument("container", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The ONNX model to write.")
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Check that the unpacked model is bit-identical to the packed one (SHA-256 recorded at pack time) "
    "before writing it.",
)
@click.option(
    "--max-decoded-bytes",
    type=ByteSize(),
    default=DEFAULT_MAX_DECODED_BYTES,
    show_default="4G",
    help="Refuse a container that declares more decoded bytes than this, in all or in one section "
    "(K/M/G/T suffixes; none: no limit).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def unpack_command(container: str, output: str, verify: bool, max_decoded_bytes: int | None, as_json: bool) -> None:
    """Unpack CONTAINER back into the exact ONNX model it was packed from."""
    check_outputs({"-o": output}, {"the container": container})
    info = unpack_file(container, output, verify=verify, max_decoded_bytes=max_decoded_bytes)
    if as_json:
        emit_json(info)
        return
    checked = "  verified: bit-identical to the packed model (SHA-256)" if info["verified"] else ""
    click.echo(f"wrote {output}: {info['model_bytes']:,} bytes, {info['tensors']} tensors restored{checked}")


COMMANDS = [pack_command, unpack_command]
