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
