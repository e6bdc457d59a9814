"""evaluation.py and the modules it runs (trial_sets, embeddings, scoring, score_norm,
result_files, plots, run_log), and tuneThreshold.compute_metrics: against direct loops and sklearn."""
import argparse
import json
import math
import statistics
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from speakernet.eval import embeddings
from speakernet.eval import evaluation as ev
from speakernet.core import option_types
from speakernet.eval import plots
import tuneThreshold
from speakernet.run import run_log
from speakernet.eval import score_norm
from speakernet.eval import trial_sets
from conftest import make_corpus
from DatasetLoader import ListError, TrainList, read_train_list
from speakernet.core.errors import UserError
from speakernet.eval.scoring import score_trials
from tuneThreshold import compute_eer, compute_metrics, compute_min_dcf

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DIM = 8


def assert_png(path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > 1000, f"{path} is suspiciously small ({len(data)} bytes)"


# ---------------------------------------------------------------------------- fake extraction

def speaker_of(name):
    """The speaker folder of a corpus path ('.../tspk1/utt0.wav' -> 'tspk1')."""
    return Path(name).parent.name


def fake_crops(name, crops=3):
    """Deterministic crop embeddings of a file: its speaker's direction plus per-file noise,
    so equal file names give equal embeddings in every call."""
    speaker = torch.Generator().manual_seed(zlib.crc32(speaker_of(name).encode()))
    own = torch.Generator().manual_seed(zlib.crc32(str(name).encode()))
    centre = torch.randn(DIM, generator=speaker)
    return centre + 1.2 * torch.randn(crops, DIM, generator=own)


class FakeExtractor:
    """extract(files, lengths, root) with a log of which files it embedded."""

    def __init__(self):
        self.seen = []

    def __call__(self, files, lengths, root):
        assert len(files) == len(lengths)
        self.seen += [str(f) for f in files]
        return torch.stack([fake_crops(f) for f in files])


def assert_same_figures(got, expected, path="metrics"):
    """Nested dicts of figures equal up to float rounding."""
    if isinstance(expected, dict):
        assert set(got) == set(expected), path
        for key in expected:
            assert_same_figures(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-9), path
    else:
        assert got == expected, path


def write_list(path, lines):
    Path(path).write_text("".join(f"{line}\n" for line in lines))
    return path


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "corpus", train_speakers=5, train_utts=3, test_speakers=4, test_utts=3)


def trial_lines(corpus):
    return [f"{label} {a} {b}" for label, a, b in corpus.trials]


# ---------------------------------------------------------------------------- AS-norm

def as_norm_loop(scores, pairs, file_emb, cohort_emb, top_n):
    """The AS-norm formula, one trial at a time in plain Python."""
    files = file_emb.double().tolist()
    cohort = cohort_emb.double().tolist()

    def stats(vector):
        top = sorted((sum(a * b for a, b in zip(vector, c)) for c in cohort), reverse=True)[:top_n]
        return statistics.fmean(top), statistics.pstdev(top)

    out = []
    for score, (e, t) in zip(scores, pairs):
        mu_e, sd_e = stats(files[e])
        mu_t, sd_t = stats(files[t])
        out.append(0.5 * ((score - mu_e) / sd_e + (score - mu_t) / sd_t))
    return np.array(out)


def test_as_norm_matches_a_direct_loop():
    gen = torch.Generator().manual_seed(3)
    file_emb = torch.randn(7, DIM, generator=gen)
    cohort = torch.randn(15, DIM, generator=gen)
    pairs = np.array([(a, b) for a in range(7) for b in range(7) if a != b])
    scores = (file_emb[pairs[:, 0]] * file_emb[pairs[:, 1]]).sum(1).double().numpy()
    expected = as_norm_loop(scores, pairs, file_emb, cohort, top_n=4)
    got = score_norm.as_norm(scores, pairs, file_emb, cohort, top_n=4).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Statistics computed a chunk of files at a time are the same statistics.
    mu, sigma = score_norm.cohort_stats(file_emb, cohort, 4, chunk=2)
    np.testing.assert_allclose(score_norm.apply_as_norm(scores, pairs, mu, sigma).numpy(), expected,
                               rtol=1e-5, atol=1e-5)
    # top_n matters: using every cohort speaker gives different scores.
    everyone = score_norm.as_norm(scores, pairs, file_emb, cohort, top_n=15).numpy()
    assert not np.allclose(everyone, expected)


