"""The on-disk cache of decoded data: ``$SSN_CACHE_DIR``, default ``~/.cache/ssn``.

A dataset is decoded once (an ``.npz`` decompressed, a NIfTI case z-scored) into a folder of
uncompressed ``.npy`` files plus ``done.json``, and memory-mapped afterwards, so that a training
patch reads only the patch and data-loader workers share the pages. Folders are filled under a
name of this process's own and renamed into place, so that processes decoding the same data at
once (under torchrun) never see half-written files; a damaged folder (a full disk, a killed
process) is removed and decoded again.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ..errors import DataError

__all__ = ["cache_dir", "read_cached", "write_cache_folder"]


def cache_dir() -> Path:
    """Where decoded datasets are cached for memory-mapping: ``$SSN_CACHE_DIR``, default ``~/.cache/ssn``."""
    return Path(os.environ.get("SSN_CACHE_DIR", Path.home() / ".cache" / "ssn"))


def cache_write_error(folder: Path, error: OSError) -> DataError:
    """The error for a cache folder that cannot be written, with the fix."""
    return DataError(
        f"cannot write the data cache {folder} ({error.strerror or error}): set SSN_CACHE_DIR to a "
        "writable folder with room for the decoded data"
    )


def read_cached(folder: Path, read):
    """``read(folder)`` for a complete cache folder, or ``None`` when it is damaged (a truncated
    or missing file, e.g. after a full disk): the folder is then moved aside and removed, so that
    the caller decodes the source again, and a line on stderr says so."""
    try:
        return read(folder)
    except (OSError, ValueError, EOFError, KeyError) as error:  # "mmap length is greater than file size", ...
        print(
            f"ssn: the cached copy in {folder} is damaged ({error}); removed, decoding the source again",
            file=sys.stderr,
        )
        aside = folder.with_name(f"{folder.name}.damaged.{os.getpid()}")
        try:
            os.rename(folder, aside)  # atomic: another process rebuilding it meanwhile is not disturbed
        except OSError:  # another process moved it first
            return None
        shutil.rmtree(aside, ignore_errors=True)
        return None


def write_cache_folder(folder: Path, write) -> None:
    """Fill a cache folder atomically: ``write(temporary)`` fills a folder of this process's
    own, which is then renamed to ``folder``. Processes that decode the same data at once (under
    torchrun) never see each other's half-written files; the first rename wins, the others'
    copies are dropped. An unwritable cache raises :class:`DataError` with the fix."""
    temporary = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    try:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        write(temporary)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        raise cache_write_error(folder, error) from None
    for attempt in range(2):
        try:
            os.rename(temporary, folder)
            return
        except OSError:
            if (folder / "done.json").is_file() or attempt:  # already there: another process was first
                shutil.rmtree(temporary, ignore_errors=True)
                return
            stale = folder.with_name(f"{folder.name}.stale.{os.getpid()}")  # an incomplete folder (older ssn)
            try:
                os.rename(folder, stale)
                shutil.rmtree(stale, ignore_errors=True)
            except OSError:
                pass
