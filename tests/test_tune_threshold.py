"""Tests for tuneThreshold.py: EER, minDCF, operating points, validation."""

import math
import os
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_curve

# The module lives at the repository root, one level above this file.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tuneThreshold as tt  # noqa: E402


# ---------------------------------------------------------------------------
# Data and independent reference computations
# ---------------------------------------------------------------------------

def random_trials(seed, n=3000, ties=False, target_ratio=0.3):
    """Two overlapping Gaussians; ``ties`` rounds scores to create tie groups."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < target_ratio).astype(int)
    scores = rng.normal(size=n) + 1.2 * labels
    if ties:
        scores = np.round(scores, 1)
    return scores, labels


def sklearn_eer(scores, labels):
    """EER from sklearn's full ROC: max(fpr, fnr) where they are closest."""
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - tpr
    idx = np.argmin(np.abs(fnr - fpr))
    return max(fpr[idx], fnr[idx]) * 100, thresholds[idx]


def interpolated_eer(scores, labels):
    """EER where the linearly interpolated ROC crosses fnr == fpr."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - tpr
    i = int(np.flatnonzero(fnr <= fpr)[0])  # fnr falls, fpr rises
    # Solve fnr(a) == fpr(a) on the segment between points i-1 and i.
    d0 = fnr[i - 1] - fpr[i - 1]
    d1 = fnr[i] - fpr[i]
    a = d0 / (d0 - d1)
    return 100 * (fpr[i - 1] + a * (fpr[i] - fpr[i - 1]))


def brute_min_dcf(scores, labels, p_target, c_miss, c_fa):
    """DCF at every candidate threshold, one Python iteration each.

    Candidates are each distinct score (accept iff score >= t) and +inf
    (reject everything), i.e. every decision a threshold can make.
    """
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels)
    tar = scores[labels == 1]
    non = scores[labels == 0]
    best = math.inf
    for t in list(np.unique(scores)) + [math.inf]:
        p_miss = np.mean(tar < t)
        p_fa = np.mean(non >= t)
        cost = c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)
        best = min(best, cost)
    return best / min(c_miss * p_target, c_fa * (1 - p_target))


def dcf_at(scores, labels, threshold, p_target, c_miss, c_fa):
    """Normalised DCF of a single threshold via error_rates_at."""
    far, frr = tt.error_rates_at(scores, labels, threshold)
    cost = c_miss * frr * p_target + c_fa * far * (1 - p_target)
    return cost / min(c_miss * p_target, c_fa * (1 - p_target))


# ---------------------------------------------------------------------------
# Hand-worked examples
# ---------------------------------------------------------------------------

# Six trials, 3 targets (T) and 3 non-targets (N), scores descending:
#   0.9 T, 0.8 T, 0.7 N, 0.6 T, 0.4 N, 0.3 N
# Accept iff score >= t:
#   t     fnr  fpr  |fnr-fpr|  DCF(p=0.05)/0.05 = fnr + 19 fpr
#   inf   3/3  0    1          1
#   0.9   2/3  0    2/3        2/3
#   0.8   1/3  0    1/3        1/3   <- minDCF(p=0.05) = 1/3
#   0.7   1/3  1/3  0          20/3  <- EER = 33.33 %, threshold 0.7
#   0.6   0    1/3  1/3        19/3
#   0.4   0    2/3  2/3        38/3
#   0.3   0    1    1          19
# With p=0.5 the normalised DCF is fnr + fpr: 1/3 at both 0.8 and 0.6; the
# lowest threshold (0.6) is reported on ties.
HAND_SCORES = [0.9, 0.8, 0.7, 0.6, 0.4, 0.3]
HAND_LABELS = [1, 1, 0, 1, 0, 0]


def test_hand_example_eer():
    eer, threshold = tt.compute_eer(HAND_SCORES, HAND_LABELS)
    assert eer == pytest.approx(100 / 3)
    assert threshold == 0.7


def test_hand_example_min_dcf():
    min_dcf, threshold = tt.compute_min_dcf(HAND_SCORES, HAND_LABELS, 0.05)
    assert min_dcf == pytest.approx(1 / 3)
    assert threshold == 0.8
    min_dcf, threshold = tt.compute_min_dcf(HAND_SCORES, HAND_LABELS, 0.5)
    assert min_dcf == pytest.approx(1 / 3)
    assert threshold == 0.6


def test_hand_example_legacy_error_rates():
    # Legacy rule: accept iff score > thresholds[i] (thresholds ascending).
    fnrs, fprs, thresholds = tt.ComputeErrorRates(HAND_SCORES, HAND_LABELS)
    np.testing.assert_allclose(thresholds, [0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    np.testing.assert_allclose(fnrs, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(fprs, [2 / 3, 1 / 3, 1 / 3, 0, 0, 0])
    # Lowest cost: fnr 1/3, fpr 0 at "accept > 0.7", same point as >= 0.8.
    min_dcf, threshold = tt.ComputeMinDcf(fnrs, fprs, thresholds, 0.05, 1, 1)
    assert min_dcf == pytest.approx(1 / 3)
    assert threshold == 0.7


# Ties: scores 1.0 T, 0.5 T, 0.5 N, 0.0 N. No threshold separates the two
# 0.5 trials, so the points are (fnr, fpr) = (1,0) (1/2,0) (0,1/2) (0,1).
# Closest |fnr - fpr| = 1/2, first reached at t=1.0 -> EER = 50 %.
# Treating the tie as two points would wrongly reach (0, 0) -> EER 0 %.
TIE_SCORES = [1.0, 0.5, 0.5, 0.0]
TIE_LABELS = [1, 1, 0, 0]


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [0, 2, 1, 3], [3, 2, 1, 0]])
def test_ties_share_one_operating_point(order):
    scores = np.array(TIE_SCORES)[order]
    labels = np.array(TIE_LABELS)[order]
    eer, threshold = tt.compute_eer(scores, labels)
    assert eer == pytest.approx(50)
    assert threshold == 1.0
    fnrs, fprs, thresholds = tt.ComputeErrorRates(scores, labels)
    np.testing.assert_allclose(thresholds, [0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(fnrs, [0, 0.5, 0.5, 1])
    np.testing.assert_allclose(fprs, [0.5, 0, 0, 0])


# ---------------------------------------------------------------------------
# EER against sklearn
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_eer_matches_sklearn(seed, ties):
    scores, labels = random_trials(seed, ties=ties)
    expected, expected_threshold = sklearn_eer(scores, labels)
    eer, threshold = tt.compute_eer(scores, labels)
    assert abs(eer - expected) < 0.01
    assert threshold == expected_threshold
    assert tt.tuneThresholdfromScore(scores, labels, [])[1] == eer


@pytest.mark.parametrize("seed", range(3))
def test_eer_close_to_interpolated_crossing(seed):
    # Without ties every step moves one rate by one trial, so the closest
    # point is within one step of the exact crossing.
    scores, labels = random_trials(seed)
    step = 100 / min(labels.sum(), len(labels) - labels.sum())
    eer, _ = tt.compute_eer(scores, labels)
    assert abs(eer - interpolated_eer(scores, labels)) <= step


@pytest.mark.parametrize("seed", range(3))
def test_eer_threshold_reproduces_eer(seed):
    scores, labels = random_trials(seed, ties=seed % 2 == 0)
    eer, threshold = tt.compute_eer(scores, labels)
    far, frr = tt.error_rates_at(scores, labels, threshold)
    assert max(far, frr) * 100 == pytest.approx(eer, abs=1e-12)


def test_input_types_do_not_change_results():
    scores, labels = random_trials(7, n=500, ties=True)
    expected = tt.compute_eer(scores, labels)
    variants = [
        (list(scores), list(labels)),
        (scores.astype(np.float32).astype(np.float64), labels.astype(bool)),
        (scores, labels.astype(float)),
    ]
    for s, lab in variants:
        # float32 rounding moves the threshold slightly, never the EER.
        eer, threshold = tt.compute_eer(s, lab)
        assert eer == expected[0]
        assert threshold == pytest.approx(expected[1], rel=1e-6)


def test_trial_order_does_not_matter():
    scores, labels = random_trials(3, n=800, ties=True)
    perm = np.random.default_rng(0).permutation(len(scores))
    assert tt.compute_eer(scores, labels) == tt.compute_eer(
        scores[perm], labels[perm])
    assert tt.compute_min_dcf(scores, labels) == pytest.approx(
        tt.compute_min_dcf(scores[perm], labels[perm]))


# ---------------------------------------------------------------------------
# minDCF against a brute-force loop
# ---------------------------------------------------------------------------

DCF_SETTINGS = [
    (0.05, 1, 1),
    (0.01, 1, 1),
    (0.01, 1, 10),
    (0.05, 10, 1),
]


@pytest.mark.parametrize("p_target,c_miss,c_fa", DCF_SETTINGS)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_min_dcf_matches_brute_force(seed, ties, p_target, c_miss, c_fa):
    scores, labels = random_trials(seed, n=1500, ties=ties)
    expected = brute_min_dcf(scores, labels, p_target, c_miss, c_fa)

    min_dcf, threshold = tt.compute_min_dcf(
        scores, labels, p_target, c_miss, c_fa)
    assert min_dcf == pytest.approx(expected, abs=1e-9)
    assert dcf_at(scores, labels, threshold, p_target, c_miss, c_fa) == \
        pytest.approx(min_dcf, abs=1e-9)

    # Legacy pair: lacks only the accept-all point, which never wins when
    # c_miss * p_target <= c_fa * (1 - p_target), as in all these settings.
    fnrs, fprs, thresholds = tt.ComputeErrorRates(scores, labels)
    legacy, _ = tt.ComputeMinDcf(fnrs, fprs, thresholds,
                                 p_target, c_miss, c_fa)
    assert legacy == pytest.approx(expected, abs=1e-9)


def test_min_dcf_never_above_one():
    # Useless scores and p_target > 0.5: accepting everything is the best
    # trivial system, and compute_min_dcf considers it.
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    scores = rng.normal(size=400) - 2 * labels
    expected = brute_min_dcf(scores, labels, 0.9, 1, 1)
    min_dcf, threshold = tt.compute_min_dcf(scores, labels, 0.9)
    assert min_dcf == pytest.approx(expected, abs=1e-9)
    assert min_dcf <= 1 + 1e-12
    assert threshold == scores.min()


def test_legacy_error_rates_match_original_definition_without_ties():
    scores, labels = random_trials(4, n=300)
    # Original definition: walk the ascending scores, accumulating labels.
    order = np.argsort(scores)
    n_tar = labels.sum()
    n_non = len(labels) - n_tar
    tar_seen = non_seen = 0
    exp_fnrs, exp_fprs = [], []
    for i in order:
        tar_seen += labels[i]
        non_seen += 1 - labels[i]
        exp_fnrs.append(tar_seen / n_tar)
        exp_fprs.append(1 - non_seen / n_non)
    fnrs, fprs, thresholds = tt.ComputeErrorRates(list(scores), list(labels))
    np.testing.assert_allclose(fnrs, exp_fnrs, atol=1e-15)
    np.testing.assert_allclose(fprs, exp_fprs, atol=1e-15)
    np.testing.assert_array_equal(thresholds, scores[order])


# ---------------------------------------------------------------------------
# tuneThresholdfromScore: reference-compatible structure
# ---------------------------------------------------------------------------

def test_tune_threshold_rows_hand_example():
    tuned, eer, fpr, fnr = tt.tuneThresholdfromScore(
        HAND_SCORES, HAND_LABELS, target_fa=[0.4, 0.01], target_fr=[0.3])
    # Row order: target_fr rows, then target_fa rows, then the EER row.
    assert len(tuned) == 4
    assert tuned[0] == pytest.approx([0.8, 0, 1 / 3])   # fnr closest to 0.3
    assert tuned[1] == pytest.approx([0.7, 1 / 3, 1 / 3])  # fpr near 0.4
    assert tuned[2][0] == math.inf                      # fpr 0 ~ 0.01
    assert tuned[2][1:] == pytest.approx([0, 1])
    assert tuned[3] == pytest.approx([0.7, 1 / 3, 1 / 3])  # EER row
    assert eer == pytest.approx(100 / 3)
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(fnr, [1, 2 / 3, 1 / 3, 1 / 3, 0, 0, 0])


@pytest.mark.parametrize("target_fr", [None, []])
def test_tune_threshold_without_target_fr(target_fr):
    tuned, _, _, _ = tt.tuneThresholdfromScore(
        HAND_SCORES, HAND_LABELS, [0.4], target_fr)
    assert len(tuned) == 2
    assert all(len(row) == 3 for row in tuned)


def test_tune_threshold_accepts_numpy_targets():
    as_lists = tt.tuneThresholdfromScore(
        HAND_SCORES, HAND_LABELS, [0.4, 0.01], [0.3])[0]
    as_arrays = tt.tuneThresholdfromScore(
        HAND_SCORES, HAND_LABELS, np.array([0.4, 0.01]), np.array([0.3]))[0]
    assert as_arrays == as_lists


@pytest.mark.parametrize("ties", [False, True])
def test_tune_threshold_matches_sklearn_recipe(ties):
    scores, labels = random_trials(11, ties=ties)
    target_fa, target_fr = [0.1, 0.01], [0.05]
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - tpr
    expected = []
    for tfr in target_fr:
        i = np.argmin(np.abs(tfr - fnr))
        expected.append([thresholds[i], fpr[i], fnr[i]])
    for tfa in target_fa:
        i = np.argmin(np.abs(tfa - fpr))
        expected.append([thresholds[i], fpr[i], fnr[i]])
    i = np.argmin(np.abs(fnr - fpr))
    expected.append([thresholds[i], fpr[i], fnr[i]])

    tuned, eer, got_fpr, got_fnr = tt.tuneThresholdfromScore(
        scores, labels, target_fa, target_fr)
    assert tuned == expected
    assert eer == pytest.approx(max(fpr[i], fnr[i]) * 100)
    np.testing.assert_array_equal(got_fpr, fpr)
    np.testing.assert_array_equal(got_fnr, fnr)


# ---------------------------------------------------------------------------
# error_rates_at
# ---------------------------------------------------------------------------

def test_error_rates_at():
    # Accept >= 0.7: non-target 0.7 accepted (1/3), target 0.6 rejected (1/3).
    far, frr = tt.error_rates_at(HAND_SCORES, HAND_LABELS, 0.7)
    assert (far, frr) == pytest.approx((1 / 3, 1 / 3))
    assert tt.error_rates_at(HAND_SCORES, HAND_LABELS, math.inf) == (0, 1)
    assert tt.error_rates_at(HAND_SCORES, HAND_LABELS, -math.inf) == (1, 0)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

SCORE_FUNCS = [
    lambda s, lab: tt.compute_eer(s, lab),
    lambda s, lab: tt.compute_min_dcf(s, lab),
    lambda s, lab: tt.error_rates_at(s, lab, 0.0),
    lambda s, lab: tt.tuneThresholdfromScore(s, lab, [0.01]),
    lambda s, lab: tt.ComputeErrorRates(s, lab),
]


@pytest.mark.parametrize("func", SCORE_FUNCS)
@pytest.mark.parametrize("scores,labels,message", [
    ([], [], "empty"),
    ([0.1, 0.2, 0.3], [0, 1, 2], "0 .*or 1"),
    ([0.1, 0.2, 0.3], [0, 1, 0.5], "0 .*or 1"),
    ([0.1, 0.2, 0.3], ["0", "1", "0"], "numeric"),
    ([0.1, 0.2, 0.3], [1, 1, 1], "both target"),
    ([0.1, 0.2, 0.3], [0, 0, 0], "both target"),
    ([0.1, float("nan"), 0.3], [0, 1, 0], "NaN"),
    ([0.1, float("inf"), 0.3], [0, 1, 0], "finite"),
    ([0.1, 0.2, 0.3], [0, 1], "length"),
    ([[0.1, 0.2]], [[0, 1]], "1-D"),
    (["a", "b"], [0, 1], "real numbers"),
])
def test_invalid_input_raises(func, scores, labels, message):
    with pytest.raises(ValueError, match=message):
        func(scores, labels)


@pytest.mark.parametrize("p_target,c_miss,c_fa", [
    (0, 1, 1), (1, 1, 1), (-0.1, 1, 1), (0.05, 0, 1), (0.05, 1, -1),
])
def test_invalid_costs_raise(p_target, c_miss, c_fa):
    with pytest.raises(ValueError, match="p_target|c_miss"):
        tt.compute_min_dcf(HAND_SCORES, HAND_LABELS, p_target, c_miss, c_fa)
    with pytest.raises(ValueError, match="p_target|c_miss"):
        tt.ComputeMinDcf([0, 1], [1, 0], [0, 1], p_target, c_miss, c_fa)


def test_compute_min_dcf_rejects_misaligned_arrays():
    with pytest.raises(ValueError, match="equal length"):
        tt.ComputeMinDcf([0, 1], [1, 0, 0], [0, 1], 0.05, 1, 1)
    with pytest.raises(ValueError, match="empty"):
        tt.ComputeMinDcf([], [], [], 0.05, 1, 1)


def test_error_rates_at_rejects_nan_threshold():
    with pytest.raises(ValueError, match="NaN"):
        tt.error_rates_at(HAND_SCORES, HAND_LABELS, float("nan"))
