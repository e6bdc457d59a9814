"""Verification metrics: EER, minimum DCF, DET curves and operating-point look-ups.

This is the one place the project computes them. ``tuneThresholdfromScore``,
``ComputeErrorRates`` and ``ComputeMinDcf`` keep the arguments and return structure of
voxceleb_trainer's ``tuneThreshold.py`` (which re-exports them under that file name) so
existing scripts keep working. ``compute_eer``,
``compute_min_dcf`` and ``error_rates_at`` are the entry points for new code;
``compute_metrics`` gives every figure of an evaluation at once, ``det_curve`` a DET plot's;
intervals.py their bootstrap intervals and paired tests.

Everything is vectorised with numpy: one sort of the scores (each class apart, then merged),
then cumulative sums. Tied scores share a single operating point (a threshold cannot separate
two equal scores).

Threshold convention (all but the legacy ``ComputeErrorRates`` / ``ComputeMinDcf`` pair): a
trial is *accepted* when ``score >= threshold``; ``+inf`` means "reject everything".
"""

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = [
    "tuneThresholdfromScore", "ComputeErrorRates", "ComputeMinDcf",
    "compute_eer", "compute_min_dcf", "error_rates_at", "detection_cost",
    "compute_metrics", "det_curve", "Metrics", "MinDcf", "OperatingPoint",
]


# ---------------------------------------------------------------------------- input validation

def _validate(scores, labels):
    """``(scores, is_target)`` as float64 / bool 1-D arrays. ValueError on empty input,
    mismatched lengths, non-finite scores, labels outside {0, 1}, or only one class present
    (EER and DCF are undefined without both targets and non-targets)."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.ndim != 1:
        raise ValueError("scores and labels must be 1-D, got shapes %s and %s"
                         % (scores.shape, labels.shape))
    if scores.size == 0:
        raise ValueError("scores and labels are empty; need at least one target and one "
                         "non-target trial")
    if scores.shape != labels.shape:
        raise ValueError("scores and labels differ in length: %d vs %d" % (scores.size, labels.size))
    if scores.dtype.kind not in "biuf":
        raise ValueError("scores must be real numbers, got dtype %s" % scores.dtype)
    scores = scores.astype(np.float64, copy=False)
    finite = np.isfinite(scores)
    if not finite.all():
        n_nan = int(np.isnan(scores).sum())
        n_inf = scores.size - int(finite.sum()) - n_nan
        raise ValueError("scores must be finite; found %d NaN and %d infinite value(s)"
                         % (n_nan, n_inf))
    if labels.dtype.kind not in "biuf":
        raise ValueError("labels must be numeric 0/1, got dtype %s" % labels.dtype)
    is_target = labels == 1
    bad = ~(is_target | (labels == 0))
    if bad.any():
        examples = np.unique(labels[bad])[:5].tolist()
        raise ValueError("labels must be 0 (non-target) or 1 (target); found %d other "
                         "value(s), e.g. %s" % (int(bad.sum()), examples))
    n_tar = int(is_target.sum())
    if n_tar == 0 or n_tar == is_target.size:
        raise ValueError("need both target (1) and non-target (0) trials, got %d target and %d "
                         "non-target" % (n_tar, is_target.size - n_tar))
    return scores, is_target


def _validate_costs(p_target, c_miss, c_fa):
    """Raise ValueError unless the DCF parameters define a valid cost."""
    if not 0.0 < p_target < 1.0:
        raise ValueError("p_target must be in (0, 1), got %r" % (p_target,))
    if not (c_miss > 0 and c_fa > 0):
        raise ValueError("c_miss and c_fa must be positive, got %r and %r" % (c_miss, c_fa))


# ---------------------------------------------------------------------------- the core: one sort

def _sorted_cumulative(scores, is_target):
    """Sort ascending -> ``(sorted_scores, group_end, cum_tar, cum_non)``: ``group_end`` marks
    the last trial of each run of equal scores, ``cum_tar[i]`` / ``cum_non[i]`` count the
    targets / non-targets among the ``i + 1`` lowest scores."""
    # Each class sorted apart, then the two sorted runs merged by a stable sort (timsort merges
    # runs in one pass): a third faster than one argsort of every score. Only the order within
    # runs of tied scores differs, and every figure is read at the ends of those runs.
    targets = np.sort(scores[is_target])
    both = np.concatenate((targets, np.sort(scores[~is_target])))
    order = np.argsort(both, kind="stable")
    sorted_scores = both[order]
    sorted_tar = order < len(targets)
    cum_tar = np.cumsum(sorted_tar, dtype=np.int64)
    # Trial i and its rank are the same thing after sorting, so the number of
    # non-targets seen so far is simply (i + 1) minus the targets seen.
    cum_non = np.arange(1, scores.size + 1, dtype=np.int64) - cum_tar
    group_end = np.empty(scores.size, dtype=bool)
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=group_end[:-1])
    group_end[-1] = True
    return sorted_scores, group_end, cum_tar, cum_non


def _operating_points(scores, is_target):
    """All distinct operating points, thresholds ascending -> ``(thresholds, miss, fa, n_tar,
    n_non)`` with integer miss / false-alarm counts, arrays of length ``n_distinct + 1``: the
    thresholds are every distinct score (accept iff ``score >= t``) plus ``+inf``, so the
    first point accepts everything and the last rejects everything."""
    sorted_scores, group_end, cum_tar, cum_non = _sorted_cumulative(scores, is_target)
    n_tar = int(cum_tar[-1])
    n_non = int(cum_non[-1])
    thresholds = np.append(sorted_scores[group_end], np.inf)
    # Misses at threshold u_j are targets strictly below u_j, i.e. the
    # cumulative count at the end of the previous group (0 for the first).
    miss = np.concatenate(([0], cum_tar[group_end]))
    fa = n_non - np.concatenate(([0], cum_non[group_end]))
    return thresholds, miss, fa, n_tar, n_non


def _eer_rates(miss, fa, n_tar, n_non):
    """(fnr, fpr) fractions at each operating point; fnr is written as
    1 - TPR, as sklearn's ROC gives it, so that every caller rounds alike."""
    return 1 - (n_tar - miss) / n_tar, fa / n_non


