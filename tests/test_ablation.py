"""The ablation table (speakernet/eval/ablation.py) against direct computations, and ablate.py end to
end on a tiny corpus: runs, failures marked, resumption, bad inputs."""
import logging
import threading
import time

import numpy as np
from scipy.stats import t as student_t
import pytest

import ablate
import trainSpeakerNet
from conftest import make_corpus
from speakernet.eval import ablation
from speakernet.core.errors import UserError
from tuneThreshold import compute_eer, compute_min_dcf


def run_scores(rng, separation, offset, a, b, labels):
    scores = separation * labels + offset[a] + offset[b] + rng.normal(0, 0.5, len(labels))
    return ablation.RunScores(scores=scores, labels=labels, enroll=a.astype(str), test=b.astype(str),
                              source="synthetic")


def test_summary_against_direct_computations():
    rng = np.random.default_rng(0)
    files, trials = 80, 3000
    offset = rng.normal(0, 1.0, files)
    a, b = rng.integers(0, files, trials), rng.integers(0, files, trials)
    labels = (rng.random(trials) < 0.3).astype(int)
    variants = {"base": {s: run_scores(rng, 2.0, offset, a, b, labels) for s in (1, 2, 3)},
                "better": {s: run_scores(rng, 3.0, offset, a, b, labels) for s in (1, 2, 3)},
                "broken": {1: "exit status 2", 2: run_scores(rng, 2.0, offset, a, b, labels)}}
    rows = {row.name: row for row in ablation.summarise(variants, replicates=300)}
    for name in ("base", "better"):
        eers = [compute_eer(r.scores, labels)[0] for r in variants[name].values()]
        assert rows[name].eer == pytest.approx(np.mean(eers))
        assert rows[name].eer_sd == pytest.approx(np.std(eers, ddof=1))
        assert rows[name].eer_interval[0] < rows[name].eer < rows[name].eer_interval[1]
        dcfs = [compute_min_dcf(r.scores, labels, 0.05).value for r in variants[name].values()]
        assert rows[name].min_dcf == pytest.approx(np.mean(dcfs))
    better = rows["better"]
    assert better.difference == pytest.approx(rows["better"].eer - rows["base"].eer)
    assert better.difference_interval[1] < 0 and better.p_value < 0.01
    assert rows["base"].difference is None
    # Welch's t over the seeds' EERs, written out: t, the Welch-Satterthwaite degrees of freedom
    x = [compute_eer(r.scores, labels)[0] for r in variants["better"].values()]
    y = [compute_eer(r.scores, labels)[0] for r in variants["base"].values()]
    vx, vy = np.var(x, ddof=1) / len(x), np.var(y, ddof=1) / len(y)
    t = (np.mean(x) - np.mean(y)) / np.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    assert better.seed_p_value == pytest.approx(2 * student_t.sf(abs(t), df))
    assert rows["broken"].seed_p_value is None                      # one seed: no test over seeds
    assert rows["broken"].runs == 1 and rows["broken"].failed == ["seed 1: exit status 2"]
    assert rows["broken"].eer_sd is None
    table = ablation.markdown_table(list(rows.values()))
    assert "| better | 3 |" in table and "| broken | 1 (1 failed) |" in table
    assert "- broken, seed 1: exit status 2" in table


def test_runs_on_other_trials_are_refused():
    rng = np.random.default_rng(1)
    labels = np.array([1, 0, 1, 0])
    a, b = np.arange(4), np.arange(4, 8)
    one = run_scores(rng, 2.0, np.zeros(8), a, b, labels)
    other = run_scores(rng, 2.0, np.zeros(8), a, b[::-1], labels)
    with pytest.raises(UserError, match="scores other trials"):
        ablation.summarise({"x": {1: one}, "y": {1: other}}, replicates=20)


@pytest.fixture
def tiny_config(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: ResNetSE34L\ntrainfunc: angleproto\nnPerSpeaker: 2\nbatch_size: 3\nmax_frames: 20\n"
        "eval_frames: 30\nnum_eval: 2\nnOut: 32\nnClasses: 6\nnDataLoaderThread: 0\ndevice: cpu\n"
        f"max_epoch: 1\ntest_interval: 1\ntrain_list: {corpus.train_list}\ntrain_path: {corpus.root}\n"
        f"test_list: {corpus.test_list}\ntest_path: {corpus.root}\nci_replicates: 0\n")
    return config


