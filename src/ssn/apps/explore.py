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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.arrays import float_images
from ..data.nifti import normalise_volume, read_case
from ..errors import ConfigError, UserError
from .explorer_core import Exploration, VolumeExploration, read_upload

if TYPE_CHECKING:
    import gradio as gr

__all__ = ["build_app", "explore"]

MARK_SCALE = 4  # the marking image is shown 4x enlarged


@dataclass
class Views:
    """What the page shows of an exploration: the pictures, (H, W, 3) uint8, and the status line."""

    grid: np.ndarray
    mean: np.ndarray
    entropy: np.ndarray
    marking: np.ndarray | None
    status: str


def views_of(exploration: Exploration, with_marking: bool = True) -> Views:
    """The sample grid, P(foreground), the entropy, the marking image (optional) and the status."""
    labels = exploration.samples()
    scale = 1 if exploration.image.shape[1] >= 128 else 2  # pictures of ~256-512 px a side encode fast
    mean, entropy = exploration.mean_and_entropy(labels, scale=scale)
    status = f"{exploration.num_samples} samples at temperature {exploration.temperature:g}"
    if exploration.last_marks:
        m = exploration.last_marks
        status += (
            f"; marks: {int((exploration.marks >= 0).sum())} pixels, method {m['method']}, "
            f"agreement {m['agreement']:.2f}, free draws meeting them {m['acceptance']:.3f}"
        )
    marking = _marking_picture(exploration) if with_marking else None
    return Views(exploration.grid(labels, scale=scale), mean, entropy, marking, status)


def _marking_picture(exploration: Exploration) -> np.ndarray:
    """The image with the marks on it, enlarged MARK_SCALE times, for clicking on."""
    blank = np.zeros(exploration.marks.shape, np.uint8)
    return np.kron(exploration.overlay(blank), np.ones((MARK_SCALE, MARK_SCALE, 1), np.uint8))


def _current(state) -> Exploration | None:
    """The shown 2D exploration: the image's, or the current slice's of a volume."""
    return state.current if isinstance(state, VolumeExploration) else state


