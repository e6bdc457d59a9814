"""Hostile inputs to the Python API (speakernet/model/embedder.py) and to --verify / --calibrate: each
gives the correct result or one UserError line (exit status 2 on the command line)."""
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional as AF

import trainSpeakerNet
from conftest import SR, read_all, train_argv, write_wav
from test_calibration import eval_argv, noisy_corpus
from speakernet.eval import calibration as cal
from speakernet.core import checkpoint
from speakernet.model.embedder import Embedder
from speakernet.core.errors import CheckpointError, OptionError, UserError


def one_line_error(call, kind=UserError):
    """The message of the `kind` error `call` raises, checked to be a single line."""
    with pytest.raises(kind) as err:
        call()
    message = str(err.value)
    assert message and "\n" not in message
    return message


def records(caplog, level):
    return [r.getMessage() for r in caplog.records if r.levelname == level]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model trained one epoch (its epoch checkpoint has no calibration and no threshold),
    a calibrated copy of it, and a test file's samples."""
    root = tmp_path_factory.mktemp("hostile")
    corpus = noisy_corpus(root / "corpus")
    assert trainSpeakerNet.main(train_argv(corpus, root / "run", max_epoch=1)) == 0
    ckpt = root / "run" / "model" / "model000000001.model"
    calibrated = root / "copies" / "model000000001.calibrated.model"
    calibrated.parent.mkdir()
    torch.save({**checkpoint.load_file(ckpt), "calibration": cal.Calibration(2.0, -1.0, 0.05).to_dict()},
               calibrated)
    path = corpus.root / corpus.test_files[0]
    return corpus, ckpt, calibrated, path, read_all(path)


@pytest.fixture(scope="module")
def embedder(run):
    return Embedder.from_checkpoint(run[1])


# ---------------------------------------------------------------------------- arrays

def test_integer_pcm_is_scaled_as_libsndfile_reads_it(run, embedder, tmp_path):
    pcm16 = np.round(run[4] * 32767).astype(np.int16)
    wav = tmp_path / "pcm16.wav"
    soundfile.write(str(wav), pcm16, SR, subtype="PCM_16")
    expected = read_all(wav)                                  # libsndfile's float samples
    same_samples = {"int16": pcm16, "int32": pcm16.astype(np.int32) << 16,
                    "big-endian int16": pcm16.astype(">i2")}
    for name, array in same_samples.items():
        assert np.array_equal(embedder.load(array), expected), name
    pcm8 = (pcm16 >> 8).astype(np.int8)                        # 8-bit: the top byte
    coarse = pcm8.astype(np.int16) << 8
    for array in (pcm8, (pcm8.astype(np.int16) + 128).astype(np.uint8)):
        assert np.array_equal(embedder.load(array), embedder.load(coarse)), array.dtype
    assert torch.allclose(embedder.embed(same_samples["int32"]), embedder.embed(wav), atol=1e-6)


@pytest.mark.parametrize("array", [np.zeros(800, np.int64), np.zeros(800, np.uint16), np.zeros(800, bool),
                                   np.zeros(800, np.complex64), np.array(["a", "b"]),
                                   torch.zeros(800, dtype=torch.complex64)],
                         ids=["int64", "uint16", "bool", "complex", "str", "complex tensor"])
def test_dtypes_that_are_not_audio_are_refused(embedder, array):
    message = one_line_error(lambda: embedder.embed(array))
    assert "is not audio samples" in message and str(array.dtype).removeprefix("torch.") in message


def test_an_array_at_another_rate_is_resampled(run, embedder, tmp_path):
    low = AF.resample(torch.from_numpy(run[4]), SR, 8000).numpy()
    low_file = write_wav(tmp_path / "low.wav", low, sr=8000, subtype="FLOAT")
    assert torch.allclose(embedder.embed(low, sample_rate=8000), embedder.embed(low_file), atol=1e-6)
    assert torch.allclose(embedder.embed(run[4], sample_rate=SR), embedder.embed(run[4]), atol=1e-6)
    for rate in (0, -8000, 8000.5, math.nan, "16k", True):
        assert "sample_rate must be a whole number" in one_line_error(
            lambda: embedder.embed(low, sample_rate=rate))


