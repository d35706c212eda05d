"""Training examples through ``torch.utils.data.DataLoader``: workers, shards, and exact replays.

Every random choice behind an example is keyed on where it sits, (seed, epoch, position in the
epoch), never on a stream shared by the batch:

- the epoch's order is a permutation drawn from (seed, epoch);
- the example at a position gets its patch location, augmentation and annotator from
  generators seeded by (seed, epoch, position), and a seed for the loss's noise as well.

So an example is the same whether it is read in the training process or in a worker, by one
process or by one of N under ``torchrun``, in the run or in its resumption, and the batches of
an epoch are those of one process however they are split. The global batch ``k`` is the
positions ``k B ... (k + 1) B - 1`` of the order; process ``r`` of ``N`` takes every ``N``-th
of them from ``r`` on (:class:`EpochBatches`). Under torchrun, a last batch with fewer examples
than processes is dropped.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.augment import augment
from ..distributed import World
from ..randomness import derive_seed

__all__ = ["TrainingExamples", "EpochBatches", "epoch_order", "training_loader", "default_workers"]

# Streams derived from (seed, epoch, position, stream): one for the data, one for the loss's noise.
_DATA, _NOISE = 0, 1


def epoch_order(seed: int, epoch: int, items: np.ndarray) -> np.ndarray:
    """The items of an epoch in their order: a permutation drawn from (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(items)


class TrainingExamples(Dataset):
    """Key (epoch, position, item) -> (image (channels, *S), target (*S), region of interest or
    None, noise seed): one augmented training example with one annotator's labels, drawn at
    random, or with every annotator's, target (A, *S), where ``config.annotators`` is ``"all"``."""

    def __init__(self, source, config) -> None:
        self.source, self.seed = source, config.seed
        self.whole_from_step: int | None = None  # crops before this global step, whole images from it on
        self.augment, self.crop_scale = config.augment, config.crop_scale
        self.all_annotators = getattr(config, "annotators", "one") == "all"
        self.steps_per_epoch = self.batch_size = 0

    def whole_images_from(self, step: int, steps_per_epoch: int, batch_size: int) -> None:
        """Crops before global ``step`` and whole images from it on (``config.whole_after``). A key's
        step follows from where it sits, (epoch, position), so workers and resumptions agree."""
        self.whole_from_step, self.steps_per_epoch, self.batch_size = step, steps_per_epoch, batch_size

    def __len__(self) -> int:
        return len(self.source.train_items)

    def __getitem__(self, key: tuple[int, int, int]):
        epoch, position, item = key
        data_seed = derive_seed(self.seed, epoch, position, _DATA)
        rng = np.random.default_rng(data_seed)  # the patch's location (volumes)
        generator = torch.Generator().manual_seed(data_seed)  # augmentation and the annotator
        if self.whole_from_step is None:
            images, masks, roi = self.source.batch(np.array([item]), rng)
        else:
            step = epoch * self.steps_per_epoch + position // self.batch_size
            images, masks, roi = self.source.batch(np.array([item]), rng, whole=step >= self.whole_from_step)
        if self.augment:
            if roi is not None:  # transformed alike, as one more label channel
                masks = torch.cat([masks, roi.unsqueeze(1).long()], 1)
            images, masks = augment(images, masks, min_crop=self.crop_scale, generator=generator)
            if roi is not None:
                masks, roi = masks[:, :-1], masks[:, -1].bool()
        if self.all_annotators:
            target = masks[0]  # (A, *S)
        else:
            target = masks[0, int(torch.randint(0, masks.shape[1], (1,), generator=generator))]
        return (
            images[0],
            target,
            None if roi is None else roi[0],
            derive_seed(self.seed, epoch, position, _NOISE),
        )


def collate(examples: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[int]]:
    """Examples -> (images (B, channels, *S), targets (B, *S) or (B, A, *S), regions (B, *S) or None, noise seeds)."""
    images, targets, rois, seeds = zip(*examples)
    roi = None if rois[0] is None else torch.stack(rois)
    return torch.stack(images), torch.stack(targets), roi, list(seeds)


class EpochBatches:
    """This process's share of each global batch of one epoch, from global batch ``start`` on:
    lists of keys (epoch, position, item) for :class:`TrainingExamples`."""

    def __init__(self, order: np.ndarray, epoch: int, batch_size: int, start: int = 0, world: World = World()) -> None:
        self.order, self.epoch, self.batch_size, self.start, self.world = order, epoch, batch_size, start, world

    def global_batches(self) -> list[range]:
        """The positions of each global batch of the epoch (under torchrun, a last batch with
        fewer examples than processes is left out: some process would have none)."""
        size = len(self.order)
        batches = [range(i, min(i + self.batch_size, size)) for i in range(0, size, self.batch_size)]
        if batches and len(batches[-1]) < self.world.size:
            batches.pop()
        return batches

    def __iter__(self):
        for positions in self.global_batches()[self.start :]:
            yield [(self.epoch, p, int(self.order[p])) for p in self.world.shard(positions)]

    def __len__(self) -> int:
        return max(0, len(self.global_batches()) - self.start)


def default_workers(world: World = World()) -> int:
    """Worker processes per training process: none on 2 cores or fewer per process (the
    training step needs them), else one core less than this process's share, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    share = cores // max(1, world.local_size)
    return 0 if share <= 2 else min(8, share - 1)


def training_loader(examples: TrainingExamples, batches: EpochBatches, workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over one epoch's batches (workers started per epoch; each example is keyed,
    so how many there are never changes the batches)."""
    return DataLoader(
        examples,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
    )
