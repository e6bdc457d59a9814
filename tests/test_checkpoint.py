"""checkpoint: voxceleb_trainer state dicts, atomic saves, safe loads, RNG round trips."""
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from speakernet.core import checkpoint
from conftest import SR
from loss.angleproto import LossFunction as AngleProto
from models.ResNetSE34L import MainModel as ResNetSE34L
from SpeakerNet import SpeakerNet

# voxceleb_trainer's checkpoints: parameter names and shapes of each encoder.
REFERENCE = Path(__file__).parent / "fixtures" / "voxceleb_trainer-state-dicts.json"
BLOCKS = (3, 4, 6, 3)
STRIDES = (1, (2, 2), (2, 2), (1, 1))


def reference_state(seed=0, encoder="ResNetSE34L"):
    """A voxceleb_trainer-format SpeakerNet state dict ('__S__.' encoder, '__L__.' loss) with
    random tensors of the reference's shapes, scaled so a forward pass stays finite."""
    spec = json.loads(REFERENCE.read_text())
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for prefix, entry in (("__S__.", encoder), ("__L__.", "loss.angleproto")):
        for name, shape in spec[entry]["state_dict"].items():
            if name.endswith("num_batches_tracked"):
                value = torch.tensor(int(torch.randint(1, 1000, (), generator=gen)), dtype=torch.int64)
            elif name.endswith("running_var"):
                value = 0.5 + torch.rand(shape, generator=gen)
            elif name.startswith("torchfb") or name.endswith("bn1.weight") or name.endswith("bn2.weight"):
                value = 0.5 + torch.rand(shape, generator=gen)          # window, mel bank, BN gains
            elif len(shape) >= 2:
                fan_in = int(np.prod(shape[1:]))
                value = torch.randn(shape, generator=gen) * (1.0 / fan_in) ** 0.5
            else:
                value = 0.1 * torch.randn(shape, generator=gen)
            state[prefix + name] = value
    return state


def build_model(nOut=512, encoder_type="SAP"):
    return SpeakerNet(ResNetSE34L(nOut=nOut, encoder_type=encoder_type, log_input=True), AngleProto())


def load_into(model, path):
    obj = checkpoint.load_file(path)
    checkpoint.load_weights(model, checkpoint.model_state(obj, model), str(path))
    return model


# -------------------------------------------------------- an independent forward pass

def reference_forward(ref, wav, encoder_type="SAP"):
    """voxceleb_trainer's ResNetSE34L (SAP or ASP, log input) written with functional ops on
    the reference's own parameter names."""
    def bn(x, name):
        return F.batch_norm(x, ref[name + ".running_mean"], ref[name + ".running_var"],
                            ref[name + ".weight"], ref[name + ".bias"], training=False, eps=1e-5)

    spec = torch.stft(wav, n_fft=512, hop_length=160, win_length=400,
                      window=ref["torchfb.spectrogram.window"], center=True, pad_mode="reflect",
                      normalized=False, onesided=True, return_complex=True).abs().pow(2)
    mel = (spec.transpose(1, 2) @ ref["torchfb.mel_scale.fb"]).transpose(1, 2)
    x = F.instance_norm((mel + 1e-6).log(), eps=1e-5).unsqueeze(1)
    x = F.relu(bn(F.conv2d(x, ref["conv1.weight"], stride=(2, 1), padding=3), "bn1"))
    for layer, (blocks, stride) in enumerate(zip(BLOCKS, STRIDES), start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}."
            s = stride if b == 0 else 1
            out = bn(F.relu(F.conv2d(x, ref[p + "conv1.weight"], stride=s, padding=1)), p + "bn1")
            out = bn(F.conv2d(out, ref[p + "conv2.weight"], padding=1), p + "bn2")
            gate = out.mean(dim=(2, 3))
            gate = F.relu(F.linear(gate, ref[p + "se.fc.0.weight"], ref[p + "se.fc.0.bias"]))
            gate = torch.sigmoid(F.linear(gate, ref[p + "se.fc.2.weight"], ref[p + "se.fc.2.bias"]))
            out = out * gate[:, :, None, None]
            if p + "downsample.0.weight" in ref:
                residual = bn(F.conv2d(x, ref[p + "downsample.0.weight"], stride=s), p + "downsample.1")
            else:
                residual = x
            x = F.relu(out + residual)
    x = x.mean(dim=2).permute(0, 2, 1)                                    # B x T x C
    h = torch.tanh(F.linear(x, ref["sap_linear.weight"], ref["sap_linear.bias"]))
    w = F.softmax((h @ ref["attention"]).squeeze(2), dim=1).unsqueeze(2)
    mu = (x * w).sum(dim=1)
    if encoder_type == "ASP":
        rh = torch.sqrt(((x ** 2 * w).sum(dim=1) - mu ** 2).clamp(min=1e-5))
        x = torch.cat((mu, rh), 1)
    else:
        x = mu
    return F.linear(x, ref["fc.weight"], ref["fc.bias"])


