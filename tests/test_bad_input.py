"""What a new user meets: damaged files and mismatched inputs end as one line and exit code 2,
leaving nothing half-written."""

import json
import os
import zipfile

import numpy as np
import pytest

from ssn.apps.cli import main
from ssn.data.arrays import SegmentationArrays, load_arrays, save_arrays
from ssn.data.synthetic import make_synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad-input") / "synthetic.npz"
    save_arrays(path, make_synthetic(24, size=32, seed=0))
    return path


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad-input-run") / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(out),
                "--features",
                "4",
                "8",
                "--max-steps",
                "2",
                "--batch-size",
                "4",
                "--val-images",
                "4",
            ]
        )
        == 0
    )
    return out


def _fails_in_one_line(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[-1].startswith("ssn: error: ") and "Traceback" not in "\n".join(err)
    for needle in needles:
        assert needle in err[-1], err[-1]
    return err[-1]


def _copy_run(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    return copy


def test_a_three_channel_npz_for_a_one_channel_model(run, tmp_path, capsys):
    rgb = make_synthetic(4, size=32, seed=1)
    path = tmp_path / "rgb.npz"
    save_arrays(path, SegmentationArrays(np.repeat(rgb.images, 3, axis=1), rgb.masks))
    _fails_in_one_line(capsys, ["evaluate", "--run", str(run), "--data", str(path), "--samples", "2"], "3 channel")
    _fails_in_one_line(
        capsys, ["sample", "--run", str(run), "--input", str(path), "--out", str(tmp_path / "s")], "1 channel"
    )
    assert not (tmp_path / "s" / "samples.npz").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other model"])
def test_damaged_weights(run, tmp_path, capsys, damage):
    copy = _copy_run(run, tmp_path)
    weights = copy / "best.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "garbage":
        weights.write_bytes(os.urandom(2000))
    else:
        config = json.loads((copy / "config.json").read_text())
        config["architecture"]["backbone_kwargs"]["features"] = [8, 16]
        (copy / "config.json").write_text(json.dumps(config))
    needle = "another model" if damage == "other model" else "damaged"
    _fails_in_one_line(capsys, ["evaluate", "--run", str(copy), "--data", _data_of(run), "--samples", "2"], needle)


def _data_of(run):
    return json.loads((run / "config.json").read_text())["data"]


@pytest.mark.parametrize("damage", ["not json", "no architecture key", "architecture without its backbone's sizes"])
def test_a_damaged_config(run, tmp_path, capsys, damage):
    copy = _copy_run(run, tmp_path)
    config = json.loads((copy / "config.json").read_text())
    if damage == "not json":
        (copy / "config.json").write_text("{half")
    elif damage == "no architecture key":
        del config["architecture"], config["model"]
        (copy / "config.json").write_text(json.dumps(config))
    else:
        del config["architecture"]["backbone_kwargs"]  # the default sizes are another model's
        (copy / "config.json").write_text(json.dumps(config))
    _fails_in_one_line(
        capsys, ["evaluate", "--run", str(copy), "--data", _data_of(run), "--samples", "2"], "config.json"
    )


def test_a_garbage_state_cannot_be_resumed(run, tmp_path, capsys):
    copy = _copy_run(run, tmp_path)
    (copy / "state.pt").write_bytes(os.urandom(500))
    _fails_in_one_line(capsys, ["train", "--out", str(copy), "--resume", "--max-steps", "4"], "state.pt", "damaged")


def test_a_corrupt_png(run, tmp_path, capsys):
    png = tmp_path / "broken.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    _fails_in_one_line(
        capsys, ["sample", "--run", str(run), "--input", str(png), "--out", str(tmp_path / "s")], "broken.png", "PNG"
    )


def test_sample_removes_an_earlier_calls_figures(run, data, tmp_path):
    out = tmp_path / "s"
    assert (
        main(["sample", "--run", str(run), "--input", str(data), "--out", str(out), "--samples", "2", "--figures", "3"])
        == 0
    )
    assert (
        main(["sample", "--run", str(run), "--input", str(data), "--out", str(out), "--samples", "2", "--figures", "1"])
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["image_0000.png", "samples.npz"]


def test_an_unwritable_cache(data, tmp_path, monkeypatch, capsys):
    if os.geteuid() == 0:  # root writes anywhere: make the cache a file instead of a folder
        blocked = tmp_path / "cache"
        blocked.write_text("a file, not a folder")
    else:
        blocked = tmp_path / "cache"
        blocked.mkdir(mode=0o500)
    monkeypatch.setenv("SSN_CACHE_DIR", str(blocked))
    _fails_in_one_line(
        capsys,
        ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--max-steps", "1"],
        "SSN_CACHE_DIR",
        str(blocked),
    )


def test_a_damaged_cache_is_rebuilt(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSN_CACHE_DIR", str(tmp_path / "cache"))
    first = np.array(load_arrays(data).images)
    (images,) = (tmp_path / "cache").glob("*/images.npy")
    images.write_bytes(images.read_bytes()[:1000])  # a kill or a full disk mid-write
    again = load_arrays(data)
    assert "damaged" in capsys.readouterr().err
    np.testing.assert_array_equal(np.asarray(again.images), first)


def test_an_npz_header_claiming_huge_arrays(tmp_path, capsys):
    path = tmp_path / "huge.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    header["shape"] = (10**6, 1, 10**5, 10**5)
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("images.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(b"\0" * 64)
        with archive.open("masks.npy", "w") as f:
            np.lib.format.write_array(f, np.zeros((1, 1, 4, 4), np.uint8))
    _fails_in_one_line(
        capsys, ["train", "--data", str(path), "--out", str(tmp_path / "r"), "--max-steps", "1"], "huge.npz"
    )


@pytest.mark.parametrize("command", ["evaluate", "sample"])
def test_a_device_this_machine_lacks(run, data, tmp_path, capsys, command):
    target = ["--data", str(data)] if command == "evaluate" else ["--input", str(data), "--out", str(tmp_path / "s")]
    _fails_in_one_line(capsys, [command, "--run", str(run), *target, "--device", "cuda:99"], "cuda:99")


def test_an_incomplete_cache_folder_is_replaced(data, tmp_path, monkeypatch):
    from ssn.data.arrays import _cache_key
    from ssn.data.cache import cache_dir

    monkeypatch.setenv("SSN_CACHE_DIR", str(tmp_path / "cache"))
    folder = cache_dir() / _cache_key(data)
    folder.mkdir(parents=True)
    (folder / "images.npy").write_bytes(b"half a file")  # left by a kill, without done.json
    np.testing.assert_array_equal(
        np.asarray(load_arrays(data).images), np.asarray(load_arrays(data, cache=False).images)
    )


def _images_sum(path):
    return float(np.asarray(load_arrays(path).images, dtype=np.float64).sum())


def test_processes_filling_one_cache_at_once(data, tmp_path, monkeypatch):
    """As under torchrun: each process decodes into a folder of its own; the first rename wins."""
    import multiprocessing

    monkeypatch.setenv("SSN_CACHE_DIR", str(tmp_path / "cache"))
    with multiprocessing.get_context("fork").Pool(3) as pool:
        sums = pool.map(_images_sum, [data] * 6)
    assert len(set(sums)) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] and not list((tmp_path / "cache").glob("*.tmp"))
