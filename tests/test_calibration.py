"""speakernet/eval/calibration.py against sklearn and direct loops, and --calibrate end to end:
calibrated on one half of a trial list, evaluated on the other (a tiny corpus)."""
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

import trainSpeakerNet
from conftest import make_corpus, train_argv, write_wav
from speakernet.eval import calibration as cal
from speakernet.core import checkpoint
from speakernet.core.errors import CheckpointError, UserError
from tuneThreshold import compute_min_dcf


def gaussian_trials(n_tar=400, n_non=4000, seed=0, mu_tar=2.0, mu_non=-1.0, sd_tar=1.0, sd_non=1.3):
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(mu_tar, sd_tar, n_tar), rng.normal(mu_non, sd_non, n_non)]
    labels = np.r_[np.ones(n_tar, dtype=int), np.zeros(n_non, dtype=int)]
    return scores, labels


def softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def weighted_xent_loop(scores, labels, scale, offset, prior):
    """Brümmer's C_wxe (nats), one trial at a time."""
    tar = [softplus(-(scale * s + offset + cal.logit(prior))) for s, l in zip(scores, labels) if l == 1]
    non = [softplus(scale * s + offset + cal.logit(prior)) for s, l in zip(scores, labels) if l == 0]
    return prior * sum(tar) / len(tar) + (1 - prior) * sum(non) / len(non)


def cllr_loop(llrs, labels):
    tar = [math.log2(1 + math.exp(-x)) for x, l in zip(llrs, labels) if l == 1]
    non = [math.log2(1 + math.exp(x)) for x, l in zip(llrs, labels) if l == 0]
    return 0.5 * (sum(tar) / len(tar) + sum(non) / len(non))


def act_dcf_loop(llrs, labels, p, c_miss=1.0, c_fa=1.0):
    threshold = math.log(c_fa * (1 - p) / (c_miss * p))
    n_tar = sum(1 for l in labels if l == 1)
    n_non = sum(1 for l in labels if l == 0)
    miss = sum(1 for x, l in zip(llrs, labels) if l == 1 and not x >= threshold)
    fa = sum(1 for x, l in zip(llrs, labels) if l == 0 and x >= threshold)
    return (c_miss * p * miss / n_tar + c_fa * (1 - p) * fa / n_non) / min(c_miss * p, c_fa * (1 - p))


# ---------------------------------------------------------------------------- the fit

@pytest.mark.parametrize("prior", [0.5, 0.05, 0.01])
def test_fit_equals_sklearn_weighted_logistic_regression(prior):
    scores, labels = gaussian_trials()
    scale, offset = cal.fit_linear(scores, labels, prior)
    n_tar, n_non = labels.sum(), (labels == 0).sum()
    weights = np.where(labels == 1, prior / n_tar, (1 - prior) / n_non) * len(labels)
    reference = LogisticRegression(C=1e12, tol=1e-12, max_iter=10000).fit(
        scores[:, None], labels, sample_weight=weights)
    # Posterior log-odds = llr + logit(prior).
    assert scale == pytest.approx(reference.coef_[0, 0], rel=1e-6)
    assert offset == pytest.approx(reference.intercept_[0] - cal.logit(prior), rel=1e-6, abs=1e-6)


def test_fit_is_the_minimum_of_the_weighted_cross_entropy():
    scores, labels = gaussian_trials(n_tar=60, n_non=300, seed=4)
    scale, offset = cal.fit_linear(scores, labels, 0.05)
    best = weighted_xent_loop(scores, labels, scale, offset, 0.05)
    for d_scale, d_offset in [(0.01, 0), (-0.01, 0), (0, 0.01), (0, -0.01), (0.01, -0.01)]:
        assert weighted_xent_loop(scores, labels, scale + d_scale, offset + d_offset, 0.05) > best
    # The prior matters: a fit at 0.5 is another map.
    assert cal.fit_linear(scores, labels, 0.5) != pytest.approx((scale, offset), rel=1e-3)


