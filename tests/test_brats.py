"""The volume path on the real BraTS cases of ../shared/data (skipped where the data is absent).

The folders are found through ``$SSN_BRATS_DIR`` (default ``../shared/data/brats_deepmedic``) and
``$SSN_BRATS_TCGA_DIR`` (default ``../shared/data/brats_tcga``).
"""

import json
import os
from pathlib import Path

import nibabel
import numpy as np
import pytest

from ssn.apps.cli import main
from ssn.data import load_volume_list, read_case

ROOT = Path(__file__).resolve().parents[1]
DEEPMEDIC = Path(os.environ.get("SSN_BRATS_DIR", ROOT.parent / "shared" / "data" / "brats_deepmedic"))
TCGA = Path(os.environ.get("SSN_BRATS_TCGA_DIR", ROOT.parent / "shared" / "data" / "brats_tcga"))

needs_deepmedic = pytest.mark.skipif(
    not DEEPMEDIC.is_dir(), reason=f"BraTS cases not found at {DEEPMEDIC} (set SSN_BRATS_DIR)"
)
needs_tcga = pytest.mark.skipif(
    not TCGA.is_dir(), reason=f"TCGA glioma cases not found at {TCGA} (set SSN_BRATS_TCGA_DIR)"
)


@needs_tcga
def test_the_tcga_cases_read_with_five_raters_in_the_papers_classes(tmp_path):
    out = tmp_path / "tcga.json"
    assert main(["convert", "brats", str(TCGA), "--out", str(out)]) == 0
    listing = load_volume_list(out)
    assert listing.sequences == ["flair", "t1", "t1c", "t2"] and len(listing.split("test")) == 2
    volume = read_case(listing.split("test")[0], listing.label_map)
    assert volume.image.shape == (4, 240, 240, 155) and volume.labels.shape == (5, 240, 240, 155)
    assert set(np.unique(volume.labels)) <= {0, 1, 2, 3} and volume.labels.max() > 0
    assert 1e6 < volume.mask.sum() < 3e6  # the brain: the non-zero voxels of the skull-stripped images


@needs_tcga
def test_the_tcga_algorithms_own_spread_is_the_mean_over_their_distinct_pairs(tmp_path):
    from benchmarks.brats import raters_diversity

    out = tmp_path / "tcga.json"
    assert main(["convert", "brats", str(TCGA), "--out", str(out), "--sequences", "flair", "t1c"]) == 0
    spread = raters_diversity(out)
    listing = load_volume_list(out)
    case = listing.split("test")[0]
    labels = np.asarray(read_case(case, listing.label_map).labels) > 0  # the whole tumour of the five maps
    flat = labels.reshape(5, -1)
    by_hand = [1 - (flat[i] & flat[j]).sum() / (flat[i] | flat[j]).sum() for i in range(5) for j in range(5) if i != j]
    assert spread["whole tumour"]["per case"][case.id] == pytest.approx(np.mean(by_hand))
    assert 0 < spread["enhancing tumour"]["mean"] < 1


@needs_deepmedic
def test_train_sample_and_evaluate_on_real_brats_volumes(tmp_path):
    lists = tmp_path / "brats.json"
    assert main(["convert", "brats", str(DEEPMEDIC), "--out", str(lists), "--sequences", "flair", "t1c"]) == 0
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(lists),
                "--out",
                str(run),
                "--patch-size",
                "24",
                "24",
                "24",
                "--features",
                "4",
                "8",
                "--max-steps",
                "2",
                "--batch-size",
                "2",
                "--val-images",
                "2",
                "--val-samples",
                "2",
            ]
        )
        == 0
    )
    listing = json.loads(lists.read_text())
    case = listing["test"][0]
    out = tmp_path / "samples"
    case_dir = (lists.parent / case["image"][0]).parent  # one case given as its folder
    # one window holds the brain's box: the fewest network passes on a CPU
    assert (
        main(
            [
                "sample",
                "--run",
                str(run),
                "--input",
                str(case_dir),
                "--samples",
                "2",
                "--window",
                "192",
                "192",
                "160",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    source = nibabel.load(str(lists.parent / case["image"][0]))
    sample = nibabel.load(str(out / case["id"] / "sample_001.nii.gz"))
    assert sample.shape == source.shape == (240, 240, 155)
    np.testing.assert_allclose(sample.affine, source.affine)
    assert set(np.unique(np.asarray(sample.dataobj))) <= {0, 1, 2, 4}
    report = tmp_path / "test.json"
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(run),
                "--data",
                str(lists),
                "--split",
                "test",
                "--samples",
                "2",
                "--window",
                "192",
                "192",
                "160",
                "--out",
                str(report),
            ]
        )
        == 0
    )
    summary = json.loads(report.read_text())
    assert summary["num_cases"] == 2 and {"whole tumour", "tumour core", "enhancing tumour"} <= set(
        summary["structures"]
    )
