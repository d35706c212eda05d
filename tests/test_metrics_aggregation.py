"""Accumulating metric classes: dataset means, standard errors and reduction across processes."""

import math
from dataclasses import astuple

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssn import metrics as M

CLASSES = {
    "ged": (M.GeneralizedEnergyDistance, M.generalized_energy_distance),
    "diversity": (M.SampleDiversity, lambda s, a, c: M.sample_diversity(s, c)),
    "hm_iou": (M.HungarianMatchedIoU, M.hungarian_matched_iou),
    "dice": (M.MeanPredictionDice, M.mean_prediction_dice),
}


def dataset(seed=0, images=7, samples=6, annotators=3, classes=3):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, classes, (images, samples, 6, 5)).astype(np.uint8)
    a = rng.integers(0, classes, (images, annotators, 6, 5)).astype(np.uint8)
    # Make some images easy (samples copy the annotators) so that values differ per image.
    s[::2, :annotators] = a[::2]
    return s, a


@pytest.mark.parametrize("name", list(CLASSES))
def test_batches_accumulate_to_the_mean_of_per_image_values(name):
    cls, fn = CLASSES[name]
    s, a = dataset()
    metric = cls(num_classes=3)
    metric.update(s[:3], a[:3])
    metric.update(torch.as_tensor(s[3:]), torch.as_tensor(a[3:]))
    values = [fn(si, ai, 3) for si, ai in zip(s, a)]
    result = metric.compute()
    assert result.mean == pytest.approx(np.mean(values))
    assert result.stderr == pytest.approx(np.std(values, ddof=1) / math.sqrt(len(values)))
    assert result.num_images == 7 and result.num_samples == 6
    assert float(result) == result.mean
    metric.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        metric.compute()


def test_number_of_samples_must_stay_fixed():
    s, a = dataset()
    metric = M.GeneralizedEnergyDistance(3)
    metric.update(s[:2], a[:2])
    with pytest.raises(ValueError, match="depends on the number of samples"):
        metric.update(s[2:, :4], a[2:])


def test_batch_sizes_must_agree():
    s, a = dataset()
    with pytest.raises(ValueError, match="same batch size"):
        M.GeneralizedEnergyDistance(3).update(s[:2], a[:3])


def test_ece_pools_pixels_over_the_dataset():
    s, a = dataset(classes=2)
    metric = M.ExpectedCalibrationError(num_classes=2, num_bins=5)
    metric.update(s[:4], a[:4])
    metric.update(s[4:], a[4:])
    # Pooled: the ECE of all images side by side as one image.
    probabilities = torch.cat([M.class_frequencies(x, 2) for x in s], dim=-1)
    annotations = np.concatenate(list(a), axis=-1)
    expected = M.expected_calibration_error(probabilities, annotations, 2, num_bins=5)
    result = metric.compute()
    assert result.mean == pytest.approx(expected)
    assert result.num_images == 7