# ---------------------------------------------------------------------------- metrics

def dcf_loop(scores, labels, p_target, c_miss=1.0, c_fa=1.0):
    """Normalised minDCF over every threshold (accept iff score >= threshold), as a loop."""
    n_tar = sum(1 for l in labels if l == 1)
    n_non = len(labels) - n_tar
    best = math.inf
    for threshold in sorted(set(scores)) + [math.inf]:
        miss = sum(1 for s, l in zip(scores, labels) if l == 1 and s < threshold) / n_tar
        fa = sum(1 for s, l in zip(scores, labels) if l == 0 and s >= threshold) / n_non
        best = min(best, c_miss * p_target * miss + c_fa * (1 - p_target) * fa)
    return best / min(c_miss * p_target, c_fa * (1 - p_target))


def operating_points_loop(scores, labels):
    """(threshold, FAR, FRR) at every threshold, in plain Python."""
    n_tar = sum(1 for l in labels if l == 1)
    n_non = len(labels) - n_tar
    points = []
    for threshold in sorted(set(scores)) + [math.inf]:
        frr = sum(1 for s, l in zip(scores, labels) if l == 1 and s < threshold) / n_tar
        far = sum(1 for s, l in zip(scores, labels) if l == 0 and s >= threshold) / n_non
        points.append((threshold, far, frr))
    return points


def random_trials(seed, n=400, ties=False):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    scores = rng.normal(size=n) + 1.3 * labels
    return (np.round(scores, 1) if ties else scores), labels


@pytest.mark.parametrize("seed", [0, 1])
def test_eer_against_sklearn(seed):
    scores, labels = random_trials(seed)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - tpr
    i = np.argmin(np.abs(fnr - fpr))
    expected = 100 * max(fpr[i], fnr[i])
    metrics = compute_metrics(scores, labels)
    assert metrics.eer == pytest.approx(expected, abs=1e-9)
    assert (metrics.trials, metrics.targets) == (len(labels), int(labels.sum()))


@pytest.mark.parametrize("ties", [False, True])
def test_min_dcf_and_target_rates_against_loops(ties):
    scores, labels = random_trials(5, n=300, ties=ties)
    metrics = compute_metrics(scores, labels, p_targets=(0.05, 0.01), c_miss=1, c_fa=1,
                              far_targets=(0.01, 0.1), frr_targets=(0.05,))
    s, l = scores.tolist(), labels.tolist()
    for p in (0.05, 0.01):
        assert metrics.min_dcf[f"{p:g}"].value == pytest.approx(dcf_loop(s, l, p), abs=1e-12)
    points = operating_points_loop(s, l)
    for target in (0.01, 0.1):
        # The lowest FRR with FAR within the target; of equal ones the lowest threshold.
        best = min((frr, threshold) for threshold, far, frr in points if far <= target)
        got = metrics.frr_at_far[f"{target:g}"]
        assert got.frr == pytest.approx(100 * best[0])
        assert got.threshold == pytest.approx(best[1])
        assert got.far <= 100 * target + 1e-9
    # The lowest FAR with FRR within the target; of equal ones the highest threshold.
    best = min((far, -threshold) for threshold, far, frr in points if frr <= 0.05)
    got = metrics.far_at_frr["0.05"]
    assert got.far == pytest.approx(100 * best[0])
    assert got.threshold == pytest.approx(-best[1])
    assert got.frr <= 5 + 1e-9
    # Exactly the figures of tuneThreshold's own functions (same points, same tie rules).
    assert (metrics.eer, metrics.eer_threshold) == compute_eer(scores, labels)
    for p in (0.05, 0.01):
        assert metrics.min_dcf[f"{p:g}"] == compute_min_dcf(scores, labels, p)
    # The costs enter minDCF: doubling the cost of a miss changes it as the loop says.
    costly = compute_metrics(scores, labels, p_targets=(0.05,), c_miss=2)
    assert costly.min_dcf["0.05"].value == pytest.approx(dcf_loop(s, l, 0.05, c_miss=2), abs=1e-12)
    # The JSON layout of results_<tag>.json.
    figures = metrics.as_dict()
    assert list(figures) == ["trials", "targets", "nontargets", "unlabelled", "eer", "eer_threshold",
                             "min_dcf", "frr_at_far", "far_at_frr"]
    assert list(figures["frr_at_far"]["0.1"]) == ["frr", "far", "threshold"]
    assert list(figures["far_at_frr"]["0.05"]) == ["far", "frr", "threshold"]
    assert figures["min_dcf"]["0.05"] == {"value": metrics.min_dcf["0.05"].value,
                                          "threshold": metrics.min_dcf["0.05"].threshold}