def _eer_point(fnr, fpr):
    """``(index, eer_percent)`` of the point where fnr and fpr are closest;
    of equal gaps the highest threshold (points ascend)."""
    gap = np.abs(fnr - fpr)
    i = len(gap) - 1 - int(np.argmin(gap[::-1]))
    return i, float(max(fnr[i], fpr[i]) * 100)


def _cost_floor(p_target, c_miss, c_fa):
    """The cost of the better trivial system, which DCFs are divided by."""
    return min(c_miss * p_target, c_fa * (1 - p_target))


def _min_dcf_point(miss, fa, n_tar, n_non, p_target, c_miss, c_fa):
    """``(index, normalised min DCF)`` over the operating points; of equal
    costs the lowest threshold."""
    c_det = (c_miss * p_target / n_tar) * miss + (c_fa * (1 - p_target) / n_non) * fa
    idx = int(np.argmin(c_det))
    return idx, float(c_det[idx] / _cost_floor(p_target, c_miss, c_fa))


def detection_cost(p_miss, p_fa, p_target, c_miss=1.0, c_fa=1.0):
    """Normalised DCF of one operating point (the actual DCF of decisions):
    ``(c_miss p_miss p_target + c_fa p_fa (1 - p_target)) / c_def``."""
    cost = c_miss * p_target * p_miss + c_fa * (1 - p_target) * p_fa
    return float(cost / _cost_floor(p_target, c_miss, c_fa))


# ---------------------------------------------------------------------------- recommended helpers

class MinDcf(NamedTuple):
    """A minimum normalised DCF and the threshold reaching it."""
    value: float
    threshold: float


