"""Layer factories keyed on ``spatial_dims``, and padding to a multiple: one code path for 1D-3D."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["conv_layer", "transposed_conv_layer", "max_pool_layer", "norm_layer", "pad_to_multiple", "crop_to"]

NORMS = ("instance", "batch", "group", None)


def _pick(spatial_dims: int, *layers):
    if spatial_dims not in (1, 2, 3):
        raise ConfigError(f"spatial_dims must be 1, 2 or 3; got {spatial_dims}")
    return layers[spatial_dims - 1]


def conv_layer(spatial_dims: int) -> type[nn.Conv1d] | type[nn.Conv2d] | type[nn.Conv3d]:
    """``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d``."""
    return _pick(spatial_dims, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def transposed_conv_layer(
    spatial_dims: int,
) -> type[nn.ConvTranspose1d] | type[nn.ConvTranspose2d] | type[nn.ConvTranspose3d]:
    return _pick(spatial_dims, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def max_pool_layer(spatial_dims: int) -> type[nn.Module]:
    return _pick(spatial_dims, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def norm_layer(kind: str | None, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation layer: ``"instance"``, ``"batch"``, ``"group"`` (8 groups) or ``None``."""
    if kind is None or kind == "none":
        return nn.Identity()
    if kind == "instance":
        return _pick(spatial_dims, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)(channels, affine=True)
    if kind == "batch":
        return _pick(spatial_dims, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ConfigError(f"unknown norm {kind!r}; choose 'instance', 'batch', 'group' or none")


def pad_to_multiple(x: Tensor, divisor: int | Sequence[int]) -> Tensor:
    """Pad the spatial dimensions of (B, C, *S) at their far end up to multiples of ``divisor``
    (one number, or one per axis).

    Sizes are padded to at least ``2 * divisor`` so that the coarsest level keeps more than one
    element per dimension (instance normalisation needs that). Reflection where the input is
    large enough, zeros otherwise. Undo with :func:`crop_to`.
    """
    sizes = x.shape[2:]
    divisors = [divisor] * len(sizes) if isinstance(divisor, int) else list(divisor)
    extra = [max((-size) % d, 2 * d - size) for size, d in zip(sizes, divisors)]
    if not any(extra):
        return x
    pad = []
    for amount in reversed(extra):  # F.pad lists the last dimension first
        pad += [0, amount]
    reflect_ok = all(amount < size for amount, size in zip(extra, sizes))
    return F.pad(x, pad, mode="reflect" if reflect_ok else "constant")


def crop_to(x: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """(B, C, *S') -> (B, C, *spatial), keeping the near corner (the inverse of the padding above)."""
    index: tuple[Any, ...] = (..., *(slice(0, size) for size in spatial))
    return x[index]
