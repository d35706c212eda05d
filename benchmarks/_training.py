"""Launching ``ssn`` processes from the benchmarks: the model table, threads, several at once.

- :data:`MODEL_FLAGS` and :func:`model_flags`: the ``ssn train`` flags that make each compared
  model (deterministic U-Net, diagonal SSN, low-rank SSN, Prob. U-Net) from shared settings;
- :func:`thread_env`: the environment of a child process limited to some threads;
- :func:`ssn_command`: ``python -m ssn ...`` with this interpreter;
- :class:`Job`, :func:`logged_jobs` and :func:`run_jobs`: run commands, some at once, each
  with its log, and stop with the failing one's log named. Stopped by Ctrl-C or SIGTERM, they
  let each child save its state first (``ssn train`` stops after its step), so the same
  command resumes the runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

MODEL_FLAGS: dict[str, tuple[str, ...]] = {  # in the order of the result tables
    "deterministic": ("--method", "deterministic"),
    "diagonal": ("--rank", "0"),
    "low-rank": ("--rank", "10"),
    "prob-unet": ("--method", "prob-unet"),
}
SSN_AND_BASELINES = ("deterministic", "diagonal", "low-rank")  # the models without the Prob. U-Net


def model_flags(name: str) -> list[str]:
    """The ``ssn train`` flags of the model ``name`` (a key of :data:`MODEL_FLAGS`), a new list."""
    try:
        return list(MODEL_FLAGS[name])
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_FLAGS)}") from None


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment with ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` set to ``threads``."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def ssn_command(*args: str) -> list[str]:
    """``python -m ssn ARGS`` with the interpreter running this benchmark."""
    return [sys.executable, "-m", "ssn", *args]


@dataclass
class Job:
    """One command to run, its stdout and stderr going to ``log``."""

    name: str
    command: list[str]
    log: Path


def logged_jobs(commands: Mapping[str, Sequence[str]], log_dir: Path, phase: str) -> list[Job]:
    """One job per named command, logging to ``LOG_DIR/NAME.PHASE.log``."""
    return [Job(name, list(command), log_dir / f"{name}.{phase}.log") for name, command in commands.items()]


@dataclass
class _Running:
    job: Job
    process: subprocess.Popen
    log: IO[str]
    started: float


def run_jobs(
    jobs: Sequence[Job],
    env: Mapping[str, str],
    at_once: int | None = None,
    when_done: Callable[[Job, float], object] | None = None,
    poll_seconds: float = 5.0,
) -> None:
    """Run the jobs, ``at_once`` at a time (all of them when ``None``), starting them in order.

    ``when_done(job, minutes)`` is called for each job that ends well, soon after it ends, with the
    wall minutes since it started; no new job starts while it runs.

    Raises:
        SystemExit: a job ended with a non-zero status, naming its log. No further job starts;
            those still running are left to finish. Or Ctrl-C or SIGTERM stopped the jobs: SIGTERM
            is passed on to the running children (Ctrl-C from a terminal reaches them itself), they
            are waited for while they save their state (10 minutes at most), and none starts.
    """
    pending, running = list(jobs), []
    limit = max(1, len(pending) if at_once is None else at_once)
    with _TermAsInterrupt():
        try:
            while pending or running:
                while pending and len(running) < limit:
                    running.append(_start(pending.pop(0), env))
                with contextlib.suppress(
                    subprocess.TimeoutExpired
                ):  # wake when the oldest ends, or to look at the others
                    running[0].process.wait(timeout=poll_seconds)
                for entry in [r for r in running if r.process.poll() is not None]:
                    running.remove(entry)
                    entry.log.close()
                    if entry.process.returncode != 0:
                        raise SystemExit(f"{entry.job.name} failed; see {entry.job.log}")
                    if when_done is not None:
                        when_done(entry.job, (time.perf_counter() - entry.started) / 60)
        except _Stop as stop:
            _let_children_save(running, stop.forward)
            raise SystemExit(
                f"stopped ({stop.why}): the runs still training saved their state; the same command resumes them"
            ) from None


class _Stop(BaseException):
    def __init__(self, why: str, forward: signal.Signals | None) -> None:
        super().__init__(why)
        self.why, self.forward = why, forward


class _TermAsInterrupt:
    """While jobs run: SIGTERM (``kill``) and Ctrl-C raise :class:`_Stop` in the main thread.
    Ctrl-C in a terminal reaches the children too (one process group), so it is not forwarded;
    SIGTERM sent to this process alone is."""

    def __enter__(self) -> _TermAsInterrupt:
        import threading

        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {
                signal.SIGTERM: signal.signal(signal.SIGTERM, self._term),
                signal.SIGINT: signal.signal(signal.SIGINT, self._int),
            }
        return self

    def _term(self, signum, frame) -> None:
        raise _Stop("SIGTERM", signal.SIGTERM)

    def _int(self, signum, frame) -> None:
        raise _Stop("Ctrl-C", None)

    def __exit__(self, *exc) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, signal.SIG_DFL if previous is None else previous)  # type: ignore[arg-type]


def _let_children_save(running: list[_Running], forward: signal.Signals | None, seconds: float = 600) -> None:
    """Send ``forward`` to the running children, wait for them to end (at most ``seconds``,
    then kill them) and close their logs."""
    for entry in running:
        if forward is not None and entry.process.poll() is None:
            entry.process.send_signal(forward)
    deadline = time.monotonic() + seconds
    for entry in running:
        try:
            entry.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            entry.process.kill()
            entry.process.wait()
        except _Stop:  # asked again while waiting: stop them at once
            for other in running:
                other.process.kill()
            entry.process.wait()
        entry.log.close()


def _start(job: Job, env: Mapping[str, str]) -> _Running:
    log = open(job.log, "w")  # noqa: SIM115 (kept open for the child process, closed when it ends)
    process = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, env=dict(env))
    return _Running(job, process, log, time.perf_counter())
