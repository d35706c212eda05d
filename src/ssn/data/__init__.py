"""Datasets: the ``.npz`` format, volume lists of NIfTI cases, splits, synthetic data, converters.

- :mod:`~ssn.data.arrays`: the ``.npz`` format (images with one label map per annotator);
- :mod:`~ssn.data.volume_list`: volume lists (NIfTI cases in a JSON file);
- :mod:`~ssn.data.nifti`: reading, checking and z-scoring a case's NIfTI files;
- :mod:`~ssn.data.cache`: the memory-mapped cache of decoded data;
- :mod:`~ssn.data.converters`: LIDC distributions and BraTS trees into those formats.
"""

from .arrays import DataError, SegmentationArrays, load_arrays, save_arrays
from .nifti import Volume, read_case
from .splits import select_split
from .synthetic import make_synthetic
from .volume_list import VolumeCase, VolumeList, is_volume_list, load_volume_list

__all__ = [
    "DataError",
    "SegmentationArrays",
    "load_arrays",
    "save_arrays",
    "select_split",
    "make_synthetic",
    "Volume",
    "VolumeCase",
    "VolumeList",
    "is_volume_list",
    "load_volume_list",
    "read_case",
]
