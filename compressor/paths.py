"""Where a command may write, and writing there without ever losing a file.

* ``check_outputs``: every output path differs from every input path (model, data, calib,
  recipe, the model's external-data files) and from the other outputs, lies in an existing
  folder, and is a regular file or nothing yet.  Device nodes, FIFOs and sockets are refused,
  and so is a symlink: replacing it would turn the link into a regular file, writing through it
  would write somewhere the user did not name.
* ``atomic_write_bytes``: an unnamed file in the target folder (Linux O_TMPFILE; a hidden temp
  file elsewhere), named only once complete: no half-written file, nothing left even on SIGKILL.
* ``write_all_atomically``: several files, each written to its temp file first and renamed only
  once all of them were written, so a failure leaves none of them behind.
"""

from __future__ import annotations

import errno
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
    name_bytes, name_max = len(os.fsencode(out.name)), _name_max(Path(os.path.abspath(out)).parent)
    if name_bytes > name_max:
        raise UsageError(f"{label} name is {name_bytes} bytes, longer than the {name_max} its folder allows: {out}")
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


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _temp_prefix(out: Path) -> str:
    # The temp name adds a dot, a random part and ".tmp": keep it short enough for any output
    # name the file system accepts.
    return f".{out.name[:64]}."


def _cannot_write(out: Path, error: OSError) -> UsageError:
    return UsageError(f"cannot write {out}: {error.strerror or error}")


class TempOutput:
    """A file being written for `out`, which becomes `out` only on ``commit``.

    Where the file system supports it (Linux O_TMPFILE), the file has no name until the
    commit, so a process killed mid-write (even by SIGKILL) leaves nothing behind; elsewhere
    it is a hidden temp file beside `out`, removed by ``discard`` on any error."""

    def __init__(self, out: PathLike):
        self.out = Path(out)
        check_target(self.out)
        folder = self.out.resolve().parent
        self.path: str | None = None  # the temp file's name, once it has one
        try:
            try:
                self.fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666)
            except (AttributeError, OSError) as e:
                if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC):
                    raise
                self.fd, self.path = tempfile.mkstemp(prefix=_temp_prefix(self.out), suffix=".tmp", dir=folder)
                os.fchmod(self.fd, 0o666 & ~_umask())
        except OSError as e:
            raise _cannot_write(self.out, e) from None
        self.file = os.fdopen(self.fd, "wb")

    def write(self, data) -> None:
        self.file.write(data)

    def link(self) -> None:
        """Give the written file its temp name (the step before the rename)."""
        self.file.flush()
        if self.path is None:
            folder = self.out.resolve().parent
            # linkat with AT_SYMLINK_FOLLOW (what a dst_dir_fd makes os.link use) names the
            # unnamed file through its /proc link.
            folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for _ in range(100):
                    name = f"{_temp_prefix(self.out)}{os.urandom(6).hex()}.tmp"
                    try:
                        os.link(f"/proc/self/fd/{self.fd}", name, dst_dir_fd=folder_fd, follow_symlinks=True)
                    except FileExistsError:
                        continue
                    self.path = str(folder / name)
                    break
                else:
                    raise UsageError(f"cannot write {self.out}: no free temp name in {folder}")
            finally:
                os.close(folder_fd)
        self.file.close()

    def commit(self) -> None:
        self.link()
        os.replace(self.path, self.out)

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        if self.path is not None and os.path.exists(self.path):
            os.unlink(self.path)


def make_temp_file(out: Path) -> tuple[int, str]:
    """A named temp file beside `out`, with the permissions a plain open() would give (mkstemp's are 0600)."""
    check_target(out)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(out), suffix=".tmp", dir=out.resolve().parent)
    except OSError as e:
        raise _cannot_write(out, e) from None
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def write_chunks_atomically(path: PathLike, chunks: Iterable) -> None:
    """Write `chunks` (bytes-like) to `path`: all of them, or nothing is left behind."""
    write_all_atomically({path: chunks})


def write_all_atomically(files: Mapping[PathLike, bytes | Iterable]) -> None:
    """Write every file, or none: each is written unnamed (or to a temp file) first, the names
    come last.  A value is bytes or an iterable of bytes-like chunks."""
    temps: list[TempOutput] = []
    try:
        for path, data in files.items():
            temp = TempOutput(path)
            temps.append(temp)
            try:
                for chunk in [data] if isinstance(data, bytes | bytearray | memoryview) else data:
                    temp.write(chunk)
            except OSError as e:
                raise _cannot_write(temp.out, e) from None
        for temp in temps:
            temp.link()
        for temp in temps:
            os.replace(temp.path, temp.out)
    except BaseException:
        for temp in temps:
            temp.discard()
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write bytes to path via an unnamed (or temp) file in the same folder and a rename."""
    write_all_atomically({path: data})
