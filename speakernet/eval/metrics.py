"""Verification metrics: EER, minimum DCF, DET curves and operating-point look-ups.

This is the one place the project computes them. ``tuneThresholdfromScore``,
``ComputeErrorRates`` and ``ComputeMinDcf`` keep the arguments and return structure of
voxceleb_trainer's ``tuneThreshold.py`` (which re-exports them under that file name) so
existing scripts keep working. ``compute_eer``,
``compute_min_dcf`` and ``error_rates_at`` are the entry points for new code;
``compute_metrics`` gives every figure of an evaluation at once, ``det_curve`` a DET plot's.

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
    "bootstrap_intervals", "bootstrap_replicates", "paired_bootstrap", "Intervals", "PairedComparison",
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


# ---------------------------------------------------------------------------- confidence intervals

@dataclass(frozen=True)
class Intervals:
    """Percentile bootstrap intervals of EER (%) and minDCF per prior (keyed as in Metrics)."""
    level: float
    replicates: int
    eer: tuple
    min_dcf: dict

    def as_dict(self):
        return {"level": self.level, "replicates": self.replicates, "method": BOOTSTRAP_METHOD,
                "eer": list(self.eer), "min_dcf": {p: list(v) for p, v in self.min_dcf.items()}}


BOOTSTRAP_METHOD = "two-way file bootstrap (Poisson weights per file, trial weight = product)"


def bootstrap_intervals(scores, labels, enroll, test, p_targets=(0.05, 0.01), c_miss=1.0, c_fa=1.0,
                        replicates=300, level=0.95, seed=0):
    """Confidence intervals of EER and minDCF that respect the trials' dependence -> Intervals.

    Trials are not independent: every file takes part in many of them, so resampling trials
    alone understates the spread. Each replicate draws a Poisson(1) weight per file (the
    Poisson form of resampling files with replacement) and weights each trial by the product
    of its two files' weights: the pairs the resampled files form, the multiway bootstrap of
    crossed data (Owen & Eckles 2012, "Bootstrapping data arrays of arbitrary order"; for
    biometric pairs, Bolle, Ratha & Pankanti 2004, "Error analysis of pattern recognition
    systems -- the subsets bootstrap"). It is conservative: where each file is in one trial
    only, the interval is up to sqrt(3) times the trial bootstrap's.

    `enroll` and `test` name each trial's two files (strings, or integer ids). Trials labelled
    -1 are left out. The scores are sorted once; a replicate gathers its trial weights, sums
    them per block of the sorted trials, and finds EER and minDCF from the block sums,
    recounting exactly only the blocks that can hold the optimum (_WeightedPoints).
    """
    (figures,) = bootstrap_replicates([scores], labels, enroll, test, p_targets, c_miss, c_fa,
                                     replicates, level, seed)
    return Intervals(level=level, replicates=len(figures["eer"]), eer=_bounds(figures["eer"], level),
                     min_dcf={p: _bounds(v, level) for p, v in figures.items() if p != "eer"})


@dataclass(frozen=True)
class PairedComparison:
    """System B against system A on the same trials: the observed differences B - A (EER in
    points of %, minDCF), their bootstrap intervals, and two-sided bootstrap p-values."""
    level: float
    replicates: int
    difference: dict            # 'eer' or '%g' prior -> B - A on the whole list
    interval: dict              # same keys -> (low, high) of B - A
    p_value: dict               # same keys -> twice the smaller share of replicates on one side of 0

    def as_dict(self):
        return {"level": self.level, "replicates": self.replicates, "method": BOOTSTRAP_METHOD,
                "difference": dict(self.difference), "p_value": dict(self.p_value),
                "interval": {k: list(v) for k, v in self.interval.items()}}


def paired_bootstrap(scores_a, scores_b, labels, enroll, test, p_targets=(0.05, 0.01), c_miss=1.0,
                     c_fa=1.0, replicates=1000, level=0.95, seed=0):
    """Compare two systems scored on the same trial list -> PairedComparison.

    Both systems see the same resampled files in every replicate (bootstrap_intervals' scheme),
    so what the trials share cancels from the difference: the interval of B - A is far
    narrower than the two intervals side by side suggest. The p-value is the share of
    replicates on the far side of 0, doubled (the percentile bootstrap test)."""
    scores_a, scores_b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if scores_a.shape != scores_b.shape:
        raise ValueError(f"both systems must score the same trials, got {scores_a.shape} and {scores_b.shape}")
    first, second = bootstrap_replicates([scores_a, scores_b], labels, enroll, test, p_targets, c_miss,
                                        c_fa, replicates, level, seed)
    whole = [compute_metrics(s, labels, p_targets, c_miss, c_fa) for s in (scores_a, scores_b)]
    observed = {"eer": whole[1].eer - whole[0].eer}
    observed.update({p: whole[1].min_dcf[p].value - whole[0].min_dcf[p].value for p in whole[0].min_dcf})
    differences = {key: np.asarray(second[key]) - np.asarray(first[key]) for key in first}
    return PairedComparison(
        level=level, replicates=len(first["eer"]), difference=observed,
        interval={key: _bounds(d, level) for key, d in differences.items()},
        p_value={key: float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))
                 for key, d in differences.items()})


def _bounds(values, level):
    return tuple(float(v) for v in np.percentile(values, [50 * (1 - level), 50 * (1 + level)]))


def bootstrap_replicates(systems, labels, enroll, test, p_targets, c_miss, c_fa, replicates, level, seed):
    """[{'eer': [...], '%g' prior: [...]} per system]: the figures of each bootstrap replicate
    (bootstrap_intervals' scheme), every system weighted by the same file weights in a
    replicate, so that figures of systems on the same trials can be compared or averaged
    replicate by replicate (replicates losing a class are dropped)."""
    _validate_costs(p_targets[0] if p_targets else 0.5, c_miss, c_fa)
    if not 0 < level < 1 or replicates < 10:
        raise ValueError(f"level must lie in (0, 1) and replicates be at least 10, got {level}, {replicates}")
    labels = np.asarray(labels)
    keep = labels >= 0
    file_a, file_b = _file_indices(np.asarray(enroll)[keep], np.asarray(test)[keep])
    points = []
    for scores in systems:
        scores, is_target = _validate(np.asarray(scores, dtype=np.float64)[keep], labels[keep])
        system = _WeightedPoints(scores, is_target)
        points.append((system, file_a[system.order], file_b[system.order]))
    n_files = max(int(file_a.max()), int(file_b.max())) + 1
    rng = np.random.default_rng(seed)
    figures = [{"eer": [], **{_key(p): [] for p in p_targets}} for _ in systems]
    for _ in range(replicates):
        # Poisson(1) counts stay far below 256, so products fit 16 bits (half the memory
        # traffic of float32 in the gathers, which dominate).
        weights = np.minimum(rng.poisson(1.0, size=n_files), 255).astype(np.uint16)
        usable = [system.reweight(np.take(weights, a) * np.take(weights, b)) for system, a, b in points]
        if not all(usable):
            continue                          # the replicate lost every target or non-target
        for (system, _, _), found in zip(points, figures):
            found["eer"].append(system.eer())
            for p in p_targets:
                found[_key(p)].append(system.min_dcf(p, c_miss, c_fa))
    return figures


class _WeightedPoints:
    """Operating points of sorted trials under integer trial weights, from block sums.

    Misses grow and false alarms fall along the sorted trials, so a block's sums bound every
    point inside it: the EER crossing is found between block boundaries and minDCF's optimum
    can only lie in blocks whose lower bound beats the best cost seen. Only those blocks are
    recounted trial by trial, at the ends of runs of tied scores (the operating points).
    """
    BLOCK = 1024

    def __init__(self, scores, is_target):
        self.order, self.group_end = _stable_order(scores)
        self.target = is_target[self.order].astype(np.uint16)
        self.starts = np.arange(0, len(scores), self.BLOCK)

    def reweight(self, trial_weights):
        """Take a replicate's weights (sorted order); False when a class has no weight."""
        self.weights, self.weighted_target = trial_weights, trial_weights * self.target
        self.cum_all = self._prefix(self._block_sums(trial_weights))
        self.cum_tar = self._prefix(self._block_sums(self.weighted_target))
        self.n_tar = self.cum_tar[-1]
        self.n_non = self.cum_all[-1] - self.n_tar
        return self.n_tar > 0 and self.n_non > 0

    def _block_sums(self, weights):
        """Sum of each block; 16-bit weights of whole blocks are summed as a matrix's rows in
        32 bits (exact while BLOCK * 65535 < 2**32), about twice as fast as reduceat."""
        if weights.dtype.kind != "u" or weights.dtype.itemsize > 2 or self.BLOCK >= 2 ** 16:
            return np.add.reduceat(weights, self.starts, dtype=np.int64)
        whole = len(weights) // self.BLOCK * self.BLOCK
        sums = np.empty(len(self.starts), dtype=np.int64)
        sums[:whole // self.BLOCK] = weights[:whole].reshape(-1, self.BLOCK).sum(axis=1, dtype=np.uint32)
        if whole < len(weights):
            sums[-1] = weights[whole:].sum(dtype=np.int64)
        return sums

    @staticmethod
    def _prefix(block_sums):
        """Weight before each block boundary (0 before the first), as floats."""
        return np.concatenate(([0.0], np.cumsum(block_sums, dtype=np.float64)))

    def _block_points(self, first, last):
        """(miss, fa) at every operating point after a trial of blocks first..last-1; the
        accept-all point is added when the span starts at the first trial."""
        lo, hi = int(self.starts[first]), min(int(self.starts[last]) if last < len(self.starts) else len(self.weights), len(self.weights))
        ends = self.group_end[lo:hi]
        tar = self.cum_tar[first] + np.cumsum(self.weighted_target[lo:hi], dtype=np.float64)[ends]
        all_ = self.cum_all[first] + np.cumsum(self.weights[lo:hi], dtype=np.float64)[ends]
        non = all_ - tar
        if first == 0:
            tar, non = np.concatenate(([0.0], tar)), np.concatenate(([0.0], non))
        return tar, self.n_non - non

    def eer(self):
        gap_at_boundaries = self.cum_tar / self.n_tar - (self.n_non - (self.cum_all - self.cum_tar)) / self.n_non
        crossing = int(np.searchsorted(gap_at_boundaries, 0.0))
        blocks = len(self.starts)
        first, last = max(crossing - 2, 0), min(crossing + 1, blocks)
        miss, fa = self._block_points(first, last)
        fnr, fpr = _eer_rates(miss, fa, self.n_tar, self.n_non)
        i, eer = _eer_point(fnr, fpr)
        at_edge = (i == 0 and first > 0) or (i == len(fnr) - 1 and last < blocks)
        if at_edge or len(fnr) == 0:          # a long run of tied scores: count every block
            miss, fa = self._block_points(0, blocks)
            _, eer = _eer_point(*_eer_rates(miss, fa, self.n_tar, self.n_non))
        return eer

    def min_dcf(self, p_target, c_miss, c_fa):
        alpha, beta = c_miss * p_target / self.n_tar, c_fa * (1 - p_target) / self.n_non
        fa_at = self.n_non - (self.cum_all - self.cum_tar)
        lower = alpha * self.cum_tar[:-1] + beta * fa_at[1:]        # per block
        best = min(beta * self.n_non, alpha * self.n_tar)             # accept all, reject all
        candidates = np.flatnonzero(lower < best)
        for block in candidates[np.argsort(lower[candidates], kind="stable")]:
            if lower[block] >= best:
                break
            miss, fa = self._block_points(int(block), int(block) + 1)
            if len(miss):
                best = min(best, float(np.min(alpha * miss + beta * fa)))
        return best / _cost_floor(p_target, c_miss, c_fa)


def _stable_order(scores):
    """(np.argsort(scores, kind="stable"), group_end of the sorted scores). Without tied scores
    the sorting permutation is unique, so the faster default sort gives the stable order."""
    order = np.argsort(scores)
    sorted_scores = scores[order]
    group_end = np.empty(len(scores), dtype=bool)
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=group_end[:-1])
    group_end[-1:] = True
    if not group_end.all():
        order = np.argsort(scores, kind="stable")
    return order, group_end


def _file_indices(enroll, test):
    """Both columns of file names as indices into their union (integer ids are kept)."""
    if enroll.dtype.kind in "iu" and test.dtype.kind in "iu":
        return enroll.astype(np.int64), test.astype(np.int64)
    _, inverse = np.unique(np.concatenate([enroll.astype(str), test.astype(str)]), return_inverse=True)
    return inverse[:len(enroll)], inverse[len(enroll):]
