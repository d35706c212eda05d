"""The figures of `ssn sample`: what they show, and a folder of images in and out."""

import numpy as np
import pytest
from PIL import Image

from ssn.apps.cli import main
from ssn.apps.plotting import plot_samples
from ssn.data.arrays import save_arrays
from ssn.data.synthetic import make_synthetic


def _samples(count, size=128):
    """``count`` samples of a disc at (90, 40) whose radius grows with the index; sample 1 empty."""
    yy, xx = np.mgrid[:size, :size]
    return np.stack([((yy - 90) ** 2 + (xx - 40) ** 2 < (k / 10) ** 2).astype(np.uint8) for k in range(count)])


def test_many_samples_are_a_stated_selection_with_colour_bars_zoomed_on_the_nodule(tmp_path):
    samples = _samples(100)
    mean = np.stack([1 - samples.mean(0), samples.mean(0)]).astype(np.float32)
    entropy = np.zeros((128, 128), np.float32)
    image = np.random.default_rng(0).random((1, 128, 128)).astype(np.float32)
    shown = plot_samples(image, samples, mean, entropy, tmp_path / "slice.png")
    assert (tmp_path / "slice.png").is_file()
    assert shown.colour_bars == ["P(foreground)", "entropy (nats)"]
    assert len(shown.shown_samples) == 16 and shown.shown_samples[0] == 1 and shown.shown_samples[-1] == 100
    assert shown.selection.startswith("16 of 100 samples: evenly spaced ranks of foreground area")
    assert "1 of 100 are empty" in shown.selection
    assert shown.panels[:4] == ["image", "image, zoomed", "P(foreground)", "entropy (nats)"]
    assert shown.panels[4:] == [f"sample {k}" for k in shown.shown_samples]
    rows, columns = shown.crop
    assert rows.start <= 90 - 10 and rows.stop >= 90 + 10 and rows.stop - rows.start < 128  # the disc, zoomed
    assert columns.start <= 40 - 10 and columns.stop >= 40 + 10


def test_few_samples_are_all_shown_and_an_empty_map_is_not_zoomed(tmp_path):
    samples = np.zeros((4, 64, 64), np.uint8)
    mean = np.stack([np.ones((64, 64)), np.zeros((64, 64))]).astype(np.float32)
    shown = plot_samples(np.zeros((1, 64, 64)), samples, mean, np.zeros((64, 64)), tmp_path / "f.png")
    assert shown.selection == "all 4 samples, smallest foreground first" and len(shown.shown_samples) == 4
    assert shown.crop == (slice(0, 64), slice(0, 64))


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    folder = tmp_path_factory.mktemp("figures")
    data = folder / "synthetic.npz"
    save_arrays(data, make_synthetic(8, size=32, seed=0))
    flags = ["--features", "4", "8", "--max-steps", "1", "--batch-size", "2", "--val-images", "2"]
    assert main(["train", "--data", str(data), "--out", str(folder / "run"), *flags]) == 0
    return folder / "run"


def test_a_folder_of_images_is_sampled_into_files_named_after_them(run2d, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(inputs / "case_a.png")
    Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(inputs / "case_b.png")  # another size
    np.save(inputs / "case_c.npy", rng.random((32, 32), dtype=np.float32))
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["sample", "--run", str(run2d), "--input", str(inputs), "--samples", "3", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "case_a.npz", "case_a.png", "case_b.npz", "case_b.png", "case_c.npz", "case_c.png"
    ]  # fmt: skip
    b = np.load(out / "case_b.npz")
    assert b["samples"].shape == (3, 40, 48) and b["mean"].shape == (2, 40, 48) and b["entropy"].shape == (40, 48)
    a, c = np.load(out / "case_a.npz")["samples"], np.load(out / "case_c.npz")["samples"]
    assert a.shape == c.shape == (3, 32, 32)
