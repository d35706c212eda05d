"""Drawing samples from a trained run for new images, with figures.

Inputs: an image file (PNG, NPY, NIfTI ``.nii``/``.nii.gz``) or a dataset ``.npz``. Output:
``samples.npz`` with ``samples`` (num_images, num_samples, *S) uint8, ``mean`` (num_images, C, *S),
the per-pixel class frequencies of the samples, and ``entropy`` (num_images, *S) in nats; plus a
figure per image (image, mean prediction, entropy, a grid of samples; the middle slice of volumes).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics
from ..data.arrays import load_arrays
from ..distributed import join
from ..engine.checkpoints import load_run
from ..errors import ConfigError, DataError
from ..files import check_writable, write_atomically
from ..inference import predict_batches
from ..inference.predict import size_warning
from ..progress import progress
from ..randomness import derive_seed
from .plotting import plot_samples

__all__ = ["read_images", "read_png", "sample_run", "sample_folder"]


def read_images(path: str | os.PathLike, in_channels: int, spatial_dims: int) -> np.ndarray:
    """Images (num_images, channels, *S) from an image file or a dataset ``.npz``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such input file: {path}")
    name = path.name.lower()
    if name.endswith(".npz"):
        images = load_arrays(path).images
        if images.shape[1] != in_channels or images.ndim - 2 != spatial_dims:
            raise DataError(
                f"{path} holds images of shape {images.shape[1:]} (channels first); the model takes "
                f"{in_channels} channel(s) and {spatial_dims} spatial dims: sample with a run trained on such images"
            )
        return np.asarray(images)
    if name.endswith(".png"):
        array = read_png(path, in_channels)
    elif name.endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)  # never unpickles: an object array is refused
        except ValueError as error:
            raise DataError(f"{path.name} is not a plain numeric .npy array ({error})") from None
    elif name.endswith((".nii", ".nii.gz")):
        import nibabel

        volume: Any = nibabel.load(str(path))  # a NIfTI image (nibabel's stubs name only its base class)
        array = np.asarray(volume.get_fdata(dtype=np.float32))
    else:
        raise DataError(f"{path}: unknown input type; use .png, .npy, .nii, .nii.gz or a dataset .npz")
    if array.ndim == spatial_dims:
        array = array[None]
    if array.ndim != spatial_dims + 1 or array.shape[0] != in_channels:
        raise DataError(
            f"{path} holds an array of shape {array.shape}; the model expects (channels={in_channels}, "
            f"{spatial_dims} spatial dims) or ({spatial_dims} spatial dims) for one channel"
        )
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise DataError(f"{path} contains NaN or infinite values")
    return array[None]