class _Page:
    """The explorer page: the model and data it shows, its components, and one handler per control.

    Handlers return ``{component: value}`` for what they change; the components they leave out
    keep their value.
    """

    def __init__(self, gr, model, data=None, num_samples: int = 16, window=None, intensity: str = "zscore") -> None:
        self.gr, self.model, self.data, self.num_samples, self.window = gr, model, data, num_samples, window
        self.intensity = intensity  # volumes: the run's input (ssn.data.nifti.INTENSITIES)
        self.classes = model.num_classes
        self.volumes = model.spec.spatial_dims == 3
        if model.spec.spatial_dims not in (2, 3):
            raise ConfigError("the explorer shows 2D images and volumes")
        if self.volumes and not window:
            raise ConfigError("a 3D run needs the sliding window (its training patch size) to explore volumes")
        self.cases = data.all_cases() if self.volumes and data is not None else []
        self.count = 0 if data is None else len(self.cases) if self.volumes else len(data)

    # ------------------------------------------------------------------ the layout
    def build(self):
        gr, classes, volumes = self.gr, self.classes, self.volumes
        with gr.Blocks(title="ssn explorer") as app:
            gr.Markdown(f"## ssn explorer: {classes} classes, rank {self.model.rank}")
            self.state = gr.State(None)
            with gr.Row():
                with gr.Column(scale=1):
                    self.index = gr.Number(
                        value=0,
                        precision=0,
                        label=f"dataset {'case' if volumes else 'image'} (0-{max(self.count - 1, 0)})",
                        interactive=self.data is not None,
                        elem_id="index",
                    )
                    self.upload = gr.File(label="or upload an image (.png, .npy, .nii, .nii.gz)", elem_id="upload")
                    self.slice = gr.Slider(0, 1, value=0, step=1, label="axial slice", visible=False, elem_id="slice")
                    self.marking = gr.Image(label="click to mark (the brush)", interactive=False, elem_id="marking")
                    with gr.Row():
                        self.mark_class = gr.Radio(
                            list(range(classes)), value=min(1, classes - 1), label="mark as class"
                        )
                        self.radius = gr.Slider(0, 10, value=2, step=1, label="brush radius (pixels)")
                    with gr.Row():
                        self.resample = gr.Button("sample under marks", elem_id="resample")
                        self.clear_button = gr.Button("clear marks")
                with gr.Column(scale=2):
                    self.grid = gr.Image(label="samples", elem_id="samples", interactive=False)
                    with gr.Row():
                        self.mean = gr.Image(label="P(foreground)", interactive=False)
                        self.entropy = gr.Image(label="entropy", interactive=False)
                    self.status = gr.Markdown(elem_id="status")
            with gr.Row():
                self.temperature = gr.Slider(
                    0, 2, value=self.model.temperature, step=0.05, label="temperature", elem_id="temperature"
                )
                self.scales = [
                    gr.Slider(-3, 3, value=1, step=0.1, label=f"class {c} scale", elem_id=f"scale{c}")
                    for c in range(classes)
                ]
                self.shifts = [
                    gr.Slider(-3, 3, value=0, step=0.1, label=f"latent {k + 1}", elem_id=f"latent{k + 1}")
                    for k in range(min(self.model.rank, 3))
                ]
            with gr.Row():
                self.npz_button = gr.DownloadButton("download samples (.npz)")
                self.png_button = gr.DownloadButton("download grid (.png)")
            self._wire(app)
        return app

    def _wire(self, app) -> None:
        shown = [self.state, self.grid, self.mean, self.entropy, self.marking, self.status, self.slice]
        controls = [self.state, self.temperature, *self.scales, *self.shifts]
        self.index.change(self.from_dataset, self.index, shown)
        self.upload.upload(self.from_upload, self.upload, shown)
        self.slice.change(self.to_slice, [self.state, self.slice], shown)
        for control in controls[1:]:
            control.change(self.render, controls, shown)
        _Page.stamp.__annotations__["event"] = self.gr.SelectData  # the module's annotations are strings
        self.marking.select(self.stamp, [self.state, self.mark_class, self.radius], [self.marking, self.status])
        self.resample.click(self.under_marks, self.state, shown)
        self.clear_button.click(self.clear, self.state, shown)
        self.npz_button.click(lambda s: self.download(s, "npz"), self.state, self.npz_button)
        self.png_button.click(lambda s: self.download(s, "png"), self.state, self.png_button)
        app.load(self.from_dataset, self.index, shown)

    # ------------------------------------------------------------------ what handlers show
    def _show(self, exploration: Exploration, with_marking: bool = True, note: str = "") -> dict:
        views = views_of(exploration, with_marking)
        out: dict[Any, Any] = {self.grid: views.grid, self.mean: views.mean, self.entropy: views.entropy}
        if views.marking is not None:
            out[self.marking] = views.marking
        out[self.status] = views.status + note
        return out

    def _started(self, image: np.ndarray) -> dict:
        """A new exploration of ``image`` (a 2D image or a volume), shown."""
        if self.volumes:
            volume = VolumeExploration(self.model, image, self.window, num_samples=self.num_samples)
            slider = self.gr.update(
                minimum=volume.slices.start, maximum=volume.slices.stop - 1, value=volume.slice, visible=True
            )
            return {self.state: volume, **self._show(volume.show(volume.slice)), self.slice: slider}
        exploration = Exploration(self.model, image, num_samples=self.num_samples)
        return {self.state: exploration, **self._show(exploration), self.slice: self.gr.update(visible=False)}

    def _nothing_shown(self) -> dict:
        return {self.status: "pick or upload an image first"}

    # ------------------------------------------------------------------ the handlers
    def from_dataset(self, index) -> dict:
        if self.data is None:
            return {self.state: None, self.status: "no --data given: upload an image"}
        index = int(np.clip(int(index), 0, self.count - 1))
        if self.volumes:
            image = np.asarray(read_case(self.cases[index], self.data.label_map, intensity=self.intensity).image)
        else:
            image = float_images(self.data.images[index])
        return self._started(image)

    def from_upload(self, file) -> dict:
        if file is None:
            return {}
        try:
            image = read_upload(file, self.model.spec.in_channels, self.model.spec.spatial_dims)
            if self.volumes:  # raw intensities over the non-zero voxels, as the run's volume lists were
                image = normalise_volume(image, self.intensity)
            return self._started(image)
        except UserError as error:
            return {self.status: f"upload refused: {error}"}

    def to_slice(self, state, k) -> dict:
        if not isinstance(state, VolumeExploration):
            return {}
        return self._show(state.show(int(k)))

    def render(self, state, temperature, *values) -> dict:
        exploration = _current(state)
        if exploration is None:
            return self._nothing_shown()
        start = time.perf_counter()
        exploration.temperature = float(temperature)
        exploration.class_scales = np.array(values[: self.classes], dtype=float)
        exploration.latent_shift = np.array(values[self.classes :], dtype=float)
        shown = self._show(exploration, with_marking=False)
        shown[self.status] += f"; rendered in {(time.perf_counter() - start) * 1000:.0f} ms"
        return shown

    def stamp(self, state, mark_class, radius, event: gr.SelectData) -> dict:
        exploration = _current(state)
        if exploration is None:
            return self._nothing_shown()
        x, y = (int(v) // MARK_SCALE for v in event.index)
        yy, xx = np.mgrid[: exploration.marks.shape[0], : exploration.marks.shape[1]]
        exploration.marks[(yy - y) ** 2 + (xx - x) ** 2 <= int(radius) ** 2] = int(mark_class)
        pixels = int((exploration.marks >= 0).sum())
        return {
            self.marking: _marking_picture(exploration),
            self.status: f"{pixels} pixels marked; press 'sample under marks'",
        }

    def under_marks(self, state) -> dict:
        exploration = _current(state)
        if exploration is None:
            return self._nothing_shown()
        exploration.apply_marks(exploration.marks)
        return self._show(exploration)

    def clear(self, state) -> dict:
        exploration = _current(state)
        if exploration is None:
            return self._nothing_shown()
        exploration.apply_marks(np.full(exploration.marks.shape, -1))
        exploration.last_marks = {}
        return self._show(exploration)

    def download(self, state, kind: str) -> str | None:
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


def build_app(model, data=None, num_samples: int = 16, window=None, intensity: str = "zscore"):
    """The Gradio app for ``model`` (an SSN), with the images of ``data`` (optional): a dataset
    (2D models) or a volume list (3D models, with the sliding ``window`` of whole volumes)."""
    try:
        import gradio as gr
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("the explorer needs Gradio: pip install 'ssn[explorer]'") from None
    return _Page(gr, model, data, num_samples, window, intensity).build()


def explore(
    run_dir,
    data_path=None,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "cpu",
    prevent_thread_lock: bool = False,
    log=print,
):
    """Load a run and serve the explorer on ``host:port`` (see the module)."""
    from ..data.arrays import load_arrays
    from ..data.nifti import run_intensity
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
    app = build_app(model, data, window=config.get("patch_size"), intensity=run_intensity(config))
    app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    log(
        f"ssn explore: {run_dir} at temperature {model.temperature:g} on http://{shown}:{port}"
        + ("" if prevent_thread_lock else " (Ctrl-C to stop)")
    )
    if not prevent_thread_lock:
        app.block_thread()
    return app