def test_ablation_runs_marks_failures_and_resumes(tiny_config, tmp_path, monkeypatch, caplog):
    trained = []

    def in_process(argv):            # the trainer in this process: faster than a child
        trained.append(argv)
        return trainSpeakerNet.main(argv)
    monkeypatch.setattr(ablate, "train", in_process)
    save = tmp_path / "ablation"
    argv = ["--config", str(tiny_config), "--variant", "trainfunc=angleproto",
            "--variant", "trainfunc=softmaxproto", "--variant", "trainfunc=softmaxproto nClasses=3",
            "--seeds", "1,2", "--save_path", str(save), "--replicates", "50"]
    assert ablate.main(argv) == 0
    assert len(trained) == 6
    table = (save / "ablation.md").read_text()
    assert "| trainfunc=angleproto | 2 |" in table and "| trainfunc=softmaxproto | 2 |" in table
    assert "| trainfunc=softmaxproto,nClasses=3 | 0 (2 failed) |" in table
    assert "seed 1: exit status 2" in table
    assert (save / "ablation.csv").read_text().count("\n") == 4 and (save / "ablation.png").stat().st_size > 0
    # Again: finished runs are not trained again; the failed variant is retried.
    trained.clear()
    assert ablate.main(argv) == 0
    assert [a[a.index("--seed") + 1] for a in trained] == ["1", "2"]
    assert all("nClasses" in " ".join(a) for a in trained)


@pytest.mark.parametrize("extra, message", [
    (["--vary", "bach_size=1,2"], "variant bach_size=1: no option 'bach_size'; did you mean 'batch_size'?"),
    (["--vary", "trainfunc=angleproto,angleproto"], "a value is repeated"),
    (["--vary", "trainfunc=angleproto", "--seeds", "1,2,1"], "--seeds 1,2,1: 1 repeated"),
    (["--vary", "trainfunc=nosuchloss"], "variant trainfunc=nosuchloss: --trainfunc 'nosuchloss'"),
    (["--vary", "batch_size=0"], "variant batch_size=0: --batch_size must be at least 1"),
    ([], "nothing to compare"),
])
def test_bad_ablations_are_one_line_before_any_run(tiny_config, tmp_path, monkeypatch, caplog, extra, message):
    monkeypatch.setattr(ablate, "train", lambda argv: pytest.fail("a run started"))
    with caplog.at_level(logging.INFO):
        assert ablate.main(["--config", str(tiny_config), "--save_path", str(tmp_path / "a"), *extra]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0]


def test_a_flag_varies_as_true_and_false(tiny_config, tmp_path, caplog):
    """mixedprec=true,false: each run gets --mixedprec / --no-mixedprec (not '--mixedprec false',
    which the trainer would refuse), and both pass the option check before any run."""
    with caplog.at_level(logging.INFO):
        assert ablate.main(["--config", str(tiny_config), "--save_path", str(tmp_path / "a"),
                            "--vary", "mixedprec=true,false", "--seeds", "1", "--dry_run"]) == 0
    runs = [r.getMessage() for r in caplog.records if "trainSpeakerNet.py" in r.getMessage()]
    assert [[w for w in run.split() if "mixedprec" in w and w.startswith("--")] for run in runs] == \
        [["--mixedprec"], ["--no-mixedprec"]]


def test_a_list_option_takes_several_values_in_a_variant(tiny_config, tmp_path, caplog):
    """'cl_data=1:0.5 2:1.0 max_epoch=2': the bare word is one more value of cl_data, so the run
    gets --cl_data 1:0.5 2:1.0 and then --max_epoch 2."""
    with caplog.at_level(logging.INFO):
        assert ablate.main(["--config", str(tiny_config), "--save_path", str(tmp_path / "a"),
                            "--variant", "trainfunc=cel", "--variant",
                            "trainfunc=cel cl_data=1:0.5 2:1.0 max_epoch=2",
                            "--seeds", "1", "--dry_run"]) == 0
    runs = [r.getMessage() for r in caplog.records if "trainSpeakerNet.py" in r.getMessage()]
    assert "--trainfunc cel --cl_data 1:0.5 2:1.0 --max_epoch 2" in runs[1]
    assert "--cl_data" not in runs[0]


