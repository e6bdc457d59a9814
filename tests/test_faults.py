"""Faults and hostile inputs that used to end in a traceback or a silently wrong result: list
encodings, non-finite audio, resume conflicts, the save_path lock, interrupted and crashed
runs, and the clean-up after them."""
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from speakernet.core import audio
from speakernet.core import checkpoint
from speakernet.run import resume
from speakernet.run import run_lock
import trainSpeakerNet
from conftest import REPO, SR, make_corpus, snapshot, tone, to_argv, tiny_options, train_argv, write_wav
from DatasetLoader import read_train_list
from speakernet.eval.trial_sets import read_trial_list


def run_main(argv, caplog):
    """main(argv) -> (exit code, messages of the trainer's ERROR records)."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = trainSpeakerNet.main([str(a) for a in argv])
    errors = [r.getMessage() for r in caplog.records
              if r.name == "trainSpeakerNet" and r.levelno >= logging.ERROR]
    return code, errors


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def line_of(path, fragment):
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment} not in {path}")


def poison(path, values=(np.nan,), every=1000):
    """Rewrite `path` as float WAV with non-finite samples every `every` samples."""
    audio = tone(np.random.default_rng(1), SR, 220)
    audio[::every] = np.resize(np.array(values, dtype=np.float32), len(audio[::every]))
    write_wav(path, audio, subtype="FLOAT")


# ------------------------------------------------------------------ list encodings and lines

def test_byte_order_mark_is_stripped_from_every_list(corpus):
    train_text = corpus.train_list.read_text()
    corpus.train_list.write_text("\ufeff" + train_text, encoding="utf-8")
    corpus.test_list.write_text("\ufeff" + corpus.test_list.read_text(), encoding="utf-8")
    train = read_train_list(corpus.train_list, corpus.root)
    assert train.speakers == sorted({s for s, _ in corpus.train_lines})     # no '\ufeffspk00'
    assert len(train.files) == len(corpus.train_lines)
    trials = read_trial_list(corpus.test_list, corpus.root)
    assert trials.labels.tolist() == [label for label, _, _ in corpus.trials]


def test_path_with_spaces_gets_a_hint(corpus, tmp_path, caplog):
    with open(corpus.train_list, "a") as handle:
        handle.write("spk00 train/spk00/my file.wav\n")
    code, errors = run_main(train_argv(corpus, tmp_path / "exp"), caplog)
    assert code == 2 and len(errors) == 1
    assert "3 columns" in errors[0] and "spaces" in errors[0]


def test_absolute_path_inside_the_root_is_accepted(corpus):
    lines = corpus.train_list.read_text().splitlines()
    speaker, rel = lines[2].split()
    lines[2] = f"{speaker} {corpus.root / rel}"
    corpus.train_list.write_text("\n".join(lines) + "\n")
    train = read_train_list(corpus.train_list, corpus.root)
    assert Path(train.files[2]) == corpus.root / rel


def test_duplicate_lines_and_trials_are_reported(corpus, caplog):
    lines = corpus.train_list.read_text().splitlines()
    corpus.train_list.write_text("\n".join(lines + [lines[1]]) + "\n")
    trials = corpus.test_list.read_text().splitlines()
    label, a, b = trials[0].split()
    corpus.test_list.write_text("\n".join(trials + [f"{label} {b} {a}"]) + "\n")
    with caplog.at_level(logging.WARNING):
        read_train_list(corpus.train_list, corpus.root)
        read_trial_list(corpus.test_list, corpus.root)
    found = warnings_of(caplog)
    assert any("1 duplicate lines" in m and f"line {len(lines) + 1} repeats line 2" in m for m in found), found
    assert any("1 duplicate trials" in m and "repeats line 1" in m for m in found), found


def test_train_list_that_is_a_directory(corpus, tmp_path, caplog):
    code, errors = run_main(train_argv(corpus, tmp_path / "exp", train_list=corpus.root), caplog)
    assert code == 2 and len(errors) == 1 and "is a directory" in errors[0] and str(corpus.root) in errors[0]


def test_each_bad_file_is_reported_once(corpus, tmp_path, caplog):
    write_wav(corpus.root / corpus.train_lines[3][1], tone(np.random.default_rng(0), 8000, 200), sr=8000)
    code, _ = run_main(train_argv(corpus, tmp_path / "exp"), caplog)
    assert code == 2
    mentions = [r for r in caplog.records if corpus.train_lines[3][1] in r.getMessage()]
    assert len(mentions) == 1, [r.getMessage() for r in mentions]


def test_read_only_manifest_folder_warns_and_goes_on(corpus, monkeypatch, caplog):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(audio.os, "replace", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)       # the clean-up fails too
    with caplog.at_level(logging.WARNING):
        train = read_train_list(corpus.train_list, corpus.root)
    assert len(train.files) == len(corpus.train_lines)
    assert any("could not cache audio headers" in m and "Read-only" in m for m in warnings_of(caplog))


# ------------------------------------------------------------------ non-finite audio

@pytest.mark.parametrize("workers", [0, 1])
def test_nan_in_a_training_file_names_file_list_and_line(corpus, tmp_path, caplog, workers):
    rel = corpus.train_lines[6][1]
    poison(corpus.root / rel)
    save = tmp_path / "exp"
    code, errors = run_main(train_argv(corpus, save, nDataLoaderThread=workers), caplog)
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"{corpus.train_list}:{line_of(corpus.train_list, rel)}: ")
    assert rel in errors[0] and "NaN/Inf" in errors[0] and "\n" not in errors[0]
    assert not checkpoint.list_checkpoints(save / "model")


def test_inf_in_a_test_file_stops_eval_naming_it(corpus, tmp_path, caplog):
    save = tmp_path / "exp"
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, save, max_epoch=1)]) == 0
    rel = corpus.test_files[2]
    poison(corpus.root / rel, values=(np.inf, -np.inf))
    code, errors = run_main(train_argv(corpus, save, flags=("eval",)), caplog)
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith(f"{corpus.test_list}:{line_of(corpus.test_list, rel)}: ") and rel in errors[0]


def test_extract_with_a_nan_file_writes_nothing(corpus, tmp_path, caplog):
    save = tmp_path / "exp"
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, save, max_epoch=1)]) == 0
    poison(corpus.root / corpus.test_files[0])
    out = tmp_path / "emb.npz"
    code, errors = run_main(train_argv(corpus, save, extract=out, nDataLoaderThread=1), caplog)
    assert code == 2 and len(errors) == 1 and corpus.test_files[0] in errors[0]
    assert not out.exists() and not list(tmp_path.glob(".emb.npz*"))


def test_extract_to_an_unwritable_place(corpus, tmp_path, caplog):
    save = tmp_path / "exp"
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, save, max_epoch=1)]) == 0
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, errors = run_main(train_argv(corpus, save, extract=blocker / "emb.npz"), caplog)
    assert code == 2 and len(errors) == 1 and "cannot write --extract" in errors[0]


def test_whole_file_scoring_of_a_file_shorter_than_a_window(corpus, tmp_path, caplog):
    save = tmp_path / "exp"
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, save, max_epoch=1)]) == 0
    write_wav(corpus.root / corpus.test_files[1], tone(np.random.default_rng(2), 250, 300))   # in place:
    code, errors = run_main(train_argv(corpus, save, eval_frames=0, flags=("eval", "recheck_audio")), caplog)
    assert code == 0, errors
    assert any("shorter than 400 samples" in m for m in warnings_of(caplog))


# ------------------------------------------------------------------ checkpoints

def test_unreadable_checkpoints_say_why(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    cases = {"empty": b"", "garbage": os.urandom(4096), "text": b"101\n"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"x": Payload()}, tmp_path / "pickle")
    expected = {"empty": "empty", "garbage": "not a PyTorch checkpoint", "text": "not a PyTorch checkpoint",
                "pickle": "could run code"}
    for name, fragment in expected.items():
        with pytest.raises(checkpoint.CheckpointError) as caught:
            checkpoint.load_file(tmp_path / name)
        assert fragment in str(caught.value), (name, str(caught.value))


def test_stale_temporaries_of_dead_writers_are_removed(corpus, tmp_path):
    save = tmp_path / "exp"
    (save / "model").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = save / "model" / f".model000000001.model.{dead.pid}.tmp"
    stale.write_bytes(b"x" * 1000)
    live = save / "model" / f".model000000099.model.{os.getpid()}.tmp"   # a writer still running
    live.write_bytes(b"y")
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, save, max_epoch=1)]) == 0
    assert not stale.exists() and live.exists()


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(corpus, tmp_path, caplog):
    save = tmp_path / "exp"
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, save, max_epoch=2)]) == 0
    newest = checkpoint.checkpoint_path(save / "model", 2)
    newest.write_bytes(newest.read_bytes()[:1000])              # a truncated copy
    code, errors = run_main(train_argv(corpus, save, max_epoch=3), caplog)
    assert code == 0, errors
    assert any("model000000002.model" in m and "resuming from" in m and "model000000001.model" in m
               for m in warnings_of(caplog))
    assert checkpoint.load_file(checkpoint.checkpoint_path(save / "model", 3))["epoch"] == 3
    assert checkpoint.load_file(newest)["epoch"] == 2           # rewritten by the resumed run


def test_epoch_evaluation_lost_to_a_crash_is_redone_on_resume(corpus, tmp_path, monkeypatch, caplog):
    save = tmp_path / "exp"
    original = trainSpeakerNet.Validation.evaluate

    def dies_at_epoch_2(self, epoch, stats=None):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch, stats)

    monkeypatch.setattr(trainSpeakerNet.Validation, "evaluate", dies_at_epoch_2)
    code, errors = run_main(train_argv(corpus, save, max_epoch=3), caplog)
    assert code == 130 and "model000000002.model" in errors[0] and "\n" not in errors[0]
    monkeypatch.undo()
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, save, max_epoch=3)]) == 0
    records = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    evaluated = sorted(r["epoch"] for r in records if any(k.startswith("val_eer") for k in r))
    assert evaluated == [1, 2, 3]
    epoch_2 = next(r for r in records if r["epoch"] == 2 and "loss" in r)
    assert "val_eer/test_list" in epoch_2                        # training stats and evaluation together


# ------------------------------------------------------------------ resuming with other options

@pytest.fixture
def finished_run(corpus, tmp_path):
    save = tmp_path / "exp"
    assert trainSpeakerNet.main([str(a) for a in train_argv(corpus, save, max_epoch=1)]) == 0
    return save


def test_resume_with_another_lr_is_refused(corpus, finished_run, caplog):
    before = snapshot(finished_run)
    code, errors = run_main(train_argv(corpus, finished_run, max_epoch=2, lr=0.01), caplog)
    assert code == 2 and len(errors) == 1
    assert "--lr 0.001 -> 0.01" in errors[0] and "new --save_path" in errors[0]
    assert snapshot(finished_run) == before                      # no options.1.yaml, nothing else


def test_resume_with_more_epochs_takes_effect_and_says_so(corpus, finished_run, caplog):
    code, errors = run_main(train_argv(corpus, finished_run, max_epoch=2), caplog)
    assert code == 0, errors
    assert any("take effect now" in r.getMessage() and "--max_epoch 1 -> 2" in r.getMessage()
               for r in caplog.records)
    assert checkpoint.list_checkpoints(finished_run / "model")[-1][0] == 2


def test_initial_model_with_a_run_to_resume_is_refused(corpus, finished_run, tmp_path, caplog):
    other = tmp_path / "other.model"
    other.write_bytes(checkpoint.checkpoint_path(finished_run / "model", 1).read_bytes())
    before = snapshot(finished_run)
    code, errors = run_main(train_argv(corpus, finished_run, max_epoch=2, initial_model=other), caplog)
    assert code == 2 and len(errors) == 1
    assert "drop --initial_model to resume" in errors[0] and str(other) in errors[0]
    assert snapshot(finished_run) == before


def test_rerunning_the_command_that_started_from_initial_weights_resumes(corpus, finished_run, tmp_path):
    start = tmp_path / "start.model"
    start.write_bytes(checkpoint.checkpoint_path(finished_run / "model", 1).read_bytes())
    save = tmp_path / "fine_tune"
    argv = [str(a) for a in train_argv(corpus, save, max_epoch=1, initial_model=start)]
    assert trainSpeakerNet.main(argv) == 0
    argv = [str(a) for a in train_argv(corpus, save, max_epoch=2, initial_model=start)]
    assert trainSpeakerNet.main(argv) == 0          # the same --initial_model: resumes
    assert checkpoint.list_checkpoints(save / "model")[-1][0] == 2


# ------------------------------------------------------------------ one run per save_path

def _lock(save, pid, host=None):
    save.mkdir(parents=True, exist_ok=True)
    (save / run_lock.LOCK_NAME).write_text(json.dumps(
        {"pid": pid, "host": host or socket.gethostname(), "started": "earlier"}))


def test_second_run_on_a_save_path_in_use_is_refused(corpus, tmp_path, caplog):
    save = tmp_path / "exp"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(save, holder.pid)
        before = snapshot(save)
        code, errors = run_main(train_argv(corpus, save), caplog)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and len(errors) == 1
    assert f"in use by process {holder.pid}" in errors[0] and str(save / run_lock.LOCK_NAME) in errors[0]
    assert snapshot(save) == before


def test_lock_of_another_host_is_refused(corpus, tmp_path, caplog):
    save = tmp_path / "exp"
    _lock(save, 1, host="elsewhere")
    code, errors = run_main(train_argv(corpus, save), caplog)
    assert code == 2 and "on elsewhere" in errors[0]


def test_stale_lock_is_taken_over_and_released(corpus, tmp_path, caplog):
    save = tmp_path / "exp"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock(save, dead.pid)
    code, errors = run_main(train_argv(corpus, save, max_epoch=1), caplog)
    assert code == 0, errors
    assert any("no longer running" in m for m in warnings_of(caplog))
    assert not (save / run_lock.LOCK_NAME).exists()


# ------------------------------------------------------------------ distributed teardown

@pytest.mark.parametrize("good", [True, False], ids=["finished", "failed"])
def test_process_group_is_destroyed_on_every_exit(corpus, tmp_path, monkeypatch, good):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    overrides = {} if good else {"train_list": corpus.root / "missing.txt"}
    argv = [str(a) for a in train_argv(corpus, tmp_path / "exp", max_epoch=1, flags=("distributed",),
                                       **overrides)]
    assert trainSpeakerNet.main(argv) == (0 if good else 2)
    assert not dist.is_initialized()


# ------------------------------------------------------------------ signals

def _start(corpus, save, **overrides):
    values = tiny_options(corpus, save, **{"max_epoch": 50, "test_interval": 1, **overrides})
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # A shell's background job (`cmd &`) starts with SIGINT ignored, and Python then keeps it
    # ignored: give the trainer the default disposition, as a terminal's Ctrl-C would find it.
    return subprocess.Popen([sys.executable, str(REPO / "trainSpeakerNet.py"),
                             *[str(a) for a in to_argv(values)]], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.parametrize("name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_stops_training_with_one_line(corpus, tmp_path, name, code):
    save = tmp_path / "exp"
    run = _start(corpus, save)
    first = checkpoint.checkpoint_path(save / "model", 1)
    deadline = time.time() + 240
    while not first.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, run.stderr.read()[-2000:]
    run.send_signal(getattr(signal, name))
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr
    assert f"interrupted by {name}; the last complete checkpoint is" in stderr
    assert not (save / run_lock.LOCK_NAME).exists()
    # Every checkpoint left is complete, and the named one resumes.
    assert all(checkpoint.load_file(p)["format"] == checkpoint.FORMAT
               for _, p in checkpoint.list_checkpoints(save / "model"))
    assert not list((save / "model").glob(".*.tmp"))


# ------------------------------------------------------------------ mid-epoch checkpoints

DIE_AFTER_PARTIAL = """
import os, signal, sys
sys.path.insert(0, {repo!r})
import trainSpeakerNet
from speakernet.run import resume
save = resume.MidEpochCheckpoints.save
def save_then_die(self, state):
    save(self, state)
    if (state["epoch"], state["batch"]) == (2, 2):
        os.kill(os.getpid(), signal.SIGKILL)          # a crash right after the mid-epoch write
