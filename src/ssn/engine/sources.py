"""Where training batches come from: images of one ``.npz``, or patches of NIfTI volumes.

Both sources give the training loop the same things: the items of an epoch, a batch for a list
of items (images (B, channels, *S) float, label maps (B, A, *S) long, region of interest
(B, *S) bool or ``None``), and a fixed validation set.

- :class:`ArraySource`: the items are image indices of the ``.npz``; an epoch sees each
  training image once.
- :class:`PatchSource`: the items are volume indices, each training volume repeated
  ``patches_per_volume`` times per epoch; each item becomes one patch drawn afresh. The
  validation set is a fixed set of patches of the validation volumes, drawn once from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.arrays import SegmentationArrays, load_arrays
from ..data.patches import PatchSampler
from ..data.splits import holdout_split, select_split
from ..data.volumes import VolumeList, is_volume_list, load_volume_list, read_case
from ..errors import ConfigError
from ..inference import image_tensor

__all__ = ["ValidationSet", "ArraySource", "PatchSource", "open_source"]


@dataclass
class ValidationSet:
    """Fixed validation inputs: images (n, channels, *S), label maps (n, A, *S), region of
    interest (n, *S) or ``None``; possibly memory-mapped."""

    images: np.ndarray
    masks: np.ndarray
    roi: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)


class ArraySource:
    """Batches of whole images from a dataset ``.npz``."""

    def __init__(self, data: SegmentationArrays, config) -> None:
        self.data = data
        if config.patch_size is not None:
            raise ConfigError("patch_size applies to volume lists (--data LIST.json); an .npz trains on whole images")
        if config.split_file:
            self.train_items = select_split(data, config.train_split, config.split_file)
            self.val_items = select_split(data, config.val_split, config.split_file)
        else:
            self.train_items, self.val_items = holdout_split(data, 0.1, config.seed)
        self.in_channels, self.spatial_dims = data.in_channels, len(data.spatial_shape)

    def num_classes(self) -> int:
        return self.data.num_classes()

    def describe(self) -> str:
        return f"{self.train_items.size} training images, {self.val_items.size} validation images"

    def validation(self, count: int, rng: np.random.Generator) -> ValidationSet:
        chosen = np.sort(rng.choice(self.val_items, size=min(count, self.val_items.size), replace=False))
        return ValidationSet(self.data.images[chosen], self.data.masks[chosen])

    def batch(self, items: np.ndarray, rng: np.random.Generator):
        images = image_tensor(self.data.images[items])
        masks = torch.from_numpy(np.ascontiguousarray(self.data.masks[items])).long()
        return images, masks, None


class PatchSource:
    """Batches of patches from the volumes of a dataset list (``--data LIST.json``)."""

    def __init__(self, listing: VolumeList, config) -> None:
        if config.split_file:
            raise ConfigError("a volume list carries its own splits (training, validation, test); drop split_file")
        if config.patch_size is None:
            raise ConfigError("training on volumes needs patch_size, e.g. --patch-size 64 64 64")
        self.listing = listing
        train_cases = listing.split(config.train_split)
        val_cases = listing.split(config.val_split)  # a missing split is refused there, naming those it has
        self.label_map, self.sequences = listing.label_map, listing.sequences
        self.train = PatchSampler([read_case(c, self.label_map) for c in train_cases], config.patch_size,
                                  config.foreground_share)
        self.val = PatchSampler([read_case(c, self.label_map) for c in val_cases], config.patch_size,
                                config.foreground_share)
        self.train_items = np.repeat(np.arange(len(train_cases)), config.patches_per_volume)
        self.in_channels, self.spatial_dims = listing.in_channels, 3
        self._classes = listing.num_classes()

    def num_classes(self) -> int:
        return self._classes

    def describe(self) -> str:
        return (f"{len(self.train.volumes)} training volumes ({len(self.train_items)} patches of "
                f"{'x'.join(map(str, self.train.patch_size))} per epoch), {len(self.val.volumes)} validation volumes")

    def validation(self, count: int, rng: np.random.Generator) -> ValidationSet:
        items = np.arange(count) % len(self.val.volumes)
        images, masks, roi = self.val.draw_many(items, rng)
        return ValidationSet(images, masks, roi)

    def batch(self, items: np.ndarray, rng: np.random.Generator):
        images, masks, roi = self.train.draw_many(items, rng)
        return torch.from_numpy(images), torch.from_numpy(masks).long(), torch.from_numpy(roi)


def open_source(config):
    """The source that ``config.data`` names: a dataset list (``.json``) or an ``.npz``."""
    if is_volume_list(config.data):
        return PatchSource(load_volume_list(config.data), config)
    return ArraySource(load_arrays(config.data), config)
