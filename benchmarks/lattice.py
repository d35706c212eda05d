"""Where a lattice in the samples comes from: the spectral power of the U-Net's logits at the
periods 2 and 4, for the transposed-convolution upsampling and for linear interpolation.

For 4 LIDC slices and 32 draws each, the foreground log-odds of the mean (mu_1 - mu_0) and of a
draw's deviation from it are Fourier transformed; each row gives the power at the frequency of a
period along the rows, the columns or the diagonal, over the median power of its 7x7
neighbourhood of frequencies (about 1 when there is no periodic pattern).

    python -m benchmarks.lattice        # writes benchmarks/results/lattice.json
"""

from __future__ import annotations

import numpy as np
import torch

import ssn
from benchmarks._common import add_lidc_dir, benchmark_parser, lidc_files, write
from ssn.inference.predict import image_tensor

FREQUENCIES = {
    "period 2, diagonal": (64, 64),
    "period 4, diagonal": (32, 32),
    "period 4, rows": (32, 0),
    "period 4, columns": (0, 32),
}
SLICES = [593, 100, 2000, 5000]


def peaks(model: torch.nn.Module, images: torch.Tensor) -> dict:
    model.eval()
    with torch.no_grad():
        dist = model.distribution(images)
        deviation = dist.deviation_from_noise(dist.draw_noise(32, torch.Generator().manual_seed(0)))
        maps = {"deviation": deviation[:, :, 1] - deviation[:, :, 0], "mean": dist.loc[:, 1] - dist.loc[:, 0]}
    out = {}
    for name, values in maps.items():
        values = values - values.mean(dim=(-1, -2), keepdim=True)
        power = (np.abs(np.fft.fft2(values.reshape(-1, *values.shape[-2:]).numpy())) ** 2).mean(0)
        out[name] = {label: _over_neighbours(power, *where) for label, where in FREQUENCIES.items()}
    return out


def _over_neighbours(power: np.ndarray, i: int, j: int) -> float:
    """The power at frequency (i, j) over the median of its 7x7 neighbourhood."""
    return float(power[i, j] / np.median(power[max(i - 3, 0) : i + 4, max(j - 3, 0) : j + 4]))


def main() -> None:
    parser = benchmark_parser("lattice", __doc__)
    add_lidc_dir(parser)
    args = parser.parse_args()
    slices, _ = lidc_files(args.data_dir)
    images = image_tensor(np.load(slices)["images"][SLICES][:, None])
    models = {}
    for upsample in ("transposed", "linear"):
        torch.manual_seed(0)
        models[f"untrained, {upsample}"] = ssn.models.create(
            "unet", num_classes=2, rank=10, features=(16, 32, 64, 128), in_channels=1, upsample=upsample
        )
    models["pretrained:lidc-2d (transposed)"] = ssn.pretrained("lidc-2d")
    report = {name: peaks(model, images) for name, model in models.items()}
    for name, figures in report.items():
        for kind, values in figures.items():
            print(f"{name:34s} {kind:9s} " + ", ".join(f"{k} {v:.1f}" for k, v in values.items()))
    write("lattice", {"slices": SLICES, "draws": 32, "peaks_over_local_median": report})


if __name__ == "__main__":
    main()
