"""python3 -m speakernet.tools.model_tools --export MODEL --format onnx: the whole encoder (front end included) with
dynamic batch and time axes, checked with onnxruntime; failures exit 2 and keep no file."""
import importlib
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from speakernet.core import checkpoint
from speakernet.run import plugins

export_cli = importlib.import_module("speakernet.tools.model_tools")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

TINY = ["--export", "ResNetSE34L", "--nOut", "16", "--format", "onnx"]
CALIBRATION = {"scale": 12.5, "offset": -7.25, "prior": 0.05, "source": "dev.txt", "version": 1}


def errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export of a checkpoint (with a calibration entry), shared by the tests here."""
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    encoder = plugins.factory("models", "ResNetSE34L")(nOut=16).eval()
    ckpt = folder / "model.model"
    torch.save({"format": checkpoint.FORMAT, "options": {"model": "ResNetSE34L", "nOut": 16,
                                                         "eval_frames": 150, "num_eval": 10},
                "model": {"encoder." + k: v for k, v in encoder.state_dict().items()},
                "calibration": CALIBRATION}, ckpt)
    out = folder / "enc.onnx"
    records, logger = Records(), logging.getLogger("speakernet.tools.model_tools")
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        assert export_cli.main(TINY + ["--initial_model", str(ckpt), "--output", str(out)]) == 0
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    return encoder, ckpt, out, records.messages


def run_onnx(path, wav):
    settings = onnxruntime.SessionOptions()
    settings.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: wav.numpy()})[0]


def test_onnx_file_matches_the_eager_encoder_on_other_batches_and_lengths(exported):
    encoder, _, out, messages = exported
    assert leftovers(out.parent) == []
    checks = [m for m in messages if m.startswith("ONNX check ResNetSE34L")]
    assert len(checks) == 3                         # three lengths, each logged with its figures
    assert all("max abs difference" in m and "cosine" in m for m in checks)
    lengths = {int(m.split(" x ")[1].split()[0]) for m in checks}
    assert len(lengths) == 3 and 32240 not in lengths          # none is the exported example's
    # Independently of the exporter's own check: other batch sizes and lengths, the shortest
    # declared input (one 25 ms window) included.
    generator = torch.Generator().manual_seed(1)
    for batch, samples in [(4, 12345), (1, 400), (2, 70001)]:
        wav = torch.randn(batch, samples, generator=generator)
        with torch.no_grad():
            expected = encoder(wav).numpy()
        got = run_onnx(out, wav)
        assert got.shape == expected.shape == (batch, 16)
        assert np.abs(got - expected).max() < 1e-4
        cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cosine.min() > 0.99999


def test_onnx_axes_are_dynamic_and_metadata_carry_the_calibration(exported):
    _, ckpt, out, _ = exported
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    (wav,) = model.graph.input
    dims = wav.type.tensor_type.shape.dim
    assert len(dims) == 2 and all(d.dim_param and not d.dim_value for d in dims)     # batch, samples
    (embedding,) = model.graph.output
    assert embedding.type.tensor_type.shape.dim[0].dim_param
    assert embedding.type.tensor_type.shape.dim[1].dim_value == 16
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["speakernet.model"] == "ResNetSE34L" and meta["speakernet.sample_rate"] == "16000"
    assert json.loads(meta["speakernet.calibration"]) == CALIBRATION
    assert meta["speakernet.eval_frames"] == "150" and meta["speakernet.core.checkpoint"] == str(ckpt.resolve())


def test_existing_output_is_refused_before_the_export(exported, caplog):
    _, ckpt, out, _ = exported
    before = out.read_bytes()
    assert export_cli.main(TINY + ["--initial_model", str(ckpt), "--output", str(out)]) == 2
    assert errors(caplog) == [f"--output {out} exists; choose another path or pass --overwrite"]
    assert out.read_bytes() == before


def test_check_fails_on_a_mismatch_or_nan(exported):
    encoder, _, out, _ = exported
    rows = export_cli.onnx_parity(encoder, out)
    assert len(rows) == 3 and all(diff < 1e-4 and cosine > 0.99999 for _, _, diff, cosine in rows)
    other = plugins.factory("models", "ResNetSE34L")(nOut=16)
    other.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        other.fc.bias.add_(1e-3)
    with pytest.raises(export_cli.UserError, match=r"does not reproduce the eager model .*above 0\.0001"):
        export_cli.check_onnx(other, out, "ResNetSE34L")
    with torch.no_grad():
        other.fc.bias.fill_(float("nan"))
    with pytest.raises(export_cli.UserError, match="NaN or Inf in the outputs"):
        export_cli.check_onnx(other, out, "ResNetSE34L")


def test_failed_check_exits_2_and_keeps_no_file(exported, tmp_path, caplog, monkeypatch):
    _, ckpt, good_file, _ = exported
    out = tmp_path / "enc.onnx"

    def export_then_drift(encoder, output, name, **kwargs):
        shutil.copy(good_file, output)          # this checkpoint's real export (made once above)
        with torch.no_grad():
            encoder.fc.bias.add_(1e-2)          # the eager model no longer matches the file
    monkeypatch.setattr(export_cli, "export_onnx", export_then_drift)
    assert export_cli.main(TINY + ["--initial_model", str(ckpt), "--output", str(out)]) == 2
    (message,) = errors(caplog)
    assert message.startswith("--export ResNetSE34L: the ONNX file does not reproduce the eager model")
    assert message.endswith("no file was written") and "\n" not in message
    assert not out.exists() and leftovers(tmp_path) == []


def test_an_encoder_the_exporter_rejects_is_one_line_naming_it(tmp_path, caplog, monkeypatch):
    def reject(*args, **kwargs):
        raise RuntimeError("Failed to convert aten::weird_op\n  long exporter trace\n  more")
    monkeypatch.setattr(torch.onnx, "export", reject)
    out = tmp_path / "enc.onnx"
    assert export_cli.main(TINY + ["--random_weights", "--output", str(out)]) == 2
    assert errors(caplog) == ["--export ResNetSE34L: the ONNX exporter cannot convert this encoder "
                              "(RuntimeError: Failed to convert aten::weird_op); use --format torchscript"]
    assert not out.exists() and leftovers(tmp_path) == []


def test_missing_onnxruntime_is_one_error_before_anything_is_written(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)          # import fails
    out = tmp_path / "enc.onnx"
    assert export_cli.main(TINY + ["--random_weights", "--output", str(out)]) == 2
    (message,) = errors(caplog)
    assert "needs the packages onnx, onnxscript and onnxruntime (onnxruntime is missing" in message
    assert list(tmp_path.iterdir()) == []


def test_torchscript_stays_the_default(tmp_path):
    out = tmp_path / "enc.pt"
    assert export_cli.main(["--export", "ResNetSE34L", "--nOut", "16", "--random_weights",
                            "--output", str(out)]) == 0
    assert torch.jit.load(str(out))(torch.randn(1, 8000)).shape == (1, 16)


def test_bench_times_both_engines_in_interleaved_rounds(exported, monkeypatch, caplog):
    encoder, _, out, _ = exported
    # The export itself is tested above; the benchmark reuses that file.
    monkeypatch.setattr(export_cli, "export_onnx", lambda enc, path, name, **kw: shutil.copy(out, path))
    caplog.set_level(logging.INFO, logger="speakernet.tools.model_tools")
    rates = export_cli.bench("ResNetSE34L", encoder, seconds=0.5, files=2, rounds=2)
    assert set(rates) == {"pytorch", "onnxruntime"}
    assert all(len(v) == 2 and all(r > 0 for r in v) for v in rates.values())
    assert torch.get_num_threads() >= 1
    assert any("PyTorch" in m and "onnxruntime" in m and "files/s" in m for m in caplog.messages)


def test_rawnet3_exports_through_the_traced_exporter(tmp_path):
    """torch.export cannot prove RawNet3's pooled branches equal in length; the TorchScript-based
    exporter converts it, and the file passes the same parity check and carries the metadata."""
    out = tmp_path / "rawnet3.onnx"
    assert export_cli.main(["--export", "RawNet3", "--format", "onnx", "--random_weights",
                            "--output", str(out)]) == 0
    model = onnx.load(str(out))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert len(dims) == 2 and all(d.dim_param and not d.dim_value for d in dims)
    assert {p.key: p.value for p in model.metadata_props}["speakernet.model"] == "RawNet3"


def test_a_public_model_folder_exports_with_the_architecture_it_describes(tmp_path):
    """No model options given: the release's config chooses them (here wespeaker's CAM++ on
    Kaldi features, whose shortest input is longer than one window), and the file embeds as
    the Embedder does."""
    from speakernet.model.embedder import Embedder
    from test_public_campplus import wespeaker_folder
    folder = wespeaker_folder(tmp_path / "voxceleb_CAM++")
    out = tmp_path / "campplus.onnx"
    assert export_cli.main(["--export", "CAMPPlus", "--format", "onnx", "--initial_model", str(folder),
                            "--output", str(out)]) == 0
    wav = torch.round(torch.randn(1, 24000, generator=torch.Generator().manual_seed(3)) * 3000)
    (onnx_embedding,) = export_cli.onnx_session(out).run(None, {"wav": wav.numpy()})[0]
    expected = Embedder.from_checkpoint(str(folder)).embed(wav[0].numpy().astype(np.int16))
    cosine = float(torch.nn.functional.cosine_similarity(torch.from_numpy(onnx_embedding), expected, dim=0))
    assert cosine > 0.9999
