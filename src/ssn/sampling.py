"""Drawing samples from a trained run for new images, with figures.

Inputs: an image file (PNG, NPY, NIfTI ``.nii``/``.nii.gz``) or a dataset ``.npz``. Output:
``samples.npz`` with ``samples`` (num_images, num_samples, *S) uint8, ``mean`` (num_images, C, *S),
the per-pixel class frequencies of the samples, and ``entropy`` (num_images, *S) in nats; plus a
figure per image (image, mean prediction, entropy, a grid of samples; the middle slice of volumes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .checkpoints import load_run
from .data.arrays import DataError, load_arrays
from .files import write_atomically
from .training import image_tensor, predict_labels

__all__ = ["read_images", "sample_run", "plot_samples"]


def read_images(path: str | os.PathLike, in_channels: int, spatial_dims: int) -> np.ndarray:
    """Images (num_images, channels, *S) from an image file or a dataset ``.npz``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such input file: {path}")
    name = path.name.lower()
    if name.endswith(".npz"):
        return np.asarray(load_arrays(path).images)
    if name.endswith(".png"):
        from PIL import Image

        with Image.open(path) as image:
            array = np.asarray(image.convert("L" if in_channels == 1 else "RGB"))
        array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    elif name.endswith(".npy"):
        array = np.load(path, allow_pickle=False)
    elif name.endswith((".nii", ".nii.gz")):
        import nibabel

        array = np.asarray(nibabel.load(str(path)).get_fdata(dtype=np.float32))
    else:
        raise DataError(f"{path}: unknown input type; use .png, .npy, .nii, .nii.gz or a dataset .npz")
    if array.ndim == spatial_dims:
        array = array[None]
    if array.ndim != spatial_dims + 1 or array.shape[0] != in_channels:
        raise DataError(
            f"{path} holds an array of shape {array.shape}; the model expects (channels={in_channels}, "
            f"{spatial_dims} spatial dims) or ({spatial_dims} spatial dims) for one channel"
        )
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise DataError(f"{path} contains NaN or infinite values")
    return array[None]


def sample_run(
    run_dir: str | os.PathLike, input_path: str | os.PathLike, num_samples: int = 16,
    out: str | os.PathLike = "samples", device: str = "cpu", seed: int = 0, batch_size: int = 8,
    max_figures: int = 16, log=print,
) -> Path:
    """Draw ``num_samples`` label maps per input image; write ``samples.npz`` and figures to ``out``.

    Figures are drawn for the first ``max_figures`` images only (plotting is the slow part).
    """
    model, config = load_run(run_dir)
    model.to(device)
    images = read_images(input_path, config["in_channels"], config["spatial_dims"])
    torch.manual_seed(seed)
    labels = np.concatenate(
        [
            predict_labels(model, image_tensor(images[i : i + batch_size], device), num_samples, config["deterministic"]).cpu().numpy()
            for i in range(0, len(images), batch_size)
        ]
    )
    num_classes = config["num_classes"]
    mean = np.stack([metrics.class_frequencies(s, num_classes).numpy() for s in labels])
    entropy = np.stack([metrics.entropy_map(s, num_classes).numpy() for s in labels])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = labels.astype(np.uint8)
    write_atomically(out / "samples.npz", lambda p: np.savez_compressed(p, samples=samples, mean=mean, entropy=entropy))
    figures = min(max_figures, len(images))
    for i in range(figures):
        plot_samples(images[i], labels[i], mean[i], entropy[i], out / f"image_{i:04d}.png")
    log(f"wrote {out / 'samples.npz'}: samples {labels.shape}, and {figures} figures (image_NNNN.png)")
    return out / "samples.npz"


def _middle_slice(array: np.ndarray, spatial_dims: int) -> np.ndarray:
    """A 2D view of a map (*S): the middle slice of a volume, a strip for 1D."""
    if spatial_dims == 3:
        return array[array.shape[0] // 2]
    return array[None] if spatial_dims == 1 else array


def plot_samples(image, samples, mean, entropy, path, max_samples: int = 8, title: str | None = None) -> None:
    """One figure: the image, the mean prediction, the entropy and up to ``max_samples`` samples.

    Args:
        image: (channels, *S); samples: (N, *S); mean: (C, *S); entropy: (*S).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spatial_dims = samples.ndim - 1
    picture = _middle_slice(np.asarray(image[0], dtype=np.float32), spatial_dims)
    shown = [_middle_slice(np.asarray(s), spatial_dims) for s in samples[:max_samples]]
    foreground = 1.0 - _middle_slice(np.asarray(mean[0]), spatial_dims)
    panels = [("image", picture, "gray"), ("P(foreground)", foreground, "viridis"),
              ("entropy", _middle_slice(np.asarray(entropy), spatial_dims), "magma")]
    panels += [(f"sample {k + 1}", s, "tab10") for k, s in enumerate(shown)]
    columns = min(len(panels), 6)
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (name, array, cmap) in zip(axes.flat, panels):
        if name.startswith("sample"):
            axis.imshow(picture, cmap="gray")
            axis.imshow(np.ma.masked_equal(array, 0), cmap=cmap, alpha=0.6, vmin=0, vmax=9, interpolation="nearest")
        else:
            axis.imshow(array, cmap=cmap)
        axis.set_title(name, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
