"""Backbones: networks that map an image to a feature map of the same spatial size.

Any ``nn.Module`` with that contract can carry an SSN head. This module provides a U-Net
(Ronneberger et al., 2015) written once for 1, 2 and 3 spatial dimensions: layers come from
small factories keyed on ``spatial_dims``, so there is no 2D copy of a 3D class.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNet", "conv_layer", "norm_layer"]


def conv_layer(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d``."""
    return _pick(spatial_dims, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _transposed_conv_layer(spatial_dims: int) -> type[nn.Module]:
    return _pick(spatial_dims, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _max_pool_layer(spatial_dims: int) -> type[nn.Module]:
    return _pick(spatial_dims, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def norm_layer(kind: str | None, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation layer: ``"instance"``, ``"batch"``, ``"group"`` (8 groups) or ``None``."""
    if kind is None or kind == "none":
        return nn.Identity()
    if kind == "instance":
        return _pick(spatial_dims, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)(
            channels, affine=True
        )
    if kind == "batch":
        return _pick(spatial_dims, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"unknown norm {kind!r}; choose 'instance', 'batch', 'group' or None")


def _pick(spatial_dims: int, *layers):
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3; got {spatial_dims}")
    return layers[spatial_dims - 1]


class _ConvBlock(nn.Sequential):
    """Two (conv 3 -> norm -> LeakyReLU) layers."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str | None):
        conv = conv_layer(spatial_dims)
        super().__init__(
            conv(in_channels, out_channels, 3, padding=1, bias=norm is None),
            norm_layer(norm, spatial_dims, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
            conv(out_channels, out_channels, 3, padding=1, bias=norm is None),
            norm_layer(norm, spatial_dims, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UNet(nn.Module):
    """A U-Net that returns the last decoder feature map, shape (B, features[0], *S).

    Inputs of any size are padded (reflect where possible, else zeros) up to a multiple of
    ``2 ** (len(features) - 1)`` (and at least twice that) and the output is cropped back, so the feature map always has
    the input's spatial size.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: image channels.
        features: channels per level, coarsest last; ``len(features) - 1`` poolings.
        norm: ``"instance"`` (default), ``"batch"``, ``"group"`` or ``None``.
        dropout: dropout probability at the bottleneck.

    Attributes:
        out_channels: the number of feature channels returned (``features[0]``).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256),
        norm: str | None = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(features) < 1:
            raise ValueError("features needs at least one level, e.g. (32, 64, 128, 256)")
        self.spatial_dims = spatial_dims
        self.out_channels = features[0]
        self.divisor = 2 ** (len(features) - 1)
        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in features:
            self.encoders.append(_ConvBlock(spatial_dims, channels, width, norm))
            channels = width
        self.pool = _max_pool_layer(spatial_dims)(2)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for coarse, fine in zip(features[:0:-1], features[-2::-1]):
            self.upsamplers.append(_transposed_conv_layer(spatial_dims)(coarse, fine, 2, stride=2))
            self.decoders.append(_ConvBlock(spatial_dims, 2 * fine, fine, norm))

    def forward(self, image: Tensor) -> Tensor:
        """(B, in_channels, *S) -> (B, out_channels, *S)."""
        if image.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"UNet with spatial_dims={self.spatial_dims} expects (B, channels, "
                f"{', '.join('DHW'[-self.spatial_dims:])}); got shape {tuple(image.shape)}"
            )
        spatial = image.shape[2:]
        x = _pad_to_multiple(image, self.divisor)
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = self.pool(x)
            x = encoder(x)
            skips.append(x)
        x = self.dropout(skips.pop())
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            x = decoder(torch.cat([upsample(x), skips.pop()], dim=1))
        return x[(..., *(slice(0, size) for size in spatial))]


def _pad_to_multiple(x: Tensor, divisor: int) -> Tensor:
    """Pad the spatial dimensions at their far end up to multiples of ``divisor``.

    Sizes are padded to at least ``2 * divisor`` so that the bottleneck keeps more than one
    element per dimension (instance normalisation needs that).
    """
    extra = [max((-size) % divisor, 2 * divisor - size) for size in x.shape[2:]]
    if not any(extra):
        return x
    pad = []
    for amount in reversed(extra):  # F.pad lists the last dimension first
        pad += [0, amount]
    reflect_ok = all(amount < size for amount, size in zip(extra, x.shape[2:]))
    return F.pad(x, pad, mode="reflect" if reflect_ok else "constant")
