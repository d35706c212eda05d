"""The dataset format, its loader and cache, splits, synthetic data and augmentation."""

import itertools
import json

import numpy as np
import pytest
import torch

from ssn.data import DataError, SegmentationArrays, load_arrays, make_synthetic, save_arrays, select_split
from ssn.data.augment import augment
from ssn.data.splits import holdout_split


def small(n=6, volumes=False, float_images=False):
    rng = np.random.default_rng(0)
    spatial = (4, 8, 8) if volumes else (8, 8)
    images = (
        rng.random((n, 1, *spatial)).astype(np.float32)
        if float_images
        else rng.integers(0, 255, (n, *spatial), dtype=np.uint8)
    )
    masks = rng.integers(0, 2, (n, 3, *spatial)).astype(np.uint8)
    patient = np.array([f"P{i // 2}" for i in range(n)])
    return images, masks, patient


@pytest.mark.parametrize("volumes", [False, True])
def test_round_trip_through_a_memory_mapped_cache(tmp_path, volumes):
    images, masks, patient = small(volumes=volumes, float_images=volumes)
    np.savez_compressed(tmp_path / "d.npz", images=images, masks=masks, patient=patient)
    first = load_arrays(tmp_path / "d.npz")
    second = load_arrays(tmp_path / "d.npz")
    for data in (first, second):
        assert isinstance(data.images, np.memmap) and isinstance(data.masks, np.memmap)
        assert data.images.shape == (6, 1) + masks.shape[2:]  # (N, H, W) gains the channel axis
        np.testing.assert_array_equal(data.masks, masks)
        assert list(data.patient) == list(patient)
    assert first.num_classes() == 2 and first.num_annotators == 3