def test_metrics_without_both_classes_are_none():
    metrics = compute_metrics([0.1, 0.5, 0.2], [1, 1, -1])
    assert metrics.eer is None and metrics.min_dcf["0.05"].value is None
    assert (metrics.trials, metrics.unlabelled) == (2, 1)


# ---------------------------------------------------------------------------- plots

def test_det_and_histogram_pngs(tmp_path):
    scores, labels = random_trials(2, n=2000)
    labels[:50] = -1
    det = plots.plot_det({"cosine": scores, "AS-norm": scores * 2 + 0.1}, labels, tmp_path / "det.png", "t")
    hist = plots.plot_score_histogram(scores, labels, tmp_path / "plots" / "hist.png", "t", thresholds=0.5)
    assert_png(det)
    assert_png(hist)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["det.png", "hist.png"]
    with pytest.raises(ValueError, match="target and non-target"):
        plots.plot_det(scores[labels == 1], labels[labels == 1], tmp_path / "none.png")


def test_det_points_are_the_error_rates(tmp_path):
    scores, labels = random_trials(4, n=200, ties=True)
    far, frr, _ = tuneThreshold.det_curve(scores, labels)
    loop = operating_points_loop(scores.tolist(), labels.tolist())
    np.testing.assert_allclose(far, [p[1] for p in loop])
    np.testing.assert_allclose(frr, [p[2] for p in loop])


# ---------------------------------------------------------------------------- lists and evaluation

def test_several_lists_in_one_call_equal_separate_calls(corpus, tmp_path):
    lines = trial_lines(corpus)
    first = write_list(tmp_path / "first.txt", lines[:40])
    second = write_list(tmp_path / "second.txt", lines[25:])
    train = read_train_list(corpus.train_list, corpus.root)
    settings = ev.EvalSettings(p_targets=(0.05, 0.01), asnorm_top_n=3, cohort_utts=2)

    joint_extract = FakeExtractor()
    joint = ev.Evaluation([first, second], corpus.root, settings, out_dir=tmp_path / "joint",
                          cohort_list=train).run(joint_extract, tag="epoch0001")
    # Every file shared by the two lists is embedded once.
    test_seen = [f for f in joint_extract.seen if f in set(corpus.test_files)]
    assert sorted(test_seen) == sorted(set(test_seen)) == sorted(corpus.test_files)

    for path, name in ((first, "first"), (second, "second")):
        alone = ev.Evaluation(str(path), corpus.root, settings, out_dir=tmp_path / name,
                              cohort_list=train, plots=False).run(FakeExtractor(), tag="epoch0001")
        assert list(alone.lists) == [name]
        for system in ("raw", "asnorm"):
            assert_same_figures(alone.lists[name].metrics[system].as_dict(),
                                joint.lists[name].metrics[system].as_dict())
            np.testing.assert_allclose(alone.lists[name].scores[system],
                                       joint.lists[name].scores[system], rtol=1e-6)
        for output in ("scores_file", "scores_asnorm_file"):
            assert Path(alone.lists[name].outputs[output]).read_text() == \
                Path(joint.lists[name].outputs[output]).read_text()
    # AS-norm really changed the scores, and the JSON holds every list's figures.
    entry = joint.lists["first"]
    assert joint.primary is entry and entry.eer == entry.metrics["raw"].eer
    assert list(entry.min_dcf) == ["0.05", "0.01"]
    assert not np.allclose(entry.scores["raw"], entry.scores["asnorm"])
    saved = json.loads(Path(joint.results_file).read_text())
    assert set(saved["lists"]) == {"first", "second"}
    assert saved["lists"]["second"]["metrics"]["asnorm"]["eer"] == pytest.approx(
        joint.lists["second"].metrics["asnorm"].eer)
    assert saved["lists"]["first"]["outputs"] == entry.outputs
    record = joint.summary_record()
    assert record["val_eer/first"] == entry.eer
    second_asnorm = joint.lists["second"].metrics["asnorm"]
    assert record["val_min_dcf_asnorm@0.01/second"] == second_asnorm.min_dcf["0.01"].value
    for output in ("det_png", "hist_png"):
        assert_png(entry.outputs[output])