@pytest.fixture(scope="module")
def ref_state():
    return reference_state()


@pytest.fixture
def wav():
    return 0.3 * torch.randn(2, SR // 2, generator=torch.Generator().manual_seed(1))


# -------------------------------------------------------- voxceleb_trainer checkpoints

@pytest.mark.parametrize("layout", ["bare", "model_state_dict", "module_prefix"])
def test_reference_checkpoint_loads_every_tensor(tmp_path, ref_state, layout):
    saved = dict(ref_state)
    if layout == "module_prefix":
        saved = {"module." + k: v for k, v in saved.items()}
    obj = {"model_state_dict": saved, "optimizer_state_dict": {}} if layout == "model_state_dict" else saved
    path = tmp_path / "reference.model"
    torch.save(obj, path)
    model = load_into(build_model(), path)
    own = model.state_dict()

    renames = {"torchfb.": "features.melspec.", "sap_linear.": "pool.sap_linear.",
               "attention": "pool.attention"}
    loaded = 0
    for key, value in ref_state.items():
        if key.startswith("__S__."):
            name = key[len("__S__."):]
            for old, new in renames.items():
                if name.startswith(old):
                    name = new + name[len(old):]
                    break
            ours = "encoder." + name
        else:
            ours = "objective." + key[len("__L__."):]
        assert ours in own, f"{key} has no place in the model ({ours})"
        assert own[ours].dtype == value.dtype, ours
        assert torch.equal(own[ours], value), f"{key} did not land in {ours}"
        loaded += 1
    assert loaded == len(own) == len(ref_state)

    # Spot checks with explicit attribute paths.
    enc = model.encoder
    assert torch.equal(enc.pool.sap_linear.weight, ref_state["__S__.sap_linear.weight"])
    assert torch.equal(enc.pool.attention, ref_state["__S__.attention"])
    assert torch.equal(enc.fc.weight, ref_state["__S__.fc.weight"])
    assert torch.equal(enc.layer3[2].conv1.weight,
                       ref_state["__S__.layer3.2.conv1.weight"])
    assert torch.equal(model.objective.w, ref_state["__L__.w"])
    assert torch.equal(model.objective.b, ref_state["__L__.b"])
    assert int(enc.bn1.num_batches_tracked) == int(ref_state["__S__.bn1.num_batches_tracked"])


@pytest.mark.parametrize("entry, encoder_type", [("ResNetSE34L", "SAP"), ("ResNetSE34L_ASP", "ASP")])
def test_reference_embedding_matches_independent_forward(tmp_path, wav, entry, encoder_type):
    ref_state = reference_state(encoder=entry)
    path = tmp_path / "reference.model"
    torch.save(ref_state, path)
    model = load_into(build_model(encoder_type=encoder_type), path).eval()
    with torch.no_grad():
        ours = model.encoder(wav)
        ref = reference_forward({k[len("__S__."):]: v for k, v in ref_state.items()
                                 if k.startswith("__S__.")}, wav, encoder_type)
    assert ours.shape == (2, 512)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_two_loads_give_identical_embeddings(tmp_path, ref_state, wav):
    path = tmp_path / "reference.model"
    torch.save({"model_state_dict": ref_state}, path)
    a = load_into(build_model(), path).eval()
    torch.manual_seed(123)                       # a differently initialised second model
    b = load_into(build_model(), path).eval()
    with torch.no_grad():
        assert torch.equal(a.encoder(wav), b.encoder(wav))


def test_wrong_nout_names_the_tensor(tmp_path, ref_state):
    path = tmp_path / "reference.model"
    torch.save(ref_state, path)
    model = build_model(nOut=256)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(checkpoint.CheckpointError) as err:
        load_into(model, path)
    message = str(err.value)
    assert "fc.weight" in message and "512" in message and "256" in message
    assert str(path) in message
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a refused load changed the model"


def test_missing_encoder_tensor_is_refused(tmp_path, ref_state):
    state = {k: v for k, v in ref_state.items() if k != "__S__.layer2.1.conv2.weight"}
    path = tmp_path / "partial.model"
    torch.save(state, path)
    with pytest.raises(checkpoint.CheckpointError, match="layer2.1.conv2.weight"):
        load_into(build_model(), path)


def test_project_checkpoint_round_trip(tmp_path):
    model = build_model(nOut=64)
    path = checkpoint.checkpoint_path(tmp_path, 7)
    assert path.name == "model000000007.model"
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "epoch": 7, "model": model.state_dict()}, path)
    other = load_into(build_model(nOut=64), path)
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    assert checkpoint.list_checkpoints(tmp_path) == [(7, path)]


