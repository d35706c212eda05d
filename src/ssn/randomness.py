"""Random draws keyed on what they are for, so that a result never depends on how work was split.

An image's samples, augmentation and training noise come from generators seeded by
(seed, the image's key), never from one stream shared by a batch; a volume's samples from
(seed, its case id), :func:`case_seed`. The same image therefore gets
the same draws whatever the batch size, the number of DataLoader workers or the number of
processes under ``torchrun``, and a resumed run replays exactly the draws of the run it replaces.

A *generator argument* anywhere in ``ssn`` may be ``None`` (PyTorch's global generator), one
``torch.Generator`` (one stream for the whole batch), or a sequence of them, one per batch
element (see :func:`standard_normal`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["Generators", "case_seed", "derive_seed", "generators_for", "standard_normal"]

Generators = torch.Generator | Sequence[torch.Generator] | None


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (e.g. seed, epoch, position): independent streams for
    different keys (NumPy's ``SeedSequence`` hashing), the same one for the same keys."""
    return int(
        np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32).astype(np.uint64)
        @ np.array([1 << 31, 1], dtype=np.uint64)
    ) & ((1 << 63) - 1)


def case_seed(seed: int, case_id: str) -> int:
    """The seed of one named case's draws (a volume's id): ``derive_seed`` of ``seed`` and the
    SHA-256 of the name, so that each case draws its own samples, the same ones whatever its
    place in a list or the process it falls to. One seed for every case would give all of them
    the same latent draws, and a mean over cases would keep the Monte Carlo error of a single
    case's samples."""
    digest = hashlib.sha256(case_id.encode()).digest()
    return derive_seed(seed, *(int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)))


def generators_for(
    seed: int, keys: Sequence[int] | np.ndarray, device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """One generator on ``device`` per key, seeded by ``derive_seed(seed, key)``."""
    return [torch.Generator(device).manual_seed(derive_seed(seed, int(key))) for key in keys]


def standard_normal(
    shape: Sequence[int],
    generator: Generators,
    batch_dim: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """``torch.randn(shape)``. With a sequence of generators, one per index of ``batch_dim``,
    each batch element's values come from its own generator: an element's draws are then the
    same whichever batch it is drawn in."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    generators = list(generator)
    if len(generators) != shape[batch_dim]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[batch_dim]}: give one per batch element")
    if not generators:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    one = list(shape)
    one[batch_dim] = 1
    return torch.cat([torch.randn(one, generator=g, dtype=dtype, device=device) for g in generators], batch_dim)
