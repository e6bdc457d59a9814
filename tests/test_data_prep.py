"""data_prep.py: the synthetic demo corpus (layout, determinism, trial list) and the baseline."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import data_prep  # noqa: E402

# Tiny but not trivial: several sessions per speaker, short utterances, all in about a second.
TINY = ["--num_train_speakers", "4", "--utts_per_speaker", "4", "--num_test_speakers", "6",
        "--test_utts_per_speaker", "4", "--min_dur", "1.0", "--max_dur", "1.6", "--num_trials", "200"]


def make(root, *extra):
    data_prep.main(["--synthetic", "--save_path", str(root), "--workers", "1", *TINY, *extra])
    return Path(root)


def corpus_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make(tmp_path_factory.mktemp("synth") / "demo")


def read_lists(root):
    train = [line.split() for line in (root / "train_list.txt").read_text().splitlines()]
    trials = [line.split() for line in (root / "test_list.txt").read_text().splitlines()]
    return train, trials


def test_same_seed_same_bytes_and_worker_count_does_not_matter(corpus, tmp_path):
    # A second run in a fresh process with two workers must reproduce every byte.
    out = tmp_path / "again"
    cmd = [sys.executable, str(REPO / "data_prep.py"), "--synthetic", "--save_path", str(out), "--workers", "2", *TINY]
    res = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Baseline EER" in res.stdout
    assert corpus_bytes(out) == corpus_bytes(corpus)


def test_other_seed_other_audio(corpus, tmp_path):
    other = make(tmp_path / "seed1", "--seed", "1")
    a, b = corpus_bytes(corpus), corpus_bytes(other)
    wavs = [k for k in a if k.endswith(".wav")]
    assert wavs and not any(a[k] == b.get(k) for k in wavs)


def test_layout_and_audio_format(corpus):
    train, trials = read_lists(corpus)
    assert len(train) == 4 * 4
    pattern = re.compile(r"^(id\d{5})/[A-Za-z0-9_-]{11}/\d{5}\.wav$")
    listed = [path for _, path in train] + [p for t in trials for p in t[1:]]
    for spk, path in train:
        assert pattern.match(path).group(1) == spk
    for path in set(listed):
        assert pattern.match(path), path
        info = soundfile.info(str(corpus / "wav" / path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 1.0 <= info.duration <= 1.6 + 1e-3
    on_disk = {str(p.relative_to(corpus / "wav")) for p in (corpus / "wav").rglob("*.wav")}
    assert on_disk == set(listed)                          # nothing missing, nothing stray
    audio, _ = soundfile.read(str(corpus / "wav" / train[0][1]), dtype="int16")
    assert audio.std() > 100 and np.abs(audio).max() < 32767   # audible, not clipped


def test_sessions_are_per_speaker_and_several(corpus):
    train, _ = read_lists(corpus)
    videos = {}
    for spk, path in train:
        videos.setdefault(path.split("/")[1], set()).add(spk)
    assert all(len(s) == 1 for s in videos.values())       # a video id belongs to one speaker
    assert len(videos) > 4                                  # some speaker has several sessions


def test_train_and_test_speakers_are_disjoint(corpus):
    train, trials = read_lists(corpus)
    test_spk = {p.split("/")[0] for t in trials for p in t[1:]}
    assert len(test_spk) == 6
    assert not test_spk & {spk for spk, _ in train}


def test_trial_labels_match_speakers(corpus):
    _, trials = read_lists(corpus)
    labels = [int(lab) for lab, _, _ in trials]
    assert all(int(lab) == (a.split("/")[0] == b.split("/")[0]) for lab, a, b in trials)
    pairs = [frozenset(t[1:]) for t in trials]
    assert len(set(pairs)) == len(pairs) and all(len(p) == 2 for p in pairs)
    # 6 speakers x C(4,2) = 36 target pairs exist: all taken, and as many non-targets.
    assert labels.count(1) == 36 and labels.count(0) == 36


def test_trials_balanced_and_bounded_on_a_bigger_plan():
    files = ["id%05d/vid%08d/%05d.wav" % (s, s, u) for s in range(40) for u in range(12)]
    trials = data_prep.make_trials(np.random.default_rng(0), files, 4000)
    labels = [int(t.split()[0]) for t in trials]
    assert len(trials) == 4000 and sum(labels) == 2000
    assert trials == data_prep.make_trials(np.random.default_rng(0), files, 4000)


def test_rerun_same_settings_is_a_no_op_and_other_settings_are_refused(corpus):
    before = {p: p.stat().st_mtime_ns for p in corpus.rglob("*.wav")}
    make(corpus)                                            # identical settings: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*.wav")} == before
    with pytest.raises(SystemExit) as err:
        make(corpus, "--seed", "3")
    assert "different corpus" in str(err.value.code) and "seed" in str(err.value.code)


def test_overwrite_replaces_and_interrupted_run_is_redone(tmp_path):
    root = make(tmp_path / "c")
    (root / "test_list.txt").unlink()                       # as if killed before the lists were written
    make(root)
    assert (root / "test_list.txt").exists()
    make(root, "--seed", "2", "--overwrite")
    assert '"seed": 2' in (root / "synthetic_corpus.json").read_text()
    assert not list(root.glob("*.tmp"))


def test_foreign_lists_are_refused(tmp_path):
    (tmp_path / "train_list.txt").write_text("id10001 id10001/a/00001.wav\n")
    with pytest.raises(SystemExit):
        make(tmp_path)


def test_mel_filterbank_shape():
    fb = data_prep.mel_filterbank()
    assert fb.shape == (40, 257) and fb.min() >= 0
    peaks = fb.argmax(1)
    assert np.all(np.diff(peaks) >= 0) and peaks[-1] > 200     # increasing centres up to near Nyquist
    assert np.allclose(fb.max(1)[5:], 1, atol=0.35)             # triangles reach about 1


def test_baseline_eer_is_a_sensible_number(corpus):
    eer = data_prep.baseline_eer(str(corpus / "test_list.txt"), str(corpus / "wav"))
    assert 5 < eer < 60


def test_baseline_eer_is_zero_for_identical_files(corpus, tmp_path):
    _, trials = read_lists(corpus)
    files = sorted({p for t in trials for p in t[1:]})
    spk = lambda f: f.split("/")[0]
    lines = ["1 %s %s" % (f, f) for f in files]             # identical files: cosine 1
    lines += ["0 %s %s" % (a, b) for a, b in zip(files, files[::-1]) if spk(a) != spk(b)]
    lst = tmp_path / "trials.txt"
    lst.write_text("\n".join(lines) + "\n")
    assert data_prep.baseline_eer(str(lst), str(corpus / "wav")) < 1e-6


def test_mean_log_mel_sees_the_spectrum(tmp_path):
    t = np.arange(16000) / 16000
    for name, freq in (("low", 300), ("high", 5000)):
        soundfile.write(str(tmp_path / f"{name}.wav"), 0.3 * np.sin(2 * np.pi * freq * t), 16000, subtype="PCM_16")
    low, high = (data_prep.mean_log_mel(str(tmp_path / f"{n}.wav")) for n in ("low", "high"))
    assert low.argmax() < 10 < 30 < high.argmax()
