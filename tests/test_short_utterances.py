"""Short-utterance evaluation (--eval_seconds): each test file cut to its middle segment,
checked against files cut here and written to disk, and its bad inputs."""
import json
import logging

import numpy as np
import pytest
import torch

import trainSpeakerNet
from conftest import SR, read_all, train_argv, write_wav
from speakernet.eval.eval_crops import middle
from SpeakerNet import SpeakerNet, Trainer
from models.ResNetSE34L import MainModel


def test_the_middle_segment_is_taken_and_short_files_stay_whole():
    audio = np.arange(10, dtype=np.float32)
    assert middle(audio, 4).tolist() == [3, 4, 5, 6]
    assert middle(audio, 3).tolist() == [3, 4, 5]
    assert middle(audio, 20) is audio and middle(audio, 0) is audio


@pytest.mark.parametrize("eval_frames", [0, 20])
def test_cut_embeddings_equal_those_of_files_cut_beforehand(corpus, tmp_path, eval_frames):
    torch.manual_seed(0)
    trainer = Trainer(SpeakerNet(MainModel(nOut=16), torch.nn.Identity()), None, None, None,
                      torch.device("cpu"))
    files = corpus.test_files
    lengths = np.array([len(read_all(corpus.root / f)) for f in files])
    segment = int(0.5 * SR)
    for f in files:
        write_wav(tmp_path / f, middle(read_all(corpus.root / f), segment))
    cut_lengths = np.array([len(read_all(tmp_path / f)) for f in files])
    assert (cut_lengths < lengths).any()
    cut = trainer.extract(files, lengths, corpus.root, eval_frames, 2, 0, segment=segment)
    written = trainer.extract(files, cut_lengths, tmp_path, eval_frames, 2, 0)
    assert torch.allclose(cut, written, atol=1e-5)


def test_eval_reports_each_duration(corpus, tmp_path, caplog):
    save = tmp_path / "run"
    assert trainSpeakerNet.main(train_argv(corpus, save, max_epoch=1)) == 0
    with caplog.at_level(logging.INFO):
        assert trainSpeakerNet.main(train_argv(corpus, save, flags=["eval"], eval_seconds="0.5,1")) == 0
    for seconds in ("0.5", "1"):
        report = json.loads((save / "result" / f"results_eval_{seconds}s.json").read_text())
        assert report["lists"]
    assert sum("cut to its middle" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("flags, seconds, words", [
    (["eval"], "0", "'eval_seconds': 0 in '0' is not a duration in seconds above 0"),
    (["eval"], "[1, -2]", "-2 in '[1, -2]' is not a duration in seconds above 0"),
    ([], "1", "--eval_seconds cuts the test files of an --eval run; add --eval"),
])
def test_bad_durations_stop_with_one_line(corpus, tmp_path, caplog, config, flags, seconds, words):
    path = config(f"eval_seconds: {seconds}\n")
    with caplog.at_level(logging.ERROR):
        code = trainSpeakerNet.main(train_argv(corpus, tmp_path / "run", flags=flags, config=path))
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and words in errors[0]
    assert not (tmp_path / "run").exists()


def test_a_bad_duration_on_the_command_line_is_argparse_s_usage_error(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        trainSpeakerNet.main(train_argv(corpus, tmp_path / "run", flags=["eval"], eval_seconds="0"))
    assert stop.value.code == 2
    assert "--eval_seconds: 0 in '0' is not a duration in seconds above 0" in capsys.readouterr().err
