"""Sample-based segmentation metrics for one image, as the field computes them.

Every function takes integer label maps, numpy arrays or tensors:

- ``samples``      (N, *S): N label maps drawn from the model for one image;
- ``annotations``  (A, *S): the A annotators' label maps of that image;

with labels in [0, num_classes) and class 0 the background.

Conventions:

- distance d(a, b) = 1 - IoU(a, b), averaged over foreground classes 1..C-1. Two conventions
  for which classes count, chosen with ``classes``:

  - ``"present"`` (the default): the classes present in a or in b; if none is present in
    either, d(a, b) = 0. Flow-SSN's and MoSE's evaluation code do this;
  - ``"all"``: every foreground class, a class absent from both maps counting as IoU 1
    (d = 0), so d is the sum over classes divided by C - 1. PHiSeg's (Baumgartner et al. 2019),
    the official SSN's (Monteiro et al. 2020) and CCDM's code do this.

  For two classes the two agree, which is why every LIDC table compares; with more classes
  "all" gives smaller distances wherever a class is absent from both maps;
- GED is reported squared: GED^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')], each expectation
  over all ordered pairs, a map paired with itself included (Kohl et al. 2018 and the papers
  above). Its value depends on N: always report N beside it;
- sample diversity = E[d(S, S')] over all ordered pairs;
- Hungarian-matched IoU, two conventions chosen with ``matching``:

  - ``"repeat"`` (the default): both sets are repeated up to lcm(N, A) elements, matched one
    to one minimising the total d, and the matched pairs' IoU (1 - d) averaged (CCDM's and
    MoSE's code);
  - ``"rectangular"``: the N x A matrix is matched as it is, so only min(N, A) pairs count,
    the best samples (Flow-SSN's code). It is higher than ``"repeat"`` for a diverse model.

Pairwise distances are computed for all pairs at once with one matrix product per class.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = [
    "pairwise_distances",
    "generalized_energy_distance",
    "sample_diversity",
    "hungarian_matched_iou",
    "image_metrics",
    "class_frequencies",
    "mean_prediction",
    "mean_prediction_dice",
    "expected_calibration_error",
    "calibration_bins",
    "ece_from_bins",
    "entropy_map",
    "frequency_entropy",
    "variance_map",
]

# Voxels per block of the distance computation: float32 products count overlaps exactly below
# 2**24, and a block of 2**18 keeps the indicator of 100 samples near 100 MB.
_CHUNK = 2**18
CLASS_CONVENTIONS = ("present", "all")
MATCHING_CONVENTIONS = ("repeat", "rectangular")


def _check_conventions(classes: str = "present", matching: str = "repeat") -> None:
    if classes not in CLASS_CONVENTIONS:
        raise ValueError(
            f"classes must be 'present' (average IoU over the classes in either map) or 'all' "
            f"(every foreground class, absent from both counts as IoU 1); got {classes!r}"
        )
    if matching not in MATCHING_CONVENTIONS:
        raise ValueError(
            f"matching must be 'repeat' (both sets repeated to lcm(N, A)) or 'rectangular' "
            f"(the N x A matrix as it is); got {matching!r}"
        )


def _labels(x, name: str, num_classes: int) -> Tensor:
    """Integer label maps as a tensor (n, *S), checked against ``num_classes``."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:  # e.g. memory-mapped data
        x = np.array(x)
    t = torch.as_tensor(x)
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must hold integer labels; got dtype {t.dtype}")
    if t.dim() < 2:
        raise ValueError(f"{name} must have shape (n, *S) with at least one spatial dim; got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty: need at least one label map")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2; got {num_classes}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(
            f"{name} has labels outside [0, {num_classes}) (min {int(t.min())}, max {int(t.max())}); "
            f"pass the right num_classes"
        )
    return t


def _pair(samples, annotations, num_classes: int) -> tuple[Tensor, Tensor]:
    s = _labels(samples, "samples", num_classes)
    a = _labels(annotations, "annotations", num_classes).to(s.device)
    if s.shape[1:] != a.shape[1:]:
        raise ValueError(
            f"samples (N, *S) and annotations (A, *S) must share S; got {tuple(s.shape)} and {tuple(a.shape)}"
        )
    return s, a