def compute_eer(scores, labels):
    """Equal error rate of 1-D scores (higher = more likely target) and 0/1 labels ->
    ``(eer_percent, threshold)``: ``max(fpr, fnr) * 100`` at the operating point where
    ``|fnr - fpr|`` is smallest, and its threshold (accept iff ``score >= threshold``). Same
    value as ``tuneThresholdfromScore(...)[1]``."""
    scores, is_target = _validate(scores, labels)
    thresholds, miss, fa, n_tar, n_non = _operating_points(scores, is_target)
    i, eer = _eer_point(*_eer_rates(miss, fa, n_tar, n_non))
    return eer, float(thresholds[i])


def compute_min_dcf(scores, labels, p_target=0.05, c_miss=1, c_fa=1):
    """Minimum normalised detection cost over all operating points -> ``MinDcf(value,
    threshold)``, a ``(min_dcf, threshold)`` tuple.

    ``C_det = c_miss * P_miss * p_target + c_fa * P_fa * (1 - p_target)``, normalised by
    ``min(c_miss * p_target, c_fa * (1 - p_target))``, the cost of the better trivial system
    (NIST SRE convention). Both trivial systems are candidates, so the result is never above
    1. The threshold is the lowest-cost point's (accept iff ``score >= threshold``; ``+inf``
    = reject all); on equal cost the lowest threshold wins.
    """
    _validate_costs(p_target, c_miss, c_fa)
    scores, is_target = _validate(scores, labels)
    thresholds, miss, fa, n_tar, n_non = _operating_points(scores, is_target)
    idx, value = _min_dcf_point(miss, fa, n_tar, n_non, p_target, c_miss, c_fa)
    return MinDcf(value, float(thresholds[idx]))


def error_rates_at(scores, labels, threshold):
    """``(far, frr)`` fractions at a fixed threshold: non-targets accepted / all non-targets,
    targets rejected / all targets. Accept iff ``score >= threshold``, as the thresholds of
    ``compute_eer`` and ``compute_min_dcf``, so those reproduce their operating points."""
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


# ---------------------------------------------------------------------------- voxceleb_trainer's API

def tuneThresholdfromScore(scores, labels, target_fa, target_fr=None):
    """Operating points for target error rates, plus the EER.

    target_fa: target false-alarm rates (fractions, compared with fpr); target_fr: optional
    target false-rejection rates. Returns ``(tunedThreshold, eer, fpr, fnr)``:

    * ``tunedThreshold``: ``[threshold, fpr, fnr]`` rows, one per ``target_fr`` value (the
      point whose fnr is closest), then one per ``target_fa`` value, then the EER point.
    * ``eer``: equal error rate in percent.
    * ``fpr``, ``fnr``: numpy arrays over every distinct threshold in descending order from
      ``+inf`` (reject all), like ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.
      The original used sklearn's default ``drop_intermediate=True``, which can move the EER
      by a few score steps on small trial lists; the full curve is the more exact one.
    """
    scores, is_target = _validate(scores, labels)
    thresholds, miss, fa, n_tar, n_non = _operating_points(scores, is_target)
    fnr, fpr = _eer_rates(miss, fa, n_tar, n_non)
    i_eer, eer = _eer_point(fnr, fpr)
    # sklearn's ROC order: thresholds descending from +inf.
    thresholds, fpr, fnr = thresholds[::-1], fpr[::-1].copy(), fnr[::-1].copy()

    def row(idx):
        return [float(thresholds[idx]), float(fpr[idx]), float(fnr[idx])]

    # One argmin per requested target (a handful), each vectorised over
    # all thresholds; argmin keeps the first (highest-threshold) tie.
    # ``is None`` rather than truthiness so numpy arrays of targets work.
    target_fr = () if target_fr is None else target_fr
    target_fa = () if target_fa is None else target_fa
    tuned = [row(int(np.argmin(np.abs(tfr - fnr)))) for tfr in target_fr]
    tuned += [row(int(np.argmin(np.abs(tfa - fpr)))) for tfa in target_fa]
    tuned.append(row(len(fpr) - 1 - i_eer))
    return tuned, eer, fpr, fnr


