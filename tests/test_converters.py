"""Converters: each format is built small here, converted, and read back; bad inputs are refused."""

import json
import pickle

import h5py
import numpy as np
import pytest
from PIL import Image

from ssn.apps.cli import main
from ssn.data import DataError, converters, load_arrays


def write_png_tree(root, patients=2, nodules=2, slices=3, size=16):
    rng = np.random.default_rng(0)
    expected = []
    for p in range(patients):
        for n in range(nodules):
            folder = root / f"LIDC-IDRI-{p + 1:04d}" / f"nodule-{n}"
            for s in (10, 2, 1)[:slices]:  # numeric, not lexical, slice order
                image = rng.integers(0, 255, (size, size), dtype=np.uint8)
                masks = (rng.random((4, size, size)) > 0.7).astype(np.uint8) * 255
                (folder / "images").mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(folder / "images" / f"slice-{s}.png")
                for k in range(4):
                    (folder / f"mask-{k}").mkdir(exist_ok=True)
                    Image.fromarray(masks[k]).save(folder / f"mask-{k}" / f"slice-{s}.png")
                expected.append((f"LIDC-IDRI-{p + 1:04d}", n, s, image, masks // 255))
    expected.sort(key=lambda e: (e[0], e[1], e[2]))
    return expected


def test_png_tree(tmp_path):
    expected = write_png_tree(tmp_path / "tree")
    assert main(["convert", "png-tree", str(tmp_path / "tree"), "--out", str(tmp_path / "out.npz")]) == 0
    data = load_arrays(tmp_path / "out.npz")
    assert data.images.shape == (12, 1, 16, 16) and data.masks.shape == (12, 4, 16, 16)
    for i, (patient, _, _, image, masks) in enumerate(expected):
        assert data.patient[i] == patient
        np.testing.assert_array_equal(data.images[i, 0], image)
        np.testing.assert_array_equal(data.masks[i], masks)


def test_png_tree_with_a_missing_mask_is_refused(tmp_path):
    write_png_tree(tmp_path / "tree", patients=1, nodules=1, slices=1)
    (tmp_path / "tree" / "LIDC-IDRI-0001" / "nodule-0" / "mask-3" / "slice-10.png").unlink()
    with pytest.raises(DataError, match="lacks its masks"):
        converters.png_tree(tmp_path / "tree")
    assert main(["convert", "png-tree", str(tmp_path / "tree"), "--out", str(tmp_path / "o.npz")]) == 2
    assert not (tmp_path / "o.npz").exists()


def test_probabilistic_unet_pickle(tmp_path):
    rng = np.random.default_rng(1)
    content = {
        f"LIDC-IDRI-{p:04d}_slice_{s}.png": {
            "image": rng.random((16, 16)).astype(np.float32),
            "masks": [(rng.random((16, 16)) > 0.5).astype(np.float32) for _ in range(4)],
            "series_uid": f"1.2.{p}",
        }
        for p in (3, 1)
        for s in range(2)
    }
    (tmp_path / "data.pickle").write_bytes(pickle.dumps(content))
    data = converters.probabilistic_unet_pickle(tmp_path / "data.pickle")
    assert data.images.shape == (4, 1, 16, 16) and data.images.dtype == np.uint8
    assert list(data.patient) == ["LIDC-IDRI-0001", "LIDC-IDRI-0001", "LIDC-IDRI-0003", "LIDC-IDRI-0003"]
    first = content["LIDC-IDRI-0001_slice_0.png"]
    np.testing.assert_array_equal(data.masks[0], np.stack(first["masks"]).astype(np.uint8))


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    (tmp_path / "evil.pickle").write_bytes(pickle.dumps({"k": {"image": Evil(), "masks": []}}))
    with pytest.raises(DataError, match="refusing to load"):
        converters.probabilistic_unet_pickle(tmp_path / "evil.pickle")
    (tmp_path / "cut.pickle").write_bytes(pickle.dumps({"a": np.zeros(100)})[:40])
    with pytest.raises(DataError, match="not a readable pickle"):
        converters.probabilistic_unet_pickle(tmp_path / "cut.pickle")


def test_phiseg_hdf5(tmp_path):
    rng = np.random.default_rng(2)
    with h5py.File(tmp_path / "lidc.hdf5", "w") as f:
        for group, n in (("train", 3), ("val", 1), ("test", 2)):
            f.create_dataset(f"{group}/images", data=rng.random((n, 16, 16)).astype(np.float32))
            f.create_dataset(f"{group}/labels", data=(rng.random((n, 16, 16, 4)) > 0.5).astype(np.uint8))
        expected_labels = np.asarray(f["test/labels"])
    args = [
        "convert",
        "phiseg-hdf5",
        str(tmp_path / "lidc.hdf5"),
        "--out",
        str(tmp_path / "o.npz"),
        "--split-out",
        str(tmp_path / "s.json"),
    ]
    assert main(args) == 0
    data = load_arrays(tmp_path / "o.npz")
    assert data.masks.shape == (6, 4, 16, 16)
    np.testing.assert_array_equal(data.masks[4:], np.moveaxis(expected_labels, -1, 1))
    split = json.loads((tmp_path / "s.json").read_text())["splits"]
    assert [len(split[g]) for g in ("train", "val", "test")] == [3, 1, 2]
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f.create_dataset("other", data=np.zeros(3))
    with pytest.raises(DataError, match="none of the groups"):
        converters.phiseg_hdf5(tmp_path / "bad.hdf5")


def test_phiseg_hdf5_refuses_negative_labels_instead_of_wrapping_them(tmp_path):
    with h5py.File(tmp_path / "neg.hdf5", "w") as f:
        f.create_dataset("train/images", data=np.zeros((1, 8, 8), np.float32))
        labels = np.zeros((1, 8, 8, 2), np.int16)
        labels[0, 0, 0, 0] = -1
        f.create_dataset("train/labels", data=labels)
    with pytest.raises(DataError, match=r"integers in \[0, 255\]; found values from -1"):
        converters.phiseg_hdf5(tmp_path / "neg.hdf5")


def test_png_tree_takes_any_number_of_annotators(tmp_path):
    write_png_tree(tmp_path / "tree", patients=1, nodules=1, slices=2)
    for k in (2, 3):  # keep two readers
        for png in (tmp_path / "tree" / "LIDC-IDRI-0001" / "nodule-0" / f"mask-{k}").iterdir():
            png.unlink()
        (tmp_path / "tree" / "LIDC-IDRI-0001" / "nodule-0" / f"mask-{k}").rmdir()
    data = converters.png_tree(tmp_path / "tree")
    assert data.masks.shape == (2, 2, 16, 16)
    with pytest.raises(DataError, match="2 annotator\\(s\\) per image, not 4"):
        converters.png_tree(tmp_path / "tree", num_annotators=4)


def test_png_tree_reads_the_flat_layout_of_images_and_one_folder_per_rater(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "flat"
    names = ["LIDC-IDRI-0007_a.png", "LIDC-IDRI-0003_b.png", "case9.png"]
    masks = {}
    for name in names:
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "images" / name)
        masks[name] = (rng.random((3, 16, 16)) > 0.6).astype(np.uint8)
        for k, rater in enumerate(("alice", "bob", "carol")):
            (root / rater).mkdir(exist_ok=True)
            Image.fromarray(masks[name][k] * 255).save(root / rater / name)
    assert main(["convert", "png-tree", str(root), "--out", str(tmp_path / "flat.npz")]) == 0
    data = load_arrays(tmp_path / "flat.npz")
    order = sorted(names)
    assert data.masks.shape == (3, 3, 16, 16)
    assert list(data.patient) == ["LIDC-IDRI-0003", "LIDC-IDRI-0007", "case9"]
    for i, name in enumerate(order):
        np.testing.assert_array_equal(data.masks[i], masks[name])  # raters in name order: alice, bob, carol
    (root / "carol" / "case9.png").unlink()
    with pytest.raises(DataError, match="lacks its masks"):
        converters.png_tree(root)
