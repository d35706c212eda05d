"""Shared helpers of the benchmark scripts: where things are, timing, and the result files.

- command lines: :func:`benchmark_parser` and, for the LIDC benchmarks, :func:`add_lidc_dir`;
- paths: :data:`ROOT`, :data:`BENCHMARKS`, :data:`RESULTS` and the data folders of the real
  data sets (:func:`lidc_dir`, :func:`lidc_files`, :func:`brats_dir`, :func:`brats_tcga_dir`);
- timing: :func:`time_interleaved`, :func:`medians`, :func:`paired_ratio`, :func:`machine`;
- result files, all written atomically (a reader sees the old file or the new one):
  :func:`write` (``results/NAME.json`` with the machine block), :func:`save_json` (any JSON
  file as it is), :func:`update_json` (read, change and write back one file, with other
  invocations kept out meanwhile) and :func:`recorded_command` (a benchmark's command line, as recorded).

Launching ``ssn`` processes (threads, the model table, running several at once) is in
:mod:`benchmarks._training`.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ssn.files import write_json

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
SHARED_DATA = ROOT.parent / "shared" / "data"  # where the data sets lie when no variable names them
LIDC_FILES = ("lidc_slices_128.npz", "split.json")


# --- the data folders ---------------------------------------------------------------------------


def data_dir(variable: str, folder: str) -> Path:
    """``$VARIABLE`` when it is set, else ``../shared/data/FOLDER`` beside the repository."""
    return Path(os.environ.get(variable, SHARED_DATA / folder))


def lidc_dir() -> Path:
    """The LIDC-IDRI folder (``lidc_slices_128.npz``, ``split.json``): ``$SSN_LIDC_DIR`` or ../shared/data/lidc."""
    return data_dir("SSN_LIDC_DIR", "lidc")


def brats_dir() -> Path:
    """The ``brats_deepmedic`` cases: ``$SSN_BRATS_DIR`` or ../shared/data/brats_deepmedic."""
    return data_dir("SSN_BRATS_DIR", "brats_deepmedic")


def brats_tcga_dir() -> Path:
    """The ``brats_tcga`` cases: ``$SSN_BRATS_TCGA_DIR`` or ../shared/data/brats_tcga."""
    return data_dir("SSN_BRATS_TCGA_DIR", "brats_tcga")


def benchmark_parser(script: str, doc: str | None) -> argparse.ArgumentParser:
    """The command-line parser of ``benchmarks/SCRIPT.py``: its usage line shows how it runs
    (``python -m benchmarks.SCRIPT``) and its description is the first line of ``doc``."""
    return argparse.ArgumentParser(prog=f"python -m benchmarks.{script}", description=(doc or "").splitlines()[0])


def add_lidc_dir(parser: argparse.ArgumentParser) -> None:
    """The ``--data-dir`` option of the LIDC benchmarks, defaulting to :func:`lidc_dir`."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=lidc_dir(),
        help="the LIDC folder holding lidc_slices_128.npz and split.json (default: $SSN_LIDC_DIR or ../shared/data/lidc)",
    )


def lidc_files(folder: Path) -> tuple[Path, Path]:
    """The slices (``lidc_slices_128.npz``) and the patient split (``split.json``) in ``folder``.

    Raises:
        SystemExit: one of them is missing, saying how to point at the data.
    """
    data, split = (folder / name for name in LIDC_FILES)
    if not data.is_file() or not split.is_file():
        raise SystemExit(f"LIDC data not found in {folder}; set SSN_LIDC_DIR or --data-dir")
    return data, split


# --- timing -------------------------------------------------------------------------------------


def time_interleaved(
    candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, ``repeats`` each, in alternating order (ABBA...).

    Alternating the order cancels the bias of always running first; pairing the runs lets
    callers take ratios per round, so that drift of the machine hits both sides alike.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in times.items()}


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of numerator / denominator time."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


def machine() -> dict:
    """The date, the CPU, torch's thread count and the versions, as recorded beside the figures."""
    from ssn.engine.trainer import processor

    return {
        "date": datetime.date.today().isoformat(),
        "cpu": processor(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


# --- result files -------------------------------------------------------------------------------


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (made if missing): another invocation writing a file
    there waits, so two never share the temporary file of an atomic write or lose each other's runs."""
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def save_json(path: Path, payload: dict) -> Path:
    """``payload`` as indented JSON at ``path``, atomically; returns the path."""
    with locked(path.parent):
        write_json(payload, path)
    return path


def update_json(path: Path, change: Callable[[dict], dict]) -> dict:
    """Write ``change(content)`` to ``path``, ``content`` being the file as it is now (``{}`` when
    there is none), read and written under the folder's lock so that benchmarks running at once
    each keep the others' runs. Returns what was written."""
    with locked(path.parent):
        content = json.loads(path.read_text()) if path.is_file() else {}
        updated = change(content)
        write_json(updated, path)
    return updated


def write(name: str, payload: dict) -> Path:
    """``results/NAME.json``: the machine block followed by ``payload``, atomically."""
    path = save_json(RESULTS / f"{name}.json", {"machine": machine(), **payload})
    print(f"wrote {path}")
    return path


def recorded_command(script: str, *args: str) -> str:
    """The command line of a benchmark as recorded in its results: ``python -m benchmarks.SCRIPT ARGS``."""
    return " ".join(["python", "-m", f"benchmarks.{script}", *args])
