"""Drawing label maps for many images through the model interface, a batch at a time."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..models import SegmentationModel

__all__ = ["image_tensor", "predict_batches"]


def image_tensor(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """Images (B, channels, *S) as float32: uint8 scaled to [0, 1], floats as they are."""
    x = torch.from_numpy(np.array(images))  # a copy: memory-mapped data is read-only
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.to(device)


def predict_batches(
    model: SegmentationModel,
    images: np.ndarray,
    indices: np.ndarray,
    num_samples: int,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (the indices of a batch, its label maps (B, N, *S) uint8 on the CPU).

    Args:
        images: (num_images, channels, *S), uint8 or float, possibly memory-mapped.
        indices: which images, in order (sorted indices keep memory-mapped reads sequential).
        generator: draws from it (on ``device``), for samples that repeat with a seed.
    """
    model.eval()
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        labels = model.sample_labels(image_tensor(images[chunk], device), num_samples, generator=generator)
        yield chunk, labels.movedim(0, 1).cpu()
