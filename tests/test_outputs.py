"""Outputs in a hostile place: links, devices and folders where a file should go, full disks."""

import errno
import json
import os
import stat

import numpy as np
import pytest

from ssn.apps.cli import main
from ssn.data.arrays import save_arrays
from ssn.data.synthetic import make_synthetic
from ssn.errors import OutputError
from ssn.files import check_writable, write_atomically, write_json


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outputs")
    data = folder / "synthetic.npz"
    save_arrays(data, make_synthetic(16, size=32, seed=0))
    run = folder / "run"
    flags = ["--features", "4", "8", "--max-steps", "1", "--batch-size", "4", "--val-images", "4"]
    assert main(["train", "--data", str(data), "--out", str(run), *flags]) == 0
    return run, data


def test_a_link_is_written_through_to_its_target(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_json({"a": 1}, link)
    assert link.is_symlink() and json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]  # no temporary left


def test_a_pipe_or_a_folder_is_refused_never_replaced(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    folder = tmp_path / "folder.json"
    folder.mkdir()
    for special, kind in ((pipe, "a device or other special file"), (folder, "a folder")):
        with pytest.raises(OutputError, match=f"is {kind}, not a regular file"):
            write_json({"a": 1}, special)
        with pytest.raises(OutputError, match="not a regular file"):
            check_writable(special)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode) and folder.is_dir()
    link = tmp_path / "to_pipe.json"
    link.symlink_to(pipe)
    with pytest.raises(OutputError, match="the link .*to_pipe.json points to it"):
        write_json({"a": 1}, link)


def _full_disk(path):
    path.write_bytes(b"half")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_error_and_leaves_the_old_file(tmp_path):
    out = tmp_path / "out.json"
    out.write_text("old")
    with pytest.raises(OutputError, match="cannot write .*out.json: no space left on the device"):
        write_atomically(out, _full_disk)
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_torchs_unfinished_file_is_reported_as_a_write_failure(tmp_path):
    def torch_fails(path):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4352 vs 4240")

    with pytest.raises(OutputError, match="torch could not finish the file"):
        write_atomically(tmp_path / "state.pt", torch_fails)


def test_evaluate_refuses_a_special_out_and_writes_through_a_link(trained, tmp_path, capsys):
    run, data = trained
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--samples", "2", "--out", str(pipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a regular file" in err and not (tmp_path / "pipe.csv").exists()
    target = tmp_path / "metrics.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--samples", "2", "--out", str(link)]) == 0
    assert link.is_symlink() and "ged" in json.loads(target.read_text())


def test_a_full_disk_during_training_or_sampling_is_one_line(trained, tmp_path, capsys, monkeypatch):
    import matplotlib.figure
    import torch

    run, data = trained

    def torch_fails(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4352 vs 4240")

    monkeypatch.setattr(torch, "save", torch_fails)
    flags = ["--features", "4", "8", "--max-steps", "1", "--batch-size", "4", "--val-images", "4"]
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssn: error: cannot write") and "state.pt" in err and "Traceback" not in err
    monkeypatch.undo()

    def savefig_fails(self, path, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig_fails)
    image = tmp_path / "image.npy"
    np.save(image, np.random.default_rng(0).random((32, 32), dtype=np.float32))
    out = tmp_path / "samples"
    assert main(["sample", "--run", str(run), "--input", str(image), "--samples", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err  # the progress line, then one line of error
    assert "Traceback" not in err and err.splitlines()[-1].startswith("ssn: error: cannot write")
    assert "no space left on the device" in err
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp.")]  # nothing half-written
