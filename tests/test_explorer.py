"""The explorer: its state without a browser, and the page driven in a real headless Chromium.

The browser test needs Gradio, Playwright for Python and a Chromium binary (Debian's
``chromium``, found on PATH or through ``$SSN_CHROMIUM``); ``.ci/run`` installs them. Set
``$SSN_EXPLORER_SCREENSHOT`` to a path to keep the page's screenshot (the README's
``docs/explorer.png`` is made so, on the shipped LIDC model: ``SSN_EXPLORER_RUN=pretrained:lidc-2d
SSN_EXPLORER_DATA=../shared/data/lidc/lidc_slices_128.npz SSN_EXPLORER_IMAGE=190
SSN_EXPLORER_MARK=0.5,0.5 SSN_EXPLORER_SCREENSHOT=docs/explorer.png pytest tests/test_explorer.py``;
by default the test uses a run trained on synthetic data by its fixture).
"""

import io
import os
import shutil
import socket

import numpy as np
import pytest

from ssn.apps.cli import main
from ssn.apps.explorer_core import Exploration, read_upload
from ssn.data.arrays import save_arrays
from ssn.data.synthetic import make_synthetic
from ssn.engine.checkpoints import load_run
from ssn.errors import DataError


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explorer")
    data = folder / "synthetic.npz"
    save_arrays(data, make_synthetic(96, size=40, seed=0))
    run = folder / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(run),
                "--features",
                "8",
                "16",
                "32",
                "--max-steps",
                "400",
                "--batch-size",
                "8",
                "--lr",
                "3e-3",
                "--val-images",
                "4",
            ]
        )
        == 0
    )
    return run, data


def test_the_controls_edit_the_kept_draws(demo_run):
    run, data = demo_run
    model, _ = load_run(run)
    image = np.load(data)["images"][0].astype(np.float32)  # (1, 40, 40)
    exploration = Exploration(model, image)
    first = exploration.samples()
    assert first.shape == (16, 40, 40) and np.array_equal(exploration.samples(), first)  # the draws are kept
    exploration.temperature = 0.0
    at_mean = exploration.samples()
    assert all(np.array_equal(s, at_mean[0]) for s in at_mean)  # t = 0: every sample is the mean's argmax
    exploration.temperature, exploration.class_scales = 1.0, np.zeros(2)
    assert np.array_equal(exploration.samples(), at_mean)  # scales 0: the mean too
    exploration.class_scales = np.ones(2)
    marks = np.full((40, 40), -1)
    marks[20, 10:14] = 1
    outcome = exploration.apply_marks(marks)
    assert outcome["method"] in ("rejection", "optimisation") and outcome["agreement"] == 1.0
    assert (exploration.samples()[:, 20, 10:14] == 1).all()
    grid = exploration.grid()
    assert grid.dtype == np.uint8 and grid.shape == (4 * 82, 4 * 82, 3)
    assert set(np.load(io.BytesIO(exploration.npz_bytes()))) >= {"samples", "image", "marks"}


