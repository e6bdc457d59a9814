#! /usr/bin/python
# -*- encoding: utf-8 -*-
"""Time EER + minDCF from tuneThreshold.py on random trials.

Usage:
    python benchmarks/bench_metrics.py [--trials 1000000] [--repeats 5]
                                       [--loop-trials 20000]

Prints the best-of-N wall time of the vectorised helpers (compute_eer +
compute_min_dcf), of the legacy API path (tuneThresholdfromScore +
ComputeErrorRates + ComputeMinDcf), of the 95% bootstrap intervals of EER and
two minDCFs (300 replicates, trials drawn over --files files) and of one list's figures as
evaluation.py computes them (compute_metrics + those intervals). For scale it also times a plain
Python loop over trials on a smaller set (--loop-trials 0 skips it).
"""

import argparse
import logging
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tuneThreshold as tt  # noqa: E402

log = logging.getLogger("bench_metrics")


def make_trials(n, seed=0):
    """Half targets, Gaussian scores separated by 1.5 standard deviations."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.5).astype(np.int64)
    scores = rng.normal(size=n) + 1.5 * labels
    return scores, labels


def best_time(func, repeats):
    """Smallest wall time over ``repeats`` calls (least disturbed by load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def vectorised(scores, labels):
    eer, _ = tt.compute_eer(scores, labels)
    min_dcf, _ = tt.compute_min_dcf(scores, labels, 0.05, 1, 1)
    return eer, min_dcf


def legacy_api(scores, labels):
    eer = tt.tuneThresholdfromScore(scores, labels, [1, 0.1])[1]
    fnrs, fprs, thresholds = tt.ComputeErrorRates(scores, labels)
    min_dcf, _ = tt.ComputeMinDcf(fnrs, fprs, thresholds, 0.05, 1, 1)
    return eer, min_dcf


def python_loop(scores, labels):
    """Per-trial Python loop over sorted scores (the pre-numpy style)."""
    pairs = sorted(zip(scores.tolist(), labels.tolist()), reverse=True)
    n_tar = sum(label for _, label in pairs)
    n_non = len(pairs) - n_tar
    hits = false_alarms = 0
    best_gap, eer = float("inf"), None
    min_cost = 0.05  # reject everything: miss rate 1
    for _, label in pairs:
        if label:
            hits += 1
        else:
            false_alarms += 1
        fnr = 1 - hits / n_tar
        fpr = false_alarms / n_non
        if abs(fnr - fpr) < best_gap:
            best_gap, eer = abs(fnr - fpr), max(fnr, fpr) * 100
        min_cost = min(min_cost, 0.05 * fnr + 0.95 * fpr)
    return eer, min_cost / 0.05


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-trials", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=40_000,
                        help="how many files the trials pair up")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    scores, labels = make_trials(args.trials)
    eer, min_dcf = vectorised(scores, labels)
    log.info("trials: %d  EER: %.4f %%  minDCF(0.05): %.4f", args.trials, eer, min_dcf)
    log.info("compute_eer + compute_min_dcf:       %.3f s",
             best_time(lambda: vectorised(scores, labels), args.repeats))
    log.info("legacy API (tune + ErrorRates + DCF): %.3f s",
             best_time(lambda: legacy_api(scores, labels), args.repeats))

    rng = np.random.default_rng(2)
    enroll, test = rng.integers(0, args.files, args.trials), rng.integers(0, args.files, args.trials)
    intervals = tt.bootstrap_intervals(scores, labels, enroll, test)
    log.info("95%% interval: EER %.3f-%.3f %%, minDCF(0.05) %.4f-%.4f (%d replicates)",
             *intervals.eer, *intervals.min_dcf["0.05"], intervals.replicates)
    log.info("bootstrap_intervals (EER, minDCF 0.05 and 0.01): %.3f s",
             best_time(lambda: tt.bootstrap_intervals(scores, labels, enroll, test), min(args.repeats, 3)))
    log.info("one evaluation (compute_metrics + bootstrap_intervals): %.3f s",
             best_time(lambda: (tt.compute_metrics(scores, labels),
                                tt.bootstrap_intervals(scores, labels, enroll, test)), min(args.repeats, 3)))

    if args.loop_trials:
        small = make_trials(args.loop_trials, seed=1)
        fast = best_time(lambda: vectorised(*small), args.repeats)
        slow = best_time(lambda: python_loop(*small), 1)
        log.info("%d trials: vectorised %.4f s, Python loop %.4f s", args.loop_trials, fast, slow)
        log.info("  (EER, minDCF) vectorised %s, loop %s", vectorised(*small), python_loop(*small))


if __name__ == "__main__":
    main()
