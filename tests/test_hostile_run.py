"""Hostile run folders and checkpoints: a training list changed under a mid-epoch checkpoint, a
full disk seen by torch's writer, tampered checkpoints that still load under weights_only,
lock files that are not lock records, and run files that are not files."""
import json
import logging
import os
import shutil
import time

import numpy as np
import pytest
import torch

import trainSpeakerNet
from conftest import make_corpus, snapshot, train_argv
from speakernet.core import checkpoint
from speakernet.run import resume, run_lock, run_log
from speakernet.core.errors import CheckpointError, LockedError, UserError


def errors_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A corpus and a finished 1-epoch run on it (its checkpoint is the one tampered with)."""
    base = tmp_path_factory.mktemp("hostile_run")
    corpus = make_corpus(base / "corpus")
    save = base / "run"
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, save, max_epoch=1)]) == 0
    return corpus, save


# ---------------------------------------------------------------------------- 1. changed list

class StopAfterPartial(Exception):
    pass


def test_mid_epoch_resume_over_a_changed_list_restarts_that_epoch(tmp_path, monkeypatch, caplog):
    corpus = make_corpus(tmp_path / "corpus")
    save = tmp_path / "run"
    argv = [str(a) for a in train_argv(corpus, save, max_epoch=2, test_interval=2, checkpoint_steps=1)]
    real_save = resume.MidEpochCheckpoints.save

    def save_then_stop(self, state):
        real_save(self, state)
        if (state["epoch"], state["batch"]) == (2, 2):
            raise KeyboardInterrupt
    monkeypatch.setattr(resume.MidEpochCheckpoints, "save", save_then_stop)
    assert trainSpeakerNet.main(argv) == 130
    monkeypatch.setattr(resume.MidEpochCheckpoints, "save", real_save)
    partial = checkpoint.load_file(save / "model" / checkpoint.PARTIAL)
    assert (partial["epoch"], partial["batch"]) == (2, 2)

    skips = []
    real_set_epoch = trainSpeakerNet.SpeakerBalancedSampler.set_epoch

    def spy(self, epoch, skip_batches=0):
        skips.append((epoch, skip_batches))
        return real_set_epoch(self, epoch, skip_batches=skip_batches)
    monkeypatch.setattr(trainSpeakerNet.SpeakerBalancedSampler, "set_epoch", spy)

    # Control: the same list resumes at batch 3 of epoch 2.
    kept = shutil.copytree(save, tmp_path / "control")
    control = [a if a != str(save) else str(kept) for a in argv]
    assert trainSpeakerNet.main(control) == 0
    assert skips == [(2, 2)]

    # One speaker removed: the plan of epoch 2 no longer applies.
    lines = corpus.train_list.read_text().splitlines()
    corpus.train_list.write_text("".join(f"{line}\n" for line in lines if not line.startswith("spk05")))
    skips.clear()
    caplog.clear()
    assert trainSpeakerNet.main(argv) == 0
    assert skips == [(2, 0)]
    warned = [m for m in warnings_of(caplog) if "changed since" in m]
    assert len(warned) == 1
    assert "24 utterances of 6 speakers -> 20 utterances of 5 speakers" in warned[0]
    assert "epoch 2 restarts from its first batch" in warned[0]


def test_list_signature_follows_what_the_plan_is_drawn_from(corpus):
    from DatasetLoader import read_train_list
    first = read_train_list(corpus.train_list, corpus.root)
    again = read_train_list(corpus.train_list, corpus.root)
    assert resume.list_signature(first) == resume.list_signature(again)
    moved = read_train_list(corpus.train_list, corpus.root)
    moved.files.prefix = "/elsewhere/"                # --train_path may move
    assert resume.list_signature(moved) == resume.list_signature(first)
    relabelled = read_train_list(corpus.train_list, corpus.root)
    relabelled.labels = np.roll(relabelled.labels, 1)
    assert resume.list_signature(relabelled)["sha256"] != resume.list_signature(first)["sha256"]
    shorter = read_train_list(corpus.train_list, corpus.root)
    shorter.lengths = shorter.lengths - 1
    assert resume.list_signature(shorter)["sha256"] != resume.list_signature(first)["sha256"]


def test_epoch_resume_over_a_changed_list_warns(finished, tmp_path, caplog):
    corpus, save = finished
    run = shutil.copytree(save, tmp_path / "run")
    changed = tmp_path / "fewer.txt"
    changed.write_text("".join(f"{s} {p}\n" for s, p in corpus.train_lines[:-4]))
    argv = [str(a) for a in train_argv(corpus, run, max_epoch=2, train_list=changed)]
    saved = checkpoint.load_file(run / "model" / "model000000001.model")
    # The list's path is a training option; give the checkpoint the new path so only the
    # content differs.
    saved["options"]["train_list"] = str(changed)
    checkpoint.save_atomic(saved, run / "model" / "model000000001.model")
    assert trainSpeakerNet.main(argv) == 0
    warned = [m for m in warnings_of(caplog) if "changed since" in m]
    assert warned and "the epochs from 2 on are planned over the new list" in warned[0]


# ---------------------------------------------------------------------------- 6. disk full

def test_full_disk_seen_by_torchs_writer_is_one_line(tmp_path, monkeypatch):
    """torch's archive writer reports a short write as a RuntimeError about stream positions."""
    target = tmp_path / "model000000002.model"
    target.write_bytes(b"previous")

    def short_write(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", short_write)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=4096))
    with pytest.raises(CheckpointError) as caught:
        checkpoint.save_atomic({"a": 1}, target)
    message = str(caught.value)
    assert "No space left on device" in message and "previous model000000002.model is intact" in message
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]     # no temporary left
    # With room on the disk the same failure is not called a full disk.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10 << 30))
    with pytest.raises(CheckpointError, match=r"the write failed \(\[enforce fail"):
        checkpoint.save_atomic({"a": 1}, target)