def _distance_matrix(label_sets: list[Tensor], num_classes: int, classes: str = "present") -> Tensor:
    """d between all maps of the concatenated sets (each (n_k, *S)) -> (n, n) float64, symmetric,
    averaged over the classes of the ``classes`` convention (module docstring).

    Per foreground class, one product G = X X^T of the 0/1 indicator rows gives every
    intersection; the areas are its diagonal and union = area_i + area_j - G. Volumes are
    taken ``_CHUNK`` voxels at a time, so the indicator stays small (float32 counts are exact
    per chunk, and the chunks' counts add up in float64).
    """
    rows = [labels.reshape(labels.shape[0], -1) for labels in label_sets]
    total, pixels = sum(r.shape[0] for r in rows), rows[0].shape[1]
    chunk = min(pixels, _CHUNK)
    indicator = torch.empty(total, chunk, dtype=torch.float32, device=rows[0].device)
    distance_sum = torch.zeros(total, total, dtype=torch.float64, device=indicator.device)
    classes_present = torch.zeros_like(distance_sum)
    for c in range(1, num_classes):
        intersection = torch.zeros_like(distance_sum)
        for begin in range(0, pixels, chunk):
            width = min(chunk, pixels - begin)
            block = indicator[:, :width]
            start = 0
            for r in rows:
                block[start : start + r.shape[0]] = r[:, begin : begin + width] == c
                start += r.shape[0]
            intersection += (block @ block.T).double()
        area = intersection.diagonal()
        union = area[:, None] + area[None, :] - intersection
        present = union > 0
        iou = intersection / union.clamp_min(1)
        distance_sum += torch.where(present, 1.0 - iou, 0.0)
        classes_present += present
    if classes == "all":  # absent from both maps: d = 0 (IoU 1), still counted
        return distance_sum / (num_classes - 1)
    return torch.where(classes_present > 0, distance_sum / classes_present.clamp_min(1), 0.0)


def pairwise_distances(a, b, num_classes: int = 2, classes: str = "present") -> Tensor:
    """d(a_i, b_j) = 1 - IoU for all pairs: a (n, *S), b (m, *S) -> (n, m) float64 tensor."""
    _check_conventions(classes)
    a, b = _pair(a, b, num_classes)
    return _distance_matrix([a, b], num_classes, classes)[: a.shape[0], a.shape[0] :]


def _ged_terms(samples: Tensor, annotations: Tensor, num_classes: int, classes: str) -> tuple[Tensor, Tensor, Tensor]:
    """The three pair-distance blocks S-Y, S-S, Y-Y from one product over both sets."""
    n = samples.shape[0]
    d = _distance_matrix([samples, annotations], num_classes, classes)
    return d[:n, n:], d[:n, :n], d[n:, n:]


def _annotation_weights(weights, count: int) -> Tensor | None:
    if weights is None:
        return None
    w = torch.as_tensor(np.array(weights, dtype=np.float64)).flatten()
    if w.shape != (count,) or bool((w < 0).any()) or not math.isclose(float(w.sum()), 1.0, rel_tol=1e-6):
        raise ValueError(f"annotation_weights must be {count} non-negative numbers summing to 1; got {w.tolist()}")
    return w


def generalized_energy_distance(
    samples, annotations, num_classes: int = 2, annotation_weights=None, classes: str = "present"
) -> float:
    """Squared generalised energy distance GED^2 between samples and annotations of one image.

    GED^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')], d = 1 - IoU (see the module docstring).

    Args:
        samples: (N, *S) integer label maps from the model.
        annotations: (A, *S) integer label maps from the annotators.
        num_classes: C; classes 1..C-1 are foreground.
        annotation_weights: optional (A,) probabilities of the annotations. With the exact
            label distribution of an image (its possible maps and their probabilities) this
            gives the GED^2 between the samples and the truth itself.
        classes: ``"present"`` or ``"all"``, the classes d averages over (module docstring).

    Returns:
        GED^2 as a float (report N beside it: the value depends on it).

    Example:
        >>> import numpy as np
        >>> y = np.zeros((2, 4, 4), dtype=np.uint8); y[0, :2] = 1; y[1, :, :2] = 1
        >>> generalized_energy_distance(y, y)
        0.0
        >>> round(generalized_energy_distance(y[:1], y), 4)  # 2 * 1/3 - 0 - 1/3
        0.3333
    """
    _check_conventions(classes)
    s, a = _pair(samples, annotations, num_classes)
    return _ged(*_ged_terms(s, a, num_classes, classes), _annotation_weights(annotation_weights, a.shape[0]))


def _ged(d_sy: Tensor, d_ss: Tensor, d_yy: Tensor, weights: Tensor | None = None) -> float:
    if weights is None:
        return float(2 * d_sy.mean() - d_ss.mean() - d_yy.mean())
    weights = weights.to(d_sy.device)
    return float(2 * (d_sy @ weights).mean() - d_ss.mean() - weights @ d_yy @ weights)


