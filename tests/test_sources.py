"""ssn.engine.sources: where training batches come from (image crops here; volumes in test_volumes)."""

import types

import numpy as np
import pytest

from ssn.data import SegmentationArrays
from ssn.engine.sources import ArraySource
from ssn.errors import ConfigError


def arrays(count=6, size=32):
    images = np.arange(count * size * size, dtype=np.float32).reshape(count, 1, size, size)
    masks = np.zeros((count, 2, size, size), dtype=np.uint8)
    masks[:, 0, 2, 29] = 1  # one foreground pixel near the top-right corner, one reader
    masks[:, 1, 3, 28] = 1
    return SegmentationArrays(images=images, masks=masks)


def source(data, patch_size, share):
    config = types.SimpleNamespace(
        patch_size=patch_size, foreground_share=share, split_file=None, seed=0, train_split="train", val_split="val"
    )
    return ArraySource(data, config)


def test_crops_hold_the_foreground_at_a_share_of_one():
    data = arrays()
    crops = source(data, [8, 8], 1.0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        images, masks, roi = crops.batch(np.array([0, 1]), rng)
        assert images.shape == (2, 1, 8, 8) and masks.shape == (2, 2, 8, 8) and roi is None
        assert bool(masks.any(1).any(-1).any(-1).all())  # each crop holds a foreground pixel


def test_crops_anywhere_cover_the_whole_image_borders_included():
    data = arrays()
    crops = source(data, [8, 8], 0.0)
    rng = np.random.default_rng(0)
    corners = set()
    image = data.images[0, 0]
    for _ in range(2000):
        images, _, _ = crops.batch(np.array([0]), rng)
        # each crop is a block of the image: find its corner from its first value
        top, left = np.argwhere(image == images[0, 0, 0, 0].item())[0]
        np.testing.assert_array_equal(images[0, 0].numpy(), image[top : top + 8, left : left + 8])
        corners.add((int(top), int(left)))
    assert {0, 24} <= {t for t, _ in corners} and {0, 24} <= {c for _, c in corners}  # both borders reached
    assert len(corners) > 0.9 * 25 * 25  # and (nearly) every placement drawn


def test_a_crop_of_the_image_size_is_the_whole_image():
    data = arrays()
    whole = source(data, [32, 32], 0.5)
    images, masks, _ = whole.batch(np.array([3]), np.random.default_rng(0))
    np.testing.assert_array_equal(images[0].numpy(), data.images[3])


@pytest.mark.parametrize("size, message", [([40, 40], "larger than the images"), ([8, 8, 8], "2 sizes for 2D")])
def test_impossible_crops_are_refused(size, message):
    with pytest.raises(ConfigError, match=message):
        source(arrays(), size, 0.5)


def test_whole_after_trains_on_crops_then_on_whole_images_from_a_fixed_step():
    from ssn.engine.loading import TrainingExamples

    data = arrays(count=6)
    crops = source(data, [8, 8], 0.0)
    config = types.SimpleNamespace(seed=0, augment=False, crop_scale=1.0, annotators="one")
    examples = TrainingExamples(crops, config)
    assert examples[(0, 5, 0)][0].shape[-2:] == (8, 8)  # no switch given: crops throughout
    examples.whole_images_from(2, steps_per_epoch=3, batch_size=2)
    sizes = {key: tuple(examples[key][0].shape[-2:]) for key in [(0, 0, 0), (0, 3, 1), (0, 4, 2), (0, 5, 3), (1, 0, 4)]}
    # global step = epoch * 3 + position // 2: steps 0 and 1 crop, steps 2 and 3 see whole images
    assert sizes == {
        (0, 0, 0): (8, 8),
        (0, 3, 1): (8, 8),
        (0, 4, 2): (32, 32),
        (0, 5, 3): (32, 32),
        (1, 0, 4): (32, 32),
    }
    assert "whole images after 50% of the budget" in source_with(data, whole_after=0.5).describe()


def source_with(data, **settings):
    config = types.SimpleNamespace(
        patch_size=[8, 8], foreground_share=0.5, split_file=None, seed=0, train_split="train", val_split="val",
        **settings,
    )  # fmt: skip
    return ArraySource(data, config)


def test_a_run_with_whole_after_switches_at_its_share_of_the_steps(tmp_path, monkeypatch):
    from ssn.apps.cli import main
    from ssn.data.arrays import save_arrays
    from ssn.data.synthetic import make_synthetic

    path = tmp_path / "data.npz"
    save_arrays(path, make_synthetic(16, size=32, seed=0))
    seen: list[tuple[int, ...]] = []
    batch = ArraySource.batch

    def recording(self, items, rng, whole=False):
        out = batch(self, items, rng, whole)
        seen.append(tuple(out[0].shape[-2:]))
        return out

    monkeypatch.setattr(ArraySource, "batch", recording)
    run = ["--data", str(path), "--features", "4", "8", "--batch-size", "4", "--val-images", "2", "--val-samples", "2"]
    assert main(["train", *run, "--out", str(tmp_path / "r"), "--patch-size", "16", "16", "--whole-after", "0.5",
                 "--max-steps", "6", "--workers", "0"]) == 0  # fmt: skip
    # 14 training images: batches of 4, 4, 4, 2 per epoch; ceil(0.5 * 6) = 3 steps of crops, then
    # whole images for step 4 (2 images) and the next epoch's steps 5 and 6 (4 each)
    assert seen == [(16, 16)] * 12 + [(32, 32)] * 10


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--whole-after", "0.5", "--max-steps", "4"], "give patch_size too"),
        (["--whole-after", "1", "--patch-size", "16", "16", "--max-steps", "4"], "below 1"),
        (
            ["--whole-after", "0.5", "--patch-size", "16", "16", "--max-minutes", "1"],
            "needs a budget in steps or epochs",
        ),
    ],
)
def test_contradictory_whole_after_settings_are_refused_in_one_line(tmp_path, capsys, flags, message):
    from ssn.apps.cli import main

    assert main(["train", "--data", str(tmp_path / "x.npz"), "--out", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
