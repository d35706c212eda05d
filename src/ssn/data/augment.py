"""Batch augmentation: random flips and small rotations, applied alike to images and masks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def augment(images: Tensor, masks: Tensor, max_degrees: float = 10.0, generator: torch.Generator | None = None):
    """Flip each spatial axis with probability 1/2; rotate 2D images by up to +-max_degrees.

    Args:
        images: (B, channels, *S) float; masks: (B, A, *S) integer labels.

    Returns:
        The augmented (images, masks); masks are resampled by nearest neighbour.
    """
    batch, spatial_dims = images.shape[0], images.dim() - 2
    for axis in range(2, 2 + spatial_dims):
        flip = torch.rand(batch, generator=generator) < 0.5
        if flip.any():
            images = torch.where(_expand(flip, images), images.flip(axis), images)
            masks = torch.where(_expand(flip, masks), masks.flip(axis), masks)
    if spatial_dims == 2 and max_degrees > 0:
        angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(max_degrees)
        cos, sin = angle.cos(), angle.sin()
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        rotated = F.grid_sample(masks.to(images.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        masks = rotated.round().to(masks.dtype)
    return images, masks


def _expand(flags: Tensor, like: Tensor) -> Tensor:
    return flags.view(-1, *([1] * (like.dim() - 1)))
