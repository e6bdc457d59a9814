"""Confidence intervals and paired tests of EER and minDCF: a two-way bootstrap over the files
of a trial list (every file takes part in many trials, so trials are not resampled one by one),
computed with the one-sort machinery of metrics.py on weighted trials."""
from dataclasses import dataclass

import numpy as np

from speakernet.eval.metrics import (_cost_floor, _eer_point, _eer_rates, _key, _validate, _validate_costs, compute_metrics)

__all__ = ["bootstrap_intervals", "bootstrap_replicates", "paired_bootstrap", "Intervals", "PairedComparison"]


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
