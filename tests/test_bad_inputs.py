"""Bad inputs stop trainSpeakerNet.main with exit code 2 and one clear error line, before any
training and without touching an existing run; the audio-header manifest cache."""
import logging
import os

import numpy as np
import pytest
import soundfile
import torch

from speakernet.core import audio, audio_check
from speakernet.core import checkpoint
import SpeakerNet
import trainSpeakerNet
from conftest import SR, snapshot, tone, train_argv, write_wav
from DatasetLoader import read_train_list
from loss.angleproto import LossFunction as AngleProto
from models.ResNetSE34L import MainModel as ResNetSE34L


@pytest.fixture
def no_training(monkeypatch):
    """Fail loudly if a bad start gets as far as training or writing a checkpoint."""
    def refuse(*args, **kwargs):
        raise AssertionError("training started despite a bad input")
    monkeypatch.setattr(SpeakerNet.Trainer, "train_epoch", refuse)
    monkeypatch.setattr(checkpoint, "save_atomic", refuse)


def existing_run(save_path):
    """An earlier run's folder: a checkpoint, options, a log and scores."""
    (save_path / "model").mkdir(parents=True)
    (save_path / "result").mkdir()
    (save_path / "model" / "model000000001.model").write_bytes(os.urandom(4096))
    (save_path / "options.yaml").write_text("batch_size: 3\n")
    (save_path / "train.log").write_text("earlier run\n")
    (save_path / "result" / "scores.txt").write_text("epoch 1, EER 10.0, MinDCF 0.5\n")


