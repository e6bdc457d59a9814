"""speakernet/model/embedder.py: the checkpoint's own model and protocol, scores equal to --eval's score
file, audio of any format, verify with a calibration, and --verify on the command line."""
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

import trainSpeakerNet
from conftest import SR, make_corpus, read_all, train_argv, write_wav
from speakernet.eval.eval_crops import eval_crop_starts
from speakernet.eval import calibration as cal
from speakernet.core import checkpoint
from speakernet.core.audio import crop_samples
from speakernet.model.embedder import CalibrationMissing, Embedder
from speakernet.core.errors import CheckpointError, UserError


def errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def read_scores(path):
    rows = [line.split() for line in Path(path).read_text().splitlines()]
    return [(float(r[0]), int(r[1]), r[2], r[3]) for r in rows]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained model, its --eval score file, and a calibrated copy (--calibrate on the
    odd trials)."""
    root = tmp_path_factory.mktemp("embedder")
    corpus = make_corpus(root / "corpus", train_speakers=4, train_utts=3, test_speakers=4, test_utts=3)
    assert trainSpeakerNet.main(train_argv(corpus, root / "run", max_epoch=1)) == 0
    ckpt = root / "run" / "model" / "model000000001.model"
    common = ["--model", "ResNetSE34L", "--trainfunc", "angleproto", "--nOut", "32", "--eval_frames", "30",
              "--num_eval", "2", "--device", "cpu", "--nDataLoaderThread", "0", "--test_path",
              str(corpus.root), "--eval"]
    assert trainSpeakerNet.main(common + ["--test_list", str(corpus.test_list), "--initial_model", str(ckpt),
                                          "--save_path", str(root / "eval")]) == 0
    lines = corpus.test_list.read_text().splitlines()
    (root / "dev.txt").write_text("\n".join(lines[0::2]) + "\n")
    calibrated_ckpt = root / "calibrated" / "model000000001.model"
    calibrated_ckpt.parent.mkdir()
    shutil.copy(ckpt, calibrated_ckpt)
    assert trainSpeakerNet.main(common + ["--test_list", str(corpus.test_list), "--calibrate",
                                          str(root / "dev.txt"), "--initial_model", str(calibrated_ckpt),
                                          "--save_path", str(root / "cal")]) == 0
    return corpus, ckpt, root / "eval" / "result" / "scores_eval_test_list.txt", \
        root / "calibrated" / "model000000001.calibrated.model"


def test_scores_equal_the_eval_score_file(run):
    corpus, ckpt, scores_file, _ = run
    embedder = Embedder.from_checkpoint(ckpt)
    assert (embedder.eval_frames, embedder.num_eval, embedder.normalize) == (30, 2, True)
    rows = read_scores(scores_file)
    assert len(rows) == len(corpus.trials)
    worst = max(abs(embedder.score(corpus.root / a, corpus.root / b) - score) for score, _, a, b in rows)
    assert worst <= 1e-5


def test_embedding_follows_the_evaluation_protocol(run):
    corpus, ckpt, _, _ = run
    embedder = Embedder.from_checkpoint(ckpt)
    path = corpus.root / corpus.test_files[0]
    audio = read_all(path)
    # Independently: evenly spaced crops (wrapped when short), one forward pass each, the
    # mean of the unit vectors.
    length = crop_samples(30)
    padded = np.pad(audio, (0, max(0, length - len(audio))), mode="wrap")
    units = []
    for start in eval_crop_starts(len(padded), length, 2):
        with torch.no_grad():
            e = embedder.encoder(torch.from_numpy(padded[start:start + length]).unsqueeze(0))[0]
        units.append(F.normalize(e, dim=0))
    expected = torch.stack(units).mean(0)
    for given in (path, str(path), audio, torch.from_numpy(audio)):
        assert torch.allclose(embedder.embed(given), expected, atol=1e-6)
    int16 = np.round(audio * 32768).astype(np.int16)           # the file is PCM_16: exact
    assert torch.allclose(embedder.embed(int16), expected, atol=1e-6)
    several = embedder.embed([path, corpus.root / corpus.test_files[1]])
    assert several.shape == (2, 32) and torch.allclose(several[0], expected, atol=1e-6)
    short = audio[:1000]                                       # shorter than a crop: wrapped
    wrapped = np.pad(short, (0, length - 1000), mode="wrap")
    with torch.no_grad():
        one = F.normalize(embedder.encoder(torch.from_numpy(wrapped).unsqueeze(0))[0], dim=0)
    assert torch.allclose(embedder.embed(short), one, atol=1e-6)      # num_eval equal crops


def test_whole_file_protocol_with_eval_frames_zero(run):
    corpus, ckpt, _, _ = run
    embedder = Embedder.from_checkpoint(ckpt)
    embedder.eval_frames = 0
    audio = read_all(corpus.root / corpus.test_files[2])
    with torch.no_grad():
        whole = F.normalize(embedder.encoder(torch.from_numpy(audio).unsqueeze(0))[0], dim=0)
    assert torch.allclose(embedder.embed(audio), whole, atol=1e-6)


def test_other_formats_rates_and_channels(run, tmp_path, caplog):
    corpus, ckpt, _, _ = run
    embedder = Embedder.from_checkpoint(ckpt)
    path = corpus.root / corpus.test_files[0]
    audio = read_all(path)
    reference = embedder.embed(path)
    flac = tmp_path / "a.flac"
    soundfile.write(str(flac), audio, SR, subtype="PCM_16")           # lossless: the same samples
    assert torch.allclose(embedder.embed(flac), reference, atol=1e-6)
    caplog.set_level(logging.WARNING)
    stereo = write_wav(tmp_path / "stereo.wav", np.stack([audio, audio], axis=1))
    assert torch.allclose(embedder.embed(stereo), reference, atol=1e-6)
    assert any("2 channels: averaging" in m for m in caplog.messages)
    caplog.clear()
    low = AF.resample(torch.from_numpy(audio), SR, 8000).numpy()
    low_path = write_wav(tmp_path / "low.wav", low, sr=8000, subtype="FLOAT")
    expected = embedder.embed(AF.resample(torch.from_numpy(low), 8000, SR).numpy())
    assert torch.allclose(embedder.embed(low_path), expected, atol=1e-6)
    assert any("8000 Hz: resampling to 16000 Hz" in m for m in caplog.messages)
    # Band-limited to 4 kHz, still close to the original embedding.
    assert float(torch.dot(F.normalize(expected, dim=0), F.normalize(reference, dim=0))) > 0.9


def test_bad_inputs_are_one_line_user_errors(run, tmp_path):
    corpus, ckpt, _, _ = run
    embedder = Embedder.from_checkpoint(ckpt)
    garbage = tmp_path / "noise.wav"
    garbage.write_bytes(b"RIFF" + bytes(range(256)) * 4)
    cases = [(tmp_path / "missing.wav", "missing.wav: not found"),
             (tmp_path, "a folder"),
             (garbage, f"audio file {garbage} cannot be read"),
             (np.zeros((2, 100), dtype=np.float32), "must be 1-D"),
             (np.array([0.1, np.nan], dtype=np.float32), "NaN or Inf"),
             ({"not": "audio"}, "cannot embed a dict")]
    for item, expected in cases:
        with pytest.raises(UserError) as err:
            embedder.embed(item)
        assert expected in str(err.value) and "\n" not in str(err.value)


def test_checkpoints_without_options_or_with_an_unknown_model(run, tmp_path):
    _, ckpt, _, _ = run
    stored = checkpoint.load_file(ckpt)
    unknown = tmp_path / "unknown.model"
    torch.save({**stored, "options": {**stored["options"], "model": "NoSuchNet"}}, unknown)
    bare = tmp_path / "bare.model"
    torch.save(stored["model"], bare)
    cases = [(unknown, "was trained with model 'NoSuchNet', which this copy of the project lacks"),
             (bare, "holds no run options naming the model"),
             (tmp_path / "missing.model", "not found")]
    for path, expected in cases:
        with pytest.raises(CheckpointError) as err:
            Embedder.from_checkpoint(path)
        assert expected in str(err.value) and "\n" not in str(err.value)


def test_verify_uses_the_calibration_and_the_bayes_threshold(run):
    corpus, ckpt, scores_file, calibrated_ckpt = run
    embedder = Embedder.from_checkpoint(calibrated_ckpt)
    stored = cal.Calibration.from_dict(checkpoint.load_file(calibrated_ckpt)["calibration"])
    assert embedder.calibration == stored and stored.prior == 0.05
    score, _, a, b = read_scores(scores_file)[0]
    result = embedder.verify(corpus.root / a, corpus.root / b)
    assert result.score == pytest.approx(score, abs=1e-5)
    assert result.llr == pytest.approx(stored.scale * result.score + stored.offset, rel=1e-9, abs=1e-9)
    assert result.threshold == pytest.approx(math.log(0.95 / 0.05))
    assert result.accept == (result.llr >= result.threshold) and result.basis == "calibration"
    # Another prior moves the threshold: at p = 0.5 it is 0.
    at_half = embedder.verify(corpus.root / a, corpus.root / b, p_target=0.5)
    assert at_half.threshold == 0 and at_half.accept == (at_half.llr >= 0)
    assert embedder.llr(corpus.root / a, corpus.root / b) == pytest.approx(result.llr)
    with pytest.raises(UserError, match="p_target must lie in"):
        embedder.verify(corpus.root / a, corpus.root / b, p_target=1.5)


def test_verify_without_a_calibration(run, tmp_path):
    corpus, ckpt, _, _ = run
    a, b = corpus.root / corpus.test_files[0], corpus.root / corpus.test_files[1]
    with pytest.raises(CalibrationMissing, match="has no calibration .* --calibrate DEV_TRIALS"):
        Embedder.from_checkpoint(ckpt).verify(a, b)
    # A stored score threshold decides without an LLR.
    with_threshold = tmp_path / "threshold.model"
    torch.save({**checkpoint.load_file(ckpt), "eer_threshold": 0.5}, with_threshold)
    result = Embedder.from_checkpoint(with_threshold).verify(a, b)
    assert result.llr is None and result.basis == "eer_threshold"
    assert result.accept == (result.score >= 0.5)


def test_verify_on_the_command_line(run, caplog):
    corpus, ckpt, _, calibrated_ckpt = run
    a, b = corpus.root / corpus.test_files[0], corpus.root / corpus.test_files[3]
    caplog.set_level(logging.INFO)
    assert trainSpeakerNet.main(["--verify", str(a), str(b), "--initial_model", str(calibrated_ckpt)]) == 0
    expected = Embedder.from_checkpoint(calibrated_ckpt).verify(a, b)
    assert expected.describe() in caplog.messages
    assert f"score {expected.score:.6f}, LLR {expected.llr:.4f}" in expected.describe()
    caplog.clear()
    # An epoch checkpoint: the score, and a warning that a decision needs another checkpoint.
    assert trainSpeakerNet.main(["--verify", str(a), str(b), "--initial_model", str(ckpt)]) == 0
    assert not errors(caplog)
    assert any("has no calibration" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    caplog.clear()
    assert trainSpeakerNet.main(["--verify", str(a), str(corpus.root / "nope.wav"),
                                 "--initial_model", str(calibrated_ckpt)]) == 2
    assert errors(caplog) == [f"audio file {corpus.root / 'nope.wav'}: not found (give the path of a sound file)"]
    caplog.clear()
    assert trainSpeakerNet.main(["--verify", str(a), str(b)]) == 2
    assert "--verify needs --initial_model" in errors(caplog)[0]
