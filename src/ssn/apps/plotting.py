"""Figures of samples: the image, the mean prediction, the entropy and a grid of samples."""

from __future__ import annotations

import numpy as np

from ..files import write_atomically

__all__ = ["plot_samples", "middle_slice"]


def middle_slice(array: np.ndarray, spatial_dims: int) -> np.ndarray:
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
    picture = middle_slice(np.asarray(image[0], dtype=np.float32), spatial_dims)
    shown = [middle_slice(np.asarray(s), spatial_dims) for s in samples[:max_samples]]
    foreground = 1.0 - middle_slice(np.asarray(mean[0]), spatial_dims)
    panels = [
        ("image", picture, "gray"),
        ("P(foreground)", foreground, "viridis"),
        ("entropy", middle_slice(np.asarray(entropy), spatial_dims), "magma"),
    ]
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
    write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=80, format="png"))
    plt.close(figure)
