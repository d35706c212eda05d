"""The real LIDC-IDRI crops, where present (set SSN_LIDC_DIR; default ../shared/data/lidc)."""

import os
from pathlib import Path

import pytest

from ssn.data import load_arrays, select_split

LIDC_DIR = Path(os.environ.get("SSN_LIDC_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "lidc"))
DATA, SPLIT = LIDC_DIR / "lidc_slices_128.npz", LIDC_DIR / "split.json"

pytestmark = pytest.mark.skipif(
    not (DATA.is_file() and SPLIT.is_file()),
    reason=f"LIDC data not found in {LIDC_DIR} (set SSN_LIDC_DIR to the folder holding lidc_slices_128.npz and split.json)",
)


def test_lidc_loads_in_the_dataset_format_with_the_patient_split():
    data = load_arrays(DATA)
    assert data.images.shape == (15548, 1, 128, 128) and data.masks.shape == (15548, 4, 128, 128)
    assert data.num_classes() == 2
    sizes = {name: select_split(data, name, SPLIT).size for name in ("train", "val", "test")}
    assert sizes == {"train": 9414, "val": 3039, "test": 3095}
    train, test = select_split(data, "train", SPLIT), select_split(data, "test", SPLIT)
    assert set(data.patient[train]).isdisjoint(data.patient[test])