def read_png(path: Path, in_channels: int) -> np.ndarray:
    """A PNG as (channels, H, W) in the models' scale: 8-bit values stay uint8 (the models divide
    by 255), 16-bit ones become float32 value / 65535, so [0, 1] either way.

    A grey PNG feeds a 1-channel model, a colour one a 3-channel model. A colour PNG whose
    channels are equal (a grey image saved as RGB) is taken as grey; a transparent one, or a
    colour one for a 1-channel model, is refused rather than silently blended into grey.

    Raises:
        DataError: an unreadable file, colour for a grey model, transparency.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image: Image.Image = opened
            if image.mode == "P":  # a palette: its colours
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif image.mode == "1":  # one bit per pixel: 0 and 255
                image = image.convert("L")
            mode = image.mode
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"{path} is not a readable PNG image ({type(error).__name__}); check the file") from None
    if mode.startswith("I"):  # 16-bit grey ("I;16", or "I" as Pillow may open it): the PNG's bit depth
        array = array.astype(np.float32) / np.float32(65535)
    if array.ndim == 3 and array.shape[-1] in (2, 4):  # grey or colour with alpha
        if np.any(array[..., -1] != array[..., -1].max()) or array[..., -1].max() < 255:
            raise DataError(f"{path.name} is transparent in places; flatten it onto a background first")
        array = array[..., :-1]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    grey = array.ndim == 2 or bool(np.all(array == array[..., :1]))
    if in_channels == 1:
        if not grey:
            raise DataError(
                f"{path.name} is a colour image but the model takes 1 channel; convert it to greyscale "
                "first (its colours are not all grey, so ssn will not guess how to mix them)"
            )
        return array[None] if array.ndim == 2 else array[None, ..., 0]
    if array.ndim == 2:
        if in_channels != 3:
            raise DataError(f"{path.name} is a grey image but the model takes {in_channels} channels")
        return np.repeat(array[None], 3, axis=0)  # grey as RGB, for a 3-channel model
    return np.moveaxis(array, -1, 0)


def sample_run(
    run_dir: str | os.PathLike,
    input_path: str | os.PathLike,
    num_samples: int = 16,
    out: str | os.PathLike = "samples",
    device: str = "cpu",
    seed: int = 0,
    batch_size: int = 8,
    max_figures: int = 16,
    temperature: float | None = None,
    log=print,
) -> Path:
    """Draw ``num_samples`` label maps per input image; write ``samples.npz`` and figures to ``out``.

    Figures are drawn for the first ``max_figures`` images only (plotting is the slow part);
    figures left in ``out`` by an earlier call are removed. Samples are drawn at
    ``temperature``, by default the run's calibrated one, else 1; image ``i`` from (seed, i).
    Under ``torchrun`` each process draws its share of the images; the first one writes.
    """
    if num_samples < 1 or batch_size < 1:
        raise ConfigError(f"need --samples >= 1 and a batch size >= 1; got {num_samples} and {batch_size}")
    world, device = join(device)
    out = Path(out)
    if world.main:
        check_writable(out / "samples.npz")
    model, config = load_run(run_dir, temperature=temperature)
    model.to(device)
    spec = config["architecture"]
    images = read_images(input_path, spec["in_channels"], spec["spatial_dims"])
    warning = size_warning(config, images.shape[2:])
    if warning and world.main:
        print(f"ssn: warning: {input_path}: {warning}", file=sys.stderr)
    mine = world.shard(np.arange(len(images)))
    batches = predict_batches(model, images, mine, num_samples, batch_size, device, seed=seed)
    parts = world.gather_to_main(
        [
            (chunk, batch.numpy())
            for chunk, batch in progress(batches, -(-len(mine) // batch_size), "sample (batches)", world.main)
        ]
    )
    if not world.main or parts is None:
        return out / "samples.npz"
    pieces = sorted(
        ((int(i), s) for part in parts for chunk, batch in part for i, s in zip(chunk, batch)), key=lambda pair: pair[0]
    )
    labels = np.stack([s for _, s in pieces])
    num_classes = model.num_classes
    mean = np.stack([metrics.class_frequencies(s, num_classes).numpy() for s in labels])
    entropy = np.stack([metrics.entropy_map(s, num_classes).numpy() for s in labels])
    write_atomically(out / "samples.npz", lambda p: np.savez_compressed(p, samples=labels, mean=mean, entropy=entropy))
    figures = min(max_figures, len(images))
    for stale in out.glob("image_*.png"):  # an earlier call's figures would pass for this one's
        stale.unlink()
    dataset = str(input_path).lower().endswith(".npz")
    names = [f"image_{i:04d}.png" for i in range(figures)] if dataset else [f"{_stem(input_path)}.png"]
    for i, name in zip(range(figures), names):
        plot_samples(images[i], labels[i], mean[i], entropy[i], out / name, title=name[: -len(".png")])
    log(
        f"wrote {out / 'samples.npz'}: samples {labels.shape} at temperature {model.temperature:g}, "
        f"and {figures} figure(s) ({'image_NNNN.png' if dataset else names[0]})"
    )
    return out / "samples.npz"


IMAGE_SUFFIXES = (".png", ".npy", ".nii", ".nii.gz")


def _save_samples(path: Path, labels: np.ndarray, mean: np.ndarray, entropy: np.ndarray) -> None:
    np.savez_compressed(path, samples=labels, mean=mean, entropy=entropy)


def _stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def sample_folder(
    run_dir: str | os.PathLike,
    folder: str | os.PathLike,
    num_samples: int = 16,
    out: str | os.PathLike = "samples",
    device: str = "cpu",
    seed: int = 0,
    max_figures: int = 16,
    temperature: float | None = None,
    log=print,
) -> list[Path]:
    """Every image file of ``folder`` (PNG, NPY, NIfTI; sizes may differ): ``out/<name>.npz``
    (``samples``, ``mean``, ``entropy`` as in ``samples.npz``) and a figure ``out/<name>.png``
    for the first ``max_figures``, each named after its input. File k draws from (seed, k) in
    name order; under torchrun each process takes its share of the files."""
    if num_samples < 1:
        raise ConfigError(f"need --samples >= 1; got {num_samples}")
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise DataError(f"{folder} holds no .png, .npy, .nii or .nii.gz image to sample")
    stems = [_stem(p) for p in files]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise DataError(f"{folder}: several files are named {repeated[0]} (with different endings); rename one")
    world, device = join(device)
    out = Path(out)
    if world.main:
        check_writable(out / f"{stems[0]}.npz")
    model, config = load_run(run_dir, temperature=temperature)
    model.to(device)
    spec = config["architecture"]
    written = []
    for k in world.shard(np.arange(len(files))):
        path, stem = files[int(k)], stems[int(k)]
        images = read_images(path, spec["in_channels"], spec["spatial_dims"])
        warning = size_warning(config, images.shape[2:])
        if warning:
            print(f"ssn: warning: {path.name}: {warning}", file=sys.stderr)
        ((_, drawn),) = predict_batches(
            model, images, np.arange(1), num_samples, 1, device, seed=derive_seed(seed, int(k))
        )
        labels = drawn.numpy()[0]
        mean = metrics.class_frequencies(labels, model.num_classes).numpy()
        entropy = metrics.entropy_map(labels, model.num_classes).numpy()
        write_atomically(
            out / f"{stem}.npz", functools.partial(_save_samples, labels=labels, mean=mean, entropy=entropy)
        )
        if k < max_figures:
            plot_samples(images[0], labels, mean, entropy, out / f"{stem}.png", title=stem)
        written.append(out / f"{stem}.npz")
    if world.main:
        log(
            f"wrote {len(files)} inputs' samples to {out} as NAME.npz, with figures NAME.png, at temperature {model.temperature:g}"
        )
    return written