def test_any_refused_write_mid_run_is_one_line(finished, tmp_path, monkeypatch, caplog):
    corpus, save = finished
    run = shutil.copytree(save, tmp_path / "run")
    before = snapshot(run / "model")

    def full(path, record):
        raise OSError(28, "No space left on device", str(path))
    monkeypatch.setattr(run_log, "append_metrics", full)
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, run, max_epoch=2)]) == 2
    message = errors_of(caplog)[-1]
    assert message.startswith(f"{run / 'metrics.jsonl'}: No space left on device")
    assert "run the same command to resume" in message
    assert {k: v for k, v in snapshot(run / "model").items() if k in before} == before


# ---------------------------------------------------------------------------- 7. tampered checkpoints

def tampered(save, tmp_path, change):
    state = checkpoint.load_file(save / "model" / "model000000001.model")
    change(state)
    path = tmp_path / "tampered.model"
    torch.save(state, path)
    return path


FIRST_WEIGHT = lambda s: next(iter(s["model"]))      # noqa: E731

TAMPERINGS = {
    "string for a tensor": (lambda s: s["model"].__setitem__(FIRST_WEIGHT(s), "x"), "'model' entry"),
    "epoch as text": (lambda s: s.__setitem__("epoch", "1"), "'epoch' entry"),
    "negative batch": (lambda s: s.__setitem__("batch", -3), "'batch' entry"),
    "trainer without step": (lambda s: s.__setitem__("trainer", {}), "'trainer' entry"),
    "rng as text": (lambda s: s["rng"].__setitem__("torch", "x"), "'rng' entry"),
    "tensor as option": (lambda s: s["options"].__setitem__("lr", torch.zeros(3)), "'options' entry"),
    "options as a list": (lambda s: s.__setitem__("options", [1, 2]), "'options' entry"),
    "threshold as text": (lambda s: s.__setitem__("eer_threshold", "high"), "'eer_threshold' entry"),
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_tampered_checkpoint_is_refused_by_name(finished, tmp_path, name):
    change, fragment = TAMPERINGS[name]
    path = tampered(finished[1], tmp_path, change)
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load_file(path)
    assert str(caught.value).startswith(f"{path} is not a usable checkpoint: its {fragment}")


@pytest.mark.parametrize("key, value, fragment", [
    ("nOut", "big", "its options: 'nOut' expects int, got 'big'"),
    ("eval_frames", -5, "--eval_frames must be 0 (whole files) or positive, got -5"),
    ("num_eval", 0, "--num_eval must be at least 1, got 0"),
])
def test_stored_options_out_of_type_or_range_are_refused(finished, tmp_path, key, value, fragment):
    from speakernet.model.embedder import Embedder
    path = tampered(finished[1], tmp_path, lambda s: s["options"].__setitem__(key, value))
    with pytest.raises(CheckpointError) as caught:
        Embedder.from_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: {fragment}")
    assert "use another checkpoint" in str(caught.value)


def test_untampered_checkpoint_loads(finished, tmp_path):
    path = tampered(finished[1], tmp_path, lambda s: None)
    assert checkpoint.load_file(path)["epoch"] == 1


@pytest.mark.parametrize("alter, fragment", [
    (lambda s: s["trainer"].__setitem__("step", "many"), "model000000002.model is not a usable checkpoint"),
    (lambda s: s["options"].__setitem__("nOut", "big"), "'nOut' expects int, got 'big'"),
])
def test_altered_newest_checkpoint_falls_back_to_the_previous(finished, tmp_path, caplog, alter, fragment):
    corpus, save = finished
    run = shutil.copytree(save, tmp_path / "run")
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, run, max_epoch=2)]) == 0
    newest = run / "model" / "model000000002.model"
    state = checkpoint.load_file(newest)
    alter(state)
    torch.save(state, newest)
    caplog.clear()
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, run, max_epoch=3)]) == 0
    assert any(fragment in m and "resuming from" in m and "model000000001.model" in m
               for m in warnings_of(caplog))


