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

__all__ = ["make_synthetic", "make_synthetic_volumes"]

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


def make_synthetic_volumes(
    folder,
    num_cases: int = 24,
    shape: tuple[int, int, int] = (40, 40, 24),
    num_annotators: int = 3,
    seed: int = 0,
    splits: tuple[int, int] = (16, 4),
):
    """NIfTI volumes whose label distribution is known exactly, and their volume list.

    Each volume holds a region of interest (an ellipsoid, written as ``mask``) with two balls in
    it: ball 1 is class 1, marked by an annotator with probability p1, ball 2 is class 2, marked
    with probability p2; the image (one channel) shows p_k as the ball's brightness. The four
    possible label maps and their probabilities are saved beside each case as ``truth.npz``
    (``maps`` (4, *shape), ``probs`` (4,)). The first ``splits[0]`` cases are for training, the
    next ``splits[1]`` for validation, the rest for testing.

    Returns:
        The path of the volume list, ``folder/list.json``.
    """
    import json
    from pathlib import Path

    import nibabel

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    size = np.array(shape, dtype=np.float64)
    roi = np.linalg.norm((grid - size / 2) / (size / 2.1), axis=-1) < 1
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    listing: dict = {"training": [], "validation": [], "test": []}
    for i in range(num_cases):
        case = folder / f"case{i:03d}"
        case.mkdir(parents=True, exist_ok=True)
        radius = rng.uniform(0.12, 0.17, 2) * size.min()
        centres = [
            size * np.array([0.32, rng.uniform(0.4, 0.6), 0.5]),
            size * np.array([0.68, rng.uniform(0.4, 0.6), 0.5]),
        ]
        balls = [np.linalg.norm(grid - c, axis=-1) <= r for c, r in zip(centres, radius)]
        p = rng.uniform(0.0, 1.0, 2)
        image = (0.2 + 0.05 * rng.standard_normal(shape)) * roi
        for k in range(2):
            image[balls[k]] = 0.3 + 0.7 * p[k] + 0.05 * rng.standard_normal(int(balls[k].sum()))
        maps, probs = [], []
        for mark1, mark2 in itertools.product((0, 1), repeat=2):
            label = np.zeros(shape, np.uint8)
            label[balls[0] & bool(mark1)] = 1
            label[balls[1] & bool(mark2)] = 2
            maps.append(label)
            probs.append((p[0] if mark1 else 1 - p[0]) * (p[1] if mark2 else 1 - p[1]))
        np.savez_compressed(case / "truth.npz", maps=np.stack(maps), probs=np.array(probs))
        nibabel.save(nibabel.Nifti1Image(image.astype(np.float32), affine), str(case / "image.nii.gz"))
        nibabel.save(nibabel.Nifti1Image(roi.astype(np.uint8), affine), str(case / "mask.nii.gz"))
        labels = []
        for a, chosen in enumerate(rng.choice(4, size=num_annotators, p=np.array(probs))):
            nibabel.save(nibabel.Nifti1Image(maps[chosen], affine), str(case / f"rater{a}.nii.gz"))
            labels.append(f"{case.name}/rater{a}.nii.gz")
        split = "training" if i < splits[0] else "validation" if i < sum(splits) else "test"
        listing[split].append(
            {
                "id": case.name,
                "image": [f"{case.name}/image.nii.gz"],
                "label": labels,
                "mask": f"{case.name}/mask.nii.gz",
            }
        )
    path = folder / "list.json"
    path.write_text(json.dumps(listing, indent=1))
    return path
