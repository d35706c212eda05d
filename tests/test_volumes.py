"""Volumes: NIfTI lists, checks of bad cases, patches, sliding windows, NIfTI outputs, 3D metrics."""

import json
import re
from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch

from ssn import LowRankLogitDistribution
from ssn.apps.cli import main
from ssn.data.converters import BRATS_LABELS, index_brats
from ssn.data.nifti import read_case
from ssn.data.patches import PatchSampler, extract_patch
from ssn.data.volume_list import load_volume_list
from ssn.errors import ConfigError, DataError
from ssn.inference.sliding import sliding_window_distribution, window_corners
from ssn.metrics import functional
from ssn.metrics.regions import class_structures, structure_metrics

SHAPE = (20, 18, 12)
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
AFFINE[:3, 3] = [-10.0, 4.0, 7.0]


def _save(path: Path, array: np.ndarray, affine=AFFINE) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(array, affine), str(path))
    return path.name


def _case(folder: Path, seed: int, raters: int = 1, shape=SHAPE) -> dict:
    """A synthetic BraTS-like case: two sequences, a brain mask, a tumour with labels 1, 2 and 4."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    radius = np.linalg.norm(grid - centre, axis=-1)
    brain = (np.linalg.norm((grid - np.array(shape) / 2) / (np.array(shape) / 2.2), axis=-1) < 1).astype(np.float32)
    flair = (100 + 50 * (radius < 5) + rng.normal(0, 5, shape)) * brain
    t1c = (80 + 40 * (radius < 2.5) + rng.normal(0, 5, shape)) * brain
    labels = []
    for r in range(raters):
        seg = np.zeros(shape, np.uint8)
        seg[radius < 5 + 0.5 * r] = 2
        seg[radius < 3] = 1
        seg[radius < 2] = 4
        labels.append(
            _save(folder / "segmentation" / f"rater{r}.nii.gz", seg)
            if raters > 1
            else _save(folder / "seg.nii.gz", seg)
        )
    _save(folder / "flair.nii.gz", flair.astype(np.float32))
    _save(folder / "t1c.nii.gz", t1c.astype(np.float32))
    _save(folder / "brainmask.nii.gz", brain)
    return {
        "id": folder.name,
        "image": [f"{folder.name}/flair.nii.gz", f"{folder.name}/t1c.nii.gz"],
        "label": [f"{folder.name}/segmentation/{n}" for n in labels] if raters > 1 else f"{folder.name}/seg.nii.gz",
        "mask": f"{folder.name}/brainmask.nii.gz",
    }


@pytest.fixture()
def volume_list(tmp_path) -> Path:
    cases = {
        name: [_case(tmp_path / f"{name}{i}", seed=10 * k + i) for i in range(2)]
        for k, name in enumerate(("training", "validation"))
    }
    cases["test"] = [_case(tmp_path / "test0", seed=99, raters=3)]
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"labels": {str(k): v for k, v in BRATS_LABELS.items()}, **cases}))
    return path


def test_a_case_is_read_normalised_inside_its_mask_with_labels_mapped(volume_list):
    listing = load_volume_list(volume_list)
    assert [len(listing.split(s)) for s in ("train", "val", "test")] == [2, 2, 1]
    assert listing.num_classes() == 4 and listing.file_values() == {0: 0, 1: 1, 2: 2, 3: 4}
    volume = read_case(listing.split("test")[0], listing.label_map)
    assert volume.image.shape == (2, *SHAPE) and volume.labels.shape == (3, *SHAPE)
    np.testing.assert_allclose(volume.affine, AFFINE)
    inside = volume.image[:, volume.mask]
    np.testing.assert_allclose(inside.mean(1), 0, atol=1e-4)
    np.testing.assert_allclose(inside.std(1), 1, atol=1e-3)
    assert (volume.image[:, ~volume.mask] == 0).all()
    assert set(np.unique(volume.labels)) == {0, 1, 2, 3}  # file value 4 is class 3
    again = read_case(listing.split("test")[0], listing.label_map)  # from the memory-mapped cache
    assert isinstance(again.image, np.memmap) and np.array_equal(again.image, volume.image)


def _break(volume_list: Path, how: str) -> Path:
    listing = json.loads(volume_list.read_text())
    case = listing["training"][0]
    folder = volume_list.parent
    if how == "shape":
        _save(folder / case["image"][1], np.zeros((SHAPE[0] - 1, *SHAPE[1:]), np.float32))
    elif how == "affine":
        _save(folder / case["image"][1], np.ones(SHAPE, np.float32), affine=np.eye(4))
    elif how == "label":
        seg = np.zeros(SHAPE, np.uint8)
        seg[5, 5, 5] = 7
        _save(folder / case["label"], seg)
    elif how == "mask":
        _save(folder / case["mask"], np.zeros(SHAPE, np.float32))
    elif how == "missing":
        (folder / case["image"][0]).unlink()
    return volume_list


@pytest.mark.parametrize(
    "how, message",
    [
        ("shape", "has shape"),
        ("affine", "affine"),
        ("label", "the values [7]"),
        ("mask", "is empty"),
        ("missing", "missing file"),
    ],
)
def test_bad_volumes_are_refused_with_the_reason(volume_list, tmp_path, capsys, how, message):
    path = _break(volume_list, how)
    with pytest.raises(DataError, match=re.escape(message)):
        listing = load_volume_list(path)
        read_case(listing.split("training")[0], listing.label_map)
    code = main(
        [
            "train",
            "--data",
            str(path),
            "--out",
            str(tmp_path / "run"),
            "--patch-size",
            "8",
            "8",
            "8",
            "--max-steps",
            "1",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("ssn: error:") and message in err


def test_convert_brats_indexes_both_tree_layouts(tmp_path):
    deepmedic = tmp_path / "dm"
    for split in ("train", "validation", "test"):
        folder = deepmedic / split / f"pat_{split}"
        _case(folder, 1)
        (folder / "flair.nii.gz").rename(folder / "Flair_subtrMeanDivStd.nii.gz")
        (folder / "t1c.nii.gz").rename(folder / "T1c_subtrMeanDivStd.nii.gz")
        (folder / "seg.nii.gz").rename(folder / "OTMultiClass.nii.gz")
    out = tmp_path / "lists" / "dm.json"
    assert main(["convert", "brats", str(deepmedic), "--out", str(out)]) == 0
    listing = load_volume_list(out)
    assert sorted(listing.splits) == ["test", "training", "validation"] and listing.sequences == ["flair", "t1c"]
    assert listing.label_map == BRATS_LABELS
    assert read_case(listing.split("test")[0], listing.label_map).labels.shape == (1, *SHAPE)

    multi = tmp_path / "tcga" / "CASE-1"
    _case(multi, 2, raters=3)
    (multi / "raw_bet").mkdir()
    for name in ("flair", "t1c"):
        (multi / f"{name}.nii.gz").rename(multi / "raw_bet" / f"CASE-1_{'fla' if name == 'flair' else name}_bet.nii.gz")
    (multi / "brainmask.nii.gz").unlink()
    tree = index_brats(tmp_path / "tcga", ["flair", "t1c"])
    (case,) = tree["test"]
    assert case["id"] == "CASE-1" and len(case["label"]) == 3 and "mask" not in case
    assert case["image"][0].endswith("fla_bet.nii.gz")


def test_patches_are_centred_on_the_foreground_at_the_chosen_share(volume_list):
    listing = load_volume_list(volume_list)
    volumes = [read_case(c, listing.label_map) for c in listing.split("training")]
    rng = np.random.default_rng(0)
    always = PatchSampler(volumes, (6, 6, 6), foreground_share=1.0)
    for _ in range(20):
        image, labels, roi = always.draw(0, rng)
        assert image.shape == (2, 6, 6, 6) and labels[0, 3, 3, 3] > 0  # the centre voxel is foreground
    never = PatchSampler(volumes, (6, 6, 6), foreground_share=0.0)
    centres = np.array([never.centre(1, rng) for _ in range(200)])
    assert all(volumes[1].mask[tuple(c)] for c in centres)
    assert np.mean([volumes[1].labels[0][tuple(c)] > 0 for c in centres]) < 0.5
    images, labels, roi = always.draw_many([0, 1, 1], rng)
    assert images.shape == (3, 2, 6, 6, 6) and labels.shape == (3, 1, 6, 6, 6) and roi.dtype == bool


def test_patches_past_the_border_are_padded():
    array = np.arange(2 * 4 * 4 * 4).reshape(2, 4, 4, 4)
    patch = extract_patch(array, (-2, 1, 2), (4, 4, 4), fill=-1)
    assert patch.shape == (2, 4, 4, 4)
    assert (patch[:, :2] == -1).all() and (patch[:, :, 3:] == -1).all() and (patch[:, :, :, 2:] == -1).all()
    np.testing.assert_array_equal(patch[:, 2:, :3, :2], array[:, :2, 1:4, 2:4])


def test_window_corners_cover_the_axis_with_the_overlap():
    assert window_corners(10, 16, 0.5) == [0]
    corners = window_corners(100, 32, 0.5)
    assert corners[0] == 0 and corners[-1] == 68 and all(b - a <= 16 for a, b in zip(corners, corners[1:]))


class _Pointwise(torch.nn.Module):
    """An SSN head on 1x1 convolutions of the image: every window agrees on every voxel."""

    def __init__(self, channels=2, classes=3, rank=4):
        super().__init__()
        self.rank, self.classes = rank, classes
        self.mean = torch.nn.Conv3d(channels, classes, 1)
        self.diag = torch.nn.Conv3d(channels, classes, 1)
        self.factor = torch.nn.Conv3d(channels, rank * classes, 1)

    def forward(self, x, mask=None):
        factor = self.factor(x).view(x.shape[0], self.rank, self.classes, *x.shape[2:])
        return LowRankLogitDistribution(self.mean(x), factor, self.diag(x).exp() + 1e-5)


def _same_distribution(a: LowRankLogitDistribution, b: LowRankLogitDistribution) -> None:
    for name in ("loc", "cov_factor", "cov_diag"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-5)


def test_overlapping_windows_of_a_pointwise_network_give_the_single_pass_distribution():
    torch.manual_seed(0)
    model, image = _Pointwise(), torch.randn(2, 23, 19, 11)
    blended = sliding_window_distribution(model, image, (8, 8, 8), overlap=0.5)
    _same_distribution(blended, model(image.unsqueeze(0)))


def test_a_volume_within_one_window_gives_the_networks_distribution():
    from ssn.models import ModelSpec, build

    torch.manual_seed(0)
    spec = ModelSpec(
        method="ssn",
        backbone="unet",
        spatial_dims=3,
        in_channels=2,
        num_classes=3,
        method_kwargs={"rank": 3},
        backbone_kwargs={"features": [4, 8]},
    )
    model = build(spec).eval()
    image = torch.randn(2, 12, 10, 9)
    with torch.no_grad():
        direct = model(image.unsqueeze(0))
    _same_distribution(sliding_window_distribution(model, image, (16, 16, 16)), direct)
    # the blended diagonal is a blended standard deviation, so one window reproduces it exactly
    blended = sliding_window_distribution(model, image, (12, 10, 9), overlap=0.25)
    _same_distribution(blended, direct)


def test_a_sample_shares_one_latent_draw_across_windows():
    """A constant factor and a negligible diagonal: each sample must be one constant shift of the
    mean across the whole volume, whichever window a voxel came from."""

    class Constant(torch.nn.Module):
        def forward(self, x, mask=None):
            shape = (x.shape[0], 2, *x.shape[2:])
            return LowRankLogitDistribution(
                torch.zeros(shape),
                torch.ones(x.shape[0], 1, *shape[1:]) * torch.tensor([1.0, -1.0]).view(1, 1, 2, 1, 1, 1),
                torch.full(shape, 1e-10),
            )

    dist = sliding_window_distribution(Constant(), torch.zeros(1, 30, 30, 30), (8, 8, 8), overlap=0.5)
    labels = dist.sample_labels(20, generator=torch.Generator().manual_seed(0))[:, 0]
    per_sample = labels.flatten(1).float().mean(1)
    assert set(per_sample.tolist()) <= {0.0, 1.0} and 0 < per_sample.mean() < 1


def test_each_case_draws_its_own_samples_whatever_its_place():
    """The same volume under two case ids gets other draws (one seed for every case would give
    all cases the same latent draws, and a mean over cases the error of one case's samples);
    under the same id, the same draws, in any list and process."""
    from ssn.inference.sliding import labelled_draws
    from ssn.randomness import case_seed

    class Shift(torch.nn.Module):  # one latent dimension that moves the whole map
        def forward(self, x, mask=None):
            shape = (x.shape[0], 2, *x.shape[2:])
            factor = torch.ones(x.shape[0], 1, *shape[1:]) * torch.tensor([1.0, -1.0]).view(1, 1, 2, 1, 1, 1)
            return LowRankLogitDistribution(torch.zeros(shape), factor, torch.full(shape, 1e-10))

    model = Shift().eval()
    model.temperature = 1.0
    image, roi, labels = np.zeros((1, 6, 6, 4), np.float32), np.ones((6, 6, 4), bool), np.zeros((1, 6, 6, 4), np.uint8)

    def draws(case_id: str, seed: int = 0) -> torch.Tensor:
        samples, _ = labelled_draws(model, image, roi, labels, 32, (6, 6, 4), seed=seed, case_id=case_id)
        return samples.flatten(1).float().mean(1)  # (32,) 0 or 1: one latent draw per sample

    first = draws("LIDC-IDRI-0001_nodule-0")
    assert torch.equal(first, draws("LIDC-IDRI-0001_nodule-0"))
    assert not torch.equal(first, draws("LIDC-IDRI-0002_nodule-0"))
    assert not torch.equal(first, draws("LIDC-IDRI-0001_nodule-0", seed=1))
    assert case_seed(0, "a") == case_seed(0, "a") != case_seed(0, "b") != case_seed(1, "b")


def test_structure_metrics_use_the_union_of_classes():
    samples = np.zeros((2, 4, 4), np.uint8)
    samples[0, :2] = 1
    samples[1, :2] = 3
    annotation = np.zeros((1, 4, 4), np.uint8)
    annotation[0, :2] = 3
    structures = class_structures(4, unions={"core": (1, 3)})
    out = structure_metrics(samples, annotation, structures, (2,))
    assert out["core"]["dice"] == 1.0 and out["core"]["ged"] == 0.0  # both samples cover the core
    assert out["class 1"]["diversity"] == 0.5 and out["class 3"]["hm_iou_2"] == 0.5


def test_distances_of_large_maps_are_computed_in_blocks(monkeypatch):
    rng = np.random.default_rng(0)
    samples, annotations = rng.integers(0, 3, (5, 40, 30)), rng.integers(0, 3, (3, 40, 30))
    whole = functional.pairwise_distances(samples, annotations, 3)
    monkeypatch.setattr(functional, "_CHUNK", 97)  # blocks that do not divide the map
    torch.testing.assert_close(functional.pairwise_distances(samples, annotations, 3), whole)


def test_train_sample_and_evaluate_volumes_from_the_command_line(volume_list, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(volume_list),
                "--out",
                str(run),
                "--patch-size",
                "8",
                "8",
                "8",
                "--features",
                "4",
                "8",
                "--max-steps",
                "6",
                "--batch-size",
                "2",
                "--val-images",
                "2",
                "--val-samples",
                "2",
                "--patches-per-volume",
                "2",
            ]
        )
        == 0
    )
    config = json.loads((run / "config.json").read_text())
    assert config["label_map"]["4"] == 3 and config["architecture"]["spatial_dims"] == 3
    out = tmp_path / "samples"
    assert (
        main(
            [
                "sample",
                "--run",
                str(run),
                "--input",
                str(volume_list),
                "--split",
                "test",
                "--samples",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    folder = out / "test0"
    source = nibabel.load(str(volume_list.parent / "test0" / "flair.nii.gz"))
    for name in ("sample_000", "sample_002", "mean", "entropy"):
        written = nibabel.load(str(folder / f"{name}.nii.gz"))
        np.testing.assert_allclose(written.affine, source.affine)
        assert written.shape[:3] == source.shape
    sample = np.asarray(nibabel.load(str(folder / "sample_001.nii.gz")).dataobj)
    assert sample.dtype == np.uint8 and set(np.unique(sample)) <= {0, 1, 2, 4}  # the files' label values
    brain = np.asarray(nibabel.load(str(volume_list.parent / "test0" / "brainmask.nii.gz")).dataobj) > 0.5
    assert (sample[~brain] == 0).all()
    mean = np.asarray(nibabel.load(str(folder / "mean.nii.gz")).dataobj)
    assert mean.shape == (*SHAPE, 4)
    np.testing.assert_allclose(mean.sum(-1), 1, atol=1e-6)

    # one volume given as its files
    assert (
        main(
            [
                "sample",
                "--run",
                str(run),
                "--input",
                str(volume_list.parent / "test0" / "flair.nii.gz"),
                str(volume_list.parent / "test0" / "t1c.nii.gz"),
                "--samples",
                "2",
                "--out",
                str(tmp_path / "one"),
            ]
        )
        == 0
    )
    assert (tmp_path / "one" / "flair" / "sample_001.nii.gz").is_file()

    report = tmp_path / "metrics.json"
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(run),
                "--data",
                str(volume_list),
                "--split",
                "test",
                "--samples",
                "4",
                "--out",
                str(report),
            ]
        )
        == 0
    )
    summary = json.loads(report.read_text())
    assert set(summary["structures"]) >= {"whole tumour", "tumour core", "enhancing tumour", "oedema"}
    whole = summary["structures"]["whole tumour"]
    assert 0 <= whole["dice"]["mean"] <= 1 and -1 <= whole["ged"]["mean"] <= 2 and whole["ged"]["num_cases"] == 1
    # the whole label maps in both conventions: "all" counts absent classes as IoU 1, so its distances are smaller
    present, every = summary["structures"]["multi-class (present)"], summary["structures"]["multi-class (all)"]
    assert every["diversity"]["mean"] <= present["diversity"]["mean"] + 1e-12
    assert summary["conventions"] == {"classes": ["present", "all"], "matching": "repeat"}
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert sum("multi-class (all)" in row for row in rows) == 1


def test_synthetic_volumes_know_their_label_distribution(tmp_path):
    from ssn.data.synthetic import make_synthetic_volumes

    path = make_synthetic_volumes(tmp_path, num_cases=4, shape=(24, 24, 16), splits=(2, 1))
    listing = load_volume_list(path)
    assert [len(listing.split(s)) for s in ("training", "validation", "test")] == [2, 1, 1]
    for case in listing.all_cases():
        volume = read_case(case)
        truth = np.load(Path(case.images[0]).parent / "truth.npz")
        assert truth["probs"].sum() == pytest.approx(1.0)
        for rater in volume.labels:  # every annotation is one of the four possible maps
            assert any(np.array_equal(rater, m) for m in truth["maps"])
        assert not volume.labels[:, ~volume.mask].any()


def test_the_3d_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--3d", "--out", str(tmp_path / "demo"), "--minutes", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "GED^2(32) vs truth" in out and "low-rank SSN" in out
    results = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert set(results) == {"low-rank SSN (rank 10)", "diagonal SSN (rank 0)", "deterministic U-Net"}
    sample = tmp_path / "demo" / "samples" / "case023" / "sample_007.nii.gz"
    assert nibabel.load(str(sample)).shape == (40, 40, 24)


def test_a_2d_run_still_takes_a_single_nifti_image_and_calibrate_refuses_a_volume_list(tmp_path, volume_list, capsys):
    from ssn.data.arrays import save_arrays
    from ssn.data.synthetic import make_synthetic

    data = tmp_path / "flat.npz"
    save_arrays(data, make_synthetic(24, size=32))
    run = tmp_path / "flat"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(run),
                "--features",
                "4",
                "8",
                "--max-steps",
                "2",
                "--batch-size",
                "4",
                "--val-images",
                "2",
            ]
        )
        == 0
    )
    image = tmp_path / "slice.nii.gz"
    _save(image, np.random.default_rng(0).random((32, 32)).astype(np.float32))
    assert (
        main(
            [
                "sample",
                "--run",
                str(run),
                "--input",
                str(image),
                "--samples",
                "2",
                "--figures",
                "0",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "out" / "samples.npz")["samples"].shape == (1, 2, 32, 32)
    assert main(["calibrate", "--run", str(run), "--data", str(volume_list)]) == 2
    assert "volume list" in capsys.readouterr().err


def test_a_deterministic_network_through_sliding_windows_gives_identical_samples():
    from ssn.models import ModelSpec, build

    torch.manual_seed(0)
    spec = ModelSpec(
        method="deterministic",
        backbone="unet",
        spatial_dims=3,
        in_channels=2,
        num_classes=3,
        backbone_kwargs={"features": [4, 8]},
    )
    dist = sliding_window_distribution(build(spec).eval(), torch.randn(2, 20, 18, 12), (8, 8, 8))
    samples = dist.sample_labels(5, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(s, samples[0]) for s in samples)
    assert torch.equal(samples[0, 0], dist.loc[0].argmax(0).to(torch.uint8))


def test_each_class_is_written_as_its_smallest_file_value(volume_list):
    from ssn.data.volume_list import class_file_values

    assert class_file_values(BRATS_LABELS, 4).tolist() == [0, 1, 2, 4]  # 1 and 3 are class 1: 1 is written
    assert class_file_values(None, 3).tolist() == [0, 1, 2]
    assert load_volume_list(volume_list).file_values() == {0: 0, 1: 1, 2: 2, 3: 4}


def test_a_volume_without_a_mask_is_z_scored_inside_its_non_zero_voxels():
    from ssn.data.nifti import normalise_volume

    image = np.zeros((2, 4, 4, 4), np.float32)
    image[0, :2] = np.arange(32).reshape(2, 4, 4)
    image[1, :2] = 5.0
    out = normalise_volume(image)
    inside = np.zeros((4, 4, 4), bool)
    inside[:2] = True
    assert out[0][inside].mean() == pytest.approx(0, abs=1e-6) and out[0][inside].std() == pytest.approx(1, abs=1e-5)
    assert np.all(out[1][inside] == 0) and np.all(out[:, ~inside] == 0)  # a constant channel: 0, not NaN
    with pytest.raises(DataError, match="all zero"):
        normalise_volume(np.zeros((1, 4, 4, 4), np.float32))


def test_convert_brats_through_a_link_keeps_the_link_in_the_paths(tmp_path):
    real = tmp_path / "storage" / "brats"
    _case(real / "test" / "pat1", 1)
    link = tmp_path / "data"
    link.symlink_to(real, target_is_directory=True)
    inside = link / "list.json"  # the list inside the tree it indexes, reached through the link
    assert main(["convert", "brats", str(link), "--out", str(inside)]) == 0
    case = json.loads(inside.read_text())["test"][0]
    assert case["image"][0] == "test/pat1/flair.nii.gz"  # moves with the tree; no ../ through the link
    beside = tmp_path / "lists" / "list.json"
    assert main(["convert", "brats", str(link), "--out", str(beside)]) == 0
    case = json.loads(beside.read_text())["test"][0]
    assert case["image"][0] == "../data/test/pat1/flair.nii.gz"  # by the link's name, as the user gave it
    assert load_volume_list(beside).split("test")[0].images[0] == (real / "test" / "pat1" / "flair.nii.gz").resolve()


@pytest.mark.parametrize(
    ("val_volumes", "intensity"), [("whole", "zscore"), ("whole", "stored"), ("patches", "zscore")]
)
def test_validation_on_whole_volumes_is_what_evaluate_measures(volume_list, tmp_path, val_volumes, intensity):
    """With val_volumes whole (the default), the best checkpoint's validation GED^2 is exactly what
    ``ssn evaluate`` gives the best weights on the validation volumes (same seed and samples), also
    when the run takes the stored intensities (evaluate follows the run); on patches it is another
    figure."""
    from ssn.apps.volumes import evaluate_volumes

    run = tmp_path / "run"
    flags = ["train", "--data", str(volume_list), "--out", str(run), "--patch-size", "8", "8", "8",
             "--features", "4", "8", "--max-steps", "4", "--batch-size", "2", "--val-images", "2",
             "--val-samples", "3", "--val-every", "2", "--patches-per-volume", "2", "--seed", "3"]  # fmt: skip
    assert main([*flags, "--val-volumes", val_volumes, "--intensity", intensity]) == 0
    assert json.loads((run / "config.json").read_text())["intensity"] == intensity
    entries = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = min(entries, key=lambda e: e["val_ged"])
    summary = evaluate_volumes(run, volume_list, split="validation", num_samples=3, seed=3, log=lambda _: None)
    evaluated = summary["structures"]["multi-class (present)"]["ged"]["mean"]
    if val_volumes == "whole":
        assert best["val_ged"] == pytest.approx(evaluated, abs=1e-6)
    else:
        assert abs(best["val_ged"] - evaluated) > 1e-4


def test_a_case_read_as_stored_keeps_the_files_values_inside_its_mask_and_is_cached_apart(volume_list):
    listing = load_volume_list(volume_list)
    case = listing.split("test")[0]
    stored = read_case(case, listing.label_map, intensity="stored")
    flair = np.asarray(nibabel.load(str(case.images[0])).dataobj)
    assert stored.image.dtype == np.float32
    np.testing.assert_array_equal(stored.image[0][stored.mask], flair[stored.mask])
    assert (stored.image[:, ~stored.mask] == 0).all()
    zscored = read_case(case, listing.label_map)  # the default, from a cache folder of its own
    assert abs(float(zscored.image[0][zscored.mask].mean())) < 1e-4 < float(stored.image[0][stored.mask].mean())
    again = read_case(case, listing.label_map, intensity="stored")
    assert isinstance(again.image, np.memmap) and np.array_equal(again.image, stored.image)
    with pytest.raises(ConfigError, match="intensity must be one of zscore, stored; got 'raw'"):
        read_case(case, listing.label_map, intensity="raw")


def test_calibrate_and_sample_read_volumes_as_the_run_was_trained(volume_list, tmp_path, monkeypatch):
    import ssn.apps.volumes
    import ssn.data.nifti

    run = tmp_path / "run"
    flags = ["train", "--data", str(volume_list), "--out", str(run), "--patch-size", "8", "8", "8",
             "--features", "4", "8", "--max-steps", "2", "--batch-size", "2", "--val-images", "1",
             "--val-samples", "2", "--patches-per-volume", "2", "--intensity", "stored"]  # fmt: skip
    assert main(flags) == 0
    seen: list[str] = []
    real = ssn.data.nifti.read_case

    def spy(case, label_map=None, cache=True, intensity="zscore"):
        seen.append(intensity)
        return real(case, label_map, cache, intensity)

    monkeypatch.setattr(ssn.data.nifti, "read_case", spy)  # calibrate imports it when called
    monkeypatch.setattr(ssn.apps.volumes, "read_case", spy)
    calibrate = ["calibrate", "--run", str(run), "--data", str(volume_list), "--split", "validation",
                 "--samples", "2", "--temperatures", "0.5", "1"]  # fmt: skip
    assert main(calibrate) == 0
    assert main(["sample", "--run", str(run), "--input", str(volume_list), "--split", "test", "--samples", "2",
                 "--out", str(tmp_path / "samples")]) == 0  # fmt: skip
    assert seen == ["stored"] * 3  # two validation cases, one test case


def test_intensity_is_refused_for_images_in_an_npz(tmp_path, capsys):
    from ssn.data import save_arrays
    from ssn.data.synthetic import make_synthetic

    data = tmp_path / "d.npz"
    save_arrays(data, make_synthetic(num_images=8, size=32))
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--intensity", "stored"]) == 2
    assert "intensity stored is a setting of volume lists" in capsys.readouterr().err


def test_a_resumed_run_from_before_whole_volume_validation_keeps_validating_on_patches(tmp_path):
    from ssn.engine.rundir import RunDir

    run = RunDir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"data": "list.json", "out": str(tmp_path), "max_steps": 8}))
    assert run.resumed_settings({"max_steps": 16})["val_volumes"] == "patches"
    (tmp_path / "config.json").write_text(json.dumps({"data": "list.json", "val_volumes": "whole"}))
    assert run.resumed_settings({})["val_volumes"] == "whole"


def test_the_brats_benchmark_calibrates_on_the_validation_cases_and_evaluates_at_both_temperatures(
    volume_list, tmp_path
):
    from types import SimpleNamespace

    from benchmarks import brats

    run = tmp_path / "run"
    flags = ["train", "--data", str(volume_list), "--out", str(run), "--patch-size", "8", "8", "8",
             "--features", "4", "8", "--max-steps", "2", "--batch-size", "2", "--val-images", "1",
             "--val-samples", "2", "--patches-per-volume", "2"]  # fmt: skip
    assert main(flags) == 0
    args = SimpleNamespace(window=[8, 8, 8], samples=3)
    temperature = brats.calibrated_temperature(run, volume_list, args)
    stored = json.loads((run / "calibration.json").read_text())
    assert temperature == stored["temperature"] and stored["split"] == "validation"
    assert stored["num_cases"] == 2 and len(stored["curve"]) > 1
    assert temperature == min(stored["curve"], key=lambda point: point["ged"])["temperature"]
    at_one = brats.evaluated(run, volume_list, volume_list, args, 1.0)
    at_t = brats.evaluated(run, volume_list, volume_list, args, 0.25)
    for tag in ("deepmedic_test", "tcga"):
        assert json.loads((run / f"{tag}.json").read_text())["temperature"] == 1.0
        assert json.loads((run / f"{tag}_t0.25.json").read_text())["temperature"] == 0.25
    for entry in (at_one, at_t):
        assert set(entry) == {"deepmedic test", "tcga"}
        assert set(entry["tcga"]) == {*brats.REGIONS, "multi-class"}
        assert set(entry["tcga"]["multi-class"]) == {"present", "all"}
    # a quarter of the spread draws samples closer together than t = 1 does (the same draws)
    one, quarter = at_one["tcga"]["whole tumour"]["diversity"], at_t["tcga"]["whole tumour"]["diversity"]
    assert quarter <= one
