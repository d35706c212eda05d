"""Datasets: the ``.npz`` format, splits, synthetic data with a known answer, converters."""

from .arrays import DataError, SegmentationArrays, load_arrays, save_arrays
from .splits import select_split
from .synthetic import make_synthetic

__all__ = ["DataError", "SegmentationArrays", "load_arrays", "save_arrays", "select_split", "make_synthetic"]
