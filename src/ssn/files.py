"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically", "write_csv", "check_writable"]


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(temporary)`` and rename the temporary file onto ``path``.

    The temporary name keeps the whole name as its ending (``.tmp.name.nii.gz`` for
    ``name.nii.gz``), so writers that go by the ending (nibabel) or append a missing suffix
    (``numpy.savez``) write to it as given.
    """
    path = Path(path)
    temporary = path.with_name(f".tmp.{path.name}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:  # a failed or interrupted write leaves neither a temporary nor half a file
        temporary.unlink(missing_ok=True)
        raise


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
        RunError: the folder cannot be made or written, naming the reason.
    """
    from .errors import RunError

    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise RunError(f"cannot write {path}: {error.strerror or error}; choose another --out") from None
