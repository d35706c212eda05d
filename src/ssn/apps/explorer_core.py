"""The explorer's state and pictures, apart from any web framework (so that it is tested directly).

An :class:`Exploration` holds one image, the model's distribution over its logit map and a fixed
set of draws (:class:`~ssn.LogitNoise`). The controls edit how the draws become samples:

- ``class_scales`` (C,): each class's deviation from the mean, scaled (1: as drawn, 0: the mean);
- ``temperature``: all classes alike;
- ``latent_shift`` (K,): added to the first K latent factors z_k of every draw;
- marks: pixels marked as a class; :meth:`Exploration.apply_marks` replaces the draws with draws
  that agree with them (:func:`ssn.steering.sample_with_marks`).

Pictures are numpy RGB arrays (uint8), composed without matplotlib so that a slider's move
re-renders quickly.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ..data.arrays import float_images
from ..distributions import LogitNoise, LowRankLogitDistribution, labels_from_logits
from ..errors import DataError
from ..metrics.functional import class_frequencies, frequency_entropy
from ..models import SegmentationModel
from ..randomness import derive_seed
from ..steering import sample_with_marks

__all__ = ["Exploration", "read_upload", "CLASS_COLOURS", "MAX_UPLOAD_BYTES"]

#: Overlay colours of classes 1, 2, ... (class 0, the background, is not drawn).
CLASS_COLOURS = np.array(
    [[255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [23, 190, 207], [227, 119, 194], [188, 189, 34]],
    dtype=np.float32,
)
MAX_UPLOAD_BYTES = 32 * 2**20
_UPLOAD_TYPES = (".png", ".npy", ".nii", ".nii.gz")


def read_upload(path: str | Path, in_channels: int, spatial_dims: int) -> np.ndarray:
    """An uploaded image checked against the model: (channels, *S) float32 in the model's scale.

    Only array data is read (``allow_pickle=False`` for ``.npy``): nothing in an upload runs.

    Raises:
        DataError: a wrong type, a file over 32 MiB, the wrong number of dimensions or
            channels, NaN values, or a map too small or too large (8 to 1024 pixels a side).
    """
    from .sample import read_images

    path = Path(path)
    name = path.name.lower()
    if not name.endswith(_UPLOAD_TYPES):
        raise DataError(f"{path.name}: upload a .png, .npy, .nii or .nii.gz image")
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise DataError(f"{path.name} is {path.stat().st_size / 2**20:.1f} MiB; the explorer takes files up to 32 MiB")
    image = read_images(path, in_channels, spatial_dims)[0]
    if not all(8 <= side <= 1024 for side in image.shape[1:]):
        raise DataError(f"{path.name} has spatial size {image.shape[1:]}; the explorer takes 8 to 1024 pixels a side")
    return float_images(image)


class Exploration:
    """One image under a model: its distribution, the kept draws and the controls.

    Args:
        model: an SSN (a model with ``has_logit_distribution``).
        image: (channels, H, W) float.
        class_scales: (C,) each class's deviation from the mean is scaled by this (default 1).
        latent_shift: up to 3 shifts of the first latent factors (default 0).
        marks: (H, W) int, the class marked at each pixel, -1 unmarked (default: none).
        dist: the distribution, given (a slice of a volume) or computed from the image.
        noise: the kept draws, given or drawn from ``seed``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        image: np.ndarray,
        num_samples: int = 16,
        seed: int = 0,
        class_scales: np.ndarray | None = None,
        temperature: float | None = None,
        latent_shift: np.ndarray | None = None,
        marks: np.ndarray | None = None,
        last_marks: dict | None = None,
        dist: LowRankLogitDistribution | None = None,
        noise: LogitNoise | None = None,
    ) -> None:
        if not (isinstance(model, SegmentationModel) and model.has_logit_distribution):
            raise DataError(
                "the explorer steers SSN samples; this run's method is "
                f"{model.method if isinstance(model, SegmentationModel) else type(model).__name__!r}"
            )
        if image.ndim != 3:
            raise DataError(f"the explorer shows 2D images (channels, H, W); got shape {image.shape}")
        self.model, self.image, self.num_samples, self.seed = model, image, num_samples, seed
        self.temperature = model.temperature if temperature is None else temperature  # the run's calibrated one
        self.last_marks = dict(last_marks or {})
        if dist is None:
            model.eval()
            with torch.no_grad():
                dist = model(torch.from_numpy(np.ascontiguousarray(image))[None].float())
        self.dist: LowRankLogitDistribution = dist
        classes, rank = dist.num_classes, dist.rank
        self.class_scales: np.ndarray = np.ones(classes) if class_scales is None else np.asarray(class_scales, float)
        self.latent_shift: np.ndarray = (
            np.zeros(min(rank, 3)) if latent_shift is None else np.asarray(latent_shift, float)
        )
        self.marks: np.ndarray = np.full(image.shape[1:], -1, dtype=np.int64) if marks is None else marks
        self.noise: LogitNoise = (
            dist.draw_noise(num_samples, torch.Generator().manual_seed(seed)) if noise is None else noise
        )

    # ------------------------------------------------------------------ samples
    def _noise(self) -> LogitNoise:
        if not self.latent_shift.any():
            return self.noise
        z = self.noise.z.clone()
        z[..., : len(self.latent_shift)] += torch.as_tensor(self.latent_shift, dtype=z.dtype)
        return LogitNoise(z, self.noise.eps)

    def samples(self) -> np.ndarray:
        """The current label maps, (num_samples, H, W) uint8."""
        with torch.no_grad():
            logits = self.dist.logits_from_noise(
                self._noise(), torch.as_tensor(self.class_scales, dtype=torch.float32), self.temperature
            )
        return labels_from_logits(logits)[:, 0].numpy()

    def apply_marks(self, marks: np.ndarray) -> dict:
        """Replace the draws with draws whose samples agree with ``marks`` ((H, W), -1 unmarked);
        returns how (method, agreement, acceptance)."""
        marks = np.asarray(marks, dtype=np.int64)
        if marks.shape != self.image.shape[1:]:
            raise DataError(f"marks must have the image's size {self.image.shape[1:]}; got {marks.shape}")
        self.marks = marks
        if not (marks >= 0).any():
            self.noise = self.dist.draw_noise(self.num_samples, torch.Generator().manual_seed(self.seed))
            self.last_marks = {"method": "none", "agreement": 1.0, "acceptance": 1.0}
            return self.last_marks
        result = sample_with_marks(
            self.dist,
            torch.from_numpy(marks)[None],
            self.num_samples,
            torch.Generator().manual_seed(self.seed),
            class_scales=torch.as_tensor(self.class_scales, dtype=torch.float32),
            temperature=self.temperature,
        )
        self.noise = result.noise
        self.latent_shift = np.zeros_like(self.latent_shift)  # the new draws already carry the latent
        self.last_marks = {
            "method": result.method[0],
            "agreement": result.agreement[0],
            "acceptance": result.acceptance[0],
        }
        return self.last_marks

    # ------------------------------------------------------------------ pictures
    def grey(self) -> np.ndarray:
        """The image's first channel as (H, W, 3) uint8, stretched to its range."""
        channel = self.image[0].astype(np.float32)
        low, high = np.percentile(channel, [0.5, 99.5])
        scaled = np.clip((channel - low) / max(high - low, 1e-6), 0, 1)
        return np.repeat((scaled * 255).astype(np.uint8)[..., None], 3, -1)

    def overlay(self, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
        """The image with labels (H, W) coloured on top, (H, W, 3) uint8."""
        picture = self.grey().astype(np.float32)
        for c in range(1, int(labels.max()) + 1 if labels.size else 1):
            where = labels == c
            colour = CLASS_COLOURS[(c - 1) % len(CLASS_COLOURS)]
            picture[where] = (1 - alpha) * picture[where] + alpha * colour
        marked = self.marks >= 0
        picture[marked] = [255, 255, 0]
        return picture.astype(np.uint8)

    def grid(self, labels: np.ndarray | None = None, columns: int = 4, scale: int = 2) -> np.ndarray:
        """The samples as one picture, ``columns`` wide, each enlarged ``scale`` times, 2-pixel gaps."""
        labels = self.samples() if labels is None else labels
        tiles = [np.kron(self.overlay(s), np.ones((scale, scale, 1), np.uint8)) for s in labels]
        h, w = tiles[0].shape[:2]
        rows = -(-len(tiles) // columns)
        out = np.full((rows * (h + 2), columns * (w + 2), 3), 255, np.uint8)
        for k, tile in enumerate(tiles):
            r, c = divmod(k, columns)
            out[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = tile
        return out

    def mean_and_entropy(self, labels: np.ndarray | None = None, scale: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """P(any foreground) and the entropy of the samples' class frequencies, as (H, W, 3) uint8 heat maps."""
        labels = self.samples() if labels is None else labels
        classes = self.dist.num_classes
        frequencies = class_frequencies(torch.from_numpy(labels), classes)
        foreground = 1 - frequencies[0].numpy()
        entropy = frequency_entropy(frequencies).numpy() / np.log(classes)
        heat = [np.kron(_heat(m), np.ones((scale, scale, 1), np.uint8)) for m in (foreground, entropy)]
        return heat[0], heat[1]

    def npz_bytes(self, labels: np.ndarray | None = None) -> bytes:
        """The current samples, image and settings as an ``.npz`` file's bytes."""
        labels = self.samples() if labels is None else labels
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            samples=labels,
            image=self.image,
            marks=self.marks,
            class_scales=self.class_scales,
            temperature=self.temperature,
            latent_shift=self.latent_shift,
        )
        return buffer.getvalue()


def _heat(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> (H, W, 3) uint8, black through red to yellow."""
    v = np.clip(values, 0, 1)[..., None]
    return (np.concatenate([np.clip(2 * v, 0, 1), np.clip(2 * v - 1, 0, 1), np.zeros_like(v)], -1) * 255).astype(
        np.uint8
    )


class VolumeExploration:
    """A volume under a 3D model, shown one axial slice (the last axis) at a time.

    The blended distribution of the whole volume (sliding windows, :mod:`ssn.inference.sliding`)
    is computed once over the box around the non-zero voxels. The latent draws z are shared by
    every slice, as in a whole-volume sample; the per-voxel noise of slice k is drawn from a
    generator seeded with (seed, k), so that a slice's samples are the slices of one set of
    volume samples whichever slice is shown first. Marks on a slice change z, and with it every
    slice, as the covariance implies.
    """

    def __init__(self, model, volume: np.ndarray, window, num_samples: int = 16, seed: int = 0) -> None:
        from ..inference.sliding import roi_box, sliding_window_distribution

        if volume.ndim != 4:
            raise DataError(f"a volume for the explorer is (channels, X, Y, Z); got shape {volume.shape}")
        self.model, self.volume, self.num_samples, self.seed = model, volume.astype(np.float32), num_samples, seed
        roi = (self.volume != 0).any(0)
        if not roi.any():
            raise DataError("the volume is all zero")
        self.box = roi_box(roi, margin=4)
        crop = torch.from_numpy(np.ascontiguousarray(self.volume[(slice(None), *self.box)]))
        model.eval()
        self.dist = sliding_window_distribution(model, crop, window, 0.5, torch.from_numpy(roi[self.box]))
        self.z = torch.randn((num_samples, 1, self.dist.rank), generator=torch.Generator().manual_seed(seed))
        self.eps_of_slice: dict[int, torch.Tensor] = {}
        self.marks_of_slice: dict[int, np.ndarray] = {}
        self.slices = range(self.box[2].start, self.box[2].stop)
        self.current: Exploration | None = None
        self.slice: int = self.slices[len(self.slices) // 2]
        self.show(self.slices[len(self.slices) // 2])

    def _eps(self, k: int) -> torch.Tensor:
        if k not in self.eps_of_slice:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, k))
            shape = (self.num_samples, 1, *self.dist.loc.shape[1:-1])
            self.eps_of_slice[k] = torch.randn(shape, generator=generator)
        return self.eps_of_slice[k]

    def show(self, k: int, carry: Exploration | None = None) -> Exploration:
        """The :class:`Exploration` of slice ``k`` (clipped to the box), with the controls of ``carry``."""
        k = int(np.clip(k, self.slices.start, self.slices.stop - 1))
        if self.current is not None:  # keep what marks did to the draws
            self.z = self.current.noise.z
            self.eps_of_slice[self.slice] = self.current.noise.eps
            self.marks_of_slice[self.slice] = self.current.marks
        local = k - self.box[2].start
        view = self.dist.marginal(slice(None), slice(None), local)
        image = self.volume[(slice(None), self.box[0], self.box[1], k)]
        previous = carry or self.current
        self.current = Exploration(
            self.model,
            image,
            self.num_samples,
            self.seed,
            dist=view,
            noise=LogitNoise(self.z, self._eps(k)),
            marks=self.marks_of_slice.get(k),
            temperature=previous.temperature if previous else None,
            class_scales=previous.class_scales if previous else None,
            latent_shift=previous.latent_shift if previous else None,
        )
        self.slice = k
        return self.current

    def volume_samples(self) -> np.ndarray:
        """The current samples of the whole volume, (num_samples, X, Y, Z) uint8 (background outside the box)."""
        shown = self.slice
        out = np.zeros((self.num_samples, *self.volume.shape[1:]), np.uint8)
        for k in self.slices:
            view = self.show(k, carry=self.current)
            out[(slice(None), self.box[0], self.box[1], k)] = view.samples()
        self.show(shown, carry=self.current)
        return out