def image_metrics(
    samples,
    annotations,
    num_classes: int = 2,
    matched_sizes: tuple[int, ...] = (),
    truth=None,
    classes: str = "present",
    matching: str = "repeat",
) -> dict[str, float]:
    """The sample metrics of one image from a single distance computation.

    Args:
        samples: (N, *S) label maps; annotations: (A, *S).
        matched_sizes: also report the Hungarian-matched IoU and the GED^2 of the first n
            samples, for each n (papers quote GED^2 with 16 and with 100 samples).
        truth: optional ``(maps (K, *S), probabilities (K,))``, the exact label distribution.
        classes: ``"present"`` or ``"all"``; matching: ``"repeat"`` or ``"rectangular"``
            (module docstring).

    Returns:
        ``ged``, ``diversity``, ``dice``, ``hm_iou_{n}`` and ``ged_{n}`` for each n in ``matched_sizes`` and,
        with ``truth``, ``ged_truth`` (GED^2 against the exact distribution).
    """
    _check_conventions(classes, matching)
    s, a = _pair(samples, annotations, num_classes)
    sets = [s, a]
    if truth is not None:
        truth_maps = _labels(truth[0], "truth maps", num_classes).to(s.device)
        sets.append(truth_maps)
    d = _distance_matrix(sets, num_classes, classes)
    n, m = s.shape[0], a.shape[0]
    d_ss, d_sa = d[:n, :n], d[:n, n : n + m]
    out = {"ged": _ged(d_sa, d_ss, d[n : n + m, n : n + m]), "diversity": float(d_ss.mean())}
    for size in matched_sizes:
        if size > n:
            raise ValueError(f"cannot match {size} samples: only {n} were drawn")
        out[f"hm_iou_{size}"] = _matched_iou(d_sa[:size], matching)
        out[f"ged_{size}"] = _ged(d_sa[:size], d_ss[:size, :size], d[n : n + m, n : n + m])
    out["dice"] = _mean_prediction_dice(s, a, num_classes)
    if truth is not None:
        weights = _annotation_weights(truth[1], truth_maps.shape[0])
        out["ged_truth"] = _ged(d[:n, n + m :], d_ss, d[n + m :, n + m :], weights)
    return out


def sample_diversity(samples, num_classes: int = 2, classes: str = "present", *, distinct: bool = False) -> float:
    """E[d(S, S')] over all ordered pairs of samples (self-pairs included, as in the GED^2
    estimator), samples (N, *S); ``classes``: ``"present"`` or ``"all"`` (module docstring).

    ``distinct=True`` averages over the N (N - 1) pairs of distinct samples instead, the usual
    figure for the annotators' own spread: it is N / (N - 1) times the default (for 4 readers,
    4/3; for 100 samples, 1.01). It needs N >= 2.
    """
    _check_conventions(classes)
    s = _labels(samples, "samples", num_classes)
    d = _distance_matrix([s], num_classes, classes)
    if not distinct:
        return float(d.mean())
    n = d.shape[0]
    if n < 2:
        raise ValueError("distinct pairs need at least 2 maps")
    return float(d.sum() / (n * (n - 1)))  # the diagonal is 0


def _matched_iou(d_sy: Tensor, matching: str = "repeat") -> float:
    cost = d_sy.cpu().numpy()
    if matching == "repeat":
        n, a = cost.shape
        size = math.lcm(n, a)
        cost = cost[np.arange(size) % n][:, np.arange(size) % a]
    rows, cols = linear_sum_assignment(cost)  # rectangular: min(N, A) pairs
    return float(1.0 - cost[rows, cols].mean())


def hungarian_matched_iou(
    samples, annotations, num_classes: int = 2, classes: str = "present", matching: str = "repeat"
) -> float:
    """Mean IoU of an optimal one-to-one matching of samples to annotations.

    With ``matching="repeat"`` both sets are repeated to lcm(N, A) elements; with
    ``"rectangular"`` the N x A matrix is matched as it is (min(N, A) pairs). Matched with the
    Hungarian algorithm on d = 1 - IoU (averaged over the ``classes`` convention), and 1 - d
    averaged over the matched pairs (two empty maps have IoU 1).
    """
    _check_conventions(classes, matching)
    s, a = _pair(samples, annotations, num_classes)
    return _matched_iou(_ged_terms(s, a, num_classes, classes)[0], matching)


def class_frequencies(samples, num_classes: int = 2) -> Tensor:
    """Per-pixel class frequencies among label maps: (N, *S) -> (C, *S) float32, summing to 1."""
    s = _labels(samples, "samples", num_classes)
    counts = torch.stack([(s == c).sum(0, dtype=torch.int32) for c in range(num_classes)])
    return counts.float() / s.shape[0]


def mean_prediction(samples, num_classes: int = 2) -> Tensor:
    """The per-pixel most frequent class among the samples: (N, *S) -> (*S) int64.

    Ties go to the lower class index (for two classes: foreground needs more than half).
    """
    return class_frequencies(samples, num_classes).argmax(0)


