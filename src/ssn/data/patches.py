"""Training patches drawn from volumes, centred on the foreground for a set share of them.

As in the paper's BraTS setup (DeepMedic's sampling), a patch is centred on a random voxel of
the foreground (any annotator's non-background label) with probability ``foreground_share``,
and on a random voxel of the region of interest otherwise. Patches reaching past the volume's
border are padded: zero intensity, background label, outside the region of interest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .nifti import Volume

__all__ = ["PatchSampler", "extract_patch"]


def extract_patch(array: np.ndarray, corner: Sequence[int], size: Sequence[int], fill=0) -> np.ndarray:
    """The block ``array[..., corner : corner + size]`` over the last ``len(size)`` axes, padded
    with ``fill`` where it reaches past the array. Reads only the block (memory-maps stay lazy)."""
    spatial = array.shape[-len(size) :]
    out = np.full(array.shape[: -len(size)] + tuple(size), fill, dtype=array.dtype)
    source, target = [], []
    for start, length, extent in zip(corner, size, spatial):
        low, high = max(start, 0), min(start + length, extent)
        if low >= high:
            return out
        source.append(slice(low, high))
        target.append(slice(low - start, high - start))
    into: tuple[Any, ...] = (..., *target)
    read: tuple[Any, ...] = (..., *source)
    out[into] = array[read]
    return out


class PatchSampler:
    """Draws (image, label maps, region of interest) patches from a list of volumes.

    Args:
        volumes: the training cases, read (memory-mapped) with :func:`~ssn.data.nifti.read_case`.
        patch_size: the patch's spatial size, one number per axis.
        foreground_share: the share of patches centred on the foreground (the paper: 0.5).
    """

    def __init__(self, volumes: Sequence[Volume], patch_size: Sequence[int], foreground_share: float = 0.5) -> None:
        if not volumes:
            raise DataError("no training volume to draw patches from")
        if not 0 <= foreground_share <= 1:
            raise ConfigError(f"foreground_share must be in [0, 1]; got {foreground_share}")
        dims = len(volumes[0].shape)
        if len(patch_size) != dims or min(patch_size) < 1:
            raise ConfigError(f"patch_size needs {dims} positive sizes for {dims}D volumes; got {list(patch_size)}")
        self.volumes = list(volumes)
        self.patch_size = tuple(int(s) for s in patch_size)
        self.foreground_share = foreground_share
        self._foreground, self._box = [], []
        for volume in self.volumes:
            if volume.labels is None:
                raise DataError(f"case {volume.id!r} has no label map, so it cannot be trained on")
            self._foreground.append(np.argwhere(np.asarray(volume.labels).any(0)).astype(np.int32))
            inside = np.argwhere(np.asarray(volume.mask))
            self._box.append((inside.min(0), inside.max(0) + 1))

    def centre(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """A patch centre in volume ``index``: a foreground voxel (with probability
        ``foreground_share``, if the volume has any) or a voxel of the region of interest."""
        foreground = self._foreground[index]
        if foreground.size and rng.random() < self.foreground_share:
            return foreground[rng.integers(len(foreground))]
        low, high = self._box[index]
        mask = self.volumes[index].mask
        for _ in range(1000):  # rejection sampling inside the box: the mask fills much of it
            point = rng.integers(low, high)
            if mask[tuple(point)]:
                return point
        return np.argwhere(np.asarray(mask))[rng.integers(int(np.count_nonzero(mask)))]

    def draw(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One patch of volume ``index``: image (channels, *P) float32, label maps (A, *P) uint8,
        region of interest (*P) bool."""
        volume = self.volumes[index]
        corner = self.centre(index, rng) - np.array(self.patch_size) // 2
        assert volume.labels is not None  # checked in __init__
        return (
            extract_patch(volume.image, corner, self.patch_size, 0.0),
            extract_patch(volume.labels, corner, self.patch_size, 0),
            extract_patch(volume.mask, corner, self.patch_size, False),
        )

    def draw_many(self, indices: Sequence[int] | np.ndarray, rng: np.random.Generator):
        """Stacked patches of the volumes ``indices`` (one each): (B, channels, *P), (B, A, *P), (B, *P).
        Volumes with fewer annotators repeat theirs (cyclically) up to the largest count."""
        patches = [self.draw(int(i), rng) for i in indices]
        annotators = max(p[1].shape[0] for p in patches)
        labels = [np.resize(p[1], (annotators, *p[1].shape[1:])) for p in patches]
        return np.stack([p[0] for p in patches]), np.stack(labels), np.stack([p[2] for p in patches])
