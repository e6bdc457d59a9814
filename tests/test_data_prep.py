"""data_prep.py: the synthetic demo corpus (layout, determinism, trial list) and the baseline."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import data_prep  # noqa: E402
from speakernet.prep.baseline import baseline_eer, mean_log_mel, mel_filterbank  # noqa: E402
from speakernet.prep.synth_corpus import draw_speaker, make_trials  # noqa: E402
from speakernet.prep.synth_noise import STATIONARY_NOISES, TRANSIENT_NOISES  # noqa: E402

# Tiny but not trivial: several sessions per speaker, short utterances, all in about a second.
TINY = ["--num_train_speakers", "4", "--utts_per_speaker", "4", "--num_test_speakers", "6",
        "--test_utts_per_speaker", "4", "--min_dur", "1.0", "--max_dur", "1.6", "--num_trials", "200",
        "--num_noise", "8", "--num_babble", "6", "--num_music", "3", "--num_rirs", "6"]


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
    trials = make_trials(np.random.default_rng(0), files, 4000)
    labels = [int(t.split()[0]) for t in trials]
    assert len(trials) == 4000 and sum(labels) == 2000
    assert trials == make_trials(np.random.default_rng(0), files, 4000)


def test_rerun_same_settings_is_a_no_op_and_other_settings_are_refused(corpus):
    before = {p: p.stat().st_mtime_ns for p in corpus.rglob("*.wav")}
    make(corpus)                                            # identical settings: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*.wav")} == before
    with pytest.raises(SystemExit) as err:
        make(corpus, "--seed", "3")
    assert "different corpus" in str(err.value) and "seed" in str(err.value)


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
    fb = mel_filterbank()
    assert fb.shape == (40, 257) and fb.min() >= 0
    peaks = fb.argmax(1)
    assert np.all(np.diff(peaks) >= 0) and peaks[-1] > 200     # increasing centres up to near Nyquist
    assert np.allclose(fb.max(1)[5:], 1, atol=0.35)             # triangles reach about 1


def test_baseline_eer_is_a_sensible_number(corpus):
    eer = baseline_eer(str(corpus / "test_list.txt"), str(corpus / "wav"))
    assert 5 < eer < 60


def test_baseline_eer_is_zero_for_identical_files(corpus, tmp_path):
    _, trials = read_lists(corpus)
    files = sorted({p for t in trials for p in t[1:]})
    spk = lambda f: f.split("/")[0]
    lines = ["1 %s %s" % (f, f) for f in files]             # identical files: cosine 1
    lines += ["0 %s %s" % (a, b) for a, b in zip(files, files[::-1]) if spk(a) != spk(b)]
    lst = tmp_path / "trials.txt"
    lst.write_text("\n".join(lines) + "\n")
    assert baseline_eer(str(lst), str(corpus / "wav")) < 1e-6


def test_mean_log_mel_sees_the_spectrum(tmp_path):
    t = np.arange(16000) / 16000
    for name, freq in (("low", 300), ("high", 5000)):
        soundfile.write(str(tmp_path / f"{name}.wav"), 0.3 * np.sin(2 * np.pi * freq * t), 16000, subtype="PCM_16")
    low, high = (mean_log_mel(str(tmp_path / f"{n}.wav")) for n in ("low", "high"))
    assert low.argmax() < 10 < 30 < high.argmax()


# ----------------------------------------------------------------------------- augmentation sets
def wavs(folder):
    return sorted(Path(folder).rglob("*.wav"))


def frame_level_spread(x):
    """dB between the 95th and 50th percentile of 25 ms frame energies: small when stationary."""
    frames = x[:len(x) // 400 * 400].reshape(-1, 400).astype(float)
    level = 10 * np.log10((frames ** 2).mean(1) + 1e-3)
    return np.percentile(level, 95) - np.percentile(level, 50)


def test_noise_sets_layout_format_and_counts(corpus):
    kinds = {k: wavs(corpus / "musan" / k) for k in ("noise", "speech", "music")}
    assert [len(kinds[k]) for k in ("noise", "speech", "music")] == [8, 6, 3]
    rirs = wavs(corpus / "rirs")
    assert len(rirs) == 6 and len({p.parent for p in rirs}) == 2        # 3 positions per room
    for path in [p for v in kinds.values() for p in v]:
        info = soundfile.info(str(path))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 80000)
        audio, _ = soundfile.read(str(path), dtype="int16")
        assert 100 < audio.std() and np.abs(audio).max() < 32767
    for path in rirs:
        info = soundfile.info(str(path))
        assert (info.samplerate, info.channels) == (16000, 1) and 0.5 <= info.duration <= 1.0
    # every noise type is there once: four stationary ones and four transient ones
    assert sorted(p.parent.name for p in kinds["noise"]) == sorted(STATIONARY_NOISES + TRANSIENT_NOISES)


def test_noise_sets_load_in_the_augmentation_bank(corpus):
    from speakernet.data import augment
    bank = augment.AugmentBank(corpus / "musan", corpus / "rirs")
    assert {k: len(v) for k, v in bank.files.items()} == {"music": 3, "speech": 6, "noise": 8, "reverb": 6}


def test_babble_comes_from_speakers_of_its_own(corpus):
    train, trials = read_lists(corpus)
    listed = {spk for spk, _ in train} | {p.split("/")[0] for t in trials for p in t[1:]}
    babble = {p.parent.name for p in wavs(corpus / "musan" / "speech")}
    assert babble == {"ns0001", "ns0002"} and not babble & listed
    # voices are drawn from their own seed stream (role 2), so no voice equals a listed one
    voice = lambda role, s: draw_speaker(np.random.default_rng([0, role, s, 2]))["f0"]
    listed_f0 = {voice(0, s) for s in range(4)} | {voice(1, s) for s in range(6)}
    assert not {voice(2, s) for s in range(2)} & listed_f0


def test_noise_types_sound_like_their_kind(corpus):
    read = lambda p: soundfile.read(str(p), dtype="float32")[0]
    by_type = {p.parent.name: read(p) for p in wavs(corpus / "musan" / "noise")}
    for name in ("coloured", "hum", "fan"):
        assert frame_level_spread(by_type[name]) < 6, name          # steady
    for name in ("typing", "knocks", "beeps"):
        assert frame_level_spread(by_type[name]) > 7, name          # events over a quiet floor
    for path in wavs(corpus / "musan" / "music"):                   # tonal: sharp spectral peaks
        x = read(path)[:32768]
        spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        assert spectrum.max() / np.median(spectrum) > 300


def test_rirs_decay_with_their_rt60(corpus):
    for path in wavs(corpus / "rirs"):
        h, _ = soundfile.read(str(path), dtype="float64")
        assert np.argmax(np.abs(h)) < 0.01 * 16000                  # direct path first
        energy = np.cumsum((h ** 2)[::-1])[::-1]                    # Schroeder decay curve
        edc = 10 * np.log10(energy / energy[0] + 1e-20)
        rt60 = 3 * (np.argmax(edc < -25) - np.argmax(edc < -5)) / 16000
        assert 0.15 < rt60 < 0.9, (path, rt60)


def test_noise_sets_are_added_to_an_older_corpus_and_checked_like_it(tmp_path):
    root = make(tmp_path / "c")
    for folder in ("musan", "rirs"):                               # a corpus made before the noise sets
        shutil.rmtree(root / folder)
    (root / "synthetic_noise.json").unlink()
    speech = {p: p.stat().st_mtime_ns for p in (root / "wav").rglob("*.wav")}
    make(root)
    assert len(wavs(root / "musan")) == 17 and len(wavs(root / "rirs")) == 6
    assert {p: p.stat().st_mtime_ns for p in (root / "wav").rglob("*.wav")} == speech
    with pytest.raises(SystemExit) as err:                          # other noise settings: refused
        make(root, "--num_music", "2")
    assert "musan/ or rirs/" in str(err.value) and "num_music" in str(err.value)
    make(root, "--num_music", "2", "--overwrite")
    assert len(wavs(root / "musan" / "music")) == 2
    # an interrupted run (config written, not complete, a file missing) is finished on the next
    cfg = root / "synthetic_noise.json"
    cfg.write_text(cfg.read_text().replace('"complete": true', '"complete": false'))
    victim = wavs(root / "rirs")[0]
    victim.unlink()
    make(root, "--num_music", "2")
    assert victim.exists() and '"complete": true' in cfg.read_text()
    assert {p: p.stat().st_mtime_ns for p in (root / "wav").rglob("*.wav")} == speech
    assert not list(root.rglob("*.tmp"))


def test_foreign_noise_folders_are_refused(tmp_path):
    (tmp_path / "musan" / "noise").mkdir(parents=True)
    (tmp_path / "musan" / "noise" / "real.wav").write_bytes(b"RIFF")
    with pytest.raises(SystemExit) as err:
        make(tmp_path)
    assert "not made by --synthetic" in str(err.value)
    assert (tmp_path / "musan" / "noise" / "real.wav").exists()