resume.MidEpochCheckpoints.save = save_then_die
sys.exit(trainSpeakerNet.main(sys.argv[1:]))
"""


def test_mid_epoch_checkpoint_resumes_at_the_next_batch_exactly(tmp_path):
    """Killed mid-epoch 2 of 3 (epoch checkpoints only at 3), restarted: the same final weights
    and epoch losses as an uninterrupted run. SpecAugment draws from the torch generator inside
    the model and a loader worker is used, so the generator states must be restored exactly."""
    corpus = make_corpus(tmp_path / "corpus")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    script = tmp_path / "die_after_partial.py"
    script.write_text(DIE_AFTER_PARTIAL.format(repo=str(REPO)))

    def argv(save):
        values = tiny_options(corpus, save, max_epoch=3, test_interval=3, checkpoint_steps=1,
                              nDataLoaderThread=1)
        return [str(a) for a in to_argv(values, flags=("specaugment",))]

    straight = subprocess.run([sys.executable, str(REPO / "trainSpeakerNet.py"), *argv(tmp_path / "a")],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = subprocess.run([sys.executable, str(script), *argv(tmp_path / "b")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = checkpoint.load_file(tmp_path / "b" / "model" / checkpoint.PARTIAL)
    assert (partial["epoch"], partial["batch"]) == (2, 2)
    assert not checkpoint.list_checkpoints(tmp_path / "b" / "model")
    again = subprocess.run([sys.executable, str(REPO / "trainSpeakerNet.py"), *argv(tmp_path / "b")],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "at epoch 2, batch 3" in again.stderr
    final = [checkpoint.load_file(checkpoint.checkpoint_path(tmp_path / run / "model", 3))["model"]
             for run in ("a", "b")]
    assert final[0].keys() == final[1].keys()
    for key in final[0]:
        assert torch.equal(final[0][key], final[1][key]), key
    losses = [{r["epoch"]: r["loss"] for r in map(json.loads, (tmp_path / run / "metrics.jsonl").open())}
              for run in ("a", "b")]
    assert losses[0] == losses[1]
    assert not (tmp_path / "b" / "model" / checkpoint.PARTIAL).exists()    # superseded by epoch 3


def test_mid_epoch_checkpoint_timer(tmp_path, monkeypatch):
    clock = {"now": 1000.0}
    monkeypatch.setattr(resume.time, "monotonic", lambda: clock["now"])
    saver = resume.MidEpochCheckpoints(tmp_path, minutes=5)
    assert not saver.due(1)
    clock["now"] += 299
    assert not saver.due(2)
    clock["now"] += 2
    assert saver.due(3)
    saver.save({"epoch": 1, "batch": 3})
    assert not saver.due(4)                     # the clock restarts at each save
    assert not resume.MidEpochCheckpoints(tmp_path).due(10)      # off by default
    by_steps = resume.MidEpochCheckpoints(tmp_path, steps=4)
    assert [b for b in range(1, 13) if by_steps.due(b)] == [4, 8, 12]
