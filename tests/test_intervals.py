"""Bootstrap intervals of EER and minDCF (tuneThreshold.bootstrap_intervals): each replicate's
figures equal those of the trial list written out with its weights, and the intervals cover a
known EER at their nominal rate on score sets whose trials share files."""
import math

import numpy as np
import pytest
from scipy.stats import norm

import speakernet.eval.intervals as tuneThreshold
from speakernet.eval.intervals import _WeightedPoints, bootstrap_intervals
from speakernet.eval.metrics import compute_eer, compute_min_dcf


def crossed_trials(rng, files=80, trials=3000, separation=3.0, file_sd=1.0, noise_sd=0.5):
    """Trials over a pool of files whose scores share a random offset per file, so trials that
    share a file are correlated. Scores are Gaussian with the same spread for both classes,
    so the population EER is known: Phi(-separation / (2 sd))."""
    offset = rng.normal(0, file_sd, files)
    a, b = rng.integers(0, files, trials), rng.integers(0, files, trials)
    labels = (rng.random(trials) < 0.3).astype(int)
    scores = separation * labels + offset[a] + offset[b] + rng.normal(0, noise_sd, trials)
    sd = math.sqrt(2 * file_sd ** 2 + noise_sd ** 2)
    return scores, labels, a, b, 100 * norm.cdf(-separation / (2 * sd))


@pytest.mark.parametrize("tied", [False, True])
def test_each_replicate_equals_the_expanded_trial_list(monkeypatch, tied):
    """Block sums and the blocks recounted give the figures of the trials repeated by weight."""
    monkeypatch.setattr(_WeightedPoints, "BLOCK", 16)       # many blocks on a small list
    rng = np.random.default_rng(3)
    scores, labels, a, b, _ = crossed_trials(rng, files=40, trials=700)
    if tied:
        scores = np.round(scores, 1)                          # long runs of equal scores
    points = _WeightedPoints(scores, labels == 1)
    for _ in range(25):
        file_weights = rng.poisson(1.0, 40)
        trial_weights = file_weights[a] * file_weights[b]
        assert points.reweight(trial_weights[points.order].astype(np.uint16))
        expanded_scores = np.repeat(scores, trial_weights)
        expanded_labels = np.repeat(labels, trial_weights)
        assert points.eer() == pytest.approx(compute_eer(expanded_scores, expanded_labels)[0], abs=1e-9)
        for p in (0.05, 0.01):
            expected = compute_min_dcf(expanded_scores, expanded_labels, p_target=p).value
            assert points.min_dcf(p, 1.0, 1.0) == pytest.approx(expected, abs=1e-9)


def trial_bootstrap_eer(scores, labels, replicates, seed):
    """The naive interval: a Poisson weight per trial, as if trials were independent."""
    points, rng = _WeightedPoints(scores, labels == 1), np.random.default_rng(seed)
    eers = []
    for _ in range(replicates):
        points.reweight(rng.poisson(1.0, len(scores)).astype(np.uint16))
        eers.append(points.eer())
    return np.percentile(eers, [2.5, 97.5])


def test_intervals_cover_the_population_eer():
    """Where each file is in about 75 trials, resampling trials alone misses the population EER
    about half the time; resampling files keeps the nominal rate."""
    rng = np.random.default_rng(11)
    covered, naive, runs = 0, 0, 60
    for run in range(runs):
        scores, labels, a, b, population_eer = crossed_trials(rng)
        low, high = bootstrap_intervals(scores, labels, a, b, replicates=150, seed=run).eer
        covered += low <= population_eer <= high
        low, high = trial_bootstrap_eer(scores, labels, 150, run)
        naive += low <= population_eer <= high
    # Nominal 95%; the multiway bootstrap is conservative. 60 runs: 0.95 - 3.5 sd is 0.85.
    assert covered / runs >= 0.85
    assert naive / runs <= 0.75


def test_intervals_hold_the_estimate_and_narrow_with_more_trials():
    rng = np.random.default_rng(5)
    widths = []
    for trials, files in ((2000, 100), (32000, 1600)):
        scores, labels, a, b, _ = crossed_trials(rng, files=files, trials=trials)
        result = bootstrap_intervals(scores, labels, a, b, replicates=100)
        eer = compute_eer(scores, labels)[0]
        assert result.eer[0] <= eer <= result.eer[1]
        dcf = compute_min_dcf(scores, labels, p_target=0.05).value
        assert result.min_dcf["0.05"][0] <= dcf <= result.min_dcf["0.05"][1]
        widths.append(result.eer[1] - result.eer[0])
    assert widths[1] < widths[0] / 2.5          # 16x the data: about a quarter of the width