def ComputeErrorRates(scores, labels):
    """Per-trial miss and false-alarm rates, as in voxceleb_trainer -> ``(fnrs, fprs,
    thresholds)``, float64 arrays of length ``len(scores)``.

    As the original when scores have no ties: ``thresholds[i]`` is the i-th lowest score and
    the rule is *accept iff score > thresholds[i]*, so ``fnrs[i]`` = targets with score <=
    thresholds[i] / targets and ``fprs[i]`` = non-targets above it / non-targets; ``fnrs``
    rises and ``fprs`` falls to (1, 0) = reject all. Tied trials all get the rates at the end
    of their tie group (the only reachable operating point); the original gave each tied
    trial a different, unreachable one.
    """
    scores, is_target = _validate(scores, labels)
    sorted_scores, group_end, cum_tar, cum_non = _sorted_cumulative(scores, is_target)
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
    """Minimum normalised DCF (NIST definition) over aligned ``fnrs`` / ``fprs`` /
    ``thresholds``, typically ``ComputeErrorRates``' -> ``(min_dcf, min_c_det_threshold)``;
    normalised by ``min(c_miss * p_target, c_fa * (1 - p_target))``, and on equal cost the
    first point wins, as in the original loop."""
    _validate_costs(p_target, c_miss, c_fa)
    fnrs = np.asarray(fnrs, dtype=np.float64)
    fprs = np.asarray(fprs, dtype=np.float64)
    thresholds = np.asarray(thresholds)
    if not fnrs.size:
        raise ValueError("fnrs is empty")
    if not fnrs.shape == fprs.shape == thresholds.shape or fnrs.ndim != 1:
        raise ValueError("fnrs, fprs and thresholds must be 1-D and of equal length, got "
                         "shapes %s, %s, %s" % (fnrs.shape, fprs.shape, thresholds.shape))
    # The original's operand order, so its figures are reproduced exactly.
    c_det = c_miss * fnrs * p_target + c_fa * fprs * (1 - p_target)
    if np.isnan(c_det).any():
        raise ValueError("fnrs / fprs contain NaN")
    idx = int(np.argmin(c_det))
    return float(c_det[idx] / _cost_floor(p_target, c_miss, c_fa)), thresholds[idx].item()


# ---------------------------------------------------------------------------- every figure at once

class OperatingPoint(NamedTuple):
    """Error rates in % at a threshold (accept iff score >= threshold)."""
    frr: float
    far: float
    threshold: float


@dataclass(frozen=True)
class Metrics:
    """The figures of one system's scores on one trial list (compute_metrics).

    Counts leave unlabelled trials out; eer is in %; the dicts are keyed by
    the prior or target rate written as '%g'. Figures are None when the
    labelled trials lack targets or non-targets.
    """
    trials: int
    targets: int
    nontargets: int
    unlabelled: int
    eer: float = None
    eer_threshold: float = None
    min_dcf: dict = field(default_factory=dict)        # p_target -> MinDcf
    frr_at_far: dict = field(default_factory=dict)     # FAR target -> OperatingPoint
    far_at_frr: dict = field(default_factory=dict)     # FRR target -> OperatingPoint

    def as_dict(self):
        """The figures as plain dicts, in the layout of results_<tag>.json."""
        return {"trials": self.trials, "targets": self.targets, "nontargets": self.nontargets,
                "unlabelled": self.unlabelled, "eer": self.eer, "eer_threshold": self.eer_threshold,
                "min_dcf": {p: v._asdict() for p, v in self.min_dcf.items()},
                "frr_at_far": {t: v._asdict() for t, v in self.frr_at_far.items()},
                "far_at_frr": {t: {"far": v.far, "frr": v.frr, "threshold": v.threshold}
                               for t, v in self.far_at_frr.items()}}