def test_fit_recovers_the_true_llr_of_equal_variance_gaussians():
    # Targets N(1, 1), non-targets N(-1, 1): the true LLR is 2 * score.
    scores, labels = gaussian_trials(20000, 20000, seed=1, mu_tar=1.0, mu_non=-1.0, sd_tar=1.0, sd_non=1.0)
    scale, offset = cal.fit_linear(scores, labels, 0.5)
    assert scale == pytest.approx(2.0, abs=0.06) and offset == pytest.approx(0.0, abs=0.05)


def test_fit_ignores_unlabelled_trials_and_refuses_what_has_no_finite_fit():
    scores, labels = gaussian_trials(50, 200, seed=2)
    with_unlabelled = np.r_[scores, [100.0, -100.0]], np.r_[labels, [-1, -1]]
    assert cal.fit_linear(*with_unlabelled, 0.05) == pytest.approx(cal.fit_linear(scores, labels, 0.05))
    with pytest.raises(UserError, match="every target trial scores above every non-target"):
        cal.fit_linear([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0], 0.05)
    with pytest.raises(UserError, match="needs target and non-target trials"):
        cal.fit_linear([0.9, 0.8], [1, 1], 0.05)
    with pytest.raises(UserError, match="NaN"):
        cal.fit_linear([0.9, np.nan, 0.1, 0.95], [1, 0, 0, 0], 0.05)


# ---------------------------------------------------------------------------- figures

def test_cllr_equals_its_formula_in_a_loop():
    scores, labels = gaussian_trials(80, 300, seed=5)
    llrs = 1.7 * scores - 0.4
    assert cal.cllr(llrs, labels) == pytest.approx(cllr_loop(llrs, labels), rel=1e-12)
    # The reference points: always 0 is 1 bit; labels with -1 are left out.
    assert cal.cllr(np.zeros(len(labels)), labels) == pytest.approx(1.0)
    assert cal.cllr(np.r_[llrs, 50.0], np.r_[labels, -1]) == pytest.approx(cllr_loop(llrs, labels))


def test_pav_equals_sklearn_isotonic_regression_with_ties():
    rng = np.random.default_rng(6)
    scores = np.round(rng.normal(size=500), 1)            # many ties
    labels = (rng.random(500) < 1 / (1 + np.exp(-2 * scores))).astype(int)
    expected = IsotonicRegression(increasing=True).fit(scores, labels).predict(scores)
    np.testing.assert_allclose(cal.pav(labels, scores), expected, atol=1e-12)
    # Tied scores share one value.
    fitted = cal.pav(labels, scores)
    for value in np.unique(scores):
        assert np.ptp(fitted[scores == value]) == 0


def test_min_cllr_is_the_cllr_of_pav_llrs_and_bounds_every_monotone_map():
    scores, labels = gaussian_trials(150, 900, seed=7)
    posterior = IsotonicRegression().fit(scores, labels).predict(scores)
    prior_odds = labels.sum() / (labels == 0).sum()
    with np.errstate(divide="ignore"):
        pav_llr = np.log(posterior) - np.log1p(-posterior) - math.log(prior_odds)
    tar = [math.log2(1 + math.exp(-x)) if x != math.inf else 0.0 for x, l in zip(pav_llr, labels) if l == 1]
    non = [math.log2(1 + math.exp(x)) if x != -math.inf else 0.0 for x, l in zip(pav_llr, labels) if l == 0]
    assert cal.min_cllr(scores, labels) == pytest.approx(0.5 * (np.mean(tar) + np.mean(non)), rel=1e-9)
    fitted = cal.Calibration(*cal.fit_linear(scores, labels, 0.5), prior=0.5)
    minimum = cal.min_cllr(scores, labels)
    for llrs in (fitted.llr(scores), 3 * scores, scores - 2, np.tanh(scores) * 4):
        assert minimum <= cal.cllr(llrs, labels) + 1e-12
    # Monotone maps do not change it.
    assert cal.min_cllr(np.exp(scores), labels) == pytest.approx(minimum, rel=1e-12)


