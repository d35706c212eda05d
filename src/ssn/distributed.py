"""Several processes under ``torchrun``: who this process is, and the few collective steps ssn needs.

``torchrun --nproc_per_node N -m ssn train ...`` starts N copies of the command, each with the
environment variables RANK, LOCAL_RANK and WORLD_SIZE set. :func:`join` reads them, sets up
``torch.distributed`` (``nccl`` for CUDA devices, ``gloo`` on the CPU) and gives each process its
own GPU (``cuda:LOCAL_RANK``). A process group the caller initialised itself is joined as it is.
Without either, :func:`join` returns a world of one process and everything below is a no-op,
so the same code runs alone or distributed.

Work is split by :meth:`World.shard` (every ``size``-th item from ``rank`` on). Only the main
process (rank 0) writes files and logs; results are reduced with :meth:`World.sum` and gathered
with :meth:`World.gather`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError

Items = TypeVar("Items", bound=Sequence[Any] | np.ndarray)

__all__ = ["World", "join", "leave", "launched_by_torchrun", "check_device", "all_reduce"]


def all_reduce(tensor: torch.Tensor, op=None) -> torch.Tensor:
    """The sum (or ``op``) of ``tensor`` over the processes when ``torch.distributed`` is
    initialised, else ``tensor`` itself; a new tensor on ``tensor``'s device (through the
    current GPU under nccl)."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else tensor.device
    total = tensor.detach().clone().to(device)
    dist.all_reduce(total, op=op or dist.ReduceOp.SUM)
    return total.to(tensor.device)


def check_device(device: str) -> None:
    """Raise :class:`~ssn.errors.ConfigError` for a device this machine cannot use, with the fix."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be cpu, cuda or cuda:N; got {device!r}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for, but this machine has no CUDA device; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} "
                "CUDA device(s), cuda:0 to cuda:N-1"
            )


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that ``torchrun`` started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class World:
    """The processes of one job: this one's ``rank`` among ``size``, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Whether this is the process that writes files and logs (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, items: Items) -> Items:
        """This process's share of ``items``: every ``size``-th one from ``rank`` on."""
        return cast(Items, items[self.rank :: self.size])  # a slice of a sequence or array is one too

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over the processes (a new tensor, on its device)."""
        return all_reduce(tensor) if self.distributed else tensor.clone()

    def gather(self, value: Any) -> list:
        """Every process's ``value`` (picklable), in rank order, on every process."""
        if not self.distributed:
            return [value]
        values: list = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def gather_to_main(self, value: Any) -> list | None:
        """Every process's ``value`` (picklable), in rank order, on the main process; ``None``
        on the others (what only the main process writes need not be copied to every process)."""
        if not self.distributed:
            return [value]
        values: list | None = [None] * self.size if self.main else None
        dist.gather_object(value, values, dst=0)
        return values

    def all_agree(self, flag: bool) -> bool:
        """True when ``flag`` is true on every process."""
        return bool(self.sum(torch.tensor([float(not flag)]))[0] == 0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def join(device: str = "cpu") -> tuple[World, str]:
    """This process's :class:`World` and the device it should use.

    Under torchrun, initialises the default process group once (``nccl`` when ``device`` is
    CUDA, ``gloo`` otherwise) and maps ``cuda`` to ``cuda:LOCAL_RANK``. Alone, returns
    ``(World(), device)`` and initialises nothing. A device this machine cannot use raises
    :class:`~ssn.errors.ConfigError`.
    """
    check_device(device)
    if dist.is_available() and dist.is_initialized() and not launched_by_torchrun():
        # a process group the caller set up itself (torch.multiprocessing.spawn, say): join it as it is
        rank, size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.device(device).type == "cuda" and torch.device(device).index is None:
            device = f"cuda:{torch.cuda.current_device()}"
        return World(rank, size, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))), device
    if not launched_by_torchrun():
        return World(), device
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if torch.cuda.device_count() < local_size:
            raise ConfigError(
                f"torchrun started {local_size} processes on this machine but it has "
                f"{torch.cuda.device_count()} CUDA devices: use --nproc_per_node {torch.cuda.device_count()}"
            )
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(rank, size, local_rank, local_size), device


def leave() -> None:
    """Tear the process group down (at the end of a command run under torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
