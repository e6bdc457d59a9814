#! /usr/bin/python
# -*- encoding: utf-8 -*-
"""Verification metrics: EER, minimum DCF and operating-point look-ups.

The public functions ``tuneThresholdfromScore``, ``ComputeErrorRates`` and
``ComputeMinDcf`` keep the arguments and return structure of
voxceleb_trainer's ``tuneThreshold.py`` so existing scripts keep working.
``compute_eer``, ``compute_min_dcf`` and ``error_rates_at`` are the
recommended entry points for new code.

Everything is vectorised with numpy: one sort of the scores, then cumulative
sums. Tied scores are grouped so that they share a single operating point
(a threshold cannot separate two trials with equal scores).

Threshold convention (all functions except the legacy ``ComputeErrorRates``
/ ``ComputeMinDcf`` pair): a trial is *accepted* when ``score >= threshold``.
A threshold of ``+inf`` means "reject everything".
"""

import math

import numpy as np

__all__ = [
    "tuneThresholdfromScore",
    "ComputeErrorRates",
    "ComputeMinDcf",
    "compute_eer",
    "compute_min_dcf",
    "error_rates_at",
]


# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------

def _validate(scores, labels):
    """Return ``(scores, labels)`` as float64 / bool 1-D arrays, or raise.

    Raises:
        ValueError: on empty input, mismatched lengths, non-finite scores,
            labels outside {0, 1}, or when only one class is present (EER and
            DCF are undefined without both targets and non-targets).
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.ndim != 1:
        raise ValueError(
            "scores and labels must be 1-D, got shapes %s and %s"
            % (scores.shape, labels.shape))
    if scores.size == 0:
        raise ValueError("scores and labels are empty; need at least one "
                         "target and one non-target trial")
    if scores.shape != labels.shape:
        raise ValueError("scores and labels differ in length: %d vs %d"
                         % (scores.size, labels.size))
    if scores.dtype.kind not in "biuf":
        raise ValueError("scores must be real numbers, got dtype %s"
                         % scores.dtype)
    scores = scores.astype(np.float64, copy=False)
    finite = np.isfinite(scores)
    if not finite.all():
        n_nan = int(np.isnan(scores).sum())
        n_inf = scores.size - int(finite.sum()) - n_nan
        raise ValueError("scores must be finite; found %d NaN and %d infinite "
                         "value(s)" % (n_nan, n_inf))

    if labels.dtype.kind not in "biuf":
        raise ValueError("labels must be numeric 0/1, got dtype %s"
                         % labels.dtype)
    is_target = labels == 1
    bad = ~(is_target | (labels == 0))
    if bad.any():
        examples = np.unique(labels[bad])[:5].tolist()
        raise ValueError("labels must be 0 (non-target) or 1 (target); "
                         "found %d other value(s), e.g. %s"
                         % (int(bad.sum()), examples))
    n_tar = int(is_target.sum())
    if n_tar == 0 or n_tar == is_target.size:
        raise ValueError(
            "need both target (1) and non-target (0) trials, got %d target "
            "and %d non-target" % (n_tar, is_target.size - n_tar))
    return scores, is_target


def _validate_costs(p_target, c_miss, c_fa):
    """Raise ValueError unless the DCF parameters define a valid cost."""
    if not 0.0 < p_target < 1.0:
        raise ValueError("p_target must be in (0, 1), got %r" % (p_target,))
    if not (c_miss > 0 and c_fa > 0):
        raise ValueError("c_miss and c_fa must be positive, got %r and %r"
                         % (c_miss, c_fa))


# ---------------------------------------------------------------------------
# Core: every distinct operating point, computed with one sort
# ---------------------------------------------------------------------------

def _sorted_cumulative(scores, is_target):
    """Sort ascending and count targets / non-targets at or below each score.

    Returns ``(sorted_scores, group_end, cum_tar, cum_non)`` where
    ``group_end`` is a boolean mask marking the last trial of each run of
    equal scores, and ``cum_tar[i]`` / ``cum_non[i]`` count the targets /
    non-targets among the ``i + 1`` lowest scores.
    """
    order = np.argsort(scores)
    sorted_scores = scores[order]
    sorted_tar = is_target[order]
    cum_tar = np.cumsum(sorted_tar, dtype=np.int64)
    # Trial i and its rank are the same thing after sorting, so the number of
    # non-targets seen so far is simply (i + 1) minus the targets seen.
    cum_non = np.arange(1, scores.size + 1, dtype=np.int64) - cum_tar
    group_end = np.empty(scores.size, dtype=bool)
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=group_end[:-1])
    group_end[-1] = True
    return sorted_scores, group_end, cum_tar, cum_non


def _operating_points(scores, is_target):
    """All distinct operating points, thresholds ascending.

    For threshold ``t`` (accept iff ``score >= t``) the candidate thresholds
    are every distinct score plus ``+inf`` (reject all), so the first point
    accepts everything and the last rejects everything.

    Returns:
        ``(thresholds, miss, fa, n_tar, n_non)`` with integer miss /
        false-alarm counts, each array of length ``n_distinct + 1``.
    """
    sorted_scores, group_end, cum_tar, cum_non = _sorted_cumulative(
        scores, is_target)
    n_tar = int(cum_tar[-1])
    n_non = int(cum_non[-1])
    thresholds = np.append(sorted_scores[group_end], np.inf)
    # Misses at threshold u_j are targets strictly below u_j, i.e. the
    # cumulative count at the end of the previous group (0 for the first).
    miss = np.concatenate(([0], cum_tar[group_end]))
    fa = n_non - np.concatenate(([0], cum_non[group_end]))
    return thresholds, miss, fa, n_tar, n_non


def _roc(scores, is_target):
    """ROC in sklearn ``roc_curve(drop_intermediate=False)`` order.

    Thresholds descend from ``+inf``; fpr and tpr rise from 0 to 1.
    """
    thresholds, miss, fa, n_tar, n_non = _operating_points(scores, is_target)
    thresholds = thresholds[::-1]
    fpr = fa[::-1] / n_non
    tpr = (n_tar - miss[::-1]) / n_tar
    return fpr, tpr, thresholds


def _eer_index(fpr, fnr):
    """Index of the point where miss and false-alarm rates are closest."""
    return int(np.argmin(np.abs(fnr - fpr)))


# ---------------------------------------------------------------------------
# Recommended helpers
# ---------------------------------------------------------------------------

def compute_eer(scores, labels):
    """Equal error rate.

    Args:
        scores: 1-D array-like of trial scores (higher = more likely target).
        labels: 1-D array-like of 0 (non-target) / 1 (target).

    Returns:
        ``(eer_percent, threshold)``: ``max(fpr, fnr) * 100`` at the
        operating point where ``|fnr - fpr|`` is smallest, and that point's
        threshold (accept iff ``score >= threshold``). Same value as
        ``tuneThresholdfromScore(...)[1]``.
    """
    _, eer, fpr, fnr, thresholds, idx = _tune(scores, labels, (), None)
    return eer, float(thresholds[idx])


def compute_min_dcf(scores, labels, p_target=0.05, c_miss=1, c_fa=1):
    """Minimum normalised detection cost over all operating points.

    ``C_det = c_miss * P_miss * p_target + c_fa * P_fa * (1 - p_target)``,
    normalised by ``min(c_miss * p_target, c_fa * (1 - p_target))``, the
    cost of the better trivial system (NIST SRE convention). Both trivial
    systems (accept all / reject all) are candidates, so the result is
    never above 1.

    Returns:
        ``(min_dcf, threshold)`` with the threshold of the lowest-cost point
        (accept iff ``score >= threshold``; ``+inf`` = reject all). On equal
        cost the lowest threshold wins.
    """
    _validate_costs(p_target, c_miss, c_fa)
    scores, is_target = _validate(scores, labels)
    thresholds, miss, fa, n_tar, n_non = _operating_points(scores, is_target)
    c_det = (c_miss * p_target / n_tar) * miss \
        + (c_fa * (1 - p_target) / n_non) * fa
    idx = int(np.argmin(c_det))
    c_def = min(c_miss * p_target, c_fa * (1 - p_target))
    return float(c_det[idx] / c_def), float(thresholds[idx])


def error_rates_at(scores, labels, threshold):
    """False-acceptance and false-rejection rates at a fixed threshold.

    A trial is accepted iff ``score >= threshold``, the same convention as
    the thresholds returned by ``compute_eer`` and ``compute_min_dcf``, so
    feeding those back reproduces their operating points exactly.

    Returns:
        ``(far, frr)`` as fractions in [0, 1]: non-targets accepted /
        all non-targets, targets rejected / all targets.
    """
    scores, is_target = _validate(scores, labels)
    threshold = float(threshold)
    if np.isnan(threshold):
        raise ValueError("threshold must not be NaN")
    accepted = scores >= threshold
    n_tar = int(is_target.sum())
    n_non = is_target.size - n_tar
    false_accepts = int(np.count_nonzero(accepted & ~is_target))
    false_rejects = n_tar - int(np.count_nonzero(accepted & is_target))
    return false_accepts / n_non, false_rejects / n_tar


# ---------------------------------------------------------------------------
# voxceleb_trainer-compatible API
# ---------------------------------------------------------------------------

def _tune(scores, labels, target_fa, target_fr):
    """Shared body of ``tuneThresholdfromScore`` and ``compute_eer``."""
    scores, is_target = _validate(scores, labels)
    fpr, tpr, thresholds = _roc(scores, is_target)
    fnr = 1 - tpr

    def row(idx):
        return [float(thresholds[idx]), float(fpr[idx]), float(fnr[idx])]

    # One argmin per requested target (a handful), each vectorised over
    # all thresholds; argmin keeps the first (highest-threshold) tie.
    # ``is None`` rather than truthiness so numpy arrays of targets work.
    target_fr = () if target_fr is None else target_fr
    target_fa = () if target_fa is None else target_fa
    tuned = [row(int(np.argmin(np.abs(tfr - fnr)))) for tfr in target_fr]
    tuned += [row(int(np.argmin(np.abs(tfa - fpr)))) for tfa in target_fa]
    idx_e = _eer_index(fpr, fnr)
    tuned.append(row(idx_e))
    eer = max(fpr[idx_e], fnr[idx_e]) * 100
    return tuned, float(eer), fpr, fnr, thresholds, idx_e


def tuneThresholdfromScore(scores, labels, target_fa, target_fr=None):
    """Operating points for target error rates, plus the EER.

    Args:
        scores: 1-D array-like of trial scores.
        labels: 1-D array-like of 0 / 1 labels.
        target_fa: iterable of target false-alarm rates (fractions, compared
            directly with fpr).
        target_fr: optional iterable of target false-rejection rates.

    Returns:
        ``(tunedThreshold, eer, fpr, fnr)``:

        * ``tunedThreshold``: list of ``[threshold, fpr, fnr]`` rows, first
          one per ``target_fr`` value (point whose fnr is closest), then one
          per ``target_fa`` value (fpr closest), then the EER point.
        * ``eer``: equal error rate in percent.
        * ``fpr``, ``fnr``: numpy arrays over every distinct threshold in
          descending order, starting with ``+inf`` (reject all), like
          ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.
          The original used sklearn's default ``drop_intermediate=True``,
          which can move the EER by a few score steps on small trial lists;
          the full curve used here is the more exact one.
    """
    tuned, eer, fpr, fnr, _, _ = _tune(scores, labels, target_fa, target_fr)
    return tuned, eer, fpr, fnr


def ComputeErrorRates(scores, labels):
    """Per-trial miss and false-alarm rates, as in voxceleb_trainer.

    Convention (identical to the original when scores have no ties): sort
    the scores ascending; ``thresholds[i]`` is the i-th lowest score and the
    decision rule is *accept iff score > thresholds[i]*. Hence

    * ``fnrs[i]`` = targets with score <= thresholds[i] / number of targets,
    * ``fprs[i]`` = non-targets with score > thresholds[i] / number of
      non-targets,

    so ``fnrs`` rises and ``fprs`` falls, ending at (1, 0) = reject all.
    All three arrays have length ``len(scores)``. Tied trials all get the
    rates at the end of their tie group (the only reachable operating
    point); the original gave each tied trial a different, unreachable one.

    Returns:
        ``(fnrs, fprs, thresholds)`` as numpy float64 arrays.
    """
    scores, is_target = _validate(scores, labels)
    sorted_scores, group_end, cum_tar, cum_non = _sorted_cumulative(
        scores, is_target)
    n_tar = cum_tar[-1]
    n_non = cum_non[-1]
    # Map each trial to the last index of its tie group: group ids count the
    # group ends strictly before a trial.
    ends = np.flatnonzero(group_end)
    group_id = np.concatenate(([0], np.cumsum(group_end[:-1])))
    last = ends[group_id]
    fnrs = cum_tar[last] / n_tar
    fprs = 1 - cum_non[last] / n_non
    return fnrs, fprs, sorted_scores


def ComputeMinDcf(fnrs, fprs, thresholds, p_target, c_miss, c_fa):
    """Minimum normalised DCF over given operating points (NIST definition).

    Works on any aligned ``fnrs`` / ``fprs`` / ``thresholds`` sequences,
    typically those of ``ComputeErrorRates`` (whose thresholds mean
    *accept iff score > threshold*). The cost is normalised by
    ``c_def = min(c_miss * p_target, c_fa * (1 - p_target))``.

    Returns:
        ``(min_dcf, min_c_det_threshold)``; on equal cost the first point
        wins, as in the original loop.
    """
    _validate_costs(p_target, c_miss, c_fa)
    fnrs = np.asarray(fnrs, dtype=np.float64)
    fprs = np.asarray(fprs, dtype=np.float64)
    thresholds = np.asarray(thresholds)
    if not fnrs.size:
        raise ValueError("fnrs is empty")
    if not fnrs.shape == fprs.shape == thresholds.shape or fnrs.ndim != 1:
        raise ValueError("fnrs, fprs and thresholds must be 1-D and of equal "
                         "length, got shapes %s, %s, %s"
                         % (fnrs.shape, fprs.shape, thresholds.shape))
    c_det = c_miss * fnrs * p_target + c_fa * fprs * (1 - p_target)
    if np.isnan(c_det).any():
        raise ValueError("fnrs / fprs contain NaN")
    idx = int(np.argmin(c_det))
    c_def = min(c_miss * p_target, c_fa * (1 - p_target))
    return float(c_det[idx] / c_def), thresholds[idx].item()


# ---------------------------------------------------------------------------
# Every figure of an evaluation from one sort (evaluation.py and plots.py call these)
# ---------------------------------------------------------------------------

def _key(value):
    return f"{value:g}"


def compute_metrics(scores, labels, p_targets=(0.05, 0.01), c_miss=1.0, c_fa=1.0,
                    far_targets=(0.01,), frr_targets=(0.01,)):
    """EER, minDCF per prior and error rates at target operating points -> dict.

    Trials labelled -1 are left out. Keys: trials, targets, nontargets, unlabelled (counts);
    eer (%), eer_threshold; min_dcf {p: {value, threshold}}; frr_at_far {far target:
    {frr, far, threshold}} is the lowest FRR whose FAR does not exceed the target (far is
    the rate actually reached); far_at_frr likewise. Rates in %, targets keyed as '%g'.
    Values are None when the labelled trials lack targets or non-targets.

    EER and minDCF are exactly tuneThreshold.compute_eer / compute_min_dcf (same operating
    points, same tie rules), but every figure comes from one sort of the scores: a
    million trials with two priors take about as long as compute_eer plus one minDCF.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape} and "
                         f"{labels.shape}")
    labelled = labels >= 0
    if not labelled.all():
        scores, labels = scores[labelled], labels[labelled]
    is_target = labels == 1
    n_tar = int(np.count_nonzero(is_target))
    n_non = len(labels) - n_tar
    result = {"trials": len(labels), "targets": n_tar, "nontargets": n_non,
              "unlabelled": int(np.count_nonzero(~labelled)), "eer": None, "eer_threshold": None,
              "min_dcf": {_key(p): {"value": None, "threshold": None} for p in p_targets},
              "frr_at_far": {_key(t): {"frr": None, "far": None, "threshold": None} for t in far_targets},
              "far_at_frr": {_key(t): {"far": None, "frr": None, "threshold": None} for t in frr_targets}}
    if n_tar == 0 or n_non == 0:
        return result
    if not np.isfinite(scores).all():
        raise ValueError(f"{int(np.count_nonzero(~np.isfinite(scores)))} scores are NaN or "
                         f"infinite; the embeddings have diverged")
    # Ascending thresholds (each distinct score, then +inf), with miss and false-alarm counts.
    thresholds, miss, fa, _, _ = _operating_points(scores, is_target)
    frr, far = miss / n_tar, fa / n_non
    # EER: closest FRR and FAR; of equal gaps the highest threshold. FRR is written as
    # compute_eer writes it (1 - TPR) so that both round alike and pick the same point.
    fnr = 1 - (n_tar - miss) / n_tar
    gap = np.abs(fnr - far)
    i = len(gap) - 1 - int(np.argmin(gap[::-1]))
    result["eer"], result["eer_threshold"] = float(max(fnr[i], far[i]) * 100), float(thresholds[i])
    for p in p_targets:
        # Normalised by the cost of the better trivial system; of equal costs the lowest
        # threshold (as compute_min_dcf).
        cost = (c_miss * p / n_tar) * miss + (c_fa * (1 - p) / n_non) * fa
        i = int(np.argmin(cost))
        result["min_dcf"][_key(p)] = {"value": float(cost[i] / min(c_miss * p, c_fa * (1 - p))),
                                      "threshold": float(thresholds[i])}
    for t in far_targets:
        # FAR falls as the threshold rises: the first point within the target is the lowest
        # threshold, hence the lowest FRR. The last point (+inf) has FAR 0, so one exists.
        i = int(np.argmax(fa <= _allowed(t, n_non)))
        result["frr_at_far"][_key(t)] = {"frr": 100 * float(frr[i]), "far": 100 * float(far[i]),
                                         "threshold": float(thresholds[i])}
    for t in frr_targets:
        # FRR rises with the threshold: the last point within the target has the lowest FAR.
        i = int(np.searchsorted(miss, _allowed(t, n_tar), side="right")) - 1
        result["far_at_frr"][_key(t)] = {"far": 100 * float(far[i]), "frr": 100 * float(frr[i]),
                                         "threshold": float(thresholds[i])}
    return result


def _allowed(rate, count):
    """Errors allowed by a target rate; the tolerance keeps 0.29 * 100 =
    28.999999999999996 from allowing only 28."""
    return int(math.floor(rate * count + 1e-9))


def det_curve(scores, labels):
    """(far, frr, eer) as fractions over every threshold, from accept-all to reject-all, with the
    EER exactly as compute_eer gives it (unlabelled trials, -1, are left out)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    labelled = labels >= 0
    is_target = labels[labelled] == 1
    _, miss, fa, n_tar, n_non = _operating_points(scores[labelled], is_target)
    far, frr = fa / n_non, miss / n_tar
    eer = compute_metrics(scores, labels, p_targets=(), far_targets=(), frr_targets=())["eer"] / 100
    return far, frr, eer