@pytest.mark.parametrize("p, c_miss, c_fa", [(0.05, 1, 1), (0.01, 1, 1), (0.3, 2, 1), (0.5, 1, 10)])
def test_act_dcf_equals_a_loop_and_is_never_below_min_dcf(p, c_miss, c_fa):
    scores, labels = gaussian_trials(200, 1000, seed=8)
    llrs = 1.3 * scores - 0.7
    got = cal.act_dcf(llrs, labels, p, c_miss, c_fa)
    assert got == pytest.approx(act_dcf_loop(llrs, labels, p, c_miss, c_fa), rel=1e-12)
    assert got >= compute_min_dcf(llrs, labels, p, c_miss, c_fa)[0] - 1e-12


def test_perfectly_calibrated_gaussians_give_act_dcf_close_to_min_dcf():
    # Targets N(1.5, 1), non-targets N(-1.5, 1): llr = 3 * score is the true LLR.
    rng = np.random.default_rng(9)
    n = 200000
    labels = np.r_[np.ones(n // 10, dtype=int), np.zeros(n, dtype=int)]
    scores = np.r_[rng.normal(1.5, 1, n // 10), rng.normal(-1.5, 1, n)]
    for p in (0.05, 0.01):
        act = cal.act_dcf(3 * scores, labels, p)
        minimum = compute_min_dcf(scores, labels, p)[0]
        assert minimum <= act <= minimum * 1.03, (p, act, minimum)
    # A miscalibrated map (shifted by 2 nats) costs visibly more.
    assert cal.act_dcf(3 * scores + 2, labels, 0.01) > 1.3 * compute_min_dcf(scores, labels, 0.01)[0]
    # Fitting the map on half of the trials gives nearly the same on the other half.
    dev, ev = np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1
    fitted = cal.fit(scores[dev], labels[dev], 0.05)
    act = cal.act_dcf(fitted.llr(scores[ev]), labels[ev], 0.05)
    assert act <= 1.05 * compute_min_dcf(scores[ev], labels[ev], 0.05)[0]


def test_calibrated_metrics_and_storage_round_trip(tmp_path):
    scores, labels = gaussian_trials(100, 500, seed=10)
    fitted = cal.fit(scores, labels, 0.05, source="dev.txt")
    assert fitted.dev_min_cllr <= fitted.dev_cllr
    assert fitted.eer_threshold is not None and fitted.trials == 600 and fitted.targets == 100
    figures = cal.calibrated_metrics(scores, labels, fitted, (0.05, 0.01))
    assert set(figures.act_dcf) == {"0.05", "0.01"}
    assert figures.cllr == pytest.approx(cllr_loop(fitted.llr(scores), labels))
    assert list(figures.as_dict()) == ["cllr", "min_cllr", "act_dcf"]
    alone = cal.calibrated_metrics(scores[:100], labels[:100], fitted, (0.05,))
    assert alone.cllr is None and alone.act_dcf == {"0.05": None}
    assert cal.Calibration.from_dict(json.loads(json.dumps(fitted.to_dict()))) == fitted
    with pytest.raises(CheckpointError, match="not a valid score calibration"):
        cal.Calibration.from_dict({"scale": "x", "offset": 0, "prior": 0.05}, "ck.model")
    with pytest.raises(CheckpointError, match="not a valid score calibration"):
        cal.Calibration.from_dict({"scale": 1.0, "offset": 0.0, "prior": 1.5}, "ck.model")
    assert cal.calibrated_path("a/model000000004.model") == Path("a/model000000004.calibrated.model")
    # A calibrated copy calibrated again: numbered, never its own input.
    assert cal.calibrated_path("a/b.calibrated.model") == Path("a/b.calibrated.2.model")


# ---------------------------------------------------------------------------- end to end

def noisy_corpus(root, seed=3):
    """make_corpus with test files that overlap: each speaker's tone wanders in pitch and sits
    in noise, so no model separates the trials perfectly (the fit would diverge)."""
    corpus = make_corpus(root, train_speakers=4, train_utts=3, test_speakers=6, test_utts=4, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for rel in corpus.test_files:
        speaker = int(rel.split("/")[1][4:])
        n = int(rng.uniform(0.6, 1.2) * 16000)
        t = np.arange(n) / 16000
        freq = (170 + 80 * speaker) * (1 + 0.05 * rng.standard_normal())
        write_wav(corpus.root / rel, 0.2 * np.sin(2 * np.pi * freq * t) + 0.15 * rng.standard_normal(n))
    return corpus


def eval_argv(corpus, save_path, *extra):
    return ["--model", "ResNetSE34L", "--trainfunc", "angleproto", "--nOut", "32", "--eval_frames", "30",
            "--num_eval", "2", "--device", "cpu", "--nDataLoaderThread", "0", "--test_path",
            str(corpus.root), "--save_path", str(save_path), "--eval", *map(str, extra)]


def read_scores(path):
    rows = [line.split() for line in Path(path).read_text().splitlines()]
    return np.array([float(r[0]) for r in rows]), np.array([int(r[1]) for r in rows])


def errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    corpus = noisy_corpus(root / "corpus")
    assert trainSpeakerNet.main(train_argv(corpus, root / "run", max_epoch=1)) == 0
    lines = corpus.test_list.read_text().splitlines()
    (root / "dev.txt").write_text("\n".join(lines[0::2]) + "\n")
    (root / "eval.txt").write_text("\n".join(lines[1::2]) + "\n")
    return corpus, root, root / "run" / "model" / "model000000001.model"


def test_calibrate_on_one_half_and_evaluate_the_other(trained, caplog):
    corpus, root, ckpt = trained
    before = ckpt.read_bytes()
    argv = eval_argv(corpus, root / "cal", "--calibrate", root / "dev.txt", "--test_list", root / "eval.txt",
                     "--initial_model", ckpt)
    caplog.set_level(logging.INFO)
    assert trainSpeakerNet.main(argv) == 0
    target = root / "run" / "model" / "model000000001.calibrated.model"
    assert ckpt.read_bytes() == before                       # the checkpoint is never changed
    stored = checkpoint.load_file(target)
    original = checkpoint.load_file(ckpt)
    assert stored["model"].keys() == original["model"].keys()
    assert all(torch.equal(stored["model"][k], original["model"][k]) for k in original["model"])
    fitted = cal.Calibration.from_dict(stored["calibration"])
    assert fitted.source == str(root / "dev.txt") and fitted.prior == 0.05      # first --dcf_p_target

    # The map is the weighted logistic regression of the dev half's scores (from --eval).
    assert trainSpeakerNet.main(eval_argv(corpus, root / "dev_eval", "--test_list", root / "dev.txt",
                                          "--initial_model", ckpt)) == 0
    dev_scores, dev_labels = read_scores(root / "dev_eval" / "result" / "scores_eval_dev.txt")
    refit = cal.fit_linear(dev_scores, dev_labels, 0.05)
    # The score file holds 6 decimals, and this barely trained model's scores span a narrow
    # range, so the refit moves by about 1e-3; the stored map is still the minimum of C_wxe.
    assert (fitted.scale, fitted.offset) == pytest.approx(refit, rel=1e-2)
    assert weighted_xent_loop(dev_scores, dev_labels, fitted.scale, fitted.offset, 0.05) == pytest.approx(
        weighted_xent_loop(dev_scores, dev_labels, *refit, 0.05), rel=1e-5)
    assert fitted.trials == len(dev_labels) and fitted.targets == dev_labels.sum()

    # The report of the other half: actDCF and Cllr of its scores under that map, by loops.
    report = json.loads((root / "cal" / "result" / "results_eval.json").read_text())
    assert report["calibration"]["scale"] == fitted.scale
    metrics = report["lists"]["eval"]["metrics"]["raw"]
    scores, labels = read_scores(root / "cal" / "result" / "scores_eval_eval.txt")
    llrs = fitted.llr(scores)
    calibrated = metrics["calibrated"]
    assert calibrated["cllr"] == pytest.approx(cllr_loop(llrs, labels), rel=1e-4)
    assert calibrated["min_cllr"] == pytest.approx(cal.min_cllr(scores, labels), rel=1e-4)
    assert calibrated["min_cllr"] <= calibrated["cllr"]
    for p in ("0.05", "0.01"):
        assert calibrated["act_dcf"][p] == pytest.approx(act_dcf_loop(llrs, labels, float(p)), abs=1e-9)
        assert calibrated["act_dcf"][p] >= metrics["min_dcf"][p]["value"] - 1e-9
    assert any("actDCF(0.05)" in r.getMessage() and "minCllr" in r.getMessage() for r in caplog.records)

    # --eval of the calibrated checkpoint reports the same figures without --calibrate.
    assert trainSpeakerNet.main(eval_argv(corpus, root / "again", "--test_list", root / "eval.txt",
                                          "--initial_model", target)) == 0
    again = json.loads((root / "again" / "result" / "results_eval.json").read_text())
    repeated = again["lists"]["eval"]["metrics"]["raw"]["calibrated"]
    assert repeated["cllr"] == pytest.approx(calibrated["cllr"], rel=1e-6)
    assert repeated["min_cllr"] == pytest.approx(calibrated["min_cllr"], rel=1e-6)
    assert repeated["act_dcf"] == calibrated["act_dcf"]

    # A second --calibrate refuses to replace the calibrated checkpoint, before any embedding.
    kept = target.read_bytes()
    caplog.clear()
    assert trainSpeakerNet.main(argv) == 2
    (message,) = errors(caplog)
    assert f"--calibrate would write {target}, which exists" in message and "\n" not in message
    assert target.read_bytes() == kept and ckpt.read_bytes() == before


def test_calibrate_with_a_bad_dev_list_is_one_error(trained, caplog, tmp_path):
    corpus, root, ckpt = trained
    source = tmp_path / "copy.model"
    shutil.copy(ckpt, source)
    targets_only = tmp_path / "targets.txt"
    targets_only.write_text("".join(line + "\n" for line in (root / "dev.txt").read_text().splitlines()
                                    if line.startswith("1 ")))
    for dev, expected in [(targets_only, "needs labelled target (1) and non-target (0) trials"),
                          (tmp_path / "missing.txt", "missing.txt")]:
        caplog.clear()
        assert trainSpeakerNet.main(eval_argv(corpus, tmp_path / "out", "--calibrate", dev, "--test_list",
                                              root / "eval.txt", "--initial_model", source)) == 2
        (message,) = errors(caplog)
        assert expected in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".model") == ["copy.model"]


# The demo's --test_list scores after its 8 epochs (configs/demo.yaml; 'score label' per trial).
DEMO_SCORES = Path(__file__).parent / "fixtures" / "demo_scores_epoch8.txt"


def test_demo_scores_calibrated_on_one_half_meet_min_dcf_on_the_other():
    """The demo checkpoint's own --test_list scores: fitted on the odd trials, judged on the
    even ones."""
    scores, labels = read_scores(DEMO_SCORES)
    assert len(scores) == 4000 and 0 < labels.mean() < 1
    dev, ev = slice(0, None, 2), slice(1, None, 2)
    fitted = cal.fit(scores[dev], labels[dev], 0.05)
    llrs = fitted.llr(scores[ev])
    for p in (0.05, 0.01):
        minimum = compute_min_dcf(scores[ev], labels[ev], p)[0]
        assert minimum - 1e-9 <= cal.act_dcf(llrs, labels[ev], p) <= 1.1 * minimum
    assert cal.min_cllr(scores[ev], labels[ev]) <= cal.cllr(llrs, labels[ev]) < 1.0
