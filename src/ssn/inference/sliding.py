"""Whole volumes through a network trained on patches: sliding windows, one coherent distribution.

Each window w of the volume gives a low-rank Gaussian over its logits,
eta_w = mu_w + P_w z + sqrt(D_w) * eps. The windows overlap; with a Gaussian importance map
g_w (highest at the window's centre) and normalised weights a_w(x) = g_w(x) / sum_v g_v(x),
the volume's logit map is the blend of the windows' logits,

    eta(x) = sum_w a_w(x) eta_w(x),

with **one** latent draw z shared by every window and one per-voxel noise eps(x) shared by the
windows that cover x. That is again a low-rank Gaussian over the whole volume,

    mu = sum_w a_w mu_w,   P = sum_w a_w P_w,   sqrt(D) = sum_w a_w sqrt(D_w),

so a sample is one coherent volume (its R latent factors act on every window at once), and its
density, entropy and temperature work as for a single pass. Note that the diagonal blends as a
standard deviation, not a variance: that is what blending the samples means. Where one window
covers the whole volume, the blend is that window's distribution exactly; where the network is
translation-equivariant over the overlap (a fully convolutional backbone whose receptive field
fits inside the windows) every window agrees and the blend is the single-pass distribution.

Memory: the blended factor is R * C floats per voxel (1.4 GB for a 240x240x155 volume with 4
classes at rank 10), so :func:`predict_volume` first crops the volume to the bounding box of its
region of interest, and draws samples a few at a time (:func:`stream_samples`), never holding
more than a chunk of logit maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ..distributions import LowRankLogitDistribution
from ..errors import ConfigError
from ..randomness import case_seed

__all__ = [
    "window_corners",
    "importance_map",
    "sliding_window_distribution",
    "stream_samples",
    "roi_box",
    "predict_volume",
    "labelled_draws",
]


def window_corners(size: int, window: int, overlap: float) -> list[int]:
    """Start positions of windows of ``window`` voxels covering ``size`` voxels, consecutive
    windows overlapping by at least ``overlap`` (a share of the window); the last one ends at
    the border. A size within one window gives the single corner 0."""
    if not 0 <= overlap < 1:
        raise ConfigError(f"overlap must be in [0, 1); got {overlap}")
    if size <= window:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    corners = list(range(0, size - window + 1, step))
    if corners[-1] != size - window:
        corners.append(size - window)
    return corners


def importance_map(window: Sequence[int], sigma_scale: float = 0.125) -> Tensor:
    """A Gaussian bump over a window, (*window) float32: 1 at the centre, standard deviation
    ``sigma_scale`` of the side along each axis, floored at 1e-3 so that every voxel counts."""
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in window], indexing="ij")
    exponent = torch.zeros(tuple(window), dtype=torch.float64)
    for g, n in zip(grids, window):
        exponent += ((g - (n - 1) / 2) / max(sigma_scale * n, 1e-6)) ** 2
    return torch.exp(-0.5 * exponent).clamp_min(1e-3).float()


def _distribution_of(output) -> LowRankLogitDistribution:
    """A model's output as a distribution: an SSN's as it is; a deterministic network's logits
    (B, C, *S) as a point mass (rank 0, a zero diagonal: every sample is the logits' argmax)."""
    if isinstance(output, LowRankLogitDistribution):
        return output
    if isinstance(output, Tensor):
        return LowRankLogitDistribution(
            output,
            output.new_zeros((output.shape[0], 0, *output.shape[1:])),
            torch.zeros_like(output),
            validate_args=False,
        )
    raise ConfigError(
        f"sliding-window inference needs a model that returns a logit distribution or logits; "
        f"{type(output).__name__} is neither (the Prob. U-Net samples volumes in one window only)"
    )


@torch.no_grad()
def sliding_window_distribution(
    model: Callable,
    image: Tensor,
    window: Sequence[int],
    overlap: float = 0.5,
    roi: Tensor | None = None,
    sigma_scale: float = 0.125,
    device: str | torch.device = "cpu",
) -> LowRankLogitDistribution:
    """The blended distribution of a whole image (see the module's docstring).

    Args:
        model: maps (1, channels, *W) images (and ``mask=``) to a :class:`LowRankLogitDistribution`
            (an SSN) or to logits (a deterministic network).
        image: (channels, *S) float, on the CPU.
        window: the window's size per axis (a size above the image's is cut to it).
        roi: optional (*S) bool region of interest, passed to the model as its mask.

    Returns:
        A distribution with batch 1 over (C, *S) logit maps, on the CPU.
    """
    spatial = tuple(image.shape[1:])
    if len(window) != len(spatial):
        raise ConfigError(f"the window needs {len(spatial)} sizes for a {len(spatial)}D image; got {list(window)}")
    window = tuple(min(int(w), s) for w, s in zip(window, spatial))
    weight = importance_map(window, sigma_scale)
    starts = [window_corners(s, w, overlap) for s, w in zip(spatial, window)]
    total = torch.zeros(spatial)
    loc = factor = std = torch.empty(0)  # allocated at the first window, once its sizes are known
    for corner in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(spatial)):
        region = tuple(slice(int(c), int(c) + w) for c, w in zip(corner, window))
        mask = None if roi is None else roi[region].unsqueeze(0).to(device)
        dist = _distribution_of(model(image[(slice(None), *region)].unsqueeze(0).to(device), mask=mask))
        if not loc.numel():
            classes, rank = dist.num_classes, dist.rank
            loc, std = torch.zeros(classes, *spatial), torch.zeros(classes, *spatial)
            factor = torch.zeros(rank, classes, *spatial)
        total[region] += weight
        loc[(slice(None), *region)] += dist.loc[0].float().cpu() * weight
        std[(slice(None), *region)] += dist.cov_diag[0].float().sqrt().cpu() * weight
        if rank:
            factor[(slice(None), slice(None), *region)] += dist.cov_factor[0].float().cpu() * weight
    loc /= total
    std /= total
    factor /= total
    return LowRankLogitDistribution(
        loc.unsqueeze(0), factor.unsqueeze(0), std.square_().unsqueeze(0), validate_args=False
    )


