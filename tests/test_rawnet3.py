"""RawNet3 (models/RawNet3.py) against voxceleb_trainer's: parameter count, state-dict names
and shapes (tests/fixtures/rawnet3_state_dict.json, counted from its models/RawNet3.py), its
checkpoints in each layout it writes or publishes loaded through --initial_model and giving the
embedding of a forward pass written out here from the reference's equations, the sinc
filterbank tap by tap, configs/RawNet3_AAM.yaml, and one tiny training step with evaluation.

Inputs are half a second and batches tiny, so the file runs in about 15 s.
"""
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import SR, train_argv
from speakernet.tools.model_tools import count_parameters
from speakernet.tools import commands
from speakernet.run import options, plugins
from speakernet.core.errors import UserError

FIXTURE = Path(__file__).parent / "fixtures" / "rawnet3_state_dict.json"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "RawNet3_AAM.yaml"
SPEC = json.loads(FIXTURE.read_text())
HALF_SECOND = SR // 2 + 123
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked", "flipped_filter", "window_", "n_")
CLASSES = 6


def build(**overrides):
    torch.manual_seed(0)
    return plugins.factory("models", "RawNet3")(**{**SPEC["config"], **overrides})


@pytest.fixture(scope="module")
def model():
    return build()


def waveform(batch, samples, seed=1):
    return 0.3 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def renamed(name, renames):
    for old, new in renames.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


# ------------------------------------------------------------------------ sizes and names

def test_parameter_count_is_the_reference_count(model):
    shapes = SPEC["state_dict"]
    from_shapes = sum(math.prod(shape) for name, shape in shapes.items()
                      if not name.endswith(BUFFER_SUFFIXES))
    assert count_parameters(model) == SPEC["parameters"] == from_shapes


