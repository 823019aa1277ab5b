"""Where a command may write, and writing there without ever losing a file.

* ``check_outputs``: every output path differs from every input path (model, data, calib,
  recipe, the model's external-data files) and from the other outputs, lies in an existing
  folder, and is a regular file or nothing yet.  Device nodes, FIFOs and sockets are refused,
  and so is a symlink: replacing it would turn the link into a regular file, writing through it
  would write somewhere the user did not name.
* ``atomic_write_bytes``: temp file in the target folder, then rename (no half-written file).
* ``write_all_atomically``: several files, each written to its temp file first and renamed only
  once all of them were written, so a failure leaves none of them behind.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import UsageError

PathLike = str | os.PathLike
# An input is one path or several (a model and its external-data files); None or "-" (stdin) is no file.
Inputs = Mapping[str, PathLike | Iterable[PathLike] | None]


def _resolved(path: PathLike) -> Path:
    return Path(path).resolve()


def _same_file(a: PathLike, b: PathLike) -> bool:
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def check_target(path: PathLike, label: str = "the output") -> None:
    """Refuse to write `path` when it is a symlink, a folder, or exists and is not a regular file;
    refuse a missing folder."""
    out = Path(path)
    if out.is_symlink():
        raise UsageError(f"refusing to write {label} through the symlink {out}: give the path of a regular file")
    try:
        mode = out.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise UsageError(f"cannot write {label} to {out}: {e.strerror}")
    if mode is not None and stat.S_ISDIR(mode):
        raise UsageError(f"{label} {out} is a folder, not a file")
    if mode is not None and not stat.S_ISREG(mode):
        raise UsageError(f"refusing to write {label} to {out}: not a regular file (a device, FIFO or socket)")
    folder = _resolved(out).parent
    if not folder.is_dir():
        raise UsageError(f"output folder does not exist: {folder}")


def _input_paths(inputs: Inputs) -> list[tuple[str, PathLike]]:
    found = []
    for label, value in inputs.items():
        if value is None:
            continue
        for path in [value] if isinstance(value, str | os.PathLike) else value:
            if str(path) != "-":
                found.append((label, path))
    return found


def check_outputs(outputs: Mapping[str, PathLike | None], inputs: Inputs) -> None:
    """Refuse, with one line, outputs that would overwrite an input or each other, or that cannot
    be written as regular files (see check_target).  `outputs`/`inputs` map a label ('-o',
    'the input model', '--data') to a path; None entries are not given."""
    given = [(label, path) for label, path in outputs.items() if path is not None]
    sources = _input_paths(inputs)
    for i, (label, path) in enumerate(given):
        check_target(path, label)
        for source_label, source in sources:
            if _same_file(path, source):
                raise UsageError(f"refusing to overwrite {source_label} {source} with {label} (choose another path)")
        for other_label, other in given[:i]:
            if _same_file(path, other):
                raise UsageError(f"{other_label} and {label} name the same file {path}: give each output its own path")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp_file(out: Path) -> tuple[int, str]:
    """A temp file beside `out`, with the permissions a plain open() would give (mkstemp's are 0600)."""
    check_target(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.resolve().parent)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def _remove(paths: Iterable[str]) -> None:
    for tmp in paths:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_all_atomically(files: Mapping[PathLike, bytes]) -> None:
    """Write every file, or none: all go to temp files first, the renames come last."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            out = Path(path)
            fd, tmp = make_temp_file(out)
            temps.append((tmp, out))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for tmp, out in temps:
            os.replace(tmp, out)
    except BaseException:
        _remove(tmp for tmp, _ in temps)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write bytes to path via a temp file in the same folder and os.replace (no half-written files)."""
    write_all_atomically({path: data})