def stream_samples(
    dist: LowRankLogitDistribution,
    num_samples: int,
    chunk_size: int = 2,
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """Label maps (*S) uint8 of a batch-1 distribution, one at a time, drawn ``chunk_size`` at a
    time: memory holds one chunk of logit maps, whatever ``num_samples`` is."""
    for start in range(0, num_samples, chunk_size):
        count = min(chunk_size, num_samples - start)
        labels = dist.sample_labels(count, chunk_size=count, generator=generator)
        yield from labels[:, 0]


def roi_box(roi: np.ndarray, margin: int = 8) -> tuple[slice, ...]:
    """The bounding box of a region of interest (*S), widened by ``margin`` voxels (within the volume)."""
    inside = np.argwhere(roi)
    if inside.size == 0:
        raise ConfigError("the region of interest is empty")
    low = np.maximum(inside.min(0) - margin, 0)
    high = np.minimum(inside.max(0) + 1 + margin, roi.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


@torch.no_grad()
def predict_volume(
    model,
    image: np.ndarray,
    roi: np.ndarray,
    num_samples: int,
    window: Sequence[int],
    overlap: float = 0.5,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    chunk_size: int = 2,
    box: tuple[slice, ...] | None = None,
) -> tuple[tuple[slice, ...], Iterator[Tensor]]:
    """Samples of a whole volume, streamed: (the box around the region of interest, an iterator
    of label maps of that box, each (*box) uint8, background outside the region of interest).

    Args:
        image: (channels, *S) float (normalised); roi: (*S) bool.
        box: the part of the volume to predict (default: :func:`roi_box` of ``roi``).
    """
    box = roi_box(roi) if box is None else box
    crop = torch.from_numpy(np.array(image[(slice(None), *box)], dtype=np.float32))  # a copy: memory-maps are read-only
    crop_roi = torch.from_numpy(np.array(roi[box], dtype=bool))
    model.eval()
    dist = sliding_window_distribution(model, crop, window, overlap, crop_roi, device=device)
    if not math.isclose(temperature, 1.0):
        dist = dist.scaled(temperature)
    outside = ~crop_roi

    def samples() -> Iterator[Tensor]:
        for labels in stream_samples(dist, num_samples, chunk_size, generator):
            labels[outside] = 0
            yield labels

    return box, samples()


@torch.no_grad()
def labelled_draws(
    model,
    image: np.ndarray,
    roi: np.ndarray,
    labels: np.ndarray,
    num_samples: int,
    window: Sequence[int],
    overlap: float = 0.5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    *,
    case_id: str,
) -> tuple[Tensor, Tensor]:
    """The samples of a labelled volume as ``ssn evaluate`` and whole-volume validation score
    them: (samples (N, *box) uint8, annotations (A, *box)) over the box around the region of
    interest and the labels, drawn at the model's temperature from a generator seeded by
    ``case_seed(seed, case_id)``, each case its own draws.

    Args:
        image: (channels, *S) float (normalised); roi: (*S) bool; labels: (A, *S) class maps.
    """
    box = roi_box(np.asarray(roi) | np.asarray(labels).any(0))
    generator = torch.Generator().manual_seed(case_seed(seed, case_id))
    _, stream = predict_volume(
        model, image, roi, num_samples, window, overlap, model.temperature, generator, device, box=box
    )
    return torch.stack(list(stream)), torch.from_numpy(np.array(labels[(slice(None), *box)]))
