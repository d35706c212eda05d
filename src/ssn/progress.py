"""Progress of long loops: a bar on a terminal, a line every 30 seconds in a log file."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

__all__ = ["progress"]

T = TypeVar("T")


def progress(items: Iterable[T], total: int, what: str, show: bool = True, every: float = 30.0) -> Iterator[T]:
    """Yield ``items``, showing how many of ``total`` are done: a tqdm bar on a terminal,
    otherwise (a log file, a batch job) one line on stderr every ``every`` seconds and at the end.
    ``show=False`` (processes other than the main one) shows nothing."""
    if not show:
        yield from items
        return
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=what, file=sys.stderr, leave=False)
        return
    start = last = time.perf_counter()
    for done, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last > every or done == total:
            last = now
            rate = done / max(now - start, 1e-9)
            left = (total - done) / rate if rate > 0 else float("nan")
            print(
                f"  {what}: {done}/{total}, {now - start:.0f} s, about {left:.0f} s left", file=sys.stderr, flush=True
            )
