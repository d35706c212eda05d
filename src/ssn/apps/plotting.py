"""Figures of samples a radiologist can read: the image with the samples' outlines, P(foreground)
and the entropy with colour bars, zoomed on the region the samples and the mean mark.

When there are more samples than panels, the figure shows a stated selection: the samples
ordered by their foreground area, and panels taken at evenly spaced ranks (the smallest, the
largest and those between), so that an empty sample and the largest outline are both seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..files import write_atomically

__all__ = ["plot_samples", "middle_slice", "select_samples", "region_of_interest", "Figure"]

#: Outline colours of the foreground classes 1, 2, ... (matplotlib's tab10 without its blue).
OUTLINES = ("#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")


@dataclass
class Figure:
    """What a figure shows: its panel titles, the panels with colour bars, the stated selection
    of samples (which ones, by index from 1), and the crop shown (rows, columns) of the image."""

    panels: list[str] = field(default_factory=list)
    colour_bars: list[str] = field(default_factory=list)
    selection: str = ""
    shown_samples: list[int] = field(default_factory=list)
    crop: tuple[slice, slice] | None = None


def middle_slice(array: np.ndarray, spatial_dims: int) -> np.ndarray:
    """A 2D view of a map (*S): the middle slice of a volume, a strip for 1D."""
    if spatial_dims == 3:
        return array[array.shape[0] // 2]
    return array[None] if spatial_dims == 1 else array


def select_samples(samples: np.ndarray, count: int) -> tuple[list[int], str]:
    """Indices (from 0) of at most ``count`` samples (N, *S) to show, and the sentence that says
    which: all of them, or evenly spaced ranks of the foreground area."""
    areas = (samples.reshape(len(samples), -1) > 0).sum(1)
    order = [int(i) for i in np.argsort(areas, kind="stable")]
    if len(samples) <= count:
        return order, f"all {len(samples)} samples, smallest foreground first"
    ranks = np.unique(np.round(np.linspace(0, len(samples) - 1, count)).astype(int))
    chosen = [order[r] for r in ranks]
    return chosen, (
        f"{len(chosen)} of {len(samples)} samples: evenly spaced ranks of foreground area, from the smallest "
        f"({int(areas[chosen[0]])} px) to the largest ({int(areas[chosen[-1]])} px); "
        f"{int((areas == 0).sum())} of {len(samples)} are empty"
    )


def region_of_interest(foreground: np.ndarray, shown: list[np.ndarray], minimum: int = 32) -> tuple[slice, slice]:
    """The box (rows, columns) around where P(foreground) > 0.05 or a shown sample marks
    something, with a margin, at least ``minimum`` pixels a side (the whole map if nothing is marked)."""
    marked = foreground > 0.05
    for sample in shown:
        marked |= sample > 0
    height, width = foreground.shape
    if not marked.any():
        return slice(0, height), slice(0, width)
    rows, columns = np.flatnonzero(marked.any(1)), np.flatnonzero(marked.any(0))
    box = []
    for low, high, size in ((rows[0], rows[-1] + 1, height), (columns[0], columns[-1] + 1, width)):
        side = min(size, max(minimum, int(1.5 * (high - low)) + 8))
        centre = (low + high) // 2
        start = int(np.clip(centre - side // 2, 0, size - side))
        box.append(slice(start, start + side))
    return box[0], box[1]


def plot_samples(
    image,
    samples,
    mean,
    entropy,
    path,
    max_samples: int = 16,
    title: str | None = None,
    class_names: dict[int, str] | None = None,
) -> Figure:
    """One figure: the image, P(foreground) and the entropy (with colour bars), and the samples'
    outlines on the image, zoomed on the region of interest; returns what it shows.

    Args:
        image: (channels, *S); samples: (N, *S); mean: (C, *S) class frequencies; entropy: (*S).
        max_samples: sample panels at most; more samples are shown as a stated selection.
        class_names: names of the foreground classes for the legend (default "class c", or
            "foreground" for two classes).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spatial_dims = np.asarray(samples).ndim - 1
    picture = middle_slice(np.asarray(image[0], dtype=np.float32), spatial_dims)
    views = [middle_slice(np.asarray(s), spatial_dims) for s in samples]
    classes = np.asarray(mean).shape[0]
    foreground = 1.0 - middle_slice(np.asarray(mean[0]), spatial_dims)
    chosen, selection = select_samples(np.stack(views), max_samples)
    crop = region_of_interest(foreground, [views[i] for i in chosen])
    names = class_names or ({1: "foreground"} if classes == 2 else {c: f"class {c}" for c in range(1, classes)})
    described = Figure(selection=selection, shown_samples=[i + 1 for i in chosen], crop=crop)

    columns = 6
    rows = 1 + -(-len(chosen) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.5 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    _draw_overview(
        figure,
        axes[0],
        picture,
        foreground,
        middle_slice(np.asarray(entropy), spatial_dims),
        crop,
        names,
        classes,
        described,
    )
    described.panels = ["image", "image, zoomed", "P(foreground)", "entropy (nats)"]
    for k, index in enumerate(chosen):
        axis = axes[1 + k // columns][k % columns]
        axis.imshow(picture[crop], cmap="gray")
        sample = views[index][crop]
        for c in range(1, classes):
            if (sample == c).any():
                axis.contour(sample == c, levels=[0.5], colors=[OUTLINES[(c - 1) % len(OUTLINES)]], linewidths=1.2)
        area = int((views[index] > 0).sum())
        axis.set_title(f"sample {index + 1} ({area} px)", fontsize=8)
        described.panels.append(f"sample {index + 1}")
    zoom = f" (zoom: rows {crop[0].start}-{crop[0].stop}, columns {crop[1].start}-{crop[1].stop})"
    figure.suptitle(((title + ": ") if title else "") + selection + zoom, fontsize=8)
    figure.tight_layout()
    write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=80, format="png"))
    plt.close(figure)
    return described


def _draw_overview(figure, top, picture, foreground, entropy, crop, names, classes, described: Figure) -> None:
    """The first row: the image (with the zoom's box), the zoom, P(foreground) and the entropy
    with colour bars, and the outlines' legend."""
    from matplotlib.lines import Line2D

    top[0].imshow(picture, cmap="gray")
    top[0].set_title("image", fontsize=9)
    if (crop[0].stop - crop[0].start, crop[1].stop - crop[1].start) != picture.shape:  # where the zoom is
        from matplotlib.patches import Rectangle

        box = Rectangle((crop[1].start - 0.5, crop[0].start - 0.5), crop[1].stop - crop[1].start,
                        crop[0].stop - crop[0].start, fill=False, edgecolor="#ffd700", linewidth=1)  # fmt: skip
        top[0].add_patch(box)
    top[1].imshow(picture[crop], cmap="gray")
    top[1].set_title("image, zoomed", fontsize=9)
    for axis, (name, array, cmap, limits) in zip(
        top[2:4],
        (
            ("P(foreground)", foreground[crop], "viridis", (0.0, 1.0)),
            (
                "entropy (nats)",
                entropy[crop],
                "magma",
                (0.0, float(np.log(classes))),
            ),
        ),
    ):
        shown = axis.imshow(array, cmap=cmap, vmin=limits[0], vmax=limits[1])
        figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)
        axis.set_title(name, fontsize=9)
        described.colour_bars.append(name)
    legend = [Line2D([0], [0], color=OUTLINES[(c - 1) % len(OUTLINES)], lw=2, label=n) for c, n in names.items()]
    top[4].legend(handles=legend, loc="center", fontsize=8, frameon=False, title="outlines")
