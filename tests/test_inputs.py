"""Inputs as users give them: 16-bit and colour PNGs, and tensors of the wrong kind."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import ssn
from ssn.apps.sample import read_png
from ssn.errors import ConfigError, DataError


def test_a_16_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    values = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(values).save(tmp_path / "grey16.png")
    image = read_png(tmp_path / "grey16.png", 1)
    assert image.shape == (1, 32, 32) and image.dtype == np.float32
    np.testing.assert_allclose(image[0], values / 65535, rtol=1e-6)  # not 0 and 255
    Image.fromarray((values // 257).astype(np.uint8)).save(tmp_path / "grey8.png")
    eight = read_png(tmp_path / "grey8.png", 1)
    assert eight.dtype == np.uint8 and np.array_equal(eight[0], values // 257)  # the models divide by 255


def test_colour_for_a_grey_model_is_refused_unless_its_channels_are_equal(tmp_path):
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "red.png")
    with pytest.raises(DataError, match="colour image but the model takes 1 channel"):
        read_png(tmp_path / "red.png", 1)
    assert read_png(tmp_path / "red.png", 3).shape == (3, 16, 16)
    grey = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=-1)
    Image.fromarray(grey).save(tmp_path / "grey_as_rgb.png")
    np.testing.assert_array_equal(read_png(tmp_path / "grey_as_rgb.png", 1)[0], grey[..., 0])
    rgba = np.dstack([grey, np.full((16, 16), 255, np.uint8)])
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "transparent.png")
    with pytest.raises(DataError, match="transparent"):
        read_png(tmp_path / "transparent.png", 1)


@pytest.fixture(scope="module")
def model():
    built = ssn.models.create("unet", num_classes=2, rank=2, features=(4, 8), in_channels=1)
    return built.eval()


def test_a_wrong_batch_is_named_not_left_to_torch(model):
    with pytest.raises(ConfigError, match="takes 1 channel\\(s\\) but the images have 3"):
        model.sample_labels(torch.rand(2, 3, 16, 16), 2)
    with pytest.raises(ConfigError, match="add a batch axis"):
        model.sample_labels(torch.rand(1, 16, 16), 2)
    with pytest.raises(ConfigError, match="must be float \\(or uint8"):
        model.sample_labels(torch.zeros(1, 1, 16, 16, dtype=torch.int64), 2)


def test_uint8_images_are_scaled_as_the_command_line_scales_them(model):
    pixels = torch.randint(0, 256, (1, 1, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    drawn = model.sample_labels(pixels, 3, generator=torch.Generator().manual_seed(1))
    same = model.sample_labels(pixels.float() / 255, 3, generator=torch.Generator().manual_seed(1))
    assert drawn.dtype == torch.uint8 and torch.equal(drawn, same)


def test_a_forgotten_division_by_255_is_warned_about_once():
    built = ssn.models.create("unet", num_classes=2, rank=2, features=(4, 8), in_channels=1).eval()
    pixels = torch.randint(0, 256, (1, 1, 16, 16), generator=torch.Generator().manual_seed(0)).float()
    with pytest.warns(UserWarning, match="0-255 values"):
        built.sample_labels(pixels, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        built.sample_labels(pixels, 2)  # once is enough
        fresh = ssn.models.create("unet", num_classes=2, rank=2, features=(4, 8), in_channels=1).eval()
        fresh.sample_labels(torch.rand(1, 1, 16, 16), 2)  # [0, 1] floats never warn
        fresh.sample_labels(torch.randn(1, 1, 16, 16) * 3, 2)  # nor z-scored ones