def test_trainer_state_that_cannot_be_restored_is_one_line(finished, tmp_path, caplog):
    corpus, save = finished
    run = shutil.copytree(save, tmp_path / "run")
    path = run / "model" / "model000000001.model"
    state = checkpoint.load_file(path)
    del state["trainer"]["optimizer"]
    torch.save(state, path)
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, run, max_epoch=2)]) == 2
    message = errors_of(caplog)[-1]
    assert message.startswith(f"{path} holds a training state this run cannot restore (KeyError")
    assert "move it away" in message


# ---------------------------------------------------------------------------- 8. lock files

@pytest.mark.parametrize("content", ["", "12345", "[1, 2]", '{"pid": "x", "host": "h"}',
                                     '{"pid": -1, "host": "h"}', "\xff\xfe"])
def test_unreadable_old_lock_is_taken_over(tmp_path, caplog, content):
    lock = tmp_path / run_lock.LOCK_NAME
    lock.write_text(content, encoding="latin-1")
    old = time.time() - 2 * run_lock.UNREADABLE_GRACE
    os.utime(lock, (old, old))
    with run_lock.locked(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    assert any("not a lock record" in m for m in warnings_of(caplog))


def test_unreadable_fresh_lock_is_waited_for(tmp_path, monkeypatch):
    """A lock just created by another run and not yet filled in is waited for, not taken."""
    lock = tmp_path / run_lock.LOCK_NAME
    lock.write_text("")
    sleeps = []

    def fill_in(seconds):
        sleeps.append(seconds)
        lock.write_text(json.dumps({"pid": 1, "host": "another-host", "started": "now"}))
    monkeypatch.setattr(run_lock.time, "sleep", fill_in)
    with pytest.raises(LockedError, match="in use by process 1 on another-host"):
        run_lock.acquire(tmp_path)
    assert sleeps and lock.exists()


def test_lock_that_is_a_folder_is_one_line(tmp_path):
    (tmp_path / run_lock.LOCK_NAME).mkdir()
    with pytest.raises(LockedError, match="is not a lock file"):
        run_lock.acquire(tmp_path)


# ---------------------------------------------------------------------------- 9. run files

@pytest.mark.parametrize("name", ["metrics.jsonl", "train.log", "model/best.model"])
def test_run_file_that_is_a_folder_stops_before_training(finished, tmp_path, monkeypatch, caplog, name):
    corpus, save = finished
    run = tmp_path / "run"
    (run / name).mkdir(parents=True)
    monkeypatch.setattr(trainSpeakerNet.Trainer, "train_epoch",
                        lambda *a, **k: pytest.fail("training started"))
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, run, max_epoch=1)]) == 2
    assert errors_of(caplog)[-1].startswith(f"{run / name} is a folder, where the run keeps its")


def test_metrics_with_undecodable_bytes_are_skipped_once(tmp_path, caplog):
    metrics = tmp_path / "metrics.jsonl"
    run_log.append_metrics(metrics, {"epoch": 1, "loss": 2.0})
    with open(metrics, "ab") as handle:
        handle.write(b"\xff\xfe\x00 not text\n")
    run_log.append_metrics(metrics, {"epoch": 2, "loss": 1.0})
    for _ in range(2):
        assert [r["epoch"] for r in run_log.read_metrics(metrics)] == [1, 2]
    assert [m for m in warnings_of(caplog) if "not a JSON record" in m] == [f"{metrics}:2: not a JSON record, skipped"]


def test_resume_over_undecodable_metrics_goes_on(finished, tmp_path, caplog):
    corpus, save = finished
    run = shutil.copytree(save, tmp_path / "run")
    with open(run / "metrics.jsonl", "ab") as handle:
        handle.write(b"\xff\xfe\n")
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, run, max_epoch=2)]) == 0
    assert [r["epoch"] for r in run_log.read_metrics(run / "metrics.jsonl")] == [1, 2]


def test_check_run_files_accepts_a_fresh_and_a_finished_run(finished, tmp_path):
    run_log.check_run_files(tmp_path / "nothing-yet")
    run_log.check_run_files(finished[1])
    (tmp_path / "metrics.jsonl").mkdir()
    with pytest.raises(UserError):
        run_log.check_run_files(tmp_path)