def test_scores_follow_score_trials_and_outputs_are_never_overwritten(corpus, tmp_path):
    trial_set = trial_sets.load_trial_lists(str(corpus.test_list), corpus.root)
    crops = FakeExtractor()(trial_set.files, trial_set.lengths, corpus.root)
    settings = ev.EvalSettings()
    for normalize in (True, False):
        report = ev.evaluate_lists(crops, trial_set, settings, normalize=normalize)
        expected = score_trials(crops, trial_set.lists[0].pairs, normalize=normalize).numpy()
        np.testing.assert_allclose(report.lists["test_list"].scores["raw"], expected, rtol=1e-5)
        assert report.results_file is None and report.lists["test_list"].outputs == {}
    out = tmp_path / "out"
    first = ev.evaluate_lists(crops, trial_set, settings, out_dir=out, tag="eval", plots=False)
    again = ev.evaluate_lists(crops, trial_set, settings, out_dir=out, tag="eval", plots=False)
    paths = (first.lists["test_list"].outputs["scores_file"],
             again.lists["test_list"].outputs["scores_file"])
    assert Path(paths[0]).name == "scores_eval_test_list.txt"
    assert paths[0] != paths[1] and Path(paths[0]).read_text() == Path(paths[1]).read_text()
    assert first.results_file != again.results_file


def test_unlabelled_trials_are_scored_but_not_counted(corpus, tmp_path):
    labelled = trial_lines(corpus)
    # The unlabelled trials repeat labelled ones, so counting them would change every count
    # and, since only non-target pairs are repeated, the EER as well.
    unlabelled = [f"{a} {b}" for label, a, b in corpus.trials if label == 0][:12]
    path = write_list(tmp_path / "mixed.txt", labelled + unlabelled)
    evaluation = ev.Evaluation(str(path), corpus.root, ev.EvalSettings(), out_dir=tmp_path / "out")
    report = evaluation.run(FakeExtractor())
    entry = report.lists["mixed"]
    metrics = entry.raw
    assert entry.trials == len(labelled) + len(unlabelled)
    assert (metrics.trials, metrics.unlabelled) == (len(labelled), len(unlabelled))
    scores = entry.scores["raw"]
    labels = np.array([label for label, _, _ in corpus.trials])
    fpr, tpr, _ = roc_curve(labels, scores[:len(labelled)], drop_intermediate=False)
    i = np.argmin(np.abs(1 - tpr - fpr))
    assert metrics.eer == pytest.approx(100 * max(fpr[i], 1 - tpr[i]))
    lines = Path(entry.outputs["scores_file"]).read_text().splitlines()
    assert len(lines) == len(labelled) + len(unlabelled)
    assert [line.split()[1] for line in lines[len(labelled):]] == ["-"] * len(unlabelled)
    assert all(line.split()[1] in ("0", "1") for line in lines[:len(labelled)])


def test_a_missing_file_stops_before_any_extraction(corpus, tmp_path):
    good = str(corpus.test_list)
    lines = trial_lines(corpus)
    bad = write_list(tmp_path / "bad.txt", lines[:2] + ["1 test/nobody/utt9.wav " + corpus.test_files[0]])

    def extract(files, lengths, root):
        pytest.fail("extraction started before every trial list was validated")

    with pytest.raises(ListError) as err:
        ev.Evaluation([good, str(bad)], corpus.root, ev.EvalSettings()).run(extract)
    assert f"{bad}:3" in str(err.value) and "nobody/utt9.wav" in str(err.value)
    # Problems in several lists are reported together.
    worse = write_list(tmp_path / "worse.txt", ["0 " + corpus.test_files[1] + " missing.wav"])
    with pytest.raises(ListError) as err:
        trial_sets.load_trial_lists(f"{bad},{worse}", corpus.root)
    assert f"{bad}:3" in str(err.value) and f"{worse}:1" in str(err.value)


# ---------------------------------------------------------------------------- cohort

