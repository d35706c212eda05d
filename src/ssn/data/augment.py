"""Batch augmentation, alike for images and masks: random flips; for 2D images small rotations and
crops rescaled to full size; for volumes 90-degree rotations and an intensity shift and scale."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def augment(
    images: Tensor,
    masks: Tensor,
    max_degrees: float = 10.0,
    min_crop: float = 1.0,
    generator: torch.Generator | None = None,
):
    """Flip each spatial axis with probability 1/2; for 2D images also rotate and crop; for
    volumes also rotate by a multiple of 90 degrees and shift and scale the intensities.

    The 2D transform is one affine resampling: a rotation by up to +-``max_degrees`` and a
    square crop whose side is a uniform fraction in [``min_crop``, 1] of the image's, at a
    uniform position inside the image, rescaled to the full size (the paper's LIDC setup:
    crops of 98-128 px of a 128 px slice, ``min_crop`` = 0.766).

    Volumes (3 spatial dims) are rotated by k * 90 degrees (k uniform in 0..3) in the plane of
    their first two axes when those have one size (the axial plane of a NIfTI volume), and each
    channel of each image becomes ``scale * x + shift`` with scale in [0.9, 1.1] and shift in
    [-0.1, 0.1] (z-scored intensities), as the paper's BraTS setup did.

    Args:
        images: (B, channels, *S) float; masks: (B, A, *S) integer labels (a region of interest
            can ride along as one more "annotator" channel).

    Returns:
        The augmented (images, masks); masks are resampled by nearest neighbour.
    """
    if not 0 < min_crop <= 1:
        raise ValueError(f"min_crop must be in (0, 1]; got {min_crop}")
    batch, spatial_dims = images.shape[0], images.dim() - 2
    for axis in range(2, 2 + spatial_dims):
        flip = torch.rand(batch, generator=generator) < 0.5
        if flip.any():
            images = torch.where(_expand(flip, images), images.flip(axis), images)
            masks = torch.where(_expand(flip, masks), masks.flip(axis), masks)
    if spatial_dims == 2 and (max_degrees > 0 or min_crop < 1):
        angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(max_degrees)
        scale = min_crop + (1 - min_crop) * torch.rand(batch, generator=generator)
        # the crop's centre, in the normalised coordinates [-1, 1] of the input
        shift = (torch.rand(batch, 2, generator=generator) * 2 - 1) * (1 - scale).unsqueeze(1)
        cos, sin = angle.cos() * scale, angle.sin() * scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        rotated = F.grid_sample(masks.to(images.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        masks = rotated.round().to(masks.dtype)
    if spatial_dims == 3:
        if images.shape[2] == images.shape[3]:
            turns = torch.randint(0, 4, (batch,), generator=generator)
            for k in range(1, 4):
                chosen = turns == k
                if chosen.any():
                    images = torch.where(_expand(chosen, images), images.rot90(k, (2, 3)), images)
                    masks = torch.where(_expand(chosen, masks), masks.rot90(k, (2, 3)), masks)
        shape = (batch, images.shape[1]) + (1,) * spatial_dims
        scale = 0.9 + 0.2 * torch.rand(shape, generator=generator)
        shift = 0.2 * torch.rand(shape, generator=generator) - 0.1
        images = images * scale.to(images.dtype) + shift.to(images.dtype)
    return images, masks


def _expand(flags: Tensor, like: Tensor) -> Tensor:
    return flags.view(-1, *([1] * (like.dim() - 1)))
