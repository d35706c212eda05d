"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from .errors import OutputError

__all__ = ["write_atomically", "write_json", "write_csv", "check_writable", "output_target"]


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(temporary)`` and rename the temporary file onto ``path``.

    - A symbolic link is written through: its target gets the new contents and the link stays.
    - Anything that is not a regular file (a device such as ``/dev/full``, a folder, a pipe) is
      refused, never replaced.
    - A full disk, or any other failure to write, is a :class:`~ssn.errors.OutputError` naming
      the file and the reason; the temporary file is removed and the old file is kept.

    The temporary name is this process's own and keeps the whole name as its ending
    (``.tmp.<pid>.name.nii.gz`` for ``name.nii.gz``), so that writers that go by the ending
    (nibabel) or append a missing suffix (``numpy.savez``) write to it as given.
    """
    target = output_target(path)
    temporary = target.with_name(f".tmp.{os.getpid()}.{target.name}")
    try:
        write(temporary)
        os.replace(temporary, target)
    except BaseException as error:  # a failed or interrupted write leaves neither a temporary nor half a file
        temporary.unlink(missing_ok=True)
        reason = _write_failure(error)
        if reason is not None:
            raise OutputError(f"cannot write {path}: {reason}") from None
        raise


def output_target(path: str | os.PathLike) -> Path:
    """The file that writing ``path`` replaces: ``path``, or the end of its chain of links.

    Raises:
        OutputError: the target exists and is not a regular file (a device, a folder, a pipe).
    """
    path = Path(path)
    target = path.resolve() if path.is_symlink() else path
    if target.exists() and not target.is_file():
        kind = "a folder" if target.is_dir() else "a device or other special file"
        via = f" (the link {path} points to it)" if target != path else ""
        raise OutputError(f"{target} is {kind}{via}, not a regular file; give a file path to write")
    return target


def _write_failure(error: BaseException) -> str | None:
    """What a user can do about a failed write, or ``None`` for an error that is not about the disk."""
    if isinstance(error, OSError):
        if error.errno == errno.ENOSPC:
            return "no space left on the device; free some space or write elsewhere"
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT):
            return f"{error.strerror}; write elsewhere"
        return None
    message = str(error)
    if "No space left" in message or "StorageFull" in message:  # safetensors' wording of ENOSPC
        return "no space left on the device; free some space or write elsewhere"
    if isinstance(error, RuntimeError) and ("inline_container" in message or "PytorchStreamWriter" in message):
        return "torch could not finish the file (is the disk full?); free some space or write elsewhere"
    return None


def write_json(payload: dict, path: str | os.PathLike) -> None:
    """``payload`` as indented JSON at ``path``, atomically."""
    import json

    write_atomically(path, lambda p: p.write_text(json.dumps(payload, indent=2) + "\n"))


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Rows of one set of keys as a CSV file with a header, atomically."""
    import csv

    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(path, write)


def check_writable(path: str | os.PathLike) -> None:
    """Make ``path``'s folder and check a file can be written there, before any long work.

    Raises:
        OutputError: ``path`` is not a regular file (a device, a folder), or its folder cannot
            be made or written, naming the reason.
    """
    target = output_target(path)
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}; choose another --out") from None