def test_list_checkpoints_orders_by_epoch(tmp_path):
    for epoch in (10, 2, 100):
        checkpoint.checkpoint_path(tmp_path, epoch).write_bytes(b"x")
    (tmp_path / "model_best.model").write_bytes(b"x")
    (tmp_path / ".model000000003.model.123.tmp").write_bytes(b"x")
    assert [e for e, _ in checkpoint.list_checkpoints(tmp_path)] == [2, 10, 100]


# -------------------------------------------------------- atomic save, safe load

def test_save_atomic_keeps_previous_file_when_save_fails(tmp_path, monkeypatch):
    path = tmp_path / "model000000001.model"
    checkpoint.save_atomic({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(checkpoint.CheckpointError, match="disk full; the previous model000000001.model is intact"):
        checkpoint.save_atomic({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name], "temporary file left behind"
    assert checkpoint.load_file(path)["epoch"] == 1


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04" + bytes(100)])
def test_load_file_on_corrupt_file(tmp_path, content):
    path = tmp_path / "bad.model"
    path.write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load_file(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_load_file_on_truncated_checkpoint(tmp_path):
    path = tmp_path / "cut.model"
    torch.save({"w": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load_file(path)


def test_load_file_missing(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="nowhere.model"):
        checkpoint.load_file(tmp_path / "nowhere.model")


class _Evil:
    """Unpickling this would create `target` (the call runs at load time)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused(tmp_path, writer):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.model"
    payload = {"model_state_dict": {"w": torch.ones(1)}, "x": _Evil(target)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load_file(path)
    assert not target.exists(), "loading ran code from the checkpoint"


def test_malicious_pickle_control(tmp_path):
    """The payload above is live: an unsafe load does create the file."""
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.model"
    torch.save({"x": _Evil(target)}, path)
    obj = torch.load(path, weights_only=False)
    obj["x"].close()
    assert target.exists()


# -------------------------------------------------------- RNG states

def _draws():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(),
            torch.rand(4).tolist())


def test_rng_round_trip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)               # leave a cached Gaussian in Python's state
    np.random.randn()                # and possibly one in numpy's
    state = checkpoint.capture_rng()
    first = _draws()
    _draws()
    checkpoint.restore_rng(state)
    assert _draws() == first


def test_rng_state_survives_a_checkpoint_file(tmp_path):
    random.seed(4)
    np.random.seed(5)
    torch.manual_seed(6)
    path = tmp_path / "rng.model"
    checkpoint.save_atomic({"rng": checkpoint.capture_rng()}, path)
    first = _draws()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    checkpoint.restore_rng(checkpoint.load_file(path)["rng"])      # weights_only load
    assert _draws() == first
