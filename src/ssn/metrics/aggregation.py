"""Accumulating metrics for dataset-level figures: ``update`` per batch, ``compute``, ``reset``.

In the style of torchmetrics: the maths lives in :mod:`ssn.metrics.functional`; these classes
only accumulate it. Under ``torch.distributed`` (initialised), ``compute`` sums the state of all
processes, so every process returns the dataset-level figure; the local state is unchanged.

Batches are batch-first: ``samples`` (B, N, *S) -- note ``sample_labels`` returns
(N, B, *S), so pass ``labels.movedim(0, 1)`` -- and ``annotations`` (B, A, *S).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ..distributed import all_reduce
from . import functional as F

__all__ = [
    "Estimate",
    "GeneralizedEnergyDistance",
    "SampleDiversity",
    "HungarianMatchedIoU",
    "MeanPredictionDice",
    "ExpectedCalibrationError",
    "ImageMetrics",
]


@dataclass(frozen=True)
class Estimate:
    """A dataset mean with its standard error, the number of images and of samples per image."""

    mean: float
    stderr: float
    num_images: int
    num_samples: int | None

    def __float__(self) -> float:
        return self.mean

    @classmethod
    def of(cls, values, num_samples: int | None = None) -> Estimate:
        """The mean of per-image (or per-case) ``values`` with its standard error
        sd(values, ddof=1) / sqrt(n); NaN for one value. Computed here, not summed over processes."""
        array = np.asarray(values, dtype=np.float64).ravel()
        if array.size == 0:
            raise ValueError("an estimate needs at least one value")
        stderr = float(array.std(ddof=1) / math.sqrt(array.size)) if array.size > 1 else math.nan
        return cls(float(array.mean()), stderr, int(array.size), num_samples)

    def as_dict(self) -> dict:
        """JSON-ready: ``stderr`` is ``None`` where it is undefined (one image, or ECE)."""
        return {
            "mean": self.mean,
            "stderr": None if math.isnan(self.stderr) else self.stderr,
            "num_images": self.num_images,
            "num_samples": self.num_samples,
        }


def _batch(x, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() < 3:
        raise ValueError(f"{name} must be batch-first, (B, n, *S); got shape {tuple(t.shape)}")
    return t


class _MeanAccumulator:
    """Sum, sum of squares and count of per-image values: a mean and its standard error,
    summed over processes. Every dataset figure with a ± goes through it."""

    def __init__(self) -> None:
        self.state = torch.zeros(3, dtype=torch.float64)

    def add(self, value: float) -> None:
        self.state += torch.tensor([value, value * value, 1.0], dtype=torch.float64)

    def estimate(self, num_samples: int | None, name: str) -> Estimate:
        total, total_sq, count = all_reduce(self.state).tolist()
        if count == 0:
            raise RuntimeError(f"{name}.compute() called before any update()")
        mean = total / count
        if count > 1:
            variance = max(total_sq - count * mean * mean, 0.0) / (count - 1)
            stderr = math.sqrt(variance / count)
        else:
            stderr = math.nan
        return Estimate(mean, stderr, int(count), num_samples)


class _SampleCount:
    """The number of samples per image, which must stay fixed (and agree across processes)."""

    def __init__(self) -> None:
        self.value: int | None = None

    def note(self, n: int) -> None:
        if self.value is not None and n != self.value:
            raise ValueError(
                f"this metric was updated with {self.value} samples per image and now {n}; "
                "its value depends on the number of samples, so keep it fixed (or reset())"
            )
        self.value = n

    def reduced(self) -> int | None:
        local = self.value
        if not (dist.is_available() and dist.is_initialized()):
            return local
        # max over processes of N and of -N gives the largest and smallest N used anywhere.
        pair = torch.tensor([local or 0.0, -(local or math.inf)], dtype=torch.float64)
        high, neg_low = all_reduce(pair, dist.ReduceOp.MAX).tolist()
        if high == 0:
            return None
        if high != -neg_low:
            raise ValueError(f"processes used different numbers of samples per image ({int(-neg_low)} to {int(high)})")
        return int(high)


def _check_batches(samples: Tensor, annotations: Tensor) -> None:
    if samples.shape[0] != annotations.shape[0]:
        raise ValueError(
            f"samples and annotations must have the same batch size; got {samples.shape[0]} "
            f"and {annotations.shape[0]} (samples are (B, N, *S): movedim(0, 1) sample_labels' output)"
        )


class _PerImageMean:
    """Mean over images of a per-image score, with its standard error.

    ``classes`` (``"present"`` or ``"all"``) and, for the matched IoU, ``matching``
    (``"repeat"`` or ``"rectangular"``) choose the convention (:mod:`ssn.metrics.functional`).
    """

    def __init__(self, num_classes: int = 2, classes: str = "present", matching: str = "repeat") -> None:
        F._check_conventions(classes, matching)
        self.num_classes, self.classes, self.matching = num_classes, classes, matching
        self.reset()

    def reset(self) -> None:
        self._values = _MeanAccumulator()
        self._num_samples = _SampleCount()

    def _score(self, samples: Tensor, annotations: Tensor) -> float:
        raise NotImplementedError

    def update(self, samples, annotations) -> list[float]:
        """Add a batch: samples (B, N, *S), annotations (B, A, *S), integer labels.

        Returns the B per-image values added.
        """
        samples, annotations = _batch(samples, "samples"), _batch(annotations, "annotations")
        _check_batches(samples, annotations)
        self._num_samples.note(samples.shape[1])
        values = [self._score(s, a) for s, a in zip(samples, annotations)]
        for value in values:
            self._values.add(value)
        return values

    def compute(self) -> Estimate:
        """The mean over all images seen (by all processes), with its standard error."""
        return self._values.estimate(self._num_samples.reduced(), type(self).__name__)


class GeneralizedEnergyDistance(_PerImageMean):
    """Dataset mean of GED^2 (see :func:`~ssn.metrics.generalized_energy_distance`)."""

    def _score(self, samples, annotations):
        return F.generalized_energy_distance(samples, annotations, self.num_classes, classes=self.classes)


class SampleDiversity(_PerImageMean):
    """Dataset mean of E[d(S, S')] (see :func:`~ssn.metrics.sample_diversity`).

    ``update(samples, annotations=None)``: annotations are not needed.
    """

    def update(self, samples, annotations=None) -> list[float]:
        samples = _batch(samples, "samples")
        self._num_samples.note(samples.shape[1])
        values = [F.sample_diversity(s, self.num_classes, self.classes) for s in samples]
        for value in values:
            self._values.add(value)
        return values


class HungarianMatchedIoU(_PerImageMean):
    """Dataset mean of the Hungarian-matched IoU (see :func:`~ssn.metrics.hungarian_matched_iou`)."""

    def _score(self, samples, annotations):
        return F.hungarian_matched_iou(samples, annotations, self.num_classes, self.classes, self.matching)


class MeanPredictionDice(_PerImageMean):
    """Dataset mean of the Dice of the mean prediction (see :func:`~ssn.metrics.mean_prediction_dice`)."""

    def _score(self, samples, annotations):
        return F.mean_prediction_dice(samples, annotations, self.num_classes)


class ExpectedCalibrationError:
    """Dataset-level ECE against the annotators' mean, pooled over all pixels of all images.

    Bin counts and sums are accumulated (not per-image ECEs), so the result is the ECE of the
    whole dataset. ``update(samples, annotations)`` uses the samples' class frequencies as the
    predicted probabilities; ``update_probabilities`` takes probabilities (B, C, *S) directly.
    """

    def __init__(self, num_classes: int = 2, num_bins: int = 10) -> None:
        self.num_classes = num_classes
        self.num_bins = num_bins
        self.reset()

    def reset(self) -> None:
        self._bins = torch.zeros(self.num_classes - 1, self.num_bins, 3, dtype=torch.float64)
        self._num_images = 0

    def update(self, samples, annotations) -> None:
        """samples (B, N, *S) integer labels, annotations (B, A, *S)."""
        samples = _batch(samples, "samples")
        probabilities = [F.class_frequencies(s, self.num_classes) for s in samples]
        self.update_probabilities(torch.stack(probabilities), annotations)

    def update_probabilities(self, probabilities, annotations) -> None:
        """probabilities (B, C, *S) in [0, 1], annotations (B, A, *S)."""
        for p, a in zip(torch.as_tensor(probabilities), _batch(annotations, "annotations")):
            self._bins += F.calibration_bins(p, a, self.num_classes, self.num_bins).cpu()
            self._num_images += 1

    def compute(self) -> Estimate:
        """ECE over every pixel seen; ``stderr`` is NaN (pixels within an image are not independent)."""
        bins = all_reduce(self._bins)
        count = int(all_reduce(torch.tensor([float(self._num_images)]))[0])
        if count == 0:
            raise RuntimeError("ExpectedCalibrationError.compute() called before any update()")
        return Estimate(F.ece_from_bins(bins), math.nan, count, None)


class ImageMetrics:
    """Every per-image sample metric of an evaluation at once, from one distance computation
    per image (:func:`~ssn.metrics.image_metrics`), accumulated over a dataset.

    ``update(samples, annotations, truths=None)`` returns one dict of values per image (for
    per-image tables); ``compute()`` returns an :class:`Estimate` per key (``ged``,
    ``diversity``, ``dice``, ``hm_iou_{n}``, ``ged_{n}`` and, with the exact truth, ``ged_truth``), summed
    across processes like the single metrics above.

    Args:
        num_classes: C.
        matched_sizes: report the Hungarian-matched IoU and the GED^2 of the first n samples, for each n.
        classes: ``"present"`` or ``"all"``; matching: ``"repeat"`` or ``"rectangular"``
            (the conventions of :mod:`ssn.metrics.functional`).
    """

    def __init__(
        self,
        num_classes: int = 2,
        matched_sizes: tuple[int, ...] = (),
        classes: str = "present",
        matching: str = "repeat",
    ) -> None:
        F._check_conventions(classes, matching)
        self.num_classes, self.classes, self.matching = num_classes, classes, matching
        self.matched_sizes = tuple(matched_sizes)
        self.reset()

    def reset(self) -> None:
        self._values: dict[str, _MeanAccumulator] = {}
        self._num_samples = _SampleCount()

    def update(self, samples, annotations, truths=None) -> list[dict[str, float]]:
        """samples (B, N, *S), annotations (B, A, *S); truths: B pairs (maps (K, *S), probs (K,)) or None."""
        samples, annotations = _batch(samples, "samples"), _batch(annotations, "annotations")
        _check_batches(samples, annotations)
        self._num_samples.note(samples.shape[1])
        truths = [None] * samples.shape[0] if truths is None else truths
        rows = []
        for s, a, truth in zip(samples, annotations, truths):
            row = F.image_metrics(s, a, self.num_classes, self.matched_sizes, truth, self.classes, self.matching)
            for key, value in row.items():
                self._values.setdefault(key, _MeanAccumulator()).add(value)
            rows.append(row)
        return rows

    def compute(self) -> dict[str, Estimate]:
        """An :class:`Estimate` per metric; ``hm_iou_{n}`` and ``ged_{n}`` carry ``num_samples = n``."""
        num_samples = self._num_samples.reduced()
        out = {}
        keys = set(self._values)
        if dist.is_available() and dist.is_initialized():  # a process that saw no image has no keys yet
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, sorted(keys))
            keys = set().union(*gathered)
        for key in sorted(keys):  # the same keys, in the same order, in every process
            self._values.setdefault(key, _MeanAccumulator())
            suffix = key.rsplit("_", 1)[-1]
            n = int(suffix) if key.startswith(("hm_iou_", "ged_")) and suffix.isdigit() else num_samples
            out[key] = self._values[key].estimate(n, f"ImageMetrics[{key}]")
        return out
