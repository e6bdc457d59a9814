"""Shared fixtures for the foundation tests: a tiny on-disk corpus and argv builders.

Everything here is deliberately small (tens of short WAVs, tiny crops) so the whole suite
runs in a couple of minutes on two shared CPU cores.
"""
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

# The modules live at the repository root, one level above this file.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SR = 16000

# Two cores shared with other jobs: one intra-op thread is several times faster under load
# than two threads spinning against each other (and keeps float results run-to-run stable).
torch.set_num_threads(int(os.environ.get("TEST_TORCH_THREADS", "1")))


def write_wav(path, data, sr=SR, subtype="PCM_16"):
    """Write `data` (samples, or samples x channels) as a WAV file, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.asarray(data, dtype=np.float32), sr, subtype=subtype)
    return path


def tone(rng, n, freq):
    """A sine tone plus a little noise: n samples in [-0.5, 0.5]."""
    t = np.arange(n) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)


def group_views(batch, n=0):
    """The views of group `n` of a (views, labels, extras, frames) batch, as 1-D numpy arrays."""
    return [run[n, v].numpy() for run in batch[0] for v in range(run.shape[1])]


def read_all(path):
    """The whole file as float32, the way the loaders decode it."""
    audio, sr = soundfile.read(str(path), dtype="float32", always_2d=False)
    assert sr == SR
    return audio


@dataclass
class Corpus:
    root: Path
    train_list: Path
    test_list: Path
    train_lines: list = field(default_factory=list)     # (speaker, relative path)
    test_files: list = field(default_factory=list)      # relative paths
    trials: list = field(default_factory=list)          # (label, file1, file2)


def make_corpus(root, train_speakers=6, train_utts=4, test_speakers=3, test_utts=2, seed=0):
    """Write a tiny VoxCeleb-shaped corpus under `root`.

    Train: `train_speakers` x `train_utts` tones of random length 0.5-1.5 s, listed as
    'spkNN spkNN/uttN.wav'. Test: `test_speakers` x `test_utts` files and a trial list of
    every pair ('label a b', label 1 when the speakers match).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    corpus = Corpus(root=root, train_list=root / "train_list.txt", test_list=root / "test_list.txt")
    for s in range(train_speakers):
        for u in range(train_utts):
            rel = f"train/spk{s:02d}/utt{u}.wav"
            write_wav(root / rel, tone(rng, int(rng.uniform(0.5, 1.5) * SR), 150 + 60 * s))
            corpus.train_lines.append((f"spk{s:02d}", rel))
    for s in range(test_speakers):
        for u in range(test_utts):
            rel = f"test/tspk{s}/utt{u}.wav"
            write_wav(root / rel, tone(rng, int(rng.uniform(0.5, 1.5) * SR), 170 + 80 * s))
            corpus.test_files.append(rel)
    for i, a in enumerate(corpus.test_files):
        for b in corpus.test_files[i + 1:]:
            same = a.split("/")[1] == b.split("/")[1]
            corpus.trials.append((int(same), a, b))
    corpus.train_list.write_text("".join(f"{s} {p}\n" for s, p in corpus.train_lines))
    corpus.test_list.write_text("".join(f"{l} {a} {b}\n" for l, a, b in corpus.trials))
    return corpus


@pytest.fixture
def config(tmp_path):
    """Write YAML text to a file and return its path."""
    def write(text, name="config.yaml"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return write


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "corpus")


def tiny_options(corpus, save_path, **overrides):
    """Option values of a tiny, fast angleproto run on `corpus` (as a dict, before argv)."""
    values = dict(model="ResNetSE34L", trainfunc="angleproto", nPerSpeaker=2, batch_size=3,
                  max_frames=20, eval_frames=30, num_eval=2, nOut=32, nDataLoaderThread=0,
                  device="cpu", max_epoch=2, test_interval=1, seed=10,
                  train_list=corpus.train_list, train_path=corpus.root,
                  test_list=corpus.test_list, test_path=corpus.root, save_path=save_path)
    values.update(overrides)
    return values


def to_argv(values, flags=()):
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        argv += [f"--{key}", str(value)]
    return argv + [f"--{flag}" for flag in flags]


def train_argv(corpus, save_path, flags=(), **overrides):
    """argv for trainSpeakerNet.main: a tiny run on `corpus` saving into `save_path`."""
    return to_argv(tiny_options(corpus, save_path, **overrides), flags)


def snapshot(folder):
    """{relative path: (bytes, mtime_ns)} of every file under `folder` ({} if absent)."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def _isolate_logging():
    """main() attaches a FileHandler to the root logger for every run and never removes it
    (see test_train_resume for that bug); drop whatever a test added so runs stay isolated."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in before:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
