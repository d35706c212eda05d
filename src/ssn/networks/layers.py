"""Layer factories keyed on ``spatial_dims``, and padding to a multiple: one code path for 1D-3D."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = [
    "conv_layer",
    "transposed_conv_layer",
    "max_pool_layer",
    "norm_layer",
    "SliceInstanceNorm",
    "pad_to_multiple",
    "crop_to",
]

NORMS = ("instance", "slice-instance", "batch", "group", None)


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


class SliceInstanceNorm(nn.Module):
    """Instance normalisation of each slice of a volume: for (B, C, X, Y, Z), the statistics of
    each channel are taken over (X, Y) of each slice along the last axis Z, as a 2D network's
    ``InstanceNorm2d`` takes them over each image. A 3D U-Net with it and no pooling along Z
    (``pool=[2, 2, 1]``), inflated from a 2D one (:mod:`ssn.networks.inflate`), computes the 2D
    network slice by slice exactly. Its parameters are ``InstanceNorm2d(affine=True)``'s.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"SliceInstanceNorm expects (B, C, X, Y, Z); got {tuple(x.shape)}")
        batch, channels, *plane, depth = x.shape
        slices = x.movedim(-1, 1).reshape(batch * depth, channels, *plane)  # (B Z, C, X, Y)
        out = F.instance_norm(slices, weight=self.weight, bias=self.bias, eps=self.eps)
        return out.view(batch, depth, channels, *plane).movedim(1, -1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def norm_layer(kind: str | None, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation layer: ``"instance"``, ``"slice-instance"`` (3D only:
    :class:`SliceInstanceNorm`), ``"batch"``, ``"group"`` (8 groups) or ``None``."""
    if kind is None or kind == "none":
        return nn.Identity()
    if kind == "instance":
        return _pick(spatial_dims, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)(channels, affine=True)
    if kind == "slice-instance":
        if spatial_dims != 3:
            raise ConfigError(
                f"norm 'slice-instance' normalises each slice of a volume, so it needs 3 spatial dimensions; "
                f"got {spatial_dims}: use 'instance'"
            )
        return SliceInstanceNorm(channels)
    if kind == "batch":
        return _pick(spatial_dims, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ConfigError(f"unknown norm {kind!r}; choose 'instance', 'slice-instance', 'batch', 'group' or none")


def pad_to_multiple(x: Tensor, divisor: int | Sequence[int]) -> Tensor:
    """Pad the spatial dimensions of (B, C, *S) at their far end up to multiples of ``divisor``
    (one number, or one per axis).

    Axes that pool (divisor above 1) are padded to at least ``2 * divisor``, so that the coarsest
    level keeps more than one element along them (instance normalisation needs that); an axis
    that does not pool (divisor 1) is left as it is, one slice included. Reflection where the
    input is large enough, zeros otherwise. Undo with :func:`crop_to`.
    """
    sizes = x.shape[2:]
    divisors = [divisor] * len(sizes) if isinstance(divisor, int) else list(divisor)
    extra = [max((-size) % d, 2 * d - size if d > 1 else 0) for size, d in zip(sizes, divisors)]
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