def test_file_names_unlabelled_trials_and_seeding():
    rng = np.random.default_rng(8)
    scores, labels, a, b, _ = crossed_trials(rng, files=60, trials=1500)
    named = bootstrap_intervals(scores, labels, [f"f{i}.wav" for i in a], [f"f{i}.wav" for i in b],
                                replicates=50, seed=4)
    numbered = bootstrap_intervals(scores, labels, a, b, replicates=50, seed=4)
    assert named.replicates == 50 and named.eer[0] < named.eer[1]
    # Unlabelled trials (-1) are left out, whatever their scores.
    padded = bootstrap_intervals(np.append(scores, [99.0, -99.0]), np.append(labels, [-1, -1]),
                                 np.append(a, [0, 1]), np.append(b, [2, 3]), replicates=50, seed=4)
    assert padded.eer == numbered.eer
    assert bootstrap_intervals(scores, labels, a, b, replicates=50, seed=5).eer != numbered.eer
    with pytest.raises(ValueError):
        bootstrap_intervals(scores, labels, a, b, level=1.5)
    assert tuneThreshold.Intervals.as_dict(numbered)["eer"] == list(numbered.eer)


def test_evaluation_reports_intervals_in_log_json_and_metrics_record():
    import torch
    from speakernet.eval import evaluation
    from speakernet.eval.result_files import EvaluationReport
    from speakernet.eval.trial_sets import TrialList
    rng = np.random.default_rng(2)
    speakers = np.repeat(np.arange(10), 4)
    embeddings = torch.as_tensor(rng.normal(size=(10, 16))[speakers] + 0.8 * rng.normal(size=(40, 16)))
    pairs = np.array([(i, j) for i in range(40) for j in range(i + 1, 40)])
    labels = (speakers[pairs[:, 0]] == speakers[pairs[:, 1]]).astype(int)
    trials = TrialList(labels=labels, pairs=pairs, files=[f"{i}.wav" for i in range(40)],
                       lengths=np.full(40, 16000))
    settings = evaluation.EvalSettings(ci_replicates=50)
    result = evaluation.score_list("trials", "trials.txt", trials, embeddings.float(), settings)
    expected = bootstrap_intervals(result.scores["raw"], labels, pairs[:, 0], pairs[:, 1],
                                   replicates=50, seed=settings.seed)
    assert result.intervals["raw"] == expected
    low, high = expected.eer
    assert f"EER {result.eer:.2f}% [{low:.2f}, {high:.2f}]" in result.describe()
    assert result.as_dict()["metrics"]["raw"]["intervals"]["eer"] == [low, high]
    report = EvaluationReport(tag="t", time="now", settings=settings, files=40, lists={"trials": result})
    assert report.summary_record()["ci_val_eer/trials"] == [low, high]
    off = evaluation.score_list("trials", "trials.txt", trials, embeddings.float(),
                                evaluation.EvalSettings(ci_replicates=0))
    assert off.intervals == {} and "[" not in off.describe()
    with pytest.raises(Exception, match="--ci_replicates"):
        evaluation.EvalSettings(ci_replicates=5)


def two_systems(rng, gain, files=80, trials=3000):
    """Two systems scoring the same crossed trials: the same file offsets (what the trials
    share), each its own trial noise; B separates the classes better by `gain`."""
    offset = rng.normal(0, 1.0, files)
    a, b = rng.integers(0, files, trials), rng.integers(0, files, trials)
    labels = (rng.random(trials) < 0.3).astype(int)
    shared = offset[a] + offset[b]
    first = 3.0 * labels + shared + rng.normal(0, 0.5, trials)
    second = (3.0 + gain) * labels + shared + rng.normal(0, 0.5, trials)
    return first, second, labels, a, b


def test_paired_comparison_of_a_system_with_itself_is_null():
    rng = np.random.default_rng(1)
    first, _, labels, a, b = two_systems(rng, 0.0)
    same = tuneThreshold.paired_bootstrap(first, first, labels, a, b, replicates=50)
    assert same.difference["eer"] == 0 and same.interval["eer"] == (0.0, 0.0)
    assert same.p_value == {"eer": 1.0, "0.05": 1.0, "0.01": 1.0}


def test_paired_comparison_finds_a_better_system_and_is_narrower_than_two_intervals():
    rng = np.random.default_rng(4)
    first, second, labels, a, b = two_systems(rng, 0.6)
    compared = tuneThreshold.paired_bootstrap(first, second, labels, a, b, replicates=300)
    assert compared.difference["eer"] == pytest.approx(
        compute_eer(second, labels)[0] - compute_eer(first, labels)[0])
    low, high = compared.interval["eer"]
    assert low <= compared.difference["eer"] <= high < 0 and compared.p_value["eer"] < 0.01
    separate = [bootstrap_intervals(s, labels, a, b, replicates=300).eer for s in (first, second)]
    assert separate[0][0] < separate[1][1]           # the intervals side by side overlap
    assert high - low < 0.5 * ((separate[0][1] - separate[0][0]) + (separate[1][1] - separate[1][0]))


def test_paired_p_values_are_not_small_when_systems_are_equally_good():
    rng = np.random.default_rng(9)
    small = 0
    runs = 30
    for run in range(runs):
        first, second, labels, a, b = two_systems(rng, 0.0)
        small += tuneThreshold.paired_bootstrap(first, second, labels, a, b, replicates=150,
                                                seed=run).p_value["eer"] < 0.05
    assert small / runs <= 0.2           # nominal 0.05; 30 runs: 0.05 + 3.5 sd is about 0.19
