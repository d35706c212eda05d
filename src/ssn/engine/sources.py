"""Where training batches come from: images of one ``.npz``, or patches of NIfTI volumes.

Both sources give the training loop the same things: the items of an epoch, a batch for a list
of items (images (B, channels, *S) float, label maps (B, A, *S) long, region of interest
(B, *S) bool or ``None``), and a fixed validation set.

- :class:`ArraySource`: the items are image indices of the ``.npz``; an epoch sees each
  training image once, whole or (with ``patch_size``) as one crop placed like the volumes'
  patches. Validation and inference always see whole images.
- :class:`PatchSource`: the items are volume indices, each training volume repeated
  ``patches_per_volume`` times per epoch; each item becomes one patch drawn afresh. The
  validation set is a fixed set of whole validation volumes (:class:`VolumeValidationSet`,
  scored through sliding windows as ``ssn evaluate`` scores them), or with ``val_volumes:
  patches`` a fixed set of patches of them, drawn once from the seed. Patches are cheaper but
  blind to what the model does outside them: an SSN whose samples flood the volume far from the
  lesion can look best on patches centred on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..data.arrays import SegmentationArrays, load_arrays
from ..data.nifti import read_case
from ..data.patches import PatchSampler
from ..data.splits import holdout_split, select_split, split_record
from ..data.volume_list import VolumeList, is_volume_list, load_volume_list
from ..errors import ConfigError
from ..inference import image_tensor

__all__ = ["ValidationSet", "VolumeValidationSet", "Source", "ArraySource", "PatchSource", "open_source"]


@dataclass
class ValidationSet:
    """Fixed validation inputs: images (n, channels, *S), label maps (n, A, *S), region of
    interest (n, *S) or ``None``; possibly memory-mapped."""

    images: np.ndarray
    masks: np.ndarray
    roi: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class VolumeValidationSet:
    """Fixed whole validation volumes, each scored through sliding windows of ``window``."""

    volumes: list  # ssn.data.nifti.Volume, with labels
    window: list[int]

    def __len__(self) -> int:
        return len(self.volumes)


class Source(Protocol):
    """What the training loop takes from a source of training examples."""

    train_items: np.ndarray  # the items of an epoch, in a fixed order (the epoch's order permutes them)
    in_channels: int
    spatial_dims: int
    label_map: dict[int, int] | None  # volumes: file label value -> class; None for an .npz
    sequences: list[str] | None  # volumes: the MR sequences in channel order; None for an .npz
    held_out: dict | None  # a split the source chose itself (no split file), to record in the run
    input_shape: list[int] | None  # the training images' spatial shape (all alike), to warn on far other inputs

    def num_classes(self) -> int: ...

    def describe(self) -> str: ...

    def validation(self, count: int, rng: np.random.Generator) -> ValidationSet | VolumeValidationSet: ...

    def batch(self, items: np.ndarray, rng: np.random.Generator, whole: bool = False) -> tuple[Any, Any, Any]: ...


class ArraySource:
    """Batches of images from a dataset ``.npz``: whole, or crops of ``config.patch_size``.

    A crop holds a random foreground pixel (any annotator's) with probability
    ``config.foreground_share`` (where the image has one), placed uniformly among the crops that
    hold it; otherwise it is placed uniformly anywhere in the image. Crops stay inside the image,
    so every pixel, the border included, is seen in training.
    """

    label_map: dict[int, int] | None = None
    sequences: list[str] | None = None

    def __init__(self, data: SegmentationArrays, config) -> None:
        if getattr(config, "intensity", "zscore") != "zscore":
            raise ConfigError(
                f"intensity {config.intensity} is a setting of volume lists; the images of an .npz are taken as "
                "stored (uint8 / 255, floats as they are): drop --intensity"
            )
        self.data = data
        self.crop: tuple[int, ...] | None = None
        if config.patch_size is not None:
            shape = tuple(data.spatial_shape)
            if len(config.patch_size) != len(shape):
                raise ConfigError(
                    f"patch_size needs {len(shape)} sizes for {len(shape)}D images "
                    f"(e.g. {' '.join(str(s * 3 // 4) for s in shape)}); got {config.patch_size}"
                )
            if any(c > s for c, s in zip(config.patch_size, shape)):
                raise ConfigError(
                    f"patch_size {config.patch_size} is larger than the images "
                    f"({'x'.join(map(str, shape))}); choose at most their size"
                )
            if tuple(config.patch_size) != shape:
                self.crop = tuple(config.patch_size)
        self.foreground_share = config.foreground_share
        self.whole_after = getattr(config, "whole_after", None)
        if config.split_file:
            self.train_items = select_split(data, config.train_split, config.split_file)
            self.val_items = select_split(data, config.val_split, config.split_file)
            self.held_out: dict | None = None
        else:
            self.train_items, self.val_items = holdout_split(data, 0.1, config.seed)
            self.held_out = split_record(data, {"train": self.train_items, "val": self.val_items})
        self.in_channels, self.spatial_dims = data.in_channels, len(data.spatial_shape)
        self.input_shape: list[int] | None = [int(s) for s in data.spatial_shape]  # what inference should resemble

    def num_classes(self) -> int:
        return self.data.num_classes()

    def describe(self) -> str:
        crops = f" (one crop of {'x'.join(map(str, self.crop))} each" if self.crop else ""
        if self.crop:
            crops += (
                f", whole images after {self.whole_after:.0%} of the budget)" if self.whole_after is not None else ")"
            )
        return f"{self.train_items.size} training images{crops}, {self.val_items.size} validation images"

    def validation(self, count: int, rng: np.random.Generator) -> ValidationSet:
        chosen = np.sort(rng.choice(self.val_items, size=min(count, self.val_items.size), replace=False))
        return ValidationSet(self.data.images[chosen], self.data.masks[chosen])

    def batch(self, items: np.ndarray, rng: np.random.Generator, whole: bool = False):
        """Images (B, channels, *S), label maps (B, A, *S) and no region of interest for ``items``:
        crops of ``patch_size``, or whole images where there is none or ``whole`` is set."""
        images, masks = self.data.images[items], self.data.masks[items]
        if self.crop is not None and not whole:
            windows: list[tuple[Any, ...]] = [(..., *self._crop_window(np.asarray(m), self.crop, rng)) for m in masks]
            images = np.stack([np.asarray(i)[w] for i, w in zip(images, windows)])
            masks = np.stack([np.asarray(m)[w] for m, w in zip(masks, windows)])
        images = image_tensor(images)
        masks = torch.from_numpy(np.ascontiguousarray(masks)).long()
        return images, masks, None

    def _crop_window(self, masks: np.ndarray, crop: tuple[int, ...], rng: np.random.Generator) -> tuple[slice, ...]:
        """Slices of one crop of size ``crop`` for label maps (A, *S): around a foreground pixel
        (with probability ``foreground_share``) or anywhere."""
        shape = masks.shape[1:]
        low = [0] * len(shape)
        high = [s - c for s, c in zip(shape, crop)]  # the largest corner that stays inside
        if self.foreground_share > 0 and rng.random() < self.foreground_share:
            foreground = np.argwhere(masks.any(0))
            if len(foreground):
                pixel = foreground[rng.integers(len(foreground))]
                low = [max(0, p - c + 1) for p, c in zip(pixel, crop)]
                high = [min(h, p) for h, p in zip(high, pixel)]
        corner = [int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high)]
        return tuple(slice(c, c + size) for c, size in zip(corner, crop))


class PatchSource:
    """Batches of patches from the volumes of a dataset list (``--data LIST.json``)."""

    def __init__(self, listing: VolumeList, config) -> None:
        if config.split_file:
            raise ConfigError("a volume list carries its own splits (training, validation, test); drop split_file")
        if config.patch_size is None:
            raise ConfigError("training on volumes needs patch_size, e.g. --patch-size 64 64 64")
        if getattr(config, "whole_after", None) is not None:
            raise ConfigError(
                "whole_after is for the images of an .npz; volumes are trained on patches throughout (their inference "
                "runs through windows of patch_size): drop --whole-after"
            )
        self.listing = listing
        self.held_out: dict | None = None  # the list names its splits
        self.input_shape: list[int] | None = None  # volumes differ in size; the patch size is recorded
        train_cases = listing.split(config.train_split)
        val_cases = listing.split(config.val_split)  # a missing split is refused there, naming those it has
        self.label_map, self.sequences = listing.label_map, listing.sequences
        intensity = getattr(config, "intensity", "zscore")
        self.train = PatchSampler(
            [read_case(c, self.label_map, intensity=intensity) for c in train_cases],
            config.patch_size,
            config.foreground_share,
        )
        self.val = PatchSampler(
            [read_case(c, self.label_map, intensity=intensity) for c in val_cases],
            config.patch_size,
            config.foreground_share,
        )
        self.val_volumes = config.val_volumes
        self.train_items = np.repeat(np.arange(len(train_cases)), config.patches_per_volume)
        self.in_channels, self.spatial_dims = listing.in_channels, 3
        self._classes = listing.num_classes()

    def num_classes(self) -> int:
        return self._classes

    def describe(self) -> str:
        return (
            f"{len(self.train.volumes)} training volumes ({len(self.train_items)} patches of "
            f"{'x'.join(map(str, self.train.patch_size))} per epoch), {len(self.val.volumes)} validation volumes"
        )

    def validation(self, count: int, rng: np.random.Generator) -> ValidationSet | VolumeValidationSet:
        if self.val_volumes == "whole":  # ``count`` volumes, drawn once from the seed, in the list's order
            total = len(self.val.volumes)
            chosen = np.sort(rng.choice(total, size=min(count, total), replace=False))
            return VolumeValidationSet([self.val.volumes[k] for k in chosen], list(self.val.patch_size))
        items = np.arange(count) % len(self.val.volumes)
        images, masks, roi = self.val.draw_many(items, rng)
        return ValidationSet(images, masks, roi)

    def batch(self, items: np.ndarray, rng: np.random.Generator, whole: bool = False):
        images, masks, roi = self.train.draw_many(items, rng)  # volumes are always patches (whole_after is refused)
        return torch.from_numpy(images), torch.from_numpy(masks).long(), torch.from_numpy(roi)


def open_source(config) -> Source:
    """The source that ``config.data`` names: a dataset list (``.json``) or an ``.npz``."""
    if is_volume_list(config.data):
        return PatchSource(load_volume_list(config.data), config)
    return ArraySource(load_arrays(config.data), config)