def test_state_dict_names_and_shapes_are_the_reference(model):
    expected = {renamed(k, type(model).reference_renames): tuple(v) for k, v in SPEC["state_dict"].items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


def test_options_change_the_network_as_in_the_reference():
    asp = build(encoder_type="ASP")
    assert asp.attention[3].out_channels == 1 and asp.fc6.out_features == SPEC["config"]["nOut"]
    assert build(sinc_stride=5).features.conv1.stride == 5
    with pytest.raises(UserError, match="encoder_type"):
        build(encoder_type="SAP")
    with pytest.raises(UserError, match="sinc_stride"):
        build(sinc_stride=0)


def test_shortest_input_is_named_and_leaves_two_frames(model):
    model.eval()
    shortest = model.min_samples
    with torch.no_grad():
        assert torch.isfinite(model(waveform(1, shortest))).all()
        with pytest.raises(UserError, match=f"at least {shortest} samples"):
            model(waveform(1, shortest - 1))


# ------------------------------------------------------------------ the sinc filterbank

def sinc_filters_by_formula(low_hz_, band_hz_, window_, n_):
    """SincNet's band-pass pair for each band, tap by tap in float64, on the filterbank's own
    time grid and window (its buffers: n_ = 2 pi t and window_ the Hamming weights of the taps
    left of the centre; the right taps mirror them). With f1 = 50 + |low_hz_| and
    f2 = f1 + 50 + |band_hz_| (kept within [50, sr/2]): the windowed
    (sin(2 pi f2 t) - sin(2 pi f1 t)) / (pi t) and (cos(2 pi f1 t) - cos(2 pi f2 t)) / (pi t),
    divided by 2 (f2 - f1), with the limits 1 and 0 at t = 0. Even filters first."""
    phases, weights = n_.double().flatten().tolist(), window_.double().tolist()
    half = len(phases)
    taps = 2 * half + 1
    low = [50 + abs(v) for v in low_hz_.double().flatten().tolist()]
    bands = band_hz_.double().flatten().tolist()
    high = [min(max(f1 + 50 + abs(b), 50), SR / 2) for f1, b in zip(low, bands)]
    even = np.zeros((len(low), taps))
    odd = np.zeros((len(low), taps))
    for i, (f1, f2) in enumerate(zip(low, high)):
        even[i, half] = 1.0
        for k in list(range(half)) + list(range(half + 1, taps)):
            mirror = k if k < half else taps - 1 - k
            phase = phases[mirror] if k < half else -phases[mirror]            # 2 pi t
            scale = weights[mirror] / (phase / 2) / (2 * (f2 - f1))
            even[i, k] = (math.sin(f2 * phase) - math.sin(f1 * phase)) * scale
            odd[i, k] = (math.cos(f1 * phase) - math.cos(f2 * phase)) * scale
    return torch.from_numpy(np.concatenate([even, odd])).unsqueeze(1)


def test_sinc_filters_equal_the_formula_tap_by_tap(model):
    bank = copy.deepcopy(model.features.conv1.filterbank).double()
    # The time grid and window the reference builds: t = -125/sr .. -1/sr, Hamming of 251 taps.
    assert np.allclose(bank.n_.flatten().numpy(), 2 * np.pi * np.arange(-125, 0) / SR, rtol=1e-6)
    assert np.allclose(bank.window_.numpy(), np.hamming(251)[:125], atol=1e-7)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        # Signed values (the formula takes |.|), some bands beyond Nyquist (clamped).
        bank.low_hz_.copy_(torch.empty(128, 1).uniform_(-7000, 7000, generator=gen))
        bank.band_hz_.copy_(torch.empty(128, 1).uniform_(-3000, 3000, generator=gen))
        ours = bank.filters()
    expected = sinc_filters_by_formula(bank.low_hz_, bank.band_hz_, bank.window_, bank.n_)
    assert ours.shape == expected.shape == (256, 1, 251)
    assert (ours - expected).abs().max() <= 1e-9 * expected.abs().max()


def test_front_end_equals_asteroid_filterbanks(model):
    import asteroid_filterbanks as asteroid                    # requirements.txt installs it
    reference = asteroid.Encoder(asteroid.ParamSincFB(256, 251, stride=10))
    ours = model.features.conv1
    assert torch.equal(reference.filterbank.window_, ours.filterbank.window_)
    assert torch.equal(reference.filterbank.n_, ours.filterbank.n_)
    assert torch.allclose(reference.filterbank.low_hz_, build().features.conv1.filterbank.low_hz_, atol=1e-2)
    reference.load_state_dict(ours.state_dict())
    x = model.features.preprocess(waveform(2, HALF_SECOND))
    with torch.no_grad():
        assert torch.allclose(reference(x), ours(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------- voxceleb_trainer checkpoints, independently

def reference_state(seed=0):
    """RawNet3's state with voxceleb_trainer's names (the fixture's) and random values: band
    edges in Hz, the filterbank's window and time grid and the pre-emphasis as the reference
    builds them, BN variances positive, weights scaled by their fan-in."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in SPEC["state_dict"].items():
        if name.endswith("num_batches_tracked"):
            value = torch.tensor(11)
        elif name.endswith("running_var") or name.endswith("alpha"):
            value = 0.5 + torch.rand(shape, generator=gen)
        elif name.endswith("low_hz_"):
            value = 6000 * torch.rand(shape, generator=gen)
        elif name.endswith("band_hz_"):
            value = 50 + 1500 * torch.rand(shape, generator=gen)
        elif len(shape) >= 2:
            value = torch.randn(shape, generator=gen) * (1.0 / math.prod(shape[1:])) ** 0.5
        elif name.endswith("weight"):                      # BN and instance-norm gains
            value = 0.5 + 0.2 * torch.randn(shape, generator=gen)
        else:
            value = 0.1 * torch.randn(shape, generator=gen)
        state[name] = value
    half = 251 // 2
    state["conv1.filterbank.window_"] = torch.from_numpy(np.hamming(251)[:half]).float()
    state["conv1.filterbank.n_"] = torch.tensor([[2 * math.pi * t / SR for t in range(-half, 0)]]).float()
    state["preprocess.0.flipped_filter"] = torch.tensor([[[-0.97, 1.0]]])
    return state


def reference_sinc_output(state, wav):
    """The reference's filterbank output: pre-emphasis (first sample reflected), instance norm
    with eps 1e-4 and the learnt gain and bias, the formula's filters at the sinc stride."""
    coef = -state["preprocess.0.flipped_filter"].flatten()[0]
    emphasised = torch.cat([wav[:, :1] - coef * wav[:, 1:2], wav[:, 1:] - coef * wav[:, :-1]], dim=1)
    mean, var = emphasised.mean(1, keepdim=True), emphasised.var(1, keepdim=True, unbiased=False)
    x = (emphasised - mean) / (var + 1e-4).sqrt() * state["preprocess.1.weight"] + state["preprocess.1.bias"]
    bank = [state["conv1.filterbank." + n] for n in ("low_hz_", "band_hz_", "window_", "n_")]
    filters = sinc_filters_by_formula(*bank)
    return F.conv1d(x.unsqueeze(1), filters.to(x.dtype), stride=SPEC["config"]["sinc_stride"])


def reference_embedding(state, wav):
    """voxceleb_trainer's RawNet3 in eval mode (configs/RawNet3_AAM.yaml: ECA, context, summed
    blocks, log sinc magnitudes with the mean removed), written out with the state's tensors."""
    def conv(x, name, **kw):
        return F.conv1d(x, state[name + ".weight"], state.get(name + ".bias"), **kw)

    def bn(x, name):
        return F.batch_norm(x, state[name + ".running_mean"], state[name + ".running_var"],
                            state[name + ".weight"], state[name + ".bias"], training=False, eps=1e-5)

    x = reference_sinc_output(state, wav).abs().add(1e-6).log()
    x = x - x.mean(-1, keepdim=True)

    def block(x, p, dilation, pool):
        residual = conv(x, p + "residual.0") if p + "residual.0.weight" in state else x
        groups = bn(conv(x, p + "conv1").relu(), p + "bn1").chunk(8, dim=1)
        outputs = []
        for i in range(7):
            sp = groups[0] if i == 0 else outputs[-1] + groups[i]
            sp = conv(sp, f"{p}convs.{i}", padding=dilation, dilation=dilation)
            outputs.append(bn(sp.relu(), f"{p}bns.{i}"))
        out = bn(conv(torch.cat(outputs + [groups[7]], 1), p + "conv3").relu(), p + "bn3") + residual
        out = F.max_pool1d(out, pool) if pool else out
        gate = torch.sigmoid(F.linear(out.mean(2), state[p + "afms.fc.weight"], state[p + "afms.fc.bias"]))
        return (out + state[p + "afms.alpha"]) * gate.unsqueeze(2)

    x1 = block(x, "layer1.", 2, 5)
    x2 = block(x1, "layer2.", 3, 3)
    x3 = block(F.max_pool1d(x1, 3) + x2, "layer3.", 4, None)
    x = conv(torch.cat([F.max_pool1d(x1, 3), x2, x3], 1), "layer4").relu()
    t = x.shape[2]
    context = torch.cat([x, x.mean(2, keepdim=True).repeat(1, 1, t),
                         x.var(2, keepdim=True).clamp(1e-4, 1e4).sqrt().repeat(1, 1, t)], 1)
    weights = conv(bn(conv(context, "attention.0").relu(), "attention.2"), "attention.3").softmax(dim=2)
    mu = (x * weights).sum(2)
    sg = ((x * x * weights).sum(2) - mu * mu).clamp(1e-4, 1e4).sqrt()
    return F.linear(bn(torch.cat([mu, sg], 1), "bn5"), state["fc6.weight"], state["fc6.bias"])


def trainer_model():
    import trainSpeakerNet            # here, so that only the tests that need it import it
    resolved = options.parse_options(["--config", str(CONFIG), "--nClasses", str(CLASSES)])
    torch.manual_seed(0)
    return trainSpeakerNet.build_model(resolved)


def speakernet_state(encoder_state, seed=1):
    """voxceleb_trainer's SpeakerNet state: '__S__.' encoder, '__L__.' AAM-softmax weight."""
    weight = torch.randn(CLASSES, SPEC["config"]["nOut"], generator=torch.Generator().manual_seed(seed))
    return {**{"__S__." + k: v for k, v in encoder_state.items()}, "__L__.weight": weight}


LAYOUTS = {
    # trainSpeakerNet.py's saveParameters now, and in earlier versions (a bare SpeakerNet state).
    "model_state_dict": lambda enc: {"model_state_dict": speakernet_state(enc), "epoch": 3,
                                     "optimizer_state_dict": {"state": {}, "param_groups": []}},
    "state_dict": speakernet_state,
    # The released models/weights/RawNet3/model.pt: the bare encoder's state under "model".
    "pretrained": lambda enc: {"model": enc},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reference_checkpoint_gives_the_reference_embedding(layout, tmp_path):
    state = reference_state()
    path = tmp_path / "model.pt"
    torch.save(LAYOUTS[layout](state), path)
    net = trainer_model()
    commands.load_initial_weights(net, str(path))                 # what --initial_model runs
    loaded = net.encoder.state_dict()
    for name, value in state.items():
        assert torch.equal(loaded[renamed(name, type(net.encoder).reference_renames)], value), name
    if layout != "pretrained":
        assert torch.equal(net.objective.weight, speakernet_state(state)["__L__.weight"])
    # In float64, where a wrong detail (a biased variance, say) stands out of the rounding.
    encoder = net.encoder.double().eval()
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    wav = waveform(2, HALF_SECOND).double()
    with torch.no_grad():
        sinc = encoder.features.conv1(encoder.features.preprocess(wav))
        expected_sinc = reference_sinc_output(state, wav)
        ours, expected = encoder(wav), reference_embedding(state, wav)
    assert (sinc - expected_sinc).abs().max() <= 1e-9 * expected_sinc.abs().max()
    assert (ours - expected).abs().max() <= 1e-9 * expected.abs().max()


def test_gradients_reach_every_trainable_parameter_and_only_the_unused_are_frozen(model):
    model.train().zero_grad()
    out = model(waveform(2, HALF_SECOND))
    (out * torch.randn_like(out)).sum().backward()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"bn1.weight", "bn1.bias", "bn6.weight", "bn6.bias"}
    assert not [n for n, p in model.named_parameters()
                if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    model.zero_grad(set_to_none=True)


# ------------------------------------------------------------------ the config and training

def test_config_parses_with_every_key_as_written():
    written = yaml.safe_load(CONFIG.read_text())
    resolved = vars(options.parse_options(["--config", str(CONFIG)]))
    for key, value in written.items():
        # PyYAML reads 5e-05 as text; the option parser converts it, as voxceleb_trainer does.
        assert resolved[key] == type(resolved[key])(value), key


def test_one_training_step_then_eval_of_the_pretrained_layout(corpus, tmp_path):
    import trainSpeakerNet
    # The config as written, made tiny: no MUSAN/RIR here, 0.2 s crops, one batch of 6.
    small = dict(model=None, trainfunc=None, nPerSpeaker=None, nOut=None, max_frames=20, eval_frames=30,
                 batch_size=CLASSES, max_seg_per_spk=1, nClasses=CLASSES, max_epoch=1)
    argv = ["--config", str(CONFIG), *train_argv(corpus, tmp_path / "run", flags=("no-augment",), **small)]
    assert trainSpeakerNet.main(argv) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    saved = torch.load(tmp_path / "run" / "model" / "model000000001.model", weights_only=True)
    assert len(metrics) == 1 and saved["trainer"]["step"] == 1

    torch.save({"model": reference_state()}, tmp_path / "model.pt")
    argv = ["--config", str(CONFIG), "--eval", "--initial_model", str(tmp_path / "model.pt"),
            *train_argv(corpus, tmp_path / "eval", **small)]
    assert trainSpeakerNet.main(argv) == 0
    scores = next((tmp_path / "eval" / "result").glob("scores_*.txt")).read_text().split("\n")
    assert len([s for s in scores if s]) == len(corpus.trials)
    assert all(math.isfinite(float(line.split()[0])) for line in scores if line)