def test_uploads_are_checked(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("import os")
    with pytest.raises(DataError, match="upload a .png"):
        read_upload(bad, 1, 2)
    wrong = tmp_path / "rgb.npy"
    np.save(wrong, np.zeros((3, 40, 40), np.float32))
    with pytest.raises(DataError, match="channels"):
        read_upload(wrong, 1, 2)
    tiny = tmp_path / "tiny.npy"
    np.save(tiny, np.zeros((4, 4), np.float32))
    with pytest.raises(DataError, match="8 to 1024"):
        read_upload(tiny, 1, 2)
    pickled = tmp_path / "object.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError):
        read_upload(pickled, 1, 2)


def _chromium() -> str | None:
    return os.environ.get("SSN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_in_a_real_browser(demo_run, tmp_path):
    pytest.importorskip("gradio", reason="the explorer needs gradio: pip install 'ssn[explorer]'")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install chromium, or set SSN_CHROMIUM)")
    from ssn.apps.explore import explore

    run, data = os.environ.get("SSN_EXPLORER_RUN", demo_run[0]), os.environ.get("SSN_EXPLORER_DATA", demo_run[1])
    mark_x, mark_y = (float(v) for v in os.environ.get("SSN_EXPLORER_MARK", "0.26,0.5").split(","))
    port = _free_port()
    app = explore(str(run), str(data), port=port, prevent_thread_lock=True)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}")
            page.wait_for_selector("#samples img", timeout=60_000)
            page.wait_for_function("document.querySelector('#status').innerText.includes('16 samples')")
            if os.environ.get("SSN_EXPLORER_IMAGE"):
                first = page.get_attribute("#samples img", "src")
                page.fill("#index input", os.environ["SSN_EXPLORER_IMAGE"])
                page.press("#index input", "Enter")
                page.wait_for_function(f"document.querySelector('#samples img').src !== {first!r}")
            before = page.get_attribute("#samples img", "src")

            # 1. a slider: the temperature to 0, typed into its number box
            box = page.locator("#temperature input[type=number]")
            box.fill("0")
            box.press("Enter")
            page.wait_for_function("document.querySelector('#status').innerText.includes('temperature 0;')")
            page.wait_for_function(f"document.querySelector('#samples img').src !== {before!r}")
            box.fill("1")
            box.press("Enter")
            page.wait_for_function("document.querySelector('#status').innerText.includes('temperature 1;')")

            # 2. marks: click the marking image on the left disc, then sample under the marks
            marking = page.locator("#marking img")
            marking.wait_for()
            bounds = marking.bounding_box()
            page.mouse.click(bounds["x"] + bounds["width"] * mark_x, bounds["y"] + bounds["height"] * mark_y)
            page.wait_for_function("document.querySelector('#status').innerText.includes('pixels marked')")
            page.click("#resample")
            page.wait_for_function(
                "document.querySelector('#status').innerText.includes('agreement 1.00')", timeout=60_000
            )
            status = page.inner_text("#status")
            assert "method" in status and "agreement 1.00" in status
            screenshot = tmp_path / "explorer.png"
            page.screenshot(path=str(screenshot), full_page=True)
            if os.environ.get("SSN_EXPLORER_SCREENSHOT"):
                shutil.copy(screenshot, os.environ["SSN_EXPLORER_SCREENSHOT"])

            # 3. a bad upload: a message in the page, and the page still works
            bad = tmp_path / "bad.npy"
            np.save(bad, np.zeros((3, 40, 40), np.float32))
            page.set_input_files("#upload input[type=file]", str(bad))
            page.wait_for_function(
                "document.querySelector('#status').innerText.includes('upload refused')", timeout=30_000
            )
            assert "channels" in page.inner_text("#status")
            browser.close()
    finally:
        app.close()
    assert screenshot.stat().st_size > 10_000