def _dice(prediction: Tensor, annotation: Tensor, num_classes: int) -> float:
    scores = []
    for c in range(1, num_classes):
        p, y = prediction == c, annotation == c
        total = int(p.sum()) + int(y.sum())
        if total:
            scores.append(2.0 * int((p & y).sum()) / total)
    return float(np.mean(scores)) if scores else 1.0


def mean_prediction_dice(samples, annotations, num_classes: int = 2) -> float:
    """Dice of the mean prediction (:func:`mean_prediction`) against each annotator, averaged.

    Per annotator, Dice is averaged over the foreground classes present in the prediction or
    in that annotation; if none is present in either, Dice = 1.
    """
    return _mean_prediction_dice(*_pair(samples, annotations, num_classes), num_classes)


def _mean_prediction_dice(samples: Tensor, annotations: Tensor, num_classes: int) -> float:
    prediction = mean_prediction(samples, num_classes)
    return float(np.mean([_dice(prediction, y, num_classes) for y in annotations]))


def calibration_bins(probabilities, annotations, num_classes: int = 2, num_bins: int = 10) -> Tensor:
    """Per-bin sums for calibration against the annotators' mean.

    For each foreground class c and every pixel, the predicted probability p_c is binned into
    ``num_bins`` equal-width bins of [0, 1]; the target is q_c, the fraction of annotators who
    labelled the pixel c.

    Args:
        probabilities: (C, *S) predicted class probabilities (e.g. :func:`class_frequencies` of
            the samples, or a softmax).
        annotations: (A, *S) integer label maps.

    Returns:
        (C - 1, num_bins, 3) float64: pixel count, sum of p and sum of q in each bin. Sums
        over images add up, which is how the dataset-level ECE is accumulated.
    """
    p = torch.as_tensor(probabilities)
    a = _labels(annotations, "annotations", num_classes).to(p.device)
    if not p.is_floating_point() or p.shape != (num_classes, *a.shape[1:]):
        raise ValueError(
            f"probabilities must be a float tensor of shape (C, *S) = {(num_classes, *a.shape[1:])}; "
            f"got {p.dtype} {tuple(p.shape)}"
        )
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1; got {num_bins}")
    p = p[1:].reshape(num_classes - 1, -1).double()
    if bool(((p < 0) | (p > 1) | p.isnan()).any()):
        raise ValueError("probabilities must lie in [0, 1]")
    q = class_frequencies(a, num_classes)[1:].reshape(num_classes - 1, -1).double()
    bins = (p * num_bins).long().clamp_(max=num_bins - 1)
    out = torch.zeros(num_classes - 1, num_bins, 3, dtype=torch.float64, device=p.device)
    for k, values in enumerate((torch.ones_like(p), p, q)):
        out[..., k].scatter_add_(1, bins, values)
    return out


def ece_from_bins(bins: Tensor) -> float:
    """ECE from :func:`calibration_bins` sums: mean over classes of sum_b (n_b / n) |p_b - q_b|."""
    count, sum_p, sum_q = bins.unbind(-1)
    per_class = (sum_p - sum_q).abs().sum(-1) / count.sum(-1).clamp_min(1)
    return float(per_class.mean())


def expected_calibration_error(probabilities, annotations, num_classes: int = 2, num_bins: int = 10) -> float:
    """Expected calibration error of predicted probabilities against the annotators' mean.

    ECE = sum_b (n_b / n) |mean p in bin b - mean q in bin b|, over equal-width bins of the
    predicted probability, per foreground class, averaged over classes. The target q is the
    fraction of annotators who labelled the pixel with the class (a soft label), so a model
    that reproduces the annotators' disagreement is perfectly calibrated.

    Args:
        probabilities: (C, *S) predicted class probabilities.
        annotations: (A, *S) integer label maps.
    """
    return ece_from_bins(calibration_bins(probabilities, annotations, num_classes, num_bins))


def entropy_map(samples, num_classes: int = 2) -> Tensor:
    """Per-pixel entropy (nats) of the samples' class frequencies: (N, *S) -> (*S) float32."""
    return frequency_entropy(class_frequencies(samples, num_classes))


def frequency_entropy(frequencies, dim: int = 0) -> Tensor:
    """H = -sum_c p_c log p_c (nats, 0 log 0 = 0) of class frequencies along ``dim``:
    (C, *S) -> (*S) for ``dim=0``. Divide by log C for a value in [0, 1]."""
    p = torch.as_tensor(frequencies)
    return -(p * p.clamp_min(1e-12).log()).sum(dim)


def variance_map(samples, num_classes: int = 2) -> Tensor:
    """Per-pixel, per-class variance p (1 - p) of the class indicator: (N, *S) -> (C, *S)."""
    p = class_frequencies(samples, num_classes)
    return p * (1 - p)
