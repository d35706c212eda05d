"""Drawing label maps for many images through the model interface, a batch at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.arrays import float_images
from ..errors import ConfigError, DataError
from ..models import SegmentationModel
from ..randomness import generators_for

__all__ = ["image_tensor", "predict_batches", "predict_batches_at", "images_to_predict", "size_warning"]


def image_tensor(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """Images (B, channels, *S) as float32: uint8 scaled to [0, 1], floats as they are."""
    return torch.from_numpy(float_images(images)).to(device)  # a copy: memory-mapped data is read-only


def images_to_predict(
    model: SegmentationModel, data_path, split: str | None, split_file, default_split: str, run_split=None
):
    """(the dataset, the indices of its images to use): one split of a split file, or all images.

    ``run_split``: the run's own ``split.json`` (the images it held out when trained without a
    split file); ``split`` without ``split_file`` uses it.

    Raises a :class:`~ssn.errors.ConfigError` for ``split`` without a split file, and a
    :class:`~ssn.errors.DataError` for labels beyond the model's classes.
    """
    from ..data.arrays import load_arrays
    from ..data.splits import select_split
    from ..data.volume_list import is_volume_list

    if is_volume_list(data_path):
        raise ConfigError(
            f"{data_path} is a volume list: `ssn evaluate` and `ssn sample` take it; this command "
            "needs a dataset .npz (for volumes, give the temperature with --temperature)"
        )
    data = load_arrays(data_path)
    if split_file is not None:
        indices = select_split(data, split or default_split, split_file)
    elif split is not None and run_split is not None and Path(run_split).is_file():
        from ..data.splits import select_recorded_split

        indices = select_recorded_split(data, split, run_split)
    elif split is not None:
        raise ConfigError(
            "--split needs --split-file (the JSON listing each split's patients); this run recorded "
            "no split of its own (it was trained with a split file, or before ssn 0.7)"
        )
    else:
        indices = np.arange(len(data))
    spec = model.spec
    if spec is not None and (data.in_channels != spec.in_channels or len(data.spatial_shape) != spec.spatial_dims):
        raise DataError(
            f"{data_path} holds images of {data.in_channels} channel(s) and {len(data.spatial_shape)} spatial "
            f"dims; the model takes {spec.in_channels} and {spec.spatial_dims}: use a run "
            "trained on such images"
        )
    if data.num_classes() > model.num_classes:
        raise DataError(
            f"the data holds labels up to {data.num_classes() - 1}, the model only {model.num_classes} classes"
        )
    return data, indices


def predict_batches(
    model: SegmentationModel,
    images: np.ndarray,
    indices: Sequence[int] | np.ndarray,
    num_samples: int,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    roi: np.ndarray | None = None,
    seed: int | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (the indices of a batch, its label maps (B, N, *S) uint8 on the CPU).

    Args:
        images: (num_images, channels, *S), uint8 or float, possibly memory-mapped.
        indices: which images, in order (sorted indices keep memory-mapped reads sequential).
        generator: draws from it (on ``device``), for samples that repeat with a seed.
        seed: instead of ``generator``, image ``i`` draws from its own generator seeded by
            ``(seed, i)``: its samples are then the same whatever the batch size, the order and
            the process (under ``torchrun``) that draws them.
        roi: optional regions of interest (num_images, *S), bool: the model's distribution is
            confined to them and the samples are background (0) outside.
    """
    model.eval()
    indices = np.asarray(indices)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        mask = None if roi is None else torch.from_numpy(np.ascontiguousarray(roi[chunk])).to(device)
        source = generator if seed is None else generators_for(seed, chunk, device)
        labels = model.sample_labels(image_tensor(images[chunk], device), num_samples, mask=mask, generator=source)
        if mask is not None:
            labels = labels * mask.unsqueeze(0).to(labels.dtype)
        yield chunk, labels.movedim(0, 1).cpu()


def predict_batches_at(
    model: SegmentationModel,
    images: np.ndarray,
    indices: Sequence[int] | np.ndarray,
    temperatures: Sequence[float],
    num_samples: int,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Iterator[tuple[np.ndarray, list[torch.Tensor]]]:
    """Yield (the indices of a batch, its label maps (B, N, *S) uint8 at each of ``temperatures``).

    The maps at temperature t are those :func:`predict_batches` gives with ``model.temperature
    = t`` and ``seed``: image ``i`` draws from ``(seed, i)``, the same noise at every
    temperature. The network runs once per batch for all temperatures where the method allows
    (:meth:`~ssn.models.SegmentationModel.sample_labels_at`), not once per temperature.
    """
    model.eval()
    indices = np.asarray(indices)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]

        def generators(chunk: np.ndarray = chunk) -> list[torch.Generator]:
            return generators_for(seed, chunk, device)  # fresh for each temperature: the same draws

        labels = model.sample_labels_at(
            image_tensor(images[chunk], device), temperatures, num_samples, generators=generators
        )
        yield chunk, [maps.movedim(0, 1).cpu() for maps in labels]


def size_warning(config: dict, shape) -> str | None:
    """A warning when an input's spatial ``shape`` is far from what the run was trained on: a
    side under half, or over four times, the training images' (``input_shape``) or the
    training patches' side; ``None`` when it is near, or the run recorded neither."""
    trained = config.get("input_shape") or config.get("patch_size")
    if not trained or len(trained) != len(shape):
        return None
    far = [(int(s), int(t)) for s, t in zip(shape, trained) if s < t / 2 or s > 4 * t]
    if not far:
        return None
    trained_text, given_text = "x".join(map(str, trained)), "x".join(str(int(s)) for s in shape)
    return (
        f"the model was trained on {trained_text} inputs and this one is {given_text}: far outside that "
        "size its samples are not to be trusted (resample or crop the input to a similar size)"
    )