def test_a_rate_that_resamples_only_slowly_is_refused_at_once(run, embedder, tmp_path):
    odd = write_wav(tmp_path / "odd.wav", run[4], sr=44101)
    for call in (lambda: embedder.embed(run[4], sample_rate=44101), lambda: embedder.embed(odd)):
        assert "44101 Hz" in one_line_error(call) and "ffmpeg" in one_line_error(call)


def test_channels_tensors_and_empty_or_non_finite_arrays(run, embedder):
    audio = run[4]
    reference = embedder.embed(audio)
    for one_channel in (audio[:, None], audio[None, :], torch.from_numpy(audio).requires_grad_(),
                        torch.from_numpy(audio).to_sparse()):
        assert torch.allclose(embedder.embed(one_channel), reference, atol=1e-6)
    half = torch.from_numpy(audio).bfloat16()
    assert torch.allclose(embedder.embed(half), embedder.embed(half.float().numpy()), atol=1e-6)
    cases = [(np.stack([audio, audio]), "down-mix"), (np.zeros((2, 2, 100), np.float32), "must be 1-D"),
             (np.zeros((), np.float32), "must be 1-D"), (np.zeros(0, np.float32), "empty"),
             (torch.zeros(0), "empty"), (np.r_[audio[:10], np.inf, np.nan], "2 NaN or Inf samples"),
             ([0.1, 0.2], "a list or tuple is several inputs")]
    for item, expected in cases:
        assert expected in one_line_error(lambda: embedder.embed(item))
    assert "not lists" in one_line_error(lambda: embedder.score([audio, audio], audio))


def test_a_path_that_is_not_a_regular_file(run, embedder, tmp_path):
    pipe = tmp_path / "pipe.wav"
    os.mkfifo(pipe)
    assert "not a regular file" in one_line_error(lambda: embedder.embed(pipe))


def test_an_input_shorter_than_one_window_is_warned_about(run, embedder, caplog):
    caplog.set_level(logging.WARNING)
    embedder.embed(run[4][:1])
    (crop,) = records(caplog, "WARNING")
    assert "has 1 samples, fewer than 400 (one 25 ms window)" in crop
    caplog.clear()
    whole = Embedder(embedder.encoder, 0, 1, source="whole")
    whole.embed(run[3])                                     # a normal file: no warning
    whole.embed(run[4][:1])
    (message,) = records(caplog, "WARNING")
    assert "whole-file scoring wraps it around to 400 samples" in message


# ---------------------------------------------------------------------------- devices and decisions

def test_a_bad_device_is_one_line_before_the_checkpoint_is_read(run, tmp_path, caplog):
    for device in ("gpu", "cuda:abc", "CPU", 3):
        assert "use auto, cpu, cuda or cuda:N" in one_line_error(
            lambda: Embedder.from_checkpoint(tmp_path / "missing.model", device=device), OptionError)
    # No CUDA here: not available; with CUDA: past the last device.
    assert "cuda:99" in one_line_error(lambda: Embedder.from_checkpoint(run[1], device="cuda:99"), OptionError)
    assert "not found" in one_line_error(lambda: Embedder.from_checkpoint(tmp_path / "missing.model"))
    assert "NoneType" in one_line_error(lambda: Embedder.from_checkpoint(None))
    assert trainSpeakerNet.main(["--verify", str(run[3]), str(run[3]), "--initial_model", str(run[2]),
                                 "--device", "cuda:x"]) == 2
    assert records(caplog, "ERROR") == ["--device 'cuda:x': use auto, cpu, cuda or cuda:N"]


def test_decision_prior_and_costs_are_checked(run, tmp_path):
    calibrated = Embedder.from_checkpoint(run[2])
    a = run[3]
    assert calibrated.verify(a, a, c_fa=2.0).threshold == pytest.approx(math.log(2 * 0.95 / 0.05))
    for name, value in (("c_fa", 0), ("c_miss", -1.0), ("c_fa", math.inf), ("c_miss", "1"), ("c_fa", math.nan)):
        message = one_line_error(lambda: calibrated.verify(a, a, **{name: value}))
        assert f"{name} must be a positive finite number" in message
    for prior in (0, 1, math.nan, "0.5"):
        assert "p_target must lie in (0, 1)" in one_line_error(lambda: calibrated.verify(a, a, p_target=prior))
    # A stored calibration with a zero cost is refused where the checkpoint is read.
    stored = checkpoint.load_file(run[2])
    zero_cost = tmp_path / "zero_cost.model"
    torch.save({**stored, "calibration": {**stored["calibration"], "c_fa": 0.0}}, zero_cost)
    assert "not a valid score calibration" in one_line_error(lambda: Embedder.from_checkpoint(zero_cost),
                                                             CheckpointError)


