"""ssn.metrics functions: hand-worked examples, a brute-force reference and properties."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ssn import metrics as M


def square(top, left, size, shape=(8, 8), label=1):
    m = np.zeros(shape, dtype=np.uint8)
    m[top : top + size, left : left + size] = label
    return m


# ------------------------------------------------------------------- brute-force reference
def reference_distance(a, b, num_classes):
    """d = 1 - IoU averaged over foreground classes present in a or b; 0 if none is."""
    terms = []
    for c in range(1, num_classes):
        inter = np.logical_and(a == c, b == c).sum()
        union = np.logical_or(a == c, b == c).sum()
        if union:
            terms.append(1 - inter / union)
    return float(np.mean(terms)) if terms else 0.0


def reference_mean_distance(xs, ys, num_classes):
    return np.mean([reference_distance(x, y, num_classes) for x in xs for y in ys])


def reference_ged(samples, annotations, num_classes):
    return (
        2 * reference_mean_distance(samples, annotations, num_classes)
        - reference_mean_distance(samples, samples, num_classes)
        - reference_mean_distance(annotations, annotations, num_classes)
    )


def reference_matched_iou(samples, annotations, num_classes):
    """Brute force over all one-to-one matchings of the sets repeated to lcm(N, A) (keep it <= 6)."""
    size = math.lcm(len(samples), len(annotations))
    s = [samples[i % len(samples)] for i in range(size)]
    a = [annotations[i % len(annotations)] for i in range(size)]
    best = max(
        np.mean([1 - reference_distance(s[i], a[j], num_classes) for i, j in enumerate(perm)])
        for perm in itertools.permutations(range(size))
    )
    return best


# ------------------------------------------------------------------------ hand-worked
def test_distance_by_hand():
    a = square(0, 0, 4)  # 16 pixels
    b = square(0, 2, 4)  # overlaps a in 8 pixels: IoU = 8 / 24
    empty = np.zeros((8, 8), dtype=np.uint8)
    d = M.pairwise_distances(np.stack([a, empty]), np.stack([b, empty]))
    assert d[0, 0].item() == pytest.approx(1 - 8 / 24)
    assert d[0, 1].item() == 1.0  # one empty map: IoU 0
    assert d[1, 1].item() == 0.0  # both empty: d = 0 by convention
    assert d.dtype == torch.float64


def test_distance_with_several_classes_by_hand():
    a = square(0, 0, 4) + square(4, 4, 2, label=2)  # class 1: 16 px, class 2: 4 px
    b = square(0, 0, 4)  # class 1 identical, class 2 absent
    c = square(0, 0, 4, label=2)  # class 1 absent, class 2 the same square as a's class 1
    assert M.pairwise_distances(a[None], b[None], 3).item() == pytest.approx((0 + 1) / 2)
    # c vs b: class 1 present only in b (d 1), class 2 present only in c (d 1).
    assert M.pairwise_distances(c[None], b[None], 3).item() == pytest.approx(1.0)
    # Class 2 absent from both maps is left out of the average.
    assert M.pairwise_distances(b[None], b[None], 3).item() == 0.0


def test_ged_by_hand():
    y1, y2 = square(0, 0, 4), square(0, 2, 4)
    d12 = 1 - 8 / 24
    annotations = np.stack([y1, y2])
    # One sample equal to y1: E[d(S,Y)] = d12 / 2, E[d(S,S')] = 0, E[d(Y,Y')] = 2 d12 / 4.
    assert M.generalized_energy_distance(y1[None], annotations) == pytest.approx(d12 - d12 / 2)
    assert M.generalized_energy_distance(annotations, annotations) == 0.0
    # Empty samples against empty annotations: every distance is 0.
    empty = np.zeros((3, 8, 8), dtype=np.uint8)
    assert M.generalized_energy_distance(empty, empty[:2]) == 0.0
    # Empty samples against non-empty annotations: E[d(S,Y)] = 1.
    assert M.generalized_energy_distance(empty, annotations) == pytest.approx(2 - 0 - d12 / 2)


def test_diversity_by_hand():
    y1, y2 = square(0, 0, 4), square(0, 2, 4)
    # Ordered pairs with self-pairs: (0 + d + d + 0) / 4.
    assert M.sample_diversity(np.stack([y1, y2])) == pytest.approx((1 - 8 / 24) / 2)
    assert M.sample_diversity(np.stack([y1, y1, y1])) == 0.0
    # Distinct pairs only: (d + d) / 2 = d.
    assert M.sample_diversity(np.stack([y1, y2]), distinct=True) == pytest.approx(1 - 8 / 24)
    # Three maps, two alike: pairs (1,2), (1,3) differ, (2,3) alike -> 4 of 6 ordered pairs at d.
    assert M.sample_diversity(np.stack([y1, y2, y2]), distinct=True) == pytest.approx(4 * (1 - 8 / 24) / 6)
    with pytest.raises(ValueError, match="at least 2"):
        M.sample_diversity(y1[None], distinct=True)


def test_hungarian_matched_iou_by_hand():
    y1, y2 = square(0, 0, 4), square(0, 2, 4)
    assert M.hungarian_matched_iou(np.stack([y2, y1]), np.stack([y1, y2])) == pytest.approx(1.0)
    # Two identical samples against the two annotations: one match is perfect, one is 8/24.
    assert M.hungarian_matched_iou(np.stack([y1, y1]), np.stack([y1, y2])) == pytest.approx((1 + 8 / 24) / 2)
    # lcm(1, 2) = 2: the single sample is repeated and matched to each annotation.
    assert M.hungarian_matched_iou(y1[None], np.stack([y1, y2])) == pytest.approx((1 + 8 / 24) / 2)


def test_classes_all_counts_a_class_absent_from_both_maps_as_iou_one():
    # 4 classes (3 foreground). a and b: class 1 overlaps (IoU 8/24), class 2 only in a, class 3 in neither.
    a = square(0, 0, 4) + square(6, 6, 2, label=2)
    b = square(0, 2, 4)
    d1 = 1 - 8 / 24
    present = M.pairwise_distances(a[None], b[None], 4).item()
    every = M.pairwise_distances(a[None], b[None], 4, classes="all").item()
    assert present == pytest.approx((d1 + 1) / 2)  # classes 1 and 2 present
    assert every == pytest.approx((d1 + 1 + 0) / 3)  # class 3: IoU 1, counted
    # The case: one class present, two absent from both: "present" is 3x "all".
    c = square(0, 0, 4)
    assert M.pairwise_distances(b[None], c[None], 4).item() == pytest.approx(d1)
    assert M.pairwise_distances(b[None], c[None], 4, classes="all").item() == pytest.approx(d1 / 3)
    # Two empty maps: 0 in both conventions.
    empty = np.zeros((8, 8), dtype=np.uint8)
    assert M.pairwise_distances(empty[None], empty[None], 4, classes="all").item() == 0.0


def test_ged_and_diversity_in_both_class_conventions_by_hand():
    y1, y2 = square(0, 0, 4), square(0, 2, 4)  # class 1 only, 3 classes: class 2 always absent
    d12 = 1 - 8 / 24
    annotations = np.stack([y1, y2])
    samples = np.stack([y1, y1, y2])
    # present: the module's reference; all: every distance halved (class 2 counts as d = 0).
    for classes, scale in (("present", 1.0), ("all", 0.5)):
        sy = scale * d12 * (2 * 1 + 1 * 1) / 6  # 6 pairs: y1-y2 twice, y2-y1 once
        ss = scale * d12 * 4 / 9  # ordered pairs (y1, y2) and (y2, y1): 2 * 2
        yy = scale * d12 * 2 / 4
        assert M.generalized_energy_distance(samples, annotations, 3, classes=classes) == pytest.approx(
            2 * sy - ss - yy
        )
        assert M.sample_diversity(samples, 3, classes=classes) == pytest.approx(ss)
        row = M.image_metrics(samples, annotations, 3, classes=classes)
        assert row["ged"] == pytest.approx(2 * sy - ss - yy) and row["diversity"] == pytest.approx(ss)
    # Two classes: the conventions agree.
    assert M.generalized_energy_distance(samples, annotations, classes="all") == pytest.approx(
        M.generalized_energy_distance(samples, annotations)
    )


def test_rectangular_matching_keeps_only_the_best_min_n_a_pairs():
    y1, y2 = square(0, 0, 4), square(0, 2, 4)
    empty = np.zeros((8, 8), dtype=np.uint8)
    samples = np.stack([y1, empty, empty, empty])  # one good sample, three empty ones
    annotations = np.stack([y1, y2])
    # rectangular: 2 pairs, y1-y1 (IoU 1) and an empty map with y2 (IoU 0) -> 0.5
    assert M.hungarian_matched_iou(samples, annotations, matching="rectangular") == pytest.approx(0.5)
    # repeat: lcm(4, 2) = 4 pairs: y1-y1 (1), then three empty samples against y1, y2, y2 (0 each) -> 0.25
    assert M.hungarian_matched_iou(samples, annotations) == pytest.approx(0.25)
    # Many samples, a few good ones: rectangular takes the best, repeat all of them.
    samples = np.stack([y1, y2, *[empty] * 6])
    assert M.hungarian_matched_iou(samples, annotations, matching="rectangular") == pytest.approx(1.0)
    assert M.hungarian_matched_iou(samples, annotations) == pytest.approx(2 / 8)
    row = M.image_metrics(samples, annotations, matched_sizes=(8,), matching="rectangular")
    assert row["hm_iou_8"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda y: M.generalized_energy_distance(y, y, classes="some"),
        lambda y: M.sample_diversity(y, classes="foreground"),
        lambda y: M.hungarian_matched_iou(y, y, matching="square"),
        lambda y: M.ImageMetrics(2, classes="none"),
        lambda y: M.HungarianMatchedIoU(2, matching="lcm"),
    ],
)
def test_unknown_conventions_are_refused_naming_the_choices(call):
    y = np.zeros((2, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="present|repeat"):
        call(y)


def test_mean_prediction_and_its_dice_by_hand():
    y1, y2 = square(0, 0, 4), square(0, 2, 4)
    samples = np.stack([y1, y1, y2])  # majority: y1
    assert torch.equal(M.mean_prediction(samples), torch.as_tensor(y1, dtype=torch.int64))
    # Dice(y1, y1) = 1, Dice(y1, y2) = 2 * 8 / 32.
    assert M.mean_prediction_dice(samples, np.stack([y1, y2])) == pytest.approx((1 + 0.5) / 2)
    # Ties go to the background.
    assert M.mean_prediction(np.stack([y1, np.zeros_like(y1)])).sum() == 0
    empty = np.zeros((2, 8, 8), dtype=np.uint8)
    assert M.mean_prediction_dice(empty, empty) == 1.0


def test_class_frequencies_entropy_and_variance():
    y1, y2 = square(0, 0, 4), square(0, 2, 4)
    samples = np.stack([y1, y2])
    p = M.class_frequencies(samples)
    assert p.shape == (2, 8, 8)
    torch.testing.assert_close(p.sum(0), torch.ones(8, 8))
    entropy = M.entropy_map(samples)
    assert entropy[0, 0].item() == pytest.approx(math.log(2))  # in y1 only
    assert entropy[0, 2].item() == pytest.approx(0.0, abs=1e-6)  # in both
    assert entropy[7, 7].item() == pytest.approx(0.0, abs=1e-6)  # in neither
    variance = M.variance_map(samples)
    assert variance.shape == (2, 8, 8)
    assert variance[1, 0, 0].item() == pytest.approx(0.25)
    assert variance[1, 0, 2].item() == 0.0


def test_ece_by_hand():
    annotations = np.stack([square(0, 0, 4), square(0, 0, 2)])  # q = 1 on 4 px, 0.5 on 12 px
    q = M.class_frequencies(annotations)
    assert M.expected_calibration_error(q, annotations) == pytest.approx(0.0, abs=1e-12)
    # Predict 1.0 everywhere: bin 9 holds all 64 px, mean p = 1, mean q = (4 + 6) / 64.
    ones = torch.stack([torch.zeros(8, 8), torch.ones(8, 8)])
    assert M.expected_calibration_error(ones, annotations) == pytest.approx(1 - 10 / 64)
    # Predict 0.5 on the square, 0 elsewhere: bins 5 (16 px, |0.5 - 10/16|) and 0 (48 px, 0).
    half = torch.zeros(2, 8, 8)
    half[1, :4, :4] = 0.5
    half[0] = 1 - half[1]
    assert M.expected_calibration_error(half, annotations) == pytest.approx(16 / 64 * abs(0.5 - 10 / 16))


# ---------------------------------------------------------------------- properties
label_sets = st.integers(1, 4).flatmap(lambda n: arrays(np.uint8, (n, 5, 6), elements=st.integers(0, 2)))


@settings(max_examples=60, deadline=None)
@given(label_sets, label_sets)
def test_ged_and_distances_match_a_brute_force_reference(samples, annotations):
    assert M.generalized_energy_distance(samples, annotations, 3) == pytest.approx(
        reference_ged(samples, annotations, 3), abs=1e-9
    )
    d = M.pairwise_distances(samples, annotations, 3).numpy()
    expected = [[reference_distance(x, y, 3) for y in annotations] for x in samples]
    np.testing.assert_allclose(d, expected, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 3).flatmap(lambda n: arrays(np.uint8, (n, 4, 4), elements=st.integers(0, 1))),
    st.integers(1, 3).flatmap(lambda n: arrays(np.uint8, (n, 4, 4), elements=st.integers(0, 1))),
)
def test_hungarian_matched_iou_matches_brute_force(samples, annotations):
    assert M.hungarian_matched_iou(samples, annotations) == pytest.approx(
        reference_matched_iou(samples, annotations, 2), abs=1e-9
    )


@settings(max_examples=60, deadline=None)
@given(label_sets, label_sets)
def test_metric_properties(samples, annotations):
    d = M.pairwise_distances(samples, annotations, 3)
    assert ((d >= 0) & (d <= 1)).all()
    torch.testing.assert_close(d.T, M.pairwise_distances(annotations, samples, 3))  # symmetry
    assert M.generalized_energy_distance(annotations, annotations, 3) == pytest.approx(0.0, abs=1e-12)
    ged = M.generalized_energy_distance(samples, annotations, 3)
    assert ged == pytest.approx(M.generalized_energy_distance(annotations, samples, 3), abs=1e-12)
    assert -1e-12 <= ged <= 2
    assert 0 <= M.sample_diversity(samples, 3) <= 1
    assert 0 <= M.hungarian_matched_iou(samples, annotations, 3) <= 1
    assert 0 <= M.mean_prediction_dice(samples, annotations, 3) <= 1
    assert 0 <= M.expected_calibration_error(M.class_frequencies(samples, 3), annotations, 3) <= 1


def test_works_in_one_and_three_dimensions_and_with_tensors():
    rng = np.random.default_rng(0)
    for shape in [(4, 50), (4, 5, 6, 7)]:
        s = rng.integers(0, 2, shape)
        a = rng.integers(0, 2, (3,) + shape[1:])
        expected = reference_ged(s, a, 2)
        assert M.generalized_energy_distance(s, a) == pytest.approx(expected)
        assert M.generalized_energy_distance(torch.as_tensor(s), torch.as_tensor(a)) == pytest.approx(expected)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda s, a: M.generalized_energy_distance(s, a, num_classes=1), ValueError, "num_classes"),
        (lambda s, a: M.generalized_energy_distance(s + 2, a), ValueError, r"samples has labels outside \[0, 2\)"),
        (lambda s, a: M.generalized_energy_distance(s, a[:, :3]), ValueError, "must share S"),
        (lambda s, a: M.generalized_energy_distance(s.astype(float), a), TypeError, "integer labels"),
        (lambda s, a: M.generalized_energy_distance(s[:0], a), ValueError, "samples is empty"),
        (lambda s, a: M.sample_diversity(s[0, 0]), ValueError, r"shape \(n, \*S\)"),
        (lambda s, a: M.expected_calibration_error(np.ones((2, 4)), a), ValueError, "probabilities must"),
    ],
)
def test_bad_inputs(call, error, message):
    s = np.zeros((3, 4, 4), dtype=np.int64)
    a = np.zeros((2, 4, 4), dtype=np.int64)
    with pytest.raises(error, match=message):
        call(s, a)


def test_frequency_entropy_in_nats_along_any_axis():
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.25, 0.25, 0.5]])
    expected = torch.tensor([math.log(2), 0.0, 1.5 * math.log(2)])
    torch.testing.assert_close(M.frequency_entropy(p, dim=-1), expected)
    torch.testing.assert_close(M.frequency_entropy(p.T), expected)  # classes first, the default
