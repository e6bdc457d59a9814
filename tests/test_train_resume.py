"""End to end through trainSpeakerNet.main: train, score, resume, and resume == uninterrupted."""
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from speakernet.core import checkpoint
import SpeakerNet
import trainSpeakerNet
from conftest import make_corpus, read_all, snapshot, train_argv
from speakernet.run.options import parse_options

EVAL_FRAMES, NUM_EVAL = 30, 2


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny runs, shared by the tests below:
    B1: 2 epochs into B; B2: the same command with max_epoch 3 (resumes); A: 3 epochs into A."""
    base = tmp_path_factory.mktemp("runs")
    # 4 speakers x 2 utterances, batch 2 of 2 views: two steps per epoch.
    corpus = make_corpus(base / "corpus", train_speakers=4, train_utts=2, test_speakers=2, test_utts=2)
    save_a, save_b = base / "A", base / "B"
    out = {"corpus": corpus, "A": save_a, "B": save_b, "rng": {}, "codes": {}, "logs": {}}
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    logger = logging.getLogger("trainSpeakerNet")
    level_before = logger.level
    logger.setLevel(logging.INFO)
    original = SpeakerNet.Trainer.train_epoch
    tag = {"run": None}

    def spy(self, loader, epoch, **kwargs):
        out["rng"].setdefault(tag["run"], {})[epoch] = (
            torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate())
        return original(self, loader, epoch, **kwargs)

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(SpeakerNet.Trainer, "train_epoch", spy)
            for name, save, epochs in (("B1", save_b, 2), ("B2", save_b, 3), ("A", save_a, 3)):
                if name == "B2":
                    out["after_B1"] = snapshot(save_b)
                tag["run"] = name
                capture = ListHandler()
                logger.addHandler(capture)
                try:
                    out["codes"][name] = trainSpeakerNet.main(train_argv(corpus, save, max_epoch=epochs, batch_size=2))
                finally:
                    logger.removeHandler(capture)
                out["logs"][name] = capture.messages
        out["train_log"] = {k: (v / "train.log").read_text() for k, v in (("A", save_a), ("B", save_b))}
    finally:
        logger.setLevel(level_before)
        for handler in list(root.handlers):
            if handler not in handlers_before:
                root.removeHandler(handler)
                handler.close()
    return out


def test_runs_succeed(runs):
    assert runs["codes"] == {"B1": 0, "B2": 0, "A": 0}


def test_two_epoch_run_writes_checkpoints_and_scores(runs):
    files = runs["after_B1"]
    assert "model/model000000001.model" in files
    assert "model/model000000002.model" in files
    assert "model/model000000003.model" not in files
    lines = files["result/scores_epoch0002_test_list.txt"][0].decode().splitlines()
    trials = runs["corpus"].trials
    assert len(lines) == len(trials)
    for line, (label, a, b) in zip(lines, trials):
        fields = line.split()
        assert len(fields) == 4, line
        score = float(fields[0])
        assert -1.0 - 1e-6 <= score <= 1.0 + 1e-6      # cosine scores
        assert fields[1:] == [str(label), a, b]


def test_checkpoint_is_resumable_and_complete(runs):
    state = checkpoint.load_file(runs["B"] / "model" / "model000000002.model")
    assert state["format"] == checkpoint.FORMAT
    assert state["epoch"] == 2
    for key in ("model", "trainer", "rng", "options"):
        assert key in state
    assert state["options"]["max_epoch"] == 2


def _embed_file(model, path):
    """num_eval evenly spaced crops of eval_frames, embedded one by one."""
    audio = read_all(path)
    n = EVAL_FRAMES * 160 + 240
    if len(audio) < n:
        audio = np.resize(audio, n)
    starts = np.linspace(0, len(audio) - n, NUM_EVAL).astype(np.int64)
    with torch.no_grad():
        return [model.encoder(torch.from_numpy(audio[s:s + n]).unsqueeze(0))[0] for s in starts]


def test_scores_match_independent_scoring(runs):
    corpus = runs["corpus"]
    options = parse_options(train_argv(corpus, runs["B"], max_epoch=2))
    model = trainSpeakerNet.build_model(options)
    state = checkpoint.load_file(runs["B"] / "model" / "model000000002.model")
    model.load_state_dict(state["model"])
    model.eval()
    crops = {f: _embed_file(model, corpus.root / f) for f in corpus.test_files}
    lines = (runs["B"] / "result" / "scores_epoch0002_test_list.txt").read_text().splitlines()
    for line, (_, a, b) in zip(lines, corpus.trials):
        pairs = [torch.nn.functional.cosine_similarity(u, v, dim=0).item()
                 for u in crops[a] for v in crops[b]]
        assert float(line.split()[0]) == pytest.approx(sum(pairs) / len(pairs), abs=2e-5), line


def test_resume_logs_and_writes_the_next_checkpoint(runs):
    messages = runs["logs"]["B2"]
    assert any("resuming" in m and "epoch 3" in m and "model000000002.model" in m for m in messages), messages
    assert not any("resuming" in m for m in runs["logs"]["B1"] + runs["logs"]["A"])
    after = snapshot(runs["B"])
    assert "model/model000000003.model" in after
    assert "result/scores_epoch0003_test_list.txt" in after
    # Earlier checkpoints and score files are untouched, byte for byte and in mtime.
    for name, (data, mtime) in runs["after_B1"].items():
        if name.startswith("model/") or name.startswith("result/scores_epoch"):
            assert after[name] == (data, mtime), f"{name} changed when resuming"
    resumed = checkpoint.load_file(runs["B"] / "model" / "model000000003.model")
    assert resumed["epoch"] == 3


def test_resume_trained_only_the_missing_epoch(runs):
    assert sorted(runs["rng"]["B1"]) == [1, 2]
    assert sorted(runs["rng"]["B2"]) == [3]
    assert sorted(runs["rng"]["A"]) == [1, 2, 3]


def test_resume_equals_uninterrupted_run(runs):
    a = checkpoint.load_file(runs["A"] / "model" / "model000000003.model")
    b = checkpoint.load_file(runs["B"] / "model" / "model000000003.model")
    assert a["model"].keys() == b["model"].keys()
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    # The optimizer and scheduler also continue identically.
    opt_a, opt_b = a["trainer"]["optimizer"]["state"], b["trainer"]["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for key in opt_a:
        for name, value in opt_a[key].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b[key][name])), (key, name)
    assert a["trainer"]["scheduler"] == b["trainer"]["scheduler"]
    assert a["trainer"]["step"] == b["trainer"]["step"]


def test_resume_sees_the_same_random_state(runs):
    """Whatever runs between epochs (evaluation draws from torch's RNG), the resumed epoch
    must start from the same generator states as the uninterrupted run's."""
    torch_a, np_a, py_a = runs["rng"]["A"][3]
    torch_b, np_b, py_b = runs["rng"]["B2"][3]
    assert torch.equal(torch_a, torch_b)
    assert np.array_equal(np_a, np_b)
    assert py_a == py_b


def test_each_run_logs_only_to_its_own_file(runs):
    assert str(runs["A"]) not in runs["train_log"]["B"]


def test_eval_mode_reproduces_the_epoch_scores(runs, tmp_path):
    corpus = runs["corpus"]
    source = runs["B"] / "model" / "model000000002.model"
    argv = train_argv(corpus, tmp_path / "eval", flags=("eval",), initial_model=source)
    assert trainSpeakerNet.main(argv) == 0
    got = (tmp_path / "eval" / "result" / "scores_eval_test_list.txt").read_text().splitlines()
    expected = runs["after_B1"]["result/scores_epoch0002_test_list.txt"][0].decode().splitlines()
    assert len(got) == len(expected) == len(corpus.trials)
    for g, e in zip(got, expected):
        assert g.split()[1:] == e.split()[1:]
        assert float(g.split()[0]) == pytest.approx(float(e.split()[0]), abs=2e-6)
    assert not (tmp_path / "eval" / "model").exists() or not any((tmp_path / "eval" / "model").iterdir())


def test_resumable_options_are_marked_where_they_are_declared():
    """Each owner marks its own (option_types.resumable); the resume check reads the marks."""
    from speakernet.run.resume import resumable_options
    marked = resumable_options()
    # one declared in each owner: options.py, evaluation.py, packed_audio.py, pseudo_labels.py
    assert {"max_epoch", "dcf_c_miss", "packs", "pseudo_keep"} <= marked
    assert not {"lr", "trainfunc", "model", "batch_size", "seed"} & marked
