"""Checkpoint averaging (speakernet/run/averaging.py): the mean of the last N checkpoints' weights,
checked against a direct computation, usable by --eval, and its bad inputs."""
import logging

import pytest
import torch

import trainSpeakerNet
from conftest import train_argv
from speakernet.run import averaging
from speakernet.core import checkpoint


def fake_checkpoint(path, epoch, scale):
    state = {"format": checkpoint.FORMAT, "epoch": epoch, "options": {"model": "ResNetSE34L"},
             "model": {"encoder.w": torch.full((2, 3), scale), "encoder.bn.running_var": torch.full((3,), 2 * scale),
                       "encoder.bn.num_batches_tracked": torch.tensor(epoch * 10)}}
    torch.save(state, path)


def test_the_average_is_the_mean_of_the_last_checkpoints(tmp_path):
    (tmp_path / "model").mkdir()
    for epoch, scale in ((1, 100.0), (2, 1.0), (3, 2.0), (4, 6.0)):
        fake_checkpoint(checkpoint.checkpoint_path(tmp_path / "model", epoch), epoch, scale)
    out = averaging.average_last(tmp_path, 3)
    assert out.name == "average_2-4.model"
    state = checkpoint.load_file(out)
    assert torch.equal(state["model"]["encoder.w"], torch.full((2, 3), 3.0))
    assert torch.equal(state["model"]["encoder.bn.running_var"], torch.full((3,), 6.0))
    assert int(state["model"]["encoder.bn.num_batches_tracked"]) == 40      # the newest's
    assert state["averaged_epochs"] == [2, 3, 4] and state["epoch"] == 4
    assert not checkpoint.NAME.match(out.name)           # never taken for a resume point


def test_an_averaged_checkpoint_evaluates(corpus, tmp_path):
    save = tmp_path / "run"
    assert trainSpeakerNet.main(train_argv(corpus, save, max_epoch=2, test_interval=1)) == 0
    out = averaging.average_last(save, 2, tmp_path / "avg.model")
    first = checkpoint.load_file(save / "model" / "model000000001.model")["model"]
    second = checkpoint.load_file(save / "model" / "model000000002.model")["model"]
    key = next(k for k, v in first.items() if v.is_floating_point() and not torch.equal(v, second[k]))
    assert torch.allclose(checkpoint.load_file(out)["model"][key], (first[key] + second[key]) / 2)
    assert trainSpeakerNet.main(train_argv(corpus, tmp_path / "eval", flags=["eval"],
                                           initial_model=out)) == 0


@pytest.mark.parametrize("last, prepare, words", [
    (5, None, "holds 2 epoch checkpoints; lower --last"),
    (0, None, "average at least 1"),
    (2, "exists", "exists; give another --output"),
    (2, "other", "holds another model"),
])
def test_bad_inputs_stop_with_one_line(tmp_path, caplog, last, prepare, words):
    (tmp_path / "model").mkdir()
    for epoch in (1, 2):
        fake_checkpoint(checkpoint.checkpoint_path(tmp_path / "model", epoch), epoch, float(epoch))
    out = tmp_path / "avg.model"
    if prepare == "exists":
        out.write_bytes(b"keep me")
    if prepare == "other":
        state = checkpoint.load_file(checkpoint.checkpoint_path(tmp_path / "model", 1))
        state["model"]["encoder.w"] = torch.zeros(4)
        torch.save(state, checkpoint.checkpoint_path(tmp_path / "model", 1))
    with caplog.at_level(logging.ERROR):
        code = averaging.main(["--save_path", str(tmp_path), "--last", str(last), "--output", str(out)])
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and words in errors[0]
    if prepare == "exists":
        assert out.read_bytes() == b"keep me"
