"""``ssn explore``: a local web page to steer a trained SSN's samples (needs ``pip install 'ssn[explorer]'``).

Pick an image of a dataset (``--data``) or upload one (PNG, NPY, NIfTI); the page shows the mean
prediction, the per-pixel entropy and 16 samples. Sliders scale each class's deviation from the
mean (-3 to 3), the temperature and the first latent directions. Clicking the marking image
stamps a disc (the brush) of the chosen class; "sample under marks" redraws samples that agree
with the marks. The samples download as ``.npz`` and the grid as PNG.

It listens on 127.0.0.1 unless ``--host`` says otherwise. Uploads are checked (type, size,
dimensions, channels) and a bad one gets a message in the page; nothing in an upload is run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from ..data.arrays import float_images
from ..data.nifti import normalise_volume
from ..errors import ConfigError, UserError
from .explorer_core import Exploration, VolumeExploration, read_upload

__all__ = ["build_app", "explore"]

MARK_SCALE = 4  # the marking image is shown 4x enlarged


def _state_view(exploration: Exploration, with_marking: bool = True) -> tuple:
    """(sample grid, P(foreground), entropy, marking image or None, status line)."""
    labels = exploration.samples()
    scale = 1 if exploration.image.shape[1] >= 128 else 2  # pictures of ~256-512 px a side encode fast
    grid = exploration.grid(labels, scale=scale)
    mean, entropy = exploration.mean_and_entropy(labels, scale=scale)
    status = f"{exploration.num_samples} samples at temperature {exploration.temperature:g}"
    if exploration.last_marks:
        m = exploration.last_marks
        status += (
            f"; marks: {int((exploration.marks >= 0).sum())} pixels, method {m['method']}, "
            f"agreement {m['agreement']:.2f}, free draws meeting them {m['acceptance']:.3f}"
        )
    marking = None
    if with_marking:
        marking = np.kron(exploration.overlay(np.zeros_like(labels[0])), np.ones((MARK_SCALE, MARK_SCALE, 1), np.uint8))
    return grid, mean, entropy, marking, status


def _current(state) -> Exploration | None:
    """The shown 2D exploration: the image's, or the current slice's of a volume."""
    return state.current if isinstance(state, VolumeExploration) else state


def build_app(model, data=None, num_samples: int = 16, window=None):
    """The Gradio app for ``model`` (an SSN), with the images of ``data`` (optional): a dataset
    (2D models) or a volume list (3D models, with the sliding ``window`` of whole volumes)."""
    try:
        import gradio as gr
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("the explorer needs Gradio: pip install 'ssn[explorer]'") from None

    classes = model.num_classes
    in_channels, spatial_dims = model.spec.in_channels, model.spec.spatial_dims
    volumes = spatial_dims == 3
    if spatial_dims not in (2, 3):
        raise ConfigError("the explorer shows 2D images and volumes")
    if volumes and not window:
        raise ConfigError("a 3D run needs the sliding window (its training patch size) to explore volumes")
    cases = data.all_cases() if volumes and data is not None else []
    count = 0 if data is None else len(cases) if volumes else len(data)
    rank_shown = min(model.rank, 3)

    def start(image: np.ndarray):
        if volumes:
            return VolumeExploration(model, image, window, num_samples=num_samples)
        return Exploration(model, image, num_samples=num_samples)

    def with_slider(state, views):
        if isinstance(state, VolumeExploration):
            return (
                state,
                *views,
                gr.update(minimum=state.slices.start, maximum=state.slices.stop - 1, value=state.slice, visible=True),
            )
        return (state, *views, gr.update(visible=False))

    def from_dataset(index):
        if data is None:
            return None, *([None] * 4), "no --data given: upload an image", gr.skip()
        index = int(np.clip(int(index), 0, count - 1))
        if volumes:
            from ..data.nifti import read_case

            image = np.asarray(read_case(cases[index], data.label_map).image)
        else:
            image = np.asarray(data.images[index])
            image = float_images(image)
        exploration = start(image)
        return with_slider(exploration, _state_view(_current(exploration)))

    def to_slice(state, k):
        if not isinstance(state, VolumeExploration):
            return *([gr.skip()] * 4), gr.skip()
        state.show(int(k))
        return _state_view(state.current)

    def from_upload(file):
        if file is None:
            return gr.skip(), *([gr.skip()] * 6)
        try:
            image = read_upload(file, in_channels, spatial_dims)
            if volumes:  # raw intensities: z-scored inside the non-zero voxels, as volume lists are
                image = normalise_volume(image)
            exploration = start(image)
        except UserError as error:
            return gr.skip(), *([gr.skip()] * 4), f"upload refused: {error}", gr.skip()
        return with_slider(exploration, _state_view(_current(exploration)))

    def render(state, temperature, *values):
        exploration = _current(state)
        if exploration is None:
            return *([gr.skip()] * 4), "pick or upload an image first"
        start_time = time.perf_counter()
        exploration.temperature = float(temperature)
        exploration.class_scales = np.array(values[:classes], dtype=float)
        exploration.latent_shift = np.array(values[classes:], dtype=float)
        grid, mean, entropy, _, status = _state_view(exploration, with_marking=False)
        return (
            grid,
            mean,
            entropy,
            gr.skip(),
            status + f"; rendered in {(time.perf_counter() - start_time) * 1000:.0f} ms",
        )

    def stamp(state, mark_class, radius, event: gr.SelectData):
        exploration = _current(state)
        if exploration is None:
            return gr.skip(), "pick or upload an image first"
        x, y = (int(v) // MARK_SCALE for v in event.index)
        yy, xx = np.mgrid[: exploration.marks.shape[0], : exploration.marks.shape[1]]
        exploration.marks[(yy - y) ** 2 + (xx - x) ** 2 <= int(radius) ** 2] = int(mark_class)
        marking = np.kron(
            exploration.overlay(np.zeros(exploration.marks.shape, np.uint8)),
            np.ones((MARK_SCALE, MARK_SCALE, 1), np.uint8),
        )
        return marking, f"{int((exploration.marks >= 0).sum())} pixels marked; press 'sample under marks'"

    stamp.__annotations__["event"] = gr.SelectData  # resolved here: the module's annotations are strings

    def under_marks(state):
        exploration = _current(state)
        if exploration is None:
            return *([gr.skip()] * 4), "pick or upload an image first"
        exploration.apply_marks(exploration.marks)
        return _state_view(exploration)

    def clear(state):
        exploration = _current(state)
        if exploration is None:
            return *([gr.skip()] * 4), "pick or upload an image first"
        exploration.apply_marks(np.full(exploration.marks.shape, -1))
        exploration.last_marks = {}
        return _state_view(exploration)

    def download(state, kind):
        exploration = _current(state)
        if exploration is None:
            return None
        folder = Path(tempfile.mkdtemp(prefix="ssn_explore_"))
        if kind == "npz" and isinstance(state, VolumeExploration):  # every slice's samples: (n, X, Y, Z)
            path = folder / "volume_samples.npz"
            np.savez_compressed(path, samples=state.volume_samples(), image=state.volume)
        elif kind == "npz":
            path = folder / "samples.npz"
            path.write_bytes(exploration.npz_bytes())
        else:
            from PIL import Image

            path = folder / "samples.png"
            Image.fromarray(exploration.grid()).save(path)
        return str(path)

    with gr.Blocks(title="ssn explorer") as app:
        gr.Markdown(f"## ssn explorer: {classes} classes, rank {model.rank}")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                index = gr.Number(
                    value=0,
                    precision=0,
                    label=f"dataset {'case' if volumes else 'image'} (0-{max(count - 1, 0)})",
                    interactive=data is not None,
                    elem_id="index",
                )
                upload = gr.File(label="or upload an image (.png, .npy, .nii, .nii.gz)", elem_id="upload")
                slice_slider = gr.Slider(0, 1, value=0, step=1, label="axial slice", visible=False, elem_id="slice")
                marking = gr.Image(label="click to mark (the brush)", interactive=False, elem_id="marking")
                with gr.Row():
                    mark_class = gr.Radio(list(range(classes)), value=min(1, classes - 1), label="mark as class")
                    radius = gr.Slider(0, 10, value=2, step=1, label="brush radius (pixels)")
                with gr.Row():
                    resample = gr.Button("sample under marks", elem_id="resample")
                    clear_button = gr.Button("clear marks")
            with gr.Column(scale=2):
                grid = gr.Image(label="samples", elem_id="samples", interactive=False)
                with gr.Row():
                    mean = gr.Image(label="P(foreground)", interactive=False)
                    entropy = gr.Image(label="entropy", interactive=False)
                status = gr.Markdown(elem_id="status")
        with gr.Row():
            temperature = gr.Slider(0, 2, value=1, step=0.05, label="temperature", elem_id="temperature")
            scales = [
                gr.Slider(-3, 3, value=1, step=0.1, label=f"class {c} scale", elem_id=f"scale{c}")
                for c in range(classes)
            ]
            shifts = [
                gr.Slider(-3, 3, value=0, step=0.1, label=f"latent {k + 1}", elem_id=f"latent{k + 1}")
                for k in range(rank_shown)
            ]
        with gr.Row():
            npz_button = gr.DownloadButton("download samples (.npz)")
            png_button = gr.DownloadButton("download grid (.png)")
        views = [grid, mean, entropy, marking, status]
        index.change(from_dataset, index, [state, *views, slice_slider])
        upload.upload(from_upload, upload, [state, *views, slice_slider])
        slice_slider.change(to_slice, [state, slice_slider], views)
        for control in (temperature, *scales, *shifts):
            control.change(render, [state, temperature, *scales, *shifts], views)
        marking.select(stamp, [state, mark_class, radius], [marking, status])
        resample.click(under_marks, state, views)
        clear_button.click(clear, state, views)
        npz_button.click(lambda s: download(s, "npz"), state, npz_button)
        png_button.click(lambda s: download(s, "png"), state, png_button)
        app.load(from_dataset, index, [state, *views, slice_slider])
    return app


def explore(
    run_dir,
    data_path=None,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "cpu",
    prevent_thread_lock: bool = False,
):
    """Load a run and serve the explorer on ``host:port`` (see the module)."""
    from ..data.arrays import load_arrays
    from ..data.volume_list import is_volume_list, load_volume_list
    from ..engine.checkpoints import load_run

    model, config = load_run(run_dir)
    from ..distributed import check_device

    check_device(device)
    model.to(device)
    if not model.has_logit_distribution:
        raise ConfigError(f"the explorer steers SSN samples; {run_dir} is a {model.method!r} run")
    data = None
    if data_path:
        data = load_volume_list(data_path) if is_volume_list(data_path) else load_arrays(data_path)
    app = build_app(model, data, window=config.get("patch_size"))
    app.launch(server_name=host, server_port=port, prevent_thread_lock=prevent_thread_lock, quiet=True)
    return app
