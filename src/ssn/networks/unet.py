"""A U-Net (Ronneberger et al., 2015) written once for 1, 2 and 3 spatial dimensions.

Layers come from the factories of :mod:`ssn.networks.layers`, keyed on ``spatial_dims``, so there
is no 2D copy of a 3D class. It is registered as the backbone ``"unet"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .layers import NORMS, conv_layer, crop_to, max_pool_layer, norm_layer, pad_to_multiple, transposed_conv_layer

__all__ = ["UNet", "phiseg_unet"]


class _ConvBlock(nn.Sequential):
    """``convs`` (conv 3 -> norm -> LeakyReLU) layers."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str | None, convs: int = 2):
        conv = conv_layer(spatial_dims)
        layers = []
        for index in range(convs):
            layers += [
                conv(in_channels if index == 0 else out_channels, out_channels, 3, padding=1, bias=norm is None),
                norm_layer(norm, spatial_dims, out_channels),
                nn.LeakyReLU(0.01, inplace=True),
            ]
        super().__init__(*layers)


class UNet(nn.Module):
    """A U-Net that returns the last decoder feature map, shape (B, features[0], *S).

    Inputs of any size are padded (reflect where possible, else zeros) up to a multiple of
    ``2 ** (len(features) - 1)`` (and at least twice that) and the output is cropped back, so the feature map always has
    the input's spatial size.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: image channels.
        features: channels per level, coarsest last; ``len(features) - 1`` poolings.
        norm: ``"instance"`` (default), ``"slice-instance"`` (3D: each slice along the last axis
            normalised on its own, :class:`~ssn.networks.layers.SliceInstanceNorm`, for a U-Net
            inflated from a 2D one), ``"batch"``, ``"group"`` or ``None``.
        dropout: dropout probability at the bottleneck.
        convs_per_level: 3x3 convolutions in each encoder and decoder block (2 in the original
            U-Net, 3 in PHiSeg's).
        upsample: ``"transposed"`` (default; 2x2 transposed convolutions of stride 2, as the
            original U-Net) or ``"linear"`` ((bi/tri)linear interpolation, then a 1x1
            convolution). A transposed convolution of stride 2 applies a different weight to each
            of the 2x2 positions it fills, which stamps a pattern of period 2 on the features,
            and of period 4 after two levels; interpolation has one rule for every position.
        pool: the pooling factor of each level, 2 on every axis (default) or one factor per
            axis, 1 or 2: ``[2, 2, 1]`` keeps the last axis whole, for volumes of few thick
            slices (LIDC-3D), and makes a 3D U-Net that can start as a 2D one applied slice by
            slice (:func:`ssn.networks.inflate.inflate_state_dict`).

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
        convs_per_level: int = 2,
        upsample: str = "transposed",
        pool: int | Sequence[int] = 2,
    ) -> None:
        super().__init__()
        features = list(features)
        if not features or not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in features):
            raise ConfigError(
                f"features must be one or more positive channel counts, e.g. [32, 64, 128, 256]; got {features}"
            )
        norm = None if norm == "none" else norm
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; choose 'instance', 'slice-instance', 'batch', 'group' or none")
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1); got {dropout}")
        if not isinstance(convs_per_level, int) or isinstance(convs_per_level, bool) or convs_per_level < 1:
            raise ConfigError(f"convs_per_level must be a positive integer; got {convs_per_level!r}")
        if upsample not in ("transposed", "linear"):
            raise ConfigError(f"upsample must be 'transposed' or 'linear'; got {upsample!r}")
        factors = [pool] * spatial_dims if isinstance(pool, int) else list(pool)
        if len(factors) != spatial_dims or any(isinstance(f, bool) or f not in (1, 2) for f in factors):
            raise ConfigError(
                f"pool must be 2 (or 1) or one factor of 1 or 2 per axis ({spatial_dims} of them), e.g. "
                f"[2, 2, 1]; got {pool!r}"
            )
        self.spatial_dims = spatial_dims
        self.out_channels = features[0]
        self.pool_factors = tuple(factors)
        levels = len(features) - 1
        per_axis = tuple(f**levels for f in factors)
        #: the multiple each input size is padded to: one number when the axes pool alike
        self.divisor: int | tuple[int, ...] = per_axis[0] if len(set(per_axis)) == 1 else per_axis
        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in features:
            self.encoders.append(_ConvBlock(spatial_dims, channels, width, norm, convs_per_level))
            channels = width
        step: Any = self.pool_factors[0] if len(set(self.pool_factors)) == 1 else self.pool_factors
        self.pool = max_pool_layer(spatial_dims)(step)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for coarse, fine in zip(features[:0:-1], features[-2::-1]):
            if upsample == "transposed":
                self.upsamplers.append(transposed_conv_layer(spatial_dims)(coarse, fine, step, stride=step))
            else:
                mode = ("linear", "bilinear", "trilinear")[spatial_dims - 1]
                self.upsamplers.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=step, mode=mode, align_corners=False),
                        conv_layer(spatial_dims)(coarse, fine, 1),
                    )
                )
            self.decoders.append(_ConvBlock(spatial_dims, 2 * fine, fine, norm, convs_per_level))

    def forward(self, image: Tensor) -> Tensor:
        """(B, in_channels, *S) -> (B, out_channels, *S)."""
        if image.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"UNet with spatial_dims={self.spatial_dims} expects (B, channels, "
                f"{', '.join('DHW'[-self.spatial_dims :])}); got shape {tuple(image.shape)}"
            )
        spatial = image.shape[2:]
        x = pad_to_multiple(image, self.divisor)
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = self.pool(x)
            x = encoder(x)
            skips.append(x)
        x = self.dropout(skips.pop())
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            x = decoder(torch.cat([upsample(x), skips.pop()], dim=1))
        return crop_to(x, spatial)


def phiseg_unet(
    spatial_dims: int = 2,
    in_channels: int = 1,
    features: Sequence[int] = (32, 64, 128, 192, 192, 192, 192),
    norm: str | None = "batch",
    convs_per_level: int = 3,
    dropout: float = 0.0,
) -> UNet:
    """The U-Net of the SSN paper's LIDC experiment, which reused PHiSeg's (Baumgartner et al. 2019).

    Seven levels of 32, 64, 128, 192, 192, 192, 192 channels, three convolutions per level and
    batch norm. It is registered as the backbone ``"phiseg-unet"``; narrower ``features`` (for
    example ``[16, 32, 64, 96, 96, 96, 96]``) fit a CPU budget.
    """
    return UNet(spatial_dims, in_channels, features, norm, dropout, convs_per_level)