def _worker(rank, world, init_file, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    s, a = dataset()
    mine = slice(rank, None, world)  # each process sees a disjoint part of the dataset
    results = {}
    for name, (cls, _) in CLASSES.items():
        metric = cls(3)
        metric.update(s[mine], a[mine])
        results[name] = metric.compute()
    ece = M.ExpectedCalibrationError(3)
    ece.update(s[mine], a[mine])
    results["ece"] = ece.compute()
    together = M.ImageMetrics(3, matched_sizes=(4, 6))
    together.update(s[mine], a[mine])
    results["image_metrics"] = together.compute()
    queue.put((rank, results))
    dist.destroy_process_group()


def test_compute_reduces_across_processes(tmp_path):
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    init_file = tmp_path / "init"
    processes = [context.Process(target=_worker, args=(r, 2, str(init_file), queue)) for r in range(2)]
    for p in processes:
        p.start()
    gathered = dict(queue.get() for _ in processes)
    for p in processes:
        p.join(60)
        assert p.exitcode == 0
    s, a = dataset()
    for name, (cls, _) in CLASSES.items():
        single = cls(3)
        single.update(s, a)
        expected = single.compute()
        for rank in (0, 1):
            assert gathered[rank][name].mean == pytest.approx(expected.mean)
            assert gathered[rank][name].stderr == pytest.approx(expected.stderr)
            assert gathered[rank][name].num_images == 7
    ece = M.ExpectedCalibrationError(3)
    ece.update(s, a)
    assert gathered[0]["ece"].mean == pytest.approx(ece.compute().mean)
    together = M.ImageMetrics(3, matched_sizes=(4, 6))
    together.update(s, a)
    for key, expected in together.compute().items():
        for rank in (0, 1):
            assert astuple(gathered[rank]["image_metrics"][key]) == pytest.approx(astuple(expected)), key


def test_image_metrics_accumulate_every_per_image_metric_from_one_pass():
    """ImageMetrics gives the figures of the single metrics, and each image's values."""
    s, a = dataset()
    together = M.ImageMetrics(3, matched_sizes=(4, 6))
    rows = together.update(s[:3], a[:3]) + together.update(s[3:], a[3:])
    assert len(rows) == 7 and set(rows[0]) == {"ged", "diversity", "dice", "hm_iou_4", "hm_iou_6", "ged_4", "ged_6"}
    figures = together.compute()
    for name, key in (("ged", "ged"), ("diversity", "diversity"), ("dice", "dice"), ("hm_iou", "hm_iou_6")):
        single = CLASSES[name][0](3)
        single.update(s, a)
        assert astuple(figures[key]) == pytest.approx(astuple(single.compute())), key
    assert [row["ged"] for row in rows] == pytest.approx([M.generalized_energy_distance(x, y, 3) for x, y in zip(s, a)])
    assert figures["hm_iou_4"].num_samples == 4 and figures["ged"].num_samples == 6
    matched_4 = [M.hungarian_matched_iou(x[:4], y, 3) for x, y in zip(s, a)]
    assert figures["hm_iou_4"].mean == pytest.approx(np.mean(matched_4))
    ged_4 = [M.generalized_energy_distance(x[:4], y, 3) for x, y in zip(s, a)]
    assert figures["ged_4"].mean == pytest.approx(np.mean(ged_4)) and figures["ged_4"].num_samples == 4
    assert figures["ged_6"].mean == pytest.approx(figures["ged"].mean)


def test_estimates_are_json_ready():
    assert M.Estimate(0.5, math.nan, 1, 4).as_dict() == {"mean": 0.5, "stderr": None, "num_images": 1, "num_samples": 4}


def test_accumulating_classes_take_the_conventions():
    y1 = np.zeros((8, 8), dtype=np.uint8)
    y1[:4, :4] = 1
    y2 = np.zeros((8, 8), dtype=np.uint8)
    y2[:4, 2:6] = 1
    empty = np.zeros_like(y1)
    samples = torch.from_numpy(np.stack([y1, y2, empty, empty]))[None]  # (1, 4, 8, 8)
    annotations = torch.from_numpy(np.stack([y1, y2]))[None]
    for classes in ("present", "all"):
        for name, function in (("GeneralizedEnergyDistance", M.generalized_energy_distance), ("SampleDiversity", None)):
            metric = getattr(M, name)(3, classes=classes)
            metric.update(samples, annotations)
            expected = (
                function(samples[0], annotations[0], 3, classes=classes)
                if function
                else M.sample_diversity(samples[0], 3, classes=classes)
            )
            assert metric.compute().mean == pytest.approx(expected)
    # 3 classes, class 2 never present: "all" halves every distance
    ged = {c: M.GeneralizedEnergyDistance(3, classes=c) for c in ("present", "all")}
    for metric in ged.values():
        metric.update(samples, annotations)
    assert ged["all"].compute().mean == pytest.approx(ged["present"].compute().mean / 2)
    for matching, expected in (("repeat", 0.5), ("rectangular", 1.0)):
        matched = M.HungarianMatchedIoU(2, matching=matching)
        matched.update(samples, annotations)
        assert matched.compute().mean == pytest.approx(expected)
        figures = M.ImageMetrics(2, matched_sizes=(4,), matching=matching)
        figures.update(samples, annotations)
        assert figures.compute()["hm_iou_4"].mean == pytest.approx(expected)


def test_estimate_of_values_is_their_mean_and_standard_error():
    estimate = M.Estimate.of([0.2, 0.4, 0.9], num_samples=16)
    assert estimate.mean == pytest.approx(0.5)
    assert estimate.stderr == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1) / math.sqrt(3))
    assert (estimate.num_images, estimate.num_samples) == (3, 16)
    assert M.Estimate.of([0.7]).as_dict()["stderr"] is None  # undefined for one value
    with pytest.raises(ValueError, match="at least one value"):
        M.Estimate.of([])