def test_cohort_selection_and_speaker_means(corpus):
    train = read_train_list(corpus.train_list, corpus.root)
    cohort = trial_sets.select_cohort(train, utts_per_speaker=2, max_speakers=4, seed=1)
    assert len(cohort.speakers) == 4 and len(set(cohort.speakers)) == 4
    assert np.bincount(cohort.speaker).tolist() == [2, 2, 2, 2]
    for path, index in zip(cohort.files, cohort.speaker):
        assert speaker_of(path) == cohort.speakers[index]
    again = trial_sets.select_cohort(train, 2, 4, seed=1)                  # the same every evaluation
    assert again.files == cohort.files and np.array_equal(again.speaker, cohort.speaker)
    means = embeddings.cohort_embeddings(FakeExtractor(), cohort, chunk=3)
    for index in range(4):
        members = [f for f, s in zip(cohort.files, cohort.speaker) if s == index]
        expected = torch.stack([torch.nn.functional.normalize(fake_crops(f), dim=-1).mean(0)
                                for f in members]).mean(0)
        torch.testing.assert_close(means[index], expected)
    # A list without speakers: every utterance is a cohort speaker of its own.
    unlabelled = TrainList(files=train.files, lengths=train.lengths,
                           labels=np.full(len(train.files), -1), speakers=[])
    assert len(trial_sets.select_cohort(unlabelled, 5).files) == len(train.files)


# ---------------------------------------------------------------------------- export

