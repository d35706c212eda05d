"""A DeepMedic-like two-pathway network (Kamnitsas et al. 2017), the SSN paper's BraTS backbone.

DeepMedic reads each voxel's neighbourhood twice: a normal pathway of 3^d convolutions at full
resolution, and a subsampled pathway, the same stack on the image downsampled by 3 (a wider
context at the same cost), upsampled back. The two are concatenated and mixed by 1^d
convolutions (DeepMedic's "fully connected" layers, there 150 channels).

Differences from the original, so that it fits the backbone interface (features of the input's
size, any input size): convolutions are padded ("same") where DeepMedic's are valid and take a
larger input segment than they label; the subsampled pathway averages 3^d blocks and is
upsampled trilinearly (DeepMedic repeats each value); normalisation is batch norm and the
activation PReLU, as there. Registered as the backbone ``"deepmedic"``, for 2D or 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .layers import NORMS, conv_layer, norm_layer

__all__ = ["DeepMedic"]


def _stack(spatial_dims: int, in_channels: int, channels: Sequence[int], norm: str | None) -> nn.Sequential:
    conv, layers = conv_layer(spatial_dims), []
    for width in channels:
        layers += [
            conv(in_channels, width, 3, padding=1, bias=norm is None),
            norm_layer(norm, spatial_dims, width),
            nn.PReLU(width),
        ]
        in_channels = width
    return nn.Sequential(*layers)


class DeepMedic(nn.Module):
    """Normal and subsampled pathways, concatenated, then 1^d convolutions: (B, in, *S) -> (B, out_channels, *S).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (MR sequences).
        channels: the convolutions of each pathway (DeepMedic: 30, 30, 40, 40, 40, 40, 50, 50).
        fc_channels: the 1^d layers after the pathways (DeepMedic: two of 150).
        subsample: the subsampled pathway's factor (DeepMedic: 3).
        norm: ``"batch"`` (DeepMedic), ``"instance"``, ``"group"`` or ``None``.

    Attributes:
        out_channels: the feature channels returned (``fc_channels[-1]``).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        channels: Sequence[int] = (30, 30, 40, 40, 40, 40, 50, 50),
        fc_channels: Sequence[int] = (150, 150),
        subsample: int = 3,
        norm: str | None = "batch",
    ) -> None:
        super().__init__()
        channels, fc_channels = list(channels), list(fc_channels)
        for name, widths in (("channels", channels), ("fc_channels", fc_channels)):
            if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
                raise ConfigError(f"{name} must be one or more positive channel counts; got {widths}")
        if spatial_dims not in (2, 3):
            raise ConfigError(f"DeepMedic is defined for 2 or 3 spatial dims; got {spatial_dims}")
        if not isinstance(subsample, int) or subsample < 2:
            raise ConfigError(f"subsample must be an integer of at least 2; got {subsample!r}")
        norm = None if norm == "none" else norm
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; choose 'batch', 'instance', 'group' or none")
        self.spatial_dims, self.subsample = spatial_dims, subsample
        self.normal = _stack(spatial_dims, in_channels, channels, norm)
        self.context = _stack(spatial_dims, in_channels, channels, norm)
        conv, layers, width = conv_layer(spatial_dims), [], 2 * channels[-1]
        for out in fc_channels:
            layers += [conv(width, out, 1, bias=norm is None), norm_layer(norm, spatial_dims, out), nn.PReLU(out)]
            width = out
        self.fully_connected = nn.Sequential(*layers)
        self.out_channels = fc_channels[-1]

    def forward(self, image: Tensor) -> Tensor:
        """(B, in_channels, *S) -> (B, out_channels, *S)."""
        if image.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"DeepMedic with spatial_dims={self.spatial_dims} expects (B, channels, *S); "
                f"got shape {tuple(image.shape)}"
            )
        spatial = image.shape[2:]
        pool = F.avg_pool3d if self.spatial_dims == 3 else F.avg_pool2d
        coarse = pool(image, self.subsample, ceil_mode=True, count_include_pad=False)
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        context = F.interpolate(self.context(coarse), size=spatial, mode=mode, align_corners=False)
        return self.fully_connected(torch.cat([self.normal(image), context], dim=1))
