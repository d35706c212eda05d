"""LIDC-3D: nodules' slices stacked into volumes with their readers, split by patient, and volumes
shallower than a patch trained on, sampled and evaluated."""

import json

import nibabel
import numpy as np
import pytest

from ssn.apps.cli import main
from ssn.data import load_volume_list, read_case
from ssn.data.lidc3d import nodule_volumes
from ssn.errors import DataError

DEPTHS = {("LIDC-IDRI-0001", "nodule-0"): 5, ("LIDC-IDRI-0001", "nodule-1"): 1, ("LIDC-IDRI-0002", "nodule-0"): 2,
          ("LIDC-IDRI-0003", "nodule-0"): 3, ("LIDC-IDRI-0004", "nodule-0"): 4}  # fmt: skip


def _slices(tmp_path):
    """A small LIDC-like .npz: 16x16 crops, 4 readers, slices listed out of order."""
    rng = np.random.default_rng(0)
    rows = [(p, n, s) for (p, n), depth in DEPTHS.items() for s in range(depth)]
    rng.shuffle(rows)
    images = rng.integers(0, 255, (len(rows), 16, 16), dtype=np.uint8)
    masks = np.zeros((len(rows), 4, 16, 16), np.uint8)
    for i, (_, _, s) in enumerate(rows):
        masks[i, : 1 + s % 4, 5:10, 5:10] = 1  # the slice number is legible in the masks
    path = tmp_path / "slices.npz"
    np.savez(path, images=images, masks=masks, patient=np.array([r[0] for r in rows]),
             nodule=np.array([r[1] for r in rows]), slice=np.array([r[2] for r in rows]))  # fmt: skip
    split = {
        "splits": {"train": ["LIDC-IDRI-0001", "LIDC-IDRI-0004"], "val": ["LIDC-IDRI-0003"], "test": ["LIDC-IDRI-0002"]}
    }
    (tmp_path / "split.json").write_text(json.dumps(split))
    return path, images, masks, rows


def test_each_nodule_becomes_a_volume_in_slice_order_split_by_patient(tmp_path, capsys):
    path, images, masks, rows = _slices(tmp_path)
    assert main(["convert", "lidc-3d", str(path), "--out", str(tmp_path / "lidc3d")]) == 0  # split.json beside it
    listing = load_volume_list(tmp_path / "lidc3d" / "lidc3d.json")
    assert {k: sorted(c.id for c in v) for k, v in listing.splits.items()} == {
        "training": ["LIDC-IDRI-0001_nodule-0", "LIDC-IDRI-0001_nodule-1", "LIDC-IDRI-0004_nodule-0"],
        "validation": ["LIDC-IDRI-0003_nodule-0"],
        "test": ["LIDC-IDRI-0002_nodule-0"],
    }
    case = next(c for c in listing.split("training") if c.id == "LIDC-IDRI-0001_nodule-0")
    volume = read_case(case, listing.label_map)
    assert volume.shape == (16, 16, 5) and volume.labels.shape == (4, 16, 16, 5) and volume.mask.all()
    for s in range(5):  # slice s of the volume is the crop numbered s, with its readers
        i = next(k for k, r in enumerate(rows) if r == ("LIDC-IDRI-0001", "nodule-0", s))
        np.testing.assert_array_equal(np.asarray(volume.labels)[..., s], masks[i])
        stored = np.asarray(nibabel.load(str(case.images[0])).dataobj)[..., s]
        np.testing.assert_allclose(stored, images[i] / 255, rtol=1e-6)
    assert "voxel spacing unknown" in json.loads((tmp_path / "lidc3d" / "lidc3d.json").read_text())["description"]
    assert "depth 1-5" in capsys.readouterr().out


def test_a_slice_listed_twice_is_refused():
    with pytest.raises(DataError, match="lists slice 1 twice"):
        nodule_volumes(np.array(["p", "p", "p"]), np.array(["n", "n", "n"]), np.array([0, 1, 1]))


def test_volumes_shallower_than_the_patch_train_sample_and_evaluate(tmp_path, capsys):
    path, *_ = _slices(tmp_path)
    assert (
        main(
            [
                "convert",
                "lidc-3d",
                str(path),
                "--out",
                str(tmp_path / "v"),
                "--split-file",
                str(tmp_path / "split.json"),
            ]
        )
        == 0
    )
    lists = tmp_path / "v" / "lidc3d.json"
    run = tmp_path / "run"
    train = ["train", "--data", str(lists), "--out", str(run), "--patch-size", "16", "16", "4", "--features", "4", "8"]
    assert main([*train, "--max-steps", "2", "--batch-size", "2", "--val-images", "1", "--val-samples", "2"]) == 0
    capsys.readouterr()
    out = tmp_path / "m.json"
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
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "larger than the volume 16x16x2 along axis 2" in capsys.readouterr().err  # depth 2 < the window's 4
    assert json.loads(out.read_text())["num_cases"] == 1
    sample = ["sample", "--run", str(run), "--input", str(lists), "--split", "training", "--samples", "2"]
    assert main([*sample, "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    # all three training nodules (depths 5, 1, 4) are shallower than 8: one line, not one per nodule
    assert main([*sample, "--out", str(tmp_path / "deep"), "--window", "16", "16", "8"]) == 0
    assert capsys.readouterr().err.count("is larger than the volume") == 1
    shallow = nibabel.load(str(tmp_path / "s" / "LIDC-IDRI-0001_nodule-1" / "sample_000.nii.gz"))
    assert shallow.shape == (16, 16, 1)  # a one-slice nodule keeps its one slice


def test_a_3d_run_is_calibrated_on_its_validation_volumes_and_evaluated_at_that_temperature(tmp_path, capsys):
    path, *_ = _slices(tmp_path)
    assert main(["convert", "lidc-3d", str(path), "--out", str(tmp_path / "v")]) == 0
    lists = tmp_path / "v" / "lidc3d.json"
    run = tmp_path / "run"
    train = ["train", "--data", str(lists), "--out", str(run), "--patch-size", "16", "16", "4", "--features", "4", "8"]
    assert main([*train, "--max-steps", "2", "--batch-size", "2", "--val-images", "1", "--val-samples", "2"]) == 0
    calibrate = [
        "calibrate",
        "--run",
        str(run),
        "--data",
        str(lists),
        "--samples",
        "4",
        "--temperatures",
        "0.5",
        "1",
        "2",
    ]
    assert main(calibrate) == 0
    stored = json.loads((run / "calibration.json").read_text())
    assert stored["split"] == "validation" and stored["num_cases"] == 1 and len(stored["curve"]) == 3
    assert stored["temperature"] == min(stored["curve"], key=lambda p: p["ged"])["temperature"]
    out = tmp_path / "m.json"
    assert main(["evaluate", "--run", str(run), "--data", str(lists), "--samples", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["temperature"] == stored["temperature"]
    capsys.readouterr()
    assert main([*calibrate, "--split-file", str(tmp_path / "split.json")]) == 2
    assert "carries its own splits" in capsys.readouterr().err