def test_save_arrays_round_trip(tmp_path):
    data = make_synthetic(4, size=32)
    save_arrays(tmp_path / "s.npz", data)
    loaded = load_arrays(tmp_path / "s.npz", cache=False)
    np.testing.assert_array_equal(loaded.truth_maps, data.truth_maps)
    np.testing.assert_allclose(loaded.truth_probs, data.truth_probs)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": small()[0]}, "lacks masks"),
        ({"images": small()[0], "masks": small()[1][:, 0]}, r"masks must be \(N, A, H, W\)"),
        ({"images": small()[0][:5], "masks": small()[1]}, "disagree on N"),
        ({"images": small()[0], "masks": small()[1].astype(np.float32)}, "integer labels"),
        ({"images": small()[0], "masks": small()[1].astype(np.int8) - 1}, "negative labels"),
        ({"images": np.full((6, 8, 8), np.nan, np.float32), "masks": small()[1]}, "NaN"),
        ({"images": small()[0][:0], "masks": small()[1][:0]}, "no images"),
        ({"images": small()[0], "masks": small()[1], "patient": np.array(["a"])}, "one id per image"),
    ],
)
def test_bad_data_is_refused_with_the_reason(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_arrays(tmp_path / "bad.npz")


def test_empty_truncated_and_missing_files(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_arrays(tmp_path / "empty.npz")
    images, masks, _ = small()
    np.savez_compressed(tmp_path / "full.npz", images=images, masks=masks)
    content = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_arrays(tmp_path / "cut.npz")
    with pytest.raises(DataError, match="no such data file"):
        load_arrays(tmp_path / "nothing.npz")


def test_split_file_selects_patients(tmp_path):
    images, masks, patient = small()
    data = SegmentationArrays(images, masks, patient)
    (tmp_path / "split.json").write_text(json.dumps({"splits": {"train": ["P0", "P2"], "test": ["P1"]}}))
    np.testing.assert_array_equal(select_split(data, "train", tmp_path / "split.json"), [0, 1, 4, 5])
    with pytest.raises(DataError, match="split 'val' is not in .*it has: train, test"):
        select_split(data, "val", tmp_path / "split.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not a split file"):
        select_split(data, "train", tmp_path / "bad.json")
    with pytest.raises(DataError, match="no 'patient' key"):
        select_split(SegmentationArrays(images, masks), "train", tmp_path / "split.json")


def test_holdout_keeps_patients_apart_and_is_seeded():
    data = make_synthetic(40, size=32)
    data.patient = np.array([f"P{i // 4}" for i in range(40)])
    train, val = holdout_split(data, 0.2, seed=3)
    assert set(data.patient[train]).isdisjoint(data.patient[val])
    assert len(set(data.patient[val])) == 2
    np.testing.assert_array_equal(val, holdout_split(data, 0.2, seed=3)[1])


def test_synthetic_truth_is_a_distribution_and_annotations_come_from_it():
    data = make_synthetic(20, size=40, num_annotators=5, seed=1)
    assert data.images.shape == (20, 1, 40, 40) and data.masks.shape == (20, 5, 40, 40)
    np.testing.assert_allclose(data.truth_probs.sum(1), 1.0)
    for i in range(20):
        maps, probs = data.truth(i)
        for mask in data.masks[i]:
            matches = [k for k in range(len(maps)) if np.array_equal(mask, maps[k])]
            assert matches and probs[matches].sum() > 0
    # The image shows the probabilities: inside disc k the brightness is 0.25 + 0.75 p_k (plus
    # noise of sd 0.05), where p_k is the probability that an annotator marks it.
    outcomes = list(itertools.product((0, 1), repeat=3))  # (marks disc 1, marks disc 2, loose)
    for i in range(20):
        maps, probs = data.truth(i)
        for k in range(2):
            marked = sum(p for p, outcome in zip(probs, outcomes) if outcome[k])
            alone = [0, 0, 0]
            alone[k] = 1
            disc = maps[outcomes.index(tuple(alone))].astype(bool)  # disc k alone, tight
            assert data.images[i, 0][disc].mean() == pytest.approx(0.25 + 0.75 * marked, abs=0.03)


def test_augmentation_moves_images_and_masks_together():
    masks = torch.zeros(8, 2, 32, 32, dtype=torch.long)
    masks[:, :, 4:14, 6:20] = 1
    masks[:, 1, 20:28, 20:30] = 1
    images = masks[:, :1].float()
    out_images, out_masks = augment(images, masks, max_degrees=10, generator=torch.Generator().manual_seed(0))
    assert out_masks.dtype == torch.long and set(out_masks.unique().tolist()) <= {0, 1}
    agreement = ((out_images[:, 0] > 0.5) == out_masks[:, 0].bool()).float().mean()
    assert agreement > 0.97
    assert not torch.equal(out_masks, masks)  # something moved


def test_crops_are_rescaled_to_full_size_inside_the_image():
    """A crop of half the side at most doubles a square's width, and it stays aligned with its mask."""
    masks = torch.zeros(16, 1, 64, 64, dtype=torch.long)
    masks[:, :, 24:40, 24:40] = 1
    images = masks.float()
    out_images, out_masks = augment(
        images, masks, max_degrees=0, min_crop=0.5, generator=torch.Generator().manual_seed(0)
    )
    area = out_masks.flatten(1).sum(1).float()
    assert (area >= 16 * 16 - 40).all() and (area <= 32 * 32 + 80).all() and (area > 300).any()  # zoomed in
    agreement = ((out_images[:, 0] > 0.5) == out_masks[:, 0].bool()).float().mean()
    assert agreement > 0.98
    same, _ = augment(images, masks, max_degrees=0, min_crop=1.0, generator=torch.Generator().manual_seed(0))
    assert set(same.flatten(1).sum(1).tolist()) == {256.0}  # no crop: only flips, the area is kept


def test_a_crop_scale_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="min_crop"):
        augment(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8, dtype=torch.long), min_crop=1.5)


def test_float_images_scale_uint8_and_keep_floats():
    from ssn.data.arrays import float_images

    out = float_images(np.array([[0, 51, 255]], np.uint8))
    assert out.dtype == np.float32 and out[0].tolist() == pytest.approx([0.0, 0.2, 1.0])
    floats = np.array([[-1.5, 2.0]], np.float64)
    assert float_images(floats).dtype == np.float32 and float_images(floats).tolist() == [[-1.5, 2.0]]
