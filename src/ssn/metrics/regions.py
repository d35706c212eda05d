"""Sample metrics per structure of a multi-class map: each class, and unions of classes such as
the BraTS regions (whole tumour, tumour core, enhancing tumour).

A structure is a set of classes; a label map becomes the binary map "voxel in the structure",
and the metrics of :func:`~ssn.metrics.functional.image_metrics` are computed on those binary
maps (d = 1 - IoU of the structure, 0 when it is absent from both maps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .functional import image_metrics

__all__ = ["class_structures", "structure_metrics"]


def class_structures(
    num_classes: int, names: Mapping[int, str] | None = None, unions: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """``{name: classes}``: each foreground class alone (named ``class c`` unless ``names``
    says otherwise), then each union of ``unions``."""
    out: dict[str, tuple[int, ...]] = {(names or {}).get(c, f"class {c}"): (c,) for c in range(1, num_classes)}
    for name, classes in (unions or {}).items():
        out[name] = tuple(sorted(set(classes)))
    return out


def structure_metrics(
    samples,
    annotations,
    structures: Mapping[str, Sequence[int]],
    matched_sizes: tuple[int, ...] = (),
    matching: str = "repeat",
) -> dict[str, dict[str, float]]:
    """The sample metrics of one image or volume per structure.

    Args:
        samples: (N, *S) integer label maps; annotations: (A, *S).
        structures: ``{name: classes}`` (see :func:`class_structures`).
        matching: the Hungarian matching's convention, ``"repeat"`` or ``"rectangular"``.

    Returns:
        ``{name: {"ged", "diversity", "dice", "hm_iou_{n}", "ged_{n}"}}``.
    """
    samples, annotations = torch.as_tensor(samples), torch.as_tensor(annotations)
    out = {}
    for name, classes in structures.items():
        chosen = torch.tensor(list(classes), dtype=samples.dtype)
        inside_samples, inside_annotations = (
            torch.isin(x, chosen.to(x.dtype)).view(torch.uint8)
            for x in (samples, annotations)  # no copy
        )
        out[name] = image_metrics(inside_samples, inside_annotations, 2, matched_sizes=matched_sizes, matching=matching)
    return out
