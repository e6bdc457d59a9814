"""Nothing lost: kill -9 and resume, NaN losses, pruning, full disks, paths outside the root."""
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from speakernet.core import checkpoint
import trainSpeakerNet
from conftest import REPO, make_corpus, snapshot, to_argv, tiny_options


def _argv(corpus, save_path, **overrides):
    values = tiny_options(corpus, save_path, **{"max_epoch": 4, "test_interval": 1, **overrides})
    return [str(a) for a in to_argv(values)]


def _final_weights(save_path, epoch=4):
    return checkpoint.load_file(checkpoint.checkpoint_path(save_path / "model", epoch))["model"]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """An uninterrupted 4-epoch run, and a run killed with SIGKILL mid-training then restarted."""
    root = tmp_path_factory.mktemp("kill")
    corpus = make_corpus(root / "corpus")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, str(REPO / "trainSpeakerNet.py")]
    straight = subprocess.run(command + _argv(corpus, root / "straight"), cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]

    victim = subprocess.Popen(command + _argv(corpus, root / "killed"), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = checkpoint.checkpoint_path(root / "killed" / "model", 2)
    deadline = time.time() + 240
    while not first.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivors = checkpoint.list_checkpoints(root / "killed" / "model")
    resumed = subprocess.run(command + _argv(corpus, root / "killed"), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    return root, survivors, resumed


def test_every_checkpoint_left_by_a_kill_is_complete(killed_and_resumed):
    _, survivors, _ = killed_and_resumed
    assert survivors, "the run was killed before its first checkpoint"
    for _, path in survivors:
        state = checkpoint.load_file(path)
        assert state["format"] == checkpoint.FORMAT
    # No temporary file is mistaken for a checkpoint.
    assert all(path.name.startswith("model") for _, path in survivors)


def test_restart_resumes_and_matches_an_uninterrupted_run(killed_and_resumed):
    root, survivors, resumed = killed_and_resumed
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from" in resumed.stderr
    straight, again = _final_weights(root / "straight"), _final_weights(root / "killed")
    assert straight.keys() == again.keys()
    for key in straight:
        assert torch.equal(straight[key], again[key]), key
    score = lambda run: (run / "result" / "scores.txt").read_text().splitlines()[-1]
    assert score(root / "straight") == score(root / "killed")


def test_nan_loss_stops_without_saving_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, caplog):
    corpus = make_corpus(tmp_path / "corpus")
    import loss.angleproto as angleproto
    original = angleproto.LossFunction.forward
    train_epoch = trainSpeakerNet.Trainer.train_epoch
    current = {"epoch": 0}

    def tracking(self, loader, epoch, **kwargs):
        current["epoch"] = epoch
        return train_epoch(self, loader, epoch, **kwargs)

    def poisoned(self, x, label=None):
        loss, metric = original(self, x, label)
        return (loss * float("nan") if current["epoch"] >= 2 else loss), metric

    monkeypatch.setattr(trainSpeakerNet.Trainer, "train_epoch", tracking)
    monkeypatch.setattr(angleproto.LossFunction, "forward", poisoned)
    save = tmp_path / "exp"
    code = trainSpeakerNet.main(_argv(corpus, save, max_epoch=3))
    assert code == 3
    found = checkpoint.list_checkpoints(save / "model")
    assert [epoch for epoch, _ in found] == [1]
    state = checkpoint.load_file(found[0][1])
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert any("at epoch 2, step 1" in r.getMessage() for r in caplog.records)


def test_nan_steps_can_be_skipped_up_to_a_limit(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus")
    import loss.angleproto as angleproto
    original = angleproto.LossFunction.forward
    calls = {"n": 0}

    def once(self, x, label=None):
        loss, metric = original(self, x, label)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 2 else loss), metric

    monkeypatch.setattr(angleproto.LossFunction, "forward", once)
    assert trainSpeakerNet.main(_argv(corpus, tmp_path / "exp", max_epoch=1, max_bad_steps=1)) == 0


def test_keep_last_prunes_old_checkpoints_but_keeps_the_best(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    save = tmp_path / "exp"
    assert trainSpeakerNet.main(_argv(corpus, save, max_epoch=3, keep_last=1)) == 0
    assert [e for e, _ in checkpoint.list_checkpoints(save / "model")] == [3]
    best = checkpoint.load_file(save / "model" / "best.model")
    eers = [float(line.split("EER ")[1].split(",")[0])
            for line in (save / "result" / "scores.txt").read_text().splitlines()]
    assert best["eer"] == pytest.approx(min(eers))


def test_full_disk_is_reported_before_training(tmp_path, monkeypatch, caplog):
    corpus = make_corpus(tmp_path / "corpus")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    monkeypatch.setattr(trainSpeakerNet.Trainer, "train_epoch",
                        lambda *a, **k: pytest.fail("training started on a full disk"))
    assert trainSpeakerNet.main(_argv(corpus, tmp_path / "exp")) == 2
    assert any("MB free" in r.getMessage() for r in caplog.records)
    assert not checkpoint.list_checkpoints(tmp_path / "exp" / "model")


def test_failed_save_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch, caplog):
    corpus = make_corpus(tmp_path / "corpus")
    save = tmp_path / "exp"
    assert trainSpeakerNet.main(_argv(corpus, save, max_epoch=1)) == 0
    before = snapshot(save / "model")

    def failing(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing)
    assert trainSpeakerNet.main(_argv(corpus, save, max_epoch=2)) == 2     # one line, no traceback
    message = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][-1]
    assert "model000000002.model: No space left on device" in message and "free some space" in message
    after = snapshot(save / "model")
    assert after == before                      # no partial file, nothing replaced
    checkpoint.load_file(save / "model" / "model000000001.model")


