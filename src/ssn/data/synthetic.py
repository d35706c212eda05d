"""Synthetic images whose label distribution is known exactly.

Each image holds two discs on a noisy background. Annotators disagree in two ways, each with a
probability the image shows:

- disc k is marked with probability p_k, shown by its brightness (0.25 + 0.75 p_k);
- boundaries are drawn loose (radius + 2 pixels) with probability q, shown by the brightness
  of a thin ring around each disc (q); otherwise tight.

Each annotator draws (marks disc 1, marks disc 2, loose) independently, so an image has 8
possible label maps with known probabilities. They are stored as ``truth_maps`` (N, 8, H, W) and
``truth_probs`` (N, 8) beside ``images`` and ``masks``, and the GED^2 of a model's samples against
this exact distribution is computable (:func:`ssn.metrics.image_metrics` with ``truth``).
Images differ by seed; patient ids are ``synthetic-00000``... so splits work as for real data.
"""

from __future__ import annotations

import itertools

import numpy as np

from .arrays import SegmentationArrays

__all__ = ["make_synthetic"]

_OUTCOMES = list(itertools.product((0, 1), repeat=3))  # (marks disc 1, marks disc 2, loose)
_LOOSE_MARGIN = 2


def make_synthetic(num_images: int = 512, size: int = 64, num_annotators: int = 4, seed: int = 0) -> SegmentationArrays:
    """Images (N, 1, size, size) float32, masks (N, A, size, size) uint8, and the exact truth."""
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels to hold two discs; got {size}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((num_images, 1, size, size), dtype=np.float32)
    truth_maps = np.empty((num_images, len(_OUTCOMES), size, size), dtype=np.uint8)
    truth_probs = np.empty((num_images, len(_OUTCOMES)), dtype=np.float64)
    masks = np.empty((num_images, num_annotators, size, size), dtype=np.uint8)
    for i in range(num_images):
        radius = rng.uniform(0.08, 0.14, 2) * size
        # Two discs in opposite halves, so that they never touch.
        centre_y = rng.uniform(0.3, 0.7, 2) * size
        centre_x = np.array([rng.uniform(0.22, 0.3), rng.uniform(0.7, 0.78)]) * size
        mark_p = rng.uniform(0.0, 1.0, 2)
        loose_q = rng.uniform(0.0, 1.0)
        distance = np.sqrt((yy[None] - centre_y[:, None, None]) ** 2 + (xx[None] - centre_x[:, None, None]) ** 2)
        tight = distance <= radius[:, None, None]
        loose = distance <= radius[:, None, None] + _LOOSE_MARGIN
        image = 0.1 + 0.05 * rng.standard_normal((size, size))
        for k in range(2):
            image[loose[k] & ~tight[k]] += 0.2 + 0.6 * loose_q
            image[tight[k]] = 0.25 + 0.75 * mark_p[k] + 0.05 * rng.standard_normal(int(tight[k].sum()))
        images[i, 0] = image
        for j, (mark1, mark2, is_loose) in enumerate(_OUTCOMES):
            shapes = loose if is_loose else tight
            truth_maps[i, j] = (mark1 & shapes[0]) | (mark2 & shapes[1])
            truth_probs[i, j] = (
                (mark_p[0] if mark1 else 1 - mark_p[0])
                * (mark_p[1] if mark2 else 1 - mark_p[1])
                * (loose_q if is_loose else 1 - loose_q)
            )
        chosen = rng.choice(len(_OUTCOMES), size=num_annotators, p=truth_probs[i])
        masks[i] = truth_maps[i, chosen]
    patient = np.array([f"synthetic-{i:05d}" for i in range(num_images)])
    return SegmentationArrays(images, masks, patient, truth_maps, truth_probs)