def _key(value):
    return f"{value:g}"


def _labelled_trials(scores, labels):
    """(scores, is_target, unlabelled count) of the trials labelled 0 or 1."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape} and "
                         f"{labels.shape}")
    labelled = labels >= 0
    if not labelled.all():
        scores, labels = scores[labelled], labels[labelled]
    return scores, labels == 1, int(np.count_nonzero(~labelled))


def compute_metrics(scores, labels, p_targets=(0.05, 0.01), c_miss=1.0, c_fa=1.0,
                    far_targets=(0.01,), frr_targets=(0.01,)):
    """EER, minDCF per prior and error rates at target operating points -> Metrics.

    Trials labelled -1 are left out. frr_at_far[t] is the lowest FRR whose FAR does not
    exceed t (its far is the rate actually reached); far_at_frr likewise. EER and minDCF are
    exactly compute_eer / compute_min_dcf (same points, same tie rules), but every figure
    comes from one sort of the scores: a million trials with two priors take about as long
    as compute_eer plus one minDCF.
    """
    scores, is_target, unlabelled = _labelled_trials(scores, labels)
    n_tar = int(np.count_nonzero(is_target))
    n_non = len(is_target) - n_tar
    counts = {"trials": len(is_target), "targets": n_tar, "nontargets": n_non,
              "unlabelled": unlabelled}
    if n_tar == 0 or n_non == 0:
        none = OperatingPoint(None, None, None)
        return Metrics(**counts, min_dcf={_key(p): MinDcf(None, None) for p in p_targets},
                       frr_at_far={_key(t): none for t in far_targets},
                       far_at_frr={_key(t): none for t in frr_targets})
    if not np.isfinite(scores).all():
        raise ValueError(f"{int(np.count_nonzero(~np.isfinite(scores)))} scores are NaN or "
                         f"infinite; the embeddings have diverged")
    thresholds, miss, fa, _, _ = _operating_points(scores, is_target)
    i_eer, eer = _eer_point(*_eer_rates(miss, fa, n_tar, n_non))
    min_dcf = {}
    for p in p_targets:
        i, value = _min_dcf_point(miss, fa, n_tar, n_non, p, c_miss, c_fa)
        min_dcf[_key(p)] = MinDcf(value, float(thresholds[i]))
    frr, far = miss / n_tar, fa / n_non

    def point(i):
        return OperatingPoint(100 * float(frr[i]), 100 * float(far[i]), float(thresholds[i]))

    # FAR falls as the threshold rises: the first point within the target is the lowest
    # threshold, hence the lowest FRR. The last point (+inf) has FAR 0, so one exists.
    frr_at_far = {_key(t): point(int(np.argmax(fa <= _allowed(t, n_non)))) for t in far_targets}
    # FRR rises with the threshold: the last point within the target has the lowest FAR.
    far_at_frr = {_key(t): point(int(np.searchsorted(miss, _allowed(t, n_tar), side="right")) - 1)
                  for t in frr_targets}
    return Metrics(**counts, eer=eer, eer_threshold=float(thresholds[i_eer]), min_dcf=min_dcf,
                   frr_at_far=frr_at_far, far_at_frr=far_at_frr)


def _allowed(rate, count):
    """Errors allowed by a target rate; the tolerance keeps 0.29 * 100 =
    28.999999999999996 from allowing only 28."""
    return int(math.floor(rate * count + 1e-9))


def det_curve(scores, labels):
    """(far, frr, eer) as fractions over every threshold, from accept-all to reject-all, with the
    EER exactly as compute_eer gives it (unlabelled trials, -1, are left out)."""
    scores, is_target, _ = _labelled_trials(scores, labels)
    _, miss, fa, n_tar, n_non = _operating_points(scores, is_target)
    _, eer = _eer_point(*_eer_rates(miss, fa, n_tar, n_non))
    return fa / n_non, miss / n_tar, eer / 100