@pytest.mark.parametrize("entry", ["../outside.wav", "/etc/passwd"])
def test_list_paths_cannot_leave_the_root(tmp_path, caplog, entry):
    corpus = make_corpus(tmp_path / "corpus")
    lines = corpus.train_list.read_text().splitlines()
    lines[2] = f"spk00 {entry}"
    corpus.train_list.write_text("\n".join(lines) + "\n")
    assert trainSpeakerNet.main(_argv(corpus, tmp_path / "exp")) == 2
    message = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][-1]
    assert "train_list.txt:3" in message and "outside" in message


def test_outside_paths_are_allowed_by_option(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path / "corpus")
    lines = corpus.train_list.read_text().splitlines()
    speaker, rel = lines[2].split()
    lines[2] = f"{speaker} {corpus.root / rel}"          # absolute, but a real file
    corpus.train_list.write_text("\n".join(lines) + "\n")
    read = []

    def reading_only(self, loader, epoch, **kwargs):
        read.extend(views[0].shape for views, _, _, _ in loader)      # the outside file is read
        return {"loss": 0.0, "metric": 0.0, "utt_per_s": 0.0, "data_wait": 0.0, "lr": 0.0, "steps": 0}

    monkeypatch.setattr(trainSpeakerNet.Trainer, "train_epoch", reading_only)
    argv = _argv(corpus, tmp_path / "exp", max_epoch=1) + ["--allow_outside_paths"]
    assert trainSpeakerNet.main(argv) == 0
    assert read


# ------------------------------------------------------------------ soak
@pytest.mark.parametrize("fds, growth", [
    ([16, 20, 20, 20, 20, 20, 20, 21], 0),     # a file open for a moment at the last sample
    ([16, 20, 20, 20, 21, 22, 23, 24], 3),     # one descriptor leaked per epoch
    ([16, 20, 20, 20, 20, 20, 21, 21], 1),     # one leaked once, late
])
def test_the_soak_verdict_tells_a_leak_from_a_passing_file(fds, growth):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import soak

    samples = [soak.Sample(epoch, float(epoch), 100.0, 90.0, count, 2) for epoch, count in enumerate(fds, 1)]
    assert soak.verdict(samples)["fd_growth"] == growth


