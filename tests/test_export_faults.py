"""python3 -m speakernet.tools.model_tools --export: bad weights, checkpoints, outputs and configs end in exit code 2
with one logged line, and never change a file already on disk."""
import importlib
import os
from pathlib import Path

import pytest
import torch

from speakernet.core import checkpoint
from speakernet.run import plugins
export_cli = importlib.import_module("speakernet.tools.model_tools")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

TINY = ["--export", "ResNetSE34L", "--nOut", "16"]
OLD = b"an earlier export, to be kept\n"


def encoder_checkpoint(path, name="ResNetSE34L", **kwargs):
    """A checkpoint in this project's format holding the weights of one encoder."""
    encoder = plugins.factory("models", name)(**kwargs)
    torch.save({"format": checkpoint.FORMAT,
                "model": {"encoder." + k: v for k, v in encoder.state_dict().items()}}, path)
    return encoder


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def fails(caplog, argv, expected):
    """main(argv) exits 2 with exactly one ERROR line containing `expected`."""
    caplog.clear()
    assert export_cli.main([str(a) for a in argv]) == 2
    messages = errors(caplog)
    assert len(messages) == 1 and expected in messages[0], messages
    assert "\n" not in messages[0]
    return messages[0]


def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))


def test_export_without_weights_is_refused_unless_random_weights(tmp_path, caplog):
    out = tmp_path / "enc.pt"
    fails(caplog, TINY + ["--output", out],
          "--export needs --initial_model CKPT (the trained weights); "
          "pass --random_weights to export an untrained network")
    assert not out.exists()
    assert export_cli.main(TINY + ["--output", str(out), "--random_weights"]) == 0
    assert torch.jit.load(str(out))(torch.randn(1, 8000)).shape == (1, 16)


def test_trained_weights_are_exported_and_replace_only_with_overwrite(tmp_path, caplog):
    ckpt, out = tmp_path / "model.model", tmp_path / "enc.pt"
    encoder = encoder_checkpoint(ckpt, nOut=16).eval()
    out.write_bytes(OLD)
    # Refused before anything is built or loaded: a missing checkpoint is not what is reported.
    fails(caplog, TINY + ["--initial_model", tmp_path / "nope.model", "--output", out],
          f"--output {out} exists; choose another path or pass --overwrite")
    assert out.read_bytes() == OLD
    assert export_cli.main(TINY + ["--initial_model", str(ckpt), "--output", str(out), "--overwrite"]) == 0
    wav = torch.randn(2, 9000)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(out))(wav), encoder(wav), atol=1e-4)
    assert leftovers(tmp_path) == []


def bad_checkpoint(kind, path):
    if kind == "other nOut":
        encoder_checkpoint(path, nOut=24)
    elif kind == "other model":
        encoder_checkpoint(path, "ECAPA_TDNN", nOut=16, channels=32)
    elif kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "malicious pickle":
        torch.save({"model": RunsCode()}, path)
    return path


@pytest.mark.parametrize("kind, expected", [
    ("other nOut", "does not fit this model"),
    ("other model", "does not fit this model"),
    ("random bytes", "is not a readable checkpoint"),
    ("malicious pickle", "is not a readable checkpoint"),
])
def test_unusable_checkpoint_is_one_error_and_keeps_the_old_export(tmp_path, caplog, capfd, kind, expected):
    ckpt, out = bad_checkpoint(kind, tmp_path / "bad.model"), tmp_path / "enc.pt"
    out.write_bytes(OLD)
    message = fails(caplog, TINY + ["--initial_model", ckpt, "--output", out, "--overwrite"], expected)
    assert str(ckpt) in message
    assert out.read_bytes() == OLD and leftovers(tmp_path) == []
    assert "must never run" not in capfd.readouterr().out


def test_failed_export_leaves_no_partial_file(tmp_path, monkeypatch):
    out = tmp_path / "enc.pt"
    out.write_bytes(OLD)

    def crash(encoder, output, *args, **kwargs):
        Path(output).write_bytes(b"half a file")
        raise RuntimeError("killed mid-write")
    monkeypatch.setattr(export_cli, "export_torchscript", crash)
    with pytest.raises(RuntimeError):
        export_cli.main(TINY + ["--random_weights", "--output", str(out), "--overwrite"])
    assert out.read_bytes() == OLD and leftovers(tmp_path) == []


@pytest.mark.parametrize("parent", ["missing folder", "regular file"])
def test_unwritable_output_folder_is_reported_before_the_export(tmp_path, caplog, parent):
    folder = tmp_path / "nowhere"
    if parent == "regular file":
        folder.write_bytes(OLD)
    out = folder / "enc.pt"
    # A missing checkpoint would be the error if the output were checked after loading.
    message = fails(caplog, TINY + ["--initial_model", tmp_path / "nope.model", "--output", out],
                    f"cannot write --output {out}: ")
    assert message.endswith("(choose a writable folder)")
    assert not folder.is_dir() and (parent == "missing folder") != folder.is_file()


def test_read_only_output_folder(tmp_path, caplog, monkeypatch):
    """A folder the process may not write into. chmod does not stop root, so the refusal is the
    operating system's answer to the open, given here for every user alike."""
    folder = tmp_path / "ro"
    folder.mkdir()

    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(export_cli, "open", refused, raising=False)
    fails(caplog, TINY + ["--random_weights", "--output", folder / "enc.pt"],
          f"cannot write --output {folder / 'enc.pt'}: Permission denied (choose a writable folder)")
    assert list(folder.iterdir()) == []


def test_output_that_is_a_folder(tmp_path, caplog):
    fails(caplog, TINY + ["--random_weights", "--output", tmp_path, "--overwrite"],
          f"--output {tmp_path} is a folder (give a file path)")


@pytest.mark.parametrize("config", ["folder", "missing"])
def test_bad_config_is_one_error(tmp_path, caplog, config):
    path = tmp_path if config == "folder" else tmp_path / "options.yaml"
    out = tmp_path / "enc.pt"
    fails(caplog, TINY + ["--random_weights", "--config", path, "--output", out], f"--config {path}")
    assert not out.exists()