def test_a_volume_is_explored_slice_by_slice_with_one_latent_draw(tmp_path):
    from ssn.apps.explorer_core import VolumeExploration
    from ssn.data import load_volume_list, read_case
    from ssn.data.synthetic import make_synthetic_volumes

    lists = make_synthetic_volumes(tmp_path / "data", num_cases=4, shape=(24, 24, 12), splits=(2, 1))
    run = tmp_path / "run3d"
    assert (
        main(
            [
                "train",
                "--data",
                str(lists),
                "--out",
                str(run),
                "--patch-size",
                "16",
                "16",
                "12",
                "--features",
                "4",
                "8",
                "--max-steps",
                "4",
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
    model, config = load_run(run)
    listing = load_volume_list(lists)
    volume = np.asarray(read_case(listing.split("test")[0], listing.label_map).image)
    explored = VolumeExploration(model, volume, config["patch_size"], num_samples=4)
    k = explored.slice
    first = explored.current.samples()
    everything = explored.volume_samples()
    assert everything.shape == (4, 24, 24, 12) and explored.slice == k
    np.testing.assert_array_equal(everything[(slice(None), explored.box[0], explored.box[1], k)], first)
    other = explored.show(k - 1)
    assert torch_equal(other.noise.z, explored.z)  # one latent draw for every slice
    explored.show(k)  # back: the same draws give the same samples
    np.testing.assert_array_equal(explored.current.samples(), first)
    marks = np.full(explored.current.marks.shape, -1)
    marks[5, 5] = 1
    explored.current.apply_marks(marks)
    assert explored.current.last_marks["agreement"] == 1.0
    explored.show(k - 1)
    assert torch_equal(explored.current.noise.z, explored.z) and explored.marks_of_slice[k][5, 5] == 1


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_the_page_handlers_show_a_volume_slice_by_slice_and_refuse_a_bad_upload(tmp_path):
    gr = pytest.importorskip("gradio", reason="the explorer needs gradio: pip install 'ssn[explorer]'")
    from ssn.apps.explore import _Page
    from ssn.data import load_volume_list
    from ssn.data.synthetic import make_synthetic_volumes

    lists = make_synthetic_volumes(tmp_path / "data", num_cases=3, shape=(20, 20, 10), splits=(1, 1))
    run = tmp_path / "run3d"
    train = ["train", "--data", str(lists), "--out", str(run), "--patch-size", "16", "16", "8"]
    assert main([*train, "--features", "4", "8", "--max-steps", "2", "--batch-size", "2", "--val-images", "1"]) == 0
    model, config = load_run(run)
    page = _Page(gr, model, load_volume_list(lists), num_samples=4, window=config["patch_size"])
    page.build()
    shown = page.from_dataset(0)
    volume = shown[page.state]
    assert shown[page.grid].ndim == 3 and shown[page.grid].shape[-1] == 3  # an RGB picture
    assert shown[page.slice]["visible"] is True and shown[page.slice]["value"] == volume.slice
    assert shown[page.status].startswith("4 samples at temperature 1")
    other = page.to_slice(volume, volume.slice - 1)
    assert volume.slice == shown[page.slice]["value"] - 1 and page.state not in other  # the state is kept
    classes, rank = model.num_classes, min(model.rank, 3)
    rendered = page.render(volume, 0.0, *[1.0] * classes, *[0.0] * rank)
    assert "temperature 0;" in rendered[page.status] and page.marking not in rendered
    assert page.render(None, 1.0, *[1.0] * classes, *[0.0] * rank) == {page.status: "pick or upload an image first"}
    bad = tmp_path / "flat.npy"
    np.save(bad, np.zeros((2, 20, 20), np.float32))  # 2D, for a 3D model
    refused = page.from_upload(str(bad))
    assert list(refused) == [page.status] and refused[page.status].startswith("upload refused")
    # a run trained on the stored intensities is shown its volumes as stored, not z-scored
    from ssn.data import read_case

    case = load_volume_list(lists).split("train")[0]
    stored = _Page(gr, model, load_volume_list(lists), num_samples=2, window=config["patch_size"], intensity="stored")
    stored.build()
    np.testing.assert_array_equal(
        stored.from_dataset(0)[stored.state].volume, read_case(case, intensity="stored").image
    )
    assert not np.array_equal(volume.volume, stored.from_dataset(0)[stored.state].volume)


def test_a_calibrated_run_is_explored_at_its_temperature_and_the_address_is_printed(demo_run, tmp_path):
    gr = pytest.importorskip("gradio", reason="the explorer needs gradio: pip install 'ssn[explorer]'")
    import json as json_module

    from ssn.apps.explore import _Page, explore
    from ssn.data.arrays import load_arrays

    run = tmp_path / "calibrated"
    shutil.copytree(demo_run[0], run)
    (run / "calibration.json").write_text(json_module.dumps({"temperature": 0.7}))
    model, _ = load_run(run)
    page = _Page(gr, model, load_arrays(demo_run[1]), num_samples=4)
    page.build()
    shown = page.from_dataset(0)
    assert shown[page.status].startswith("4 samples at temperature 0.7")  # as sample and evaluate use
    assert page.temperature.value == 0.7
    lines = []
    port = _free_port()
    app = explore(str(run), port=port, prevent_thread_lock=True, log=lines.append)
    try:
        assert lines == [f"ssn explore: {run} at temperature 0.7 on http://localhost:{port}"]
    finally:
        app.close()