def run_main(argv, caplog):
    """main(argv) -> (exit code, messages of the trainer's ERROR records)."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = trainSpeakerNet.main([str(a) for a in argv])
    errors = [r.getMessage() for r in caplog.records
              if r.name == "trainSpeakerNet" and r.levelno >= logging.ERROR]
    return code, errors


def line_of(path, fragment):
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment} not in {path}")


# ------------------------------------------------------------------ the cases
# Each returns (extra option values, extra flags, fragments the error must contain).

def missing_train_file(c):
    with open(c.train_list, "a") as handle:
        handle.write("spk00 train/spk00/missing.wav\n")
    return {}, (), [f"{c.train_list}:{len(c.train_lines) + 1}", "missing.wav"]


def malformed_train_line(c):
    lines = c.train_list.read_text().splitlines()
    lines[2] = lines[2] + " extra_column"
    c.train_list.write_text("\n".join(lines) + "\n")
    return {}, (), [f"{c.train_list}:3", "3 columns"]


def garbage_wav(c):
    (c.root / "train/spk01/utt2.wav").write_bytes(os.urandom(2000))
    return {}, (), [f"{c.train_list}:{line_of(c.train_list, 'spk01/utt2.wav')}", "spk01/utt2.wav"]


def wav_8khz(c):
    write_wav(c.root / "train/spk02/utt0.wav", tone(np.random.default_rng(0), 8000, 200), sr=8000)
    return {}, (), [f"{c.train_list}:{line_of(c.train_list, 'spk02/utt0.wav')}", "8000"]


def stereo_wav(c):
    mono = tone(np.random.default_rng(0), SR, 200)
    write_wav(c.root / "train/spk03/utt1.wav", np.stack([mono, mono], axis=1))
    return {}, (), [f"{c.train_list}:{line_of(c.train_list, 'spk03/utt1.wav')}", "channels"]


def empty_wav(c):
    write_wav(c.root / "train/spk04/utt3.wav", np.zeros(0))
    return {}, (), [f"{c.train_list}:{line_of(c.train_list, 'spk04/utt3.wav')}", "spk04/utt3.wav"]


def unknown_model(c):
    return {"model": "ResNetSE34LX"}, (), ["ResNetSE34LX", "ResNetSE34L"]


def unknown_trainfunc(c):
    return {"trainfunc": "angleprot"}, (), ["angleprot", "angleproto"]


def missing_trial_file(c):
    lines = c.test_list.read_text().splitlines()
    label, a, _ = lines[3].split()
    lines[3] = f"{label} {a} test/tspk0/nope.wav"
    c.test_list.write_text("\n".join(lines) + "\n")
    return {}, (), [f"{c.test_list}:4", "nope.wav"]


def malformed_trial_line(c):
    lines = c.test_list.read_text().splitlines()
    lines[1] = "2 " + " ".join(lines[1].split()[1:])
    c.test_list.write_text("\n".join(lines) + "\n")
    return {}, (), [f"{c.test_list}:2"]


def missing_train_list(c):
    return {"train_list": c.root / "no_such_list.txt"}, (), ["no_such_list.txt"]


def empty_train_list(c):
    c.train_list.write_text("\n\n")
    return {}, (), [str(c.train_list), "empty"]


def eval_without_model(c):
    return {"initial_model": c.root / "nowhere.model"}, ("eval",), ["nowhere.model"]


def bad_yaml_key(c):
    config = c.root / "bad.yaml"
    config.write_text("bach_size: 3\n")
    return {"config": config}, (), ["bach_size", "batch_size"]


def missing_musan(c):
    return {"musan_path": c.root / "no_musan", "rir_path": c.root / "no_rirs"}, ("augment",), ["no_musan"]


def too_few_classes(c):
    return {"trainfunc": "softmax", "nPerSpeaker": 1, "nClasses": 3}, (), ["--nClasses 3", "6"]


def too_few_views(c):
    return {"nPerSpeaker": 1}, (), ["angleproto", "nPerSpeaker"]


def cuda_without_cuda(c):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    return {"device": "cuda"}, (), ["--device cuda"]


CASES = [missing_train_file, malformed_train_line, garbage_wav, wav_8khz, stereo_wav, empty_wav,
         unknown_model, unknown_trainfunc, missing_trial_file, malformed_trial_line,
         missing_train_list, empty_train_list, eval_without_model, bad_yaml_key, missing_musan,
         too_few_classes, too_few_views, cuda_without_cuda]


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing_run"])
@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_fails_cleanly(corpus, tmp_path, caplog, no_training, case, existing):
    save_path = tmp_path / "exp"
    if existing:
        existing_run(save_path)
    before = snapshot(save_path)
    values, flags, fragments = case(corpus)
    code, errors = run_main(train_argv(corpus, save_path, flags=flags, **values), caplog)
    assert code == 2
    assert len(errors) == 1, errors
    message = errors[0]
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    # Nothing was written, created or changed in the save path.
    assert snapshot(save_path) == before
    assert save_path.exists() == existing


def test_existing_checkpoint_that_does_not_fit(corpus, tmp_path, caplog, no_training):
    """Re-running an experiment folder with a different --nOut: named tensor, nothing touched."""
    save_path = tmp_path / "exp"
    (save_path / "model").mkdir(parents=True)
    model = SpeakerNet.SpeakerNet(ResNetSE34L(nOut=64), AngleProto())
    torch.save({"format": checkpoint.FORMAT, "epoch": 1, "model": model.state_dict()},
               save_path / "model" / "model000000001.model")
    before = snapshot(save_path)
    code, errors = run_main(train_argv(corpus, save_path, nOut=32), caplog)
    assert code == 2
    assert len(errors) == 1 and "fc.weight" in errors[0] and "model000000001.model" in errors[0]
    assert snapshot(save_path) == before


def test_corrupt_existing_checkpoint(corpus, tmp_path, caplog, no_training):
    save_path = tmp_path / "exp"
    existing_run(save_path)
    before = snapshot(save_path)
    code, errors = run_main(train_argv(corpus, save_path), caplog)
    assert code == 2
    assert len(errors) == 1 and "model000000001.model" in errors[0]
    assert snapshot(save_path) == before


def test_good_input_reaches_training(corpus, tmp_path, caplog, no_training):
    """Control for the cases above: the same corpus, unmodified, gets as far as training."""
    with pytest.raises(AssertionError, match="training started"):
        run_main(train_argv(corpus, tmp_path / "exp"), caplog)


def test_batch_size_larger_than_speakers(corpus, tmp_path, caplog, no_training):
    code, errors = run_main(train_argv(corpus, tmp_path / "exp", batch_size=7), caplog)
    assert code == 2 and len(errors) == 1 and "batch_size" in errors[0]


def test_unknown_encoder_type(corpus, tmp_path, caplog, no_training):
    code, errors = run_main(train_argv(corpus, tmp_path / "exp", encoder_type="XYZ"), caplog)
    assert code == 2 and len(errors) == 1 and "XYZ" in errors[0]


def test_cap_below_views_is_rejected(corpus, tmp_path, caplog, no_training):
    code, errors = run_main(train_argv(corpus, tmp_path / "exp", max_seg_per_spk=1), caplog)
    assert code == 2 and len(errors) == 1 and "max_seg_per_spk" in errors[0]


# ------------------------------------------------------------------ manifest cache

@pytest.fixture
def header_reads(monkeypatch):
    calls = []
    original = audio_check._read_header

    def counting(path):
        calls.append(str(path))
        return original(path)
    monkeypatch.setattr(audio_check, "_read_header", counting)
    return calls


def test_manifest_is_reused(corpus, header_reads):
    first = read_train_list(str(corpus.train_list), str(corpus.root))
    assert len(header_reads) == len(corpus.train_lines)
    assert os.path.exists(f"{corpus.train_list}.manifest.npz")
    header_reads.clear()
    second = read_train_list(str(corpus.train_list), str(corpus.root))
    assert header_reads == []
    assert np.array_equal(first.lengths, second.lengths)
    assert list(first.files) == list(second.files)


def test_later_start_makes_no_stat_call_per_file(corpus, monkeypatch):
    read_train_list(str(corpus.train_list), str(corpus.root))
    stats = []
    original = os.stat
    monkeypatch.setattr(audio_check.os, "stat", lambda path, *a, **k: stats.append(str(path)) or original(path, *a, **k))
    read_train_list(str(corpus.train_list), str(corpus.root))
    assert not any(path.endswith(".wav") for path in stats)          # folders and the list only
    assert len(stats) <= 2 + len({os.path.dirname(p) for _, p in corpus.train_lines})   # the list, the root


def test_touched_file_is_reread_only_with_recheck(corpus, header_reads):
    read_train_list(str(corpus.train_list), str(corpus.root))
    target = corpus.root / corpus.train_lines[5][1]
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    header_reads.clear()
    read_train_list(str(corpus.train_list), str(corpus.root))         # its folder did not change
    assert header_reads == []
    read_train_list(str(corpus.train_list), str(corpus.root), recheck=True)
    assert header_reads == [str(target)]
    header_reads.clear()
    read_train_list(str(corpus.train_list), str(corpus.root), recheck=True)   # cached again
    assert header_reads == []


def test_replaced_file_gets_its_new_length(corpus, header_reads):
    """Replacing a file (written beside it, renamed over it) changes its folder: no recheck needed."""
    read_train_list(str(corpus.train_list), str(corpus.root))
    target = corpus.root / corpus.train_lines[2][1]
    stat = target.parent.stat()
    write_wav(target.with_name("new.wav"), tone(np.random.default_rng(9), 12345, 300))
    os.replace(target.with_name("new.wav"), target)
    os.utime(target.parent, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))  # coarse clocks
    header_reads.clear()
    train = read_train_list(str(corpus.train_list), str(corpus.root))
    assert str(target) in header_reads
    assert train.lengths[2] == 12345 == soundfile.info(str(target)).frames


def test_file_broken_in_place_is_caught_by_recheck(corpus, header_reads):
    read_train_list(str(corpus.train_list), str(corpus.root))
    target = corpus.root / corpus.train_lines[4][1]
    write_wav(target, tone(np.random.default_rng(9), 8000, 300), sr=8000)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 2_000_000_000))
    with pytest.raises(audio.ListError, match=f"{corpus.train_list}:5"):
        read_train_list(str(corpus.train_list), str(corpus.root), recheck=True)


def test_corrupt_manifest_is_ignored(corpus, header_reads):
    read_train_list(str(corpus.train_list), str(corpus.root))
    with open(f"{corpus.train_list}.manifest.npz", "wb") as handle:
        handle.write(b"not a numpy file")
    header_reads.clear()
    train = read_train_list(str(corpus.train_list), str(corpus.root))
    assert len(header_reads) == len(corpus.train_lines)
    assert [soundfile.info(str(f)).frames for f in train.files] == train.lengths.tolist()


def test_wav_header_parser_agrees_with_libsndfile(tmp_path):
    def header(path):
        with open(path, "rb") as handle:
            return audio_check._wav_header(handle)

    cases = [("PCM_16", 12345, 1, 16000), ("FLOAT", 777, 1, 16000), ("PCM_24", 1000, 2, 8000),
             ("PCM_32", 5, 1, 16000), ("DOUBLE", 100, 1, 44100)]
    for subtype, frames, channels, rate in cases:
        path = tmp_path / f"{subtype}.wav"
        soundfile.write(str(path), np.zeros((frames, channels)), rate, subtype=subtype)
        info = soundfile.info(str(path))
        assert header(path) == (info.samplerate, info.channels, info.frames), subtype
    flac = tmp_path / "a.flac"
    soundfile.write(str(flac), np.zeros(100), 16000)
    assert header(flac) is None                                       # libsndfile reads it
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes((tmp_path / "PCM_16.wav").read_bytes()[:1044])
    assert header(truncated) == (16000, 1, 500)                       # what the file holds
