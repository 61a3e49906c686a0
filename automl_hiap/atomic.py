"""Files written whole or not at all, and folders checked before any compute writes to them.

Every file the project writes goes through :func:`atomic_path` (or the text/bytes/JSON helpers
on it): the writer fills a temporary file beside the destination, which is flushed to disk and
renamed over it, so a kill or a full disk leaves the previous file, never half of a new one.
The file ends with mode ``0o666`` less the umask, as a file a program opens for writing gets,
whatever the writer did (``tempfile.mkstemp``, and safetensors' own temporary file, make it
private, ``0o600``).

A write that fails for a reason the user can fix (disk full, read-only folder) is a
:class:`WriteError`: one line naming the file. :func:`check_folder` finds those reasons before
the work starts, by really creating a file where the output will go.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from automl_hiap.errors import UserError

MIN_FREE_BYTES = 16 * 2**20  # less than this free is a full disk, whatever the output's size
# what torch and safetensors say when the OS refused a write (they drop the errno)
_FAILED_WRITE_MARKS = ("inline_container", "PytorchStreamWriter", "I/O error")


class WriteError(UserError):
    """A file or folder cannot be written: disk full, read-only, or a file where a folder goes."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that needs a path (``torch.save``,
    ``safetensors``' ``save_file``, ``savefig``); it replaces ``path`` once the block ends.

    The temporary name keeps ``path``'s suffix, for writers that pick the format from it. On an
    error nothing of it is left, and a failed write is re-raised as a :class:`WriteError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}")
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~umask())
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException as exc:
        failed = isinstance(exc, OSError) or _failed_write(exc)
        error = _write_error(path, exc) if failed else None  # free space seen with the partial file
        if error is not None:
            _let_go(exc)
        with suppress(OSError):
            temporary.unlink(missing_ok=True)
        if error is not None:
            raise error from None
        raise
    with suppress(OSError):  # the rename itself; some filesystems cannot sync a folder
        _fsync(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any, indent: int | None = None) -> None:
    write_text(path, json.dumps(data, indent=indent))


def copy_file(source: str | Path, path: str | Path) -> None:
    """Copy ``source`` to ``path`` (contents only: the copy's mode follows the umask)."""
    with atomic_path(path) as temporary:
        shutil.copyfile(source, temporary)


def check_folder(folder: str | Path, label: str, need_bytes: int = 0) -> None:
    """Stop with one line, before any work, if files cannot go into ``folder``: a file in its
    place, no permission to write, or less than ``need_bytes`` (at least
    :data:`MIN_FREE_BYTES`) free. A missing folder is checked where it will be created; nothing
    is created."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == folder else f" ({existing} is a file)"
        raise WriteError(f"{label} {folder}: expected a folder, found a file{where}")
    reason = unwritable(existing)
    if reason is not None:
        raise WriteError(f"{label} {folder}: cannot write in {existing} ({reason})")
    free = shutil.disk_usage(existing).free
    need = max(need_bytes, MIN_FREE_BYTES)
    if free < need:
        raise WriteError(
            f"{label} {folder}: {_size(free)} free on its disk, it needs at least {_size(need)}"
        )


def unwritable(path: str | Path) -> str | None:
    """Why ``path`` (a folder, or an existing file) cannot be written; None if it can."""
    path = Path(path)
    try:
        if path.is_dir():
            probe = path / f".write-check.{secrets.token_hex(6)}.tmp"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            probe.unlink()
        else:
            os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def umask() -> int:
    """The process's umask, read without changing it where Linux tells it (another thread may
    be creating files meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder after a rename in it) to the disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _let_go(exc: BaseException | None) -> None:
    """Free what the frames of a dropped error, and of the errors it was raised in, hold:
    torch's writer keeps the partial file open there, its space taken until exit."""
    while exc is not None:
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__context__


def _failed_write(exc: BaseException) -> bool:
    """Whether a writer's own error type reports an OS write failure."""
    return not isinstance(exc, UserError) and any(m in str(exc) for m in _FAILED_WRITE_MARKS)


def _write_error(path: Path, exc: BaseException) -> WriteError:
    code = exc.errno if isinstance(exc, OSError) else None
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    reason = (exc.strerror if isinstance(exc, OSError) else None) or text
    try:
        free: int | None = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    # torch and safetensors drop the errno: a disk left (nearly) full by the write tells it
    full = code is None and free is not None and free < MIN_FREE_BYTES
    if code in (errno.ENOSPC, errno.EDQUOT) or full:
        reason = f"no space left on the device, {_size(free or 0)} free"
        return WriteError(
            f"{path}: cannot write it ({reason}); free some space and run the same command "
            "again (a search resumes from its last checkpoint)"
        )
    return WriteError(f"{path}: cannot write it ({reason})")


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"