def test_a_score_threshold_ignores_the_prior_with_a_warning(run, caplog):
    thresholded = Embedder(Embedder.from_checkpoint(run[1]).encoder, 30, 2, eer_threshold=0.5)
    caplog.set_level(logging.WARNING)
    result = thresholded.verify(run[3], run[3], p_target=0.3)
    assert result.basis == "eer_threshold" and result.accept == (result.score >= 0.5)
    assert any("p_target and the costs do not apply" in m for m in records(caplog, "WARNING"))


# ---------------------------------------------------------------------------- the command line

def test_verify_with_an_epoch_checkpoint_logs_the_score_and_one_warning(run, caplog):
    corpus, ckpt, _, a, _ = run
    b = corpus.root / corpus.test_files[-1]
    caplog.set_level(logging.INFO)
    assert trainSpeakerNet.main(["--verify", str(a), str(b), "--initial_model", str(ckpt)]) == 0
    assert f"score {Embedder.from_checkpoint(ckpt).score(a, b):.6f}" in records(caplog, "INFO")
    (warning,) = records(caplog, "WARNING")
    assert "best.model" in warning and "--calibrate" in warning and not records(caplog, "ERROR")


def test_verify_with_hostile_files(run, tmp_path, caplog):
    a, ckpt = run[3], run[2]
    text = tmp_path / "notes.wav"
    text.write_text("not audio\n")
    low = write_wav(tmp_path / "low.wav", AF.resample(torch.from_numpy(run[4]), SR, 8000).numpy(), sr=8000)
    for other in (tmp_path, text):
        caplog.clear()
        assert trainSpeakerNet.main(["--verify", str(a), str(other), "--initial_model", str(ckpt)]) == 2
        (message,) = records(caplog, "ERROR")
        assert str(other) in message
    caplog.clear()
    assert trainSpeakerNet.main(["--verify", str(a), str(low), "--initial_model", str(ckpt)]) == 0
    assert any("8000 Hz: resampling to 16000 Hz" in m for m in records(caplog, "WARNING"))


def test_recalibrating_a_calibrated_checkpoint_writes_a_numbered_copy(run, tmp_path, caplog):
    corpus, _, calibrated, _, _ = run
    names = ["x.model"]
    for _ in range(3):                  # calibrating each output again: .calibrated, .2, .3
        names.append(cal.calibrated_path(Path("m") / names[-1]).name)
    assert names[1:] == ["x.calibrated.model", "x.calibrated.2.model", "x.calibrated.3.model"]
    for name in ("x.calibrated.pt", "x.2.model", "calibrated.model"):
        target = cal.calibrated_path(Path("m") / name)
        assert target.parent == Path("m") and target.name != name and target.name.endswith(".model")
    source = tmp_path / calibrated.name
    shutil.copy(calibrated, source)
    before = source.read_bytes()
    lines = corpus.test_list.read_text().splitlines()
    (tmp_path / "dev.txt").write_text("\n".join(lines[0::2]) + "\n")
    (tmp_path / "eval.txt").write_text("\n".join(lines[1::2]) + "\n")
    argv = eval_argv(corpus, tmp_path / "out", "--calibrate", tmp_path / "dev.txt", "--test_list",
                     tmp_path / "eval.txt", "--initial_model", source)
    assert trainSpeakerNet.main(argv) == 0
    written = tmp_path / "model000000001.calibrated.2.model"
    assert source.read_bytes() == before
    assert checkpoint.load_file(written)["calibrated_from"] == str(source)
    caplog.clear()
    assert trainSpeakerNet.main(argv) == 2                 # the copy exists: refused, input untouched
    (message,) = records(caplog, "ERROR")
    assert f"--calibrate would write {written}, which exists" in message
    assert source.read_bytes() == before