def test_export_embeddings_round_trip(tmp_path):
    crops = torch.randn(5, 3, DIM, generator=torch.Generator().manual_seed(1))
    names = [f"id{i}/clip/0000{i}.wav" for i in range(5)]
    path = embeddings.export_embeddings(tmp_path / "emb.npz", names, crops, speakers=list("aabbc"),
                                        keep_crops=True)
    with np.load(path) as data:
        assert data["names"].tolist() == names
        assert data["speakers"].tolist() == list("aabbc")
        unit = crops.numpy() / np.linalg.norm(crops.numpy(), axis=-1, keepdims=True)
        np.testing.assert_allclose(data["embeddings"], unit.mean(axis=1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(data["crops"], crops.numpy())
    again = embeddings.export_embeddings(tmp_path / "emb.npz", names, crops)
    assert again != path and Path(path).exists()
    with np.load(again) as data:
        assert "crops" not in data.files and "speakers" not in data.files


def test_extract_to_npz_in_chunks(corpus, tmp_path, monkeypatch):
    trial_set = trial_sets.load_trial_lists(str(corpus.test_list), corpus.root)
    file_set = embeddings.FileSet(trial_set.files, trial_set.lengths, str(corpus.root),
                                  list(trial_set.files))
    monkeypatch.setattr(embeddings, "EXTRACT_CHUNK", 5)
    calls = []

    class CountingExtractor(FakeExtractor):
        def __call__(self, files, lengths, root):
            calls.append(len(files))
            return super().__call__(files, lengths, root)

    extract = CountingExtractor()
    path = embeddings.extract_to_npz(tmp_path / "test.npz", extract, file_set, keep_crops=True)
    whole = FakeExtractor()(trial_set.files, trial_set.lengths, corpus.root)
    with np.load(path) as data:
        assert data["names"].tolist() == trial_set.files
        np.testing.assert_allclose(data["crops"], whole.numpy())
        np.testing.assert_allclose(data["embeddings"], embeddings.file_embeddings(whole).numpy(),
                                   rtol=1e-6)
    assert extract.seen == trial_set.files
    assert max(calls) == 5 and sum(calls) == len(trial_set.files)


def test_files_to_export(corpus, tmp_path):
    options = argparse.Namespace(extract=str(tmp_path / "out.npz"), extract_list=str(corpus.train_list),
                                 train_path=str(corpus.root), test_list=str(corpus.test_list),
                                 test_path=str(corpus.root))
    file_set = embeddings.files_to_export(options)
    assert file_set.names == [path for _, path in corpus.train_lines]       # as in the list
    assert file_set.speakers == [speaker for speaker, _ in corpus.train_lines]
    assert all(Path(f).is_file() for f in file_set.files) and file_set.root == ""
    options.extract_list = ""
    assert embeddings.files_to_export(options).names == corpus.test_files
    (tmp_path / "out.npz").write_bytes(b"")
    with pytest.raises(UserError, match="exists"):
        embeddings.files_to_export(options)


# ---------------------------------------------------------------------------- run log

def test_run_log_appends_lines_and_draws_curves(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    records = [{"epoch": 1, "loss": 2.5, "metric": 10.0, "lr": 1e-3, "data_wait": np.float32(0.25)},
               {"epoch": 1, "val_eer/vox1_O": 12.5, "val_min_dcf@0.05/vox1_O": 0.7},
               {"epoch": 2, "loss": 2.0, "metric": 20.0, "lr": 5e-4, "data_wait": 0.1,
                "val_eer/vox1_O": 10.0, "val_min_dcf@0.05/vox1_O": math.nan}]
    for record in records:
        run_log.append_metrics(path, record)
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    parsed = [json.loads(line) for line in lines]
    assert parsed[0]["data_wait"] == pytest.approx(0.25) and parsed[1] == records[1]
    assert parsed[2]["val_min_dcf@0.05/vox1_O"] is None           # NaN is not valid JSON
    with open(path, "a") as handle:
        handle.write('{"epoch": 3, "loss"')                         # a crash mid-write
    assert len(run_log.read_metrics(path)) == 3
    png = run_log.plot_training_curves(path, tmp_path / "run" / "curves.png")
    assert_png(png)
    # A resumed run logs epoch 2 again: the curves keep one point per epoch, the later one.
    run_log.append_metrics(path, {"epoch": 2, "loss": 1.5})
    assert run_log._series(run_log.read_metrics(path))["loss"] == ([1, 2], [2.5, 1.5])


# ---------------------------------------------------------------------------- options

def test_option_types_and_list_option():
    parser = argparse.ArgumentParser()
    parser.add_argument("--test_list", action=option_types.ListOption, default="data/test_list.txt")
    parser.add_argument("--dcf_p_target", type=option_types.probability_list, default="0.05")
    ev.add_arguments(parser)
    options = parser.parse_args([])
    assert option_types.split_list(options.test_list) == ["data/test_list.txt"]
    assert options.far_targets == (0.01,) and options.asnorm_top_n == 0
    options = parser.parse_args(["--test_list", "a.txt,b.txt", "--test_list", "c.txt",
                                 "--dcf_p_target", "0.05,0.01", "--frr_targets", ""])
    assert options.test_list == ["a.txt", "b.txt", "c.txt"]
    settings = ev.EvalSettings.from_options(argparse.Namespace(
        **vars(options), dcf_c_miss=1.0, dcf_c_fa=1.0, seed=1))
    assert settings.p_targets == (0.05, 0.01) and settings.frr_targets == ()
    assert option_types.parse_float_list(0.05) == (0.05,)
    assert option_types.parse_float_list([0.1, "0.2,0.3"]) == (0.1, 0.2, 0.3)
    for bad in ("0.05,x", "1.5"):
        with pytest.raises(ValueError):
            option_types.probability_list(bad)
    with pytest.raises(SystemExit):
        parser.parse_args(["--far_targets", "2"])


# ---------------------------------------------------------------------------- with the trainer

def test_evaluation_with_trainer_extract(corpus, tmp_path):
    """The extract contract end to end: Trainer.extract on real audio, cohort paths that
    already include the training root, AS-norm, outputs."""
    from models.ResNetSE34L import MainModel
    from SpeakerNet import SpeakerNet, Trainer

    torch.manual_seed(0)
    trainer = Trainer(SpeakerNet(MainModel(nOut=16), torch.nn.Identity()), None, None, None,
                      torch.device("cpu"), is_main=False)

    def extract(files, lengths, root):
        return trainer.extract(files, lengths, root, eval_frames=20, num_eval=2, workers=0)

    train = read_train_list(corpus.train_list, corpus.root)
    settings = ev.EvalSettings(asnorm_top_n=2, cohort_utts=1)
    evaluation = ev.Evaluation(str(corpus.test_list), corpus.root, settings,
                               out_dir=tmp_path / "result", cohort_list=train, plots=False)
    report = evaluation.run(extract, tag="epoch0001")
    entry = report.lists["test_list"]
    assert entry.raw.trials == len(corpus.trials)
    assert np.isfinite(entry.scores["asnorm"]).all()
    crops = extract(evaluation.trial_set.files, evaluation.trial_set.lengths, corpus.root)
    assert crops.shape == (len(corpus.test_files), 2, 16)
    np.testing.assert_allclose(entry.scores["raw"],
                               score_trials(crops, evaluation.trial_set.lists[0].pairs).numpy(),
                               rtol=1e-4, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "result").iterdir()) == [
        "results_epoch0001.json", "scores_epoch0001_test_list.txt",
        "scores_epoch0001_test_list_asnorm.txt"]