def test_options_after_the_separator_may_belong_to_a_component_the_variants_choose(tiny_config, tmp_path):
    """The base config trains softmaxproto; '-- --cel_similarity ap' is an option of cel, which
    every variant chooses, so the plan accepts it."""
    assert ablate.main(["--config", str(tiny_config), "--save_path", str(tmp_path / "a"),
                        "--variant", "trainfunc=cel", "--variant", "trainfunc=cel lr=0.01",
                        "--seeds", "1", "--dry_run", "--", "--cel_similarity", "ap"]) == 0


def test_runs_go_one_per_device_at_a_time(tiny_config, tmp_path, monkeypatch):
    """--devices 0,1: every run gets one device, two run at once, never two on one device."""
    lock, busy, seen, overlaps = threading.Lock(), set(), [], []

    def fake_train(argv, device=None):
        with lock:
            assert device not in busy
            busy.add(device)
            seen.append(device)
            overlaps.append(len(busy))
        time.sleep(0.3)
        with lock:
            busy.discard(device)
        return 3                        # a failed run: the table marks it, the others go on
    monkeypatch.setattr(ablate, "train", fake_train)
    argv = ["--config", str(tiny_config), "--save_path", str(tmp_path / "a"), "--vary",
            "trainfunc=angleproto,softmaxproto", "--seeds", "1,2", "--devices", "0,1", "--replicates", "50"]
    assert ablate.main(argv) == 0
    assert sorted(seen) == [0, 0, 1, 1] and max(overlaps) == 2
    assert "0 (2 failed)" in (tmp_path / "a" / "ablation.md").read_text()


@pytest.mark.parametrize("devices, message", [("0,0", "--devices 0,0: a device is repeated"),
                                              ("gpu1", "--devices 'gpu1': give CUDA indices")])
def test_bad_device_lists_are_one_line(tiny_config, tmp_path, caplog, devices, message):
    with caplog.at_level(logging.INFO):
        assert ablate.main(["--config", str(tiny_config), "--save_path", str(tmp_path / "a"), "--vary",
                            "trainfunc=angleproto,softmaxproto", "--devices", devices, "--dry_run"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0]


def test_report_tables_the_finished_runs_and_trains_nothing(tiny_config, tmp_path, monkeypatch):
    """--report: runs finished so far are in the table, the others are counted 'to run' and
    nothing is trained (another ablation may be running them)."""
    rng = np.random.default_rng(1)
    offset = rng.normal(0, 1.0, 40)
    a, b = rng.integers(0, 40, 500), rng.integers(0, 40, 500)
    labels = (rng.random(500) < 0.3).astype(int)
    scores = {1: run_scores(rng, 2.0, offset, a, b, labels), 2: run_scores(rng, 2.5, offset, a, b, labels)}

    def never_train(argv, device=None):
        raise AssertionError("--report trained a run")
    monkeypatch.setattr(ablate, "train", never_train)
    monkeypatch.setattr(ablate, "finished", lambda save, max_epoch: save.name != "seed3")
    monkeypatch.setattr(ablation, "read_run_scores", lambda save: scores[int(save.name[4:])])
    argv = ["--config", str(tiny_config), "--save_path", str(tmp_path / "a"), "--vary",
            "trainfunc=angleproto,softmaxproto", "--seeds", "1,2,3", "--replicates", "50", "--report"]
    assert ablate.main(argv) == 0
    table = (tmp_path / "a" / "ablation.md").read_text()
    assert table.count("| 2 (1 to run) |") == 2 and "failed" not in table.split("Runs without")[0]
    expected = np.mean([compute_eer(scores[s].scores, labels)[0] for s in (1, 2)])
    assert f"| trainfunc=angleproto | 2 (1 to run) | {expected:.2f} |" in table
