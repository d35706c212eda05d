"""Random draws keyed on what they are for, so that a result never depends on how work was split.

An image's samples, augmentation and training noise come from generators seeded by
(seed, the image's key), never from one stream shared by a batch. The same image therefore gets
the same draws whatever the batch size, the number of DataLoader workers or the number of
processes under ``torchrun``, and a resumed run replays exactly the draws of the run it replaces.

A *generator argument* anywhere in ``ssn`` may be ``None`` (PyTorch's global generator), one
``torch.Generator`` (one stream for the whole batch), or a sequence of them, one per batch
element (see :func:`standard_normal`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["Generators", "derive_seed", "generators_for", "standard_normal"]

Generators = torch.Generator | Sequence[torch.Generator] | None


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (e.g. seed, epoch, position): independent streams for
    different keys (NumPy's ``SeedSequence`` hashing), the same one for the same keys."""
    return int(
        np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32).astype(np.uint64)
        @ np.array([1 << 31, 1], dtype=np.uint64)
    ) & ((1 << 63) - 1)


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
