"""Metrics for sampled segmentations: functions for one image, accumulating classes for datasets.

See :mod:`ssn.metrics.functional` for the conventions (d = 1 - IoU, GED^2, empty masks).
"""

from .aggregation import (
    Estimate,
    ExpectedCalibrationError,
    GeneralizedEnergyDistance,
    HungarianMatchedIoU,
    ImageMetrics,
    MeanPredictionDice,
    SampleDiversity,
)
from .functional import (
    calibration_bins,
    class_frequencies,
    ece_from_bins,
    entropy_map,
    expected_calibration_error,
    frequency_entropy,
    generalized_energy_distance,
    hungarian_matched_iou,
    image_metrics,
    mean_prediction,
    mean_prediction_dice,
    pairwise_distances,
    sample_diversity,
    variance_map,
)

__all__ = [
    "Estimate",
    "ExpectedCalibrationError",
    "GeneralizedEnergyDistance",
    "HungarianMatchedIoU",
    "ImageMetrics",
    "MeanPredictionDice",
    "SampleDiversity",
    "calibration_bins",
    "class_frequencies",
    "ece_from_bins",
    "entropy_map",
    "frequency_entropy",
    "expected_calibration_error",
    "generalized_energy_distance",
    "hungarian_matched_iou",
    "image_metrics",
    "mean_prediction",
    "mean_prediction_dice",
    "pairwise_distances",
    "sample_diversity",
    "variance_map",
]
