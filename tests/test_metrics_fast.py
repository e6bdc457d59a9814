"""The faster parts of one evaluation's figures give exactly what direct computations give: the
bootstrap's order and block sums, and every replicate of bootstrap_replicates against the trial
list written out with its weights."""
import numpy as np
import pytest

import speakernet.eval.intervals as intervals
import speakernet.eval.metrics as tuneThreshold
from speakernet.eval.intervals import _WeightedPoints, bootstrap_replicates
from speakernet.eval.metrics import compute_eer, compute_min_dcf


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_order_is_the_stable_argsort(decimals):
    scores = np.random.default_rng(1).normal(size=5000)
    if decimals is not None:
        scores = np.round(scores, decimals)                   # runs of tied scores
    order, group_end = intervals._stable_order(scores)
    assert np.array_equal(order, np.argsort(scores, kind="stable"))
    ranked = np.sort(scores)
    assert np.array_equal(group_end, np.append(ranked[1:] != ranked[:-1], True))


@pytest.mark.parametrize("trials, block", [(5000, 16), (5000, 1024), (700, 1024), (4096, 1024)])
def test_block_sums_equal_reduceat(monkeypatch, trials, block):
    monkeypatch.setattr(_WeightedPoints, "BLOCK", block)
    rng = np.random.default_rng(trials + block)
    points = _WeightedPoints(rng.normal(size=trials), rng.random(trials) < 0.3)
    for weights in (rng.integers(0, 2 ** 16, trials).astype(np.uint16),
                    np.full(trials, 2 ** 16 - 1, dtype=np.uint16),
                    rng.integers(0, 50, trials)):
        expected = np.add.reduceat(weights, points.starts, dtype=np.int64)
        sums = points._block_sums(weights)
        assert sums.dtype == np.int64 and np.array_equal(sums, expected)


def expanded_figures(scores, labels, a, b, files, replicates, seed, p_targets):
    """Each replicate's figures from compute_eer / compute_min_dcf on the trials repeated by the
    product of their files' Poisson weights, drawn as bootstrap_replicates draws them."""
    rng = np.random.default_rng(seed)
    figures = {"eer": [], **{f"{p:g}": [] for p in p_targets}}
    for _ in range(replicates):
        weights = np.minimum(rng.poisson(1.0, size=files), 255)
        repeat = weights[a] * weights[b]
        kept_scores, kept_labels = np.repeat(scores, repeat), np.repeat(labels, repeat)
        if len(set(kept_labels.tolist())) < 2:
            continue
        figures["eer"].append(compute_eer(kept_scores, kept_labels)[0])
        for p in p_targets:
            figures[f"{p:g}"].append(compute_min_dcf(kept_scores, kept_labels, p_target=p).value)
    return figures


@pytest.mark.parametrize("tied", [False, True])
def test_replicates_equal_the_expanded_trial_lists(monkeypatch, tied):
    monkeypatch.setattr(_WeightedPoints, "BLOCK", 32)        # many blocks on a small list
    rng = np.random.default_rng(7)
    files, trials = 60, 1500
    a, b = rng.integers(0, files, trials), rng.integers(0, files, trials)
    labels = (rng.random(trials) < 0.3).astype(int)
    scores = 2.0 * labels + rng.normal(size=files)[a] + rng.normal(size=files)[b]
    if tied:
        scores = np.round(scores, 1)
    (found,) = bootstrap_replicates([scores], labels, a, b, (0.05, 0.01), 1.0, 1.0, 40, 0.95, seed=3)
    expected = expanded_figures(scores, labels, a, b, files, 40, 3, (0.05, 0.01))
    assert found.keys() == expected.keys()
    for key in found:
        assert found[key] == pytest.approx(expected[key], abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_counts_at_each_distinct_score_equal_direct_counts(decimals):
    rng = np.random.default_rng(2)
    labels = rng.random(4000) < 0.4
    scores = rng.normal(size=4000) + labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    ranked, group_end, cum_tar, cum_non = tuneThreshold._sorted_cumulative(scores, labels)
    assert np.array_equal(ranked, np.sort(scores))
    distinct = np.unique(scores)
    assert np.array_equal(ranked[group_end], distinct)
    at_or_below = [(np.count_nonzero(labels & (scores <= u)), np.count_nonzero(~labels & (scores <= u)))
                   for u in distinct]
    assert [(int(t), int(n)) for t, n in zip(cum_tar[group_end], cum_non[group_end])] == at_or_below