def test_many_epochs_leak_no_file_descriptors_or_workers(tmp_path):
    """Eight epochs, each evaluated, with two persistent loader workers: the trainer's open
    descriptors and child processes after the last epoch are no more than after the fourth."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import soak

    corpus = make_corpus(tmp_path / "corpus")
    save_path = tmp_path / "run"
    argv = _argv(corpus, save_path, max_epoch=8, nDataLoaderThread=2, keep_last=2)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    code, samples = soak.watch([sys.executable, str(REPO / "trainSpeakerNet.py")] + argv,
                               save_path / "metrics.jsonl", env=env, timeout=400)
    assert code == 0
    assert len(samples) >= 6, f"only {len(samples)} epochs were sampled"
    assert samples[1].children == 2, "expected the two persistent loader workers"
    growth = soak.verdict(samples)
    assert growth["fd_growth"] <= 0, [s.fds for s in samples]
    assert growth["worker_growth"] <= 0, [s.children for s in samples]


# ------------------------------------------------------------------ YAML safety
def _yaml_payload(target):
    """A YAML document that creates `target` if loaded with an unsafe loader."""
    return f"model: ResNetSE34L\nnOut: !!python/object/apply:builtins.open ['{target}', 'w']\n"


def test_yaml_config_cannot_run_code(tmp_path, caplog):
    target = tmp_path / "pwned.txt"
    config = tmp_path / "evil.yaml"
    config.write_text(_yaml_payload(target))
    code = trainSpeakerNet.main(["--config", str(config), "--save_path", str(tmp_path / "run")])
    assert code == 2
    assert "evil.yaml" in caplog.text and "not valid YAML" in caplog.text
    assert not target.exists(), "loading the config ran code"
    assert not (tmp_path / "run").exists()


def test_yaml_payload_control(tmp_path):
    """The payload above is live: an unsafe loader does create the file."""
    import yaml
    target = tmp_path / "pwned.txt"
    loaded = yaml.unsafe_load(_yaml_payload(target))
    loaded["nOut"].close()
    assert target.exists()


def _entry_moved_outside(list_path, root, outside):
    """The list with its first line's file copied out of `root` and named by absolute path."""
    lines = list_path.read_text().splitlines()
    fields = lines[0].split()
    shutil.copy(root / fields[1], outside)
    fields[1] = str(outside)
    lines[0] = " ".join(fields)
    moved = list_path.with_name("outside_" + list_path.name)
    moved.write_text("\n".join(lines) + "\n")
    return str(moved)


@pytest.mark.parametrize("which", ["trial list", "AS-norm cohort"])
def test_outside_paths_option_reaches_the_trial_lists_and_the_cohort(tmp_path, which):
    """--allow_outside_paths applies to every list of the run, as its help says: the trial
    lists and the AS-norm cohort too. Without it an entry outside the root is refused, naming
    the option."""
    from speakernet.core.errors import UserError
    from speakernet.eval.evaluation import Evaluation
    from speakernet.run.options import parse_options
    corpus = make_corpus(tmp_path / "corpus")
    outside = tmp_path / "elsewhere.wav"
    listed = corpus.test_list if which == "trial list" else corpus.train_list
    option = "--test_list" if which == "trial list" else "--train_list"
    argv = _argv(corpus, tmp_path / "exp", max_epoch=1) + ["--asnorm_top_n", "2", option,
                                                            _entry_moved_outside(listed, corpus.root, outside)]
    with pytest.raises(UserError, match="--allow_outside_paths"):
        Evaluation.from_options(parse_options(argv))
    evaluation = Evaluation.from_options(parse_options(argv + ["--allow_outside_paths"]))
    if which == "trial list":
        assert str(outside) in map(str, evaluation.trial_set.files)
    else:
        assert evaluation.cohort is not None
