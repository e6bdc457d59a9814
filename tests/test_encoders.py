"""Encoders in models/: sizes against the papers, voxceleb_trainer checkpoint compatibility,
any input length, gradients, determinism, TorchScript export, the profiler's MACs.

Inputs are short and batches tiny so the file runs in well under a minute on two CPU cores.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from speakernet.run import plugins
from speakernet.tools.model_tools import (count_macs, count_parameters, export_torchscript,
                             load_encoder_weights, main, max_abs_difference, samples_for)

# voxceleb_trainer's checkpoints: parameter names and shapes of each encoder.
REFERENCE = Path(__file__).parent / "fixtures" / "voxceleb_trainer-state-dicts.json"

# name -> (MainModel options, parameter target, tolerance). Targets: "In defence of metric
# learning" Table 1 (Thin ResNet-34 1.4 M, VGG-M-40 4.0 M); voxceleb_trainer's exact counts
# for the encoders whose checkpoints must load; ECAPA-TDNN paper (C=512 6.2 M, C=1024 14.7 M).
ENCODERS = {
    "ResNetSE34": (dict(nOut=512, encoder_type="SAP"), 1_400_000, 0.10),
    "VGGVox": (dict(nOut=512, encoder_type="SAP"), 4_032_448, 0),
    "ResNetSE34V2": (dict(nOut=512, encoder_type="ASP", n_mels=64), 8_028_492, 0),
    "ECAPA_TDNN": (dict(nOut=192, channels=512), 6_200_000, 0.10),
}
MODEL_OF = {"ECAPA_TDNN_C1024": "ECAPA_TDNN"}
SIZES = {**ENCODERS, "ECAPA_TDNN_C1024": (dict(nOut=192, channels=1024), 14_700_000, 0.10)}
# Short, odd-length inputs keep the suite fast: 0.3 s, or 0.7 s for VGG-M-40, whose
# unpadded layers need 0.63 s. Shapes are also checked on a 6 s file.
SHORT = 4_801
SHORTEST_FOR = {"VGGVox": 11_201}
LONG = 6 * 16_000


def build(name, **overrides):
    options, _, _ = SIZES[name]
    torch.manual_seed(0)
    return plugins.factory("models", MODEL_OF.get(name, name))(**{**options, **overrides})


def waveform(batch, samples, seed=1):
    return 0.3 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def short_input(name, batch=2):
    return waveform(batch, SHORTEST_FOR.get(name, SHORT))


def test_every_encoder_file_is_discovered():
    assert set(ENCODERS) | {"ResNetSE34L"} <= set(plugins.available("models"))


@pytest.mark.parametrize("name", SIZES)
def test_parameter_count_matches_target(name):
    _, target, tolerance = SIZES[name]
    params = count_parameters(build(name))
    assert abs(params - target) <= tolerance * target, f"{name}: {params:,} vs {target:,}"


@pytest.mark.parametrize("name, table_1_macs", [("ResNetSE34", 0.99e9), ("VGGVox", 0.53e9),
                                                ("ResNetSE34L", 0.45e9)])
def test_macs_for_two_seconds_match_table_1(name, table_1_macs):
    model = plugins.factory("models", name)()
    assert abs(count_macs(model, samples_for(200)) - table_1_macs) <= 0.05 * table_1_macs


@pytest.mark.parametrize("name", ENCODERS)
def test_output_is_batch_by_nout_for_any_length(name):
    model = build(name).eval()
    n_out = ENCODERS[name][0]["nOut"]
    with torch.no_grad():
        assert model(short_input(name)).shape == (2, n_out)
        assert model(waveform(1, LONG)).shape == (1, n_out)


def test_ecapa_mfcc_input_and_channels_option():
    parser = argparse.ArgumentParser()
    plugins.load_module("models", "ECAPA_TDNN").add_arguments(parser)
    options = parser.parse_args(["--channels", "1024", "--input_features", "mfcc"])
    assert (options.channels, options.input_features) == (1024, "mfcc")
    model = build("ECAPA_TDNN", input_features="mfcc").eval()
    with torch.no_grad():
        assert model(short_input("ECAPA_TDNN")).shape == (2, 192)


@pytest.mark.parametrize("name, options", [("ECAPA_TDNN", dict(encoder_type="SAP")),
                                           ("VGGVox", dict(encoder_type="ASP")),
                                           ("VGGVox", dict(n_mels=64)),
                                           ("ResNetSE34", dict(encoder_type="TAP"))])
def test_unsupported_options_are_refused_by_name(name, options):
    with pytest.raises(ValueError, match="|".join(options)):
        plugins.factory("models", name)(**options)


def test_vggvox_names_its_minimum_length():
    with pytest.raises(ValueError, match="at least 63 frames"):
        build("VGGVox").eval()(waveform(1, 8_000))


@pytest.mark.parametrize("name", ENCODERS)
def test_gradients_reach_every_trainable_parameter(name):
    model = build(name).train()
    # 1 s for VGG-M-40: at 0.7 s it keeps one frame, and attention over one frame has no gradient.
    out = model(waveform(2, 16_001) if name == "VGGVox" else short_input(name))
    (out * torch.randn_like(out)).sum().backward()
    unreached = [n for n, p in model.named_parameters()
                 if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not unreached


@pytest.mark.parametrize("name", ENCODERS)
def test_eval_mode_is_deterministic(name):
    model = build(name).eval()
    wav = short_input(name)
    with torch.no_grad():
        assert torch.equal(model(wav), model(wav))


@pytest.mark.parametrize("name", ENCODERS)
def test_torchscript_export_matches_eager(name, tmp_path):
    model = build(name)
    shortest = SHORTEST_FOR.get(name, SHORT)
    exported = export_torchscript(model, tmp_path / f"{name}.pt", example_samples=shortest + 1_600)
    # Another (odd) length than traced: the exported graph must not be frozen to one shape.
    assert max_abs_difference(model, exported, shortest) <= 1e-5


def test_profile_command_prints_a_row_per_encoder(capsys):
    main(["--profile", "--device", "cpu", "--batch", "2", "--frames", "70", "--iterations", "1"])
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    for name in plugins.available("models"):
        params, exact, gmacs, rate = rows[name]
        assert float(gmacs) > 0 and float(rate) > 0, rows[name]


# -------------------------------------------------------- voxceleb_trainer checkpoints

def reference_spec(entry):
    return json.loads(REFERENCE.read_text())[entry]


def reference_state(spec, seed=0):
    """voxceleb_trainer's encoder state ('__S__.' names and shapes from the JSON) with random
    values scaled so that a forward pass stays finite and informative."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in spec["state_dict"].items():
        if name.endswith("num_batches_tracked"):
            value = torch.tensor(7)
        elif name.endswith("running_var") or "torchfb" in name or (".bn" in name and
                                                                    name.endswith("weight")):
            value = 0.5 + torch.rand(shape, generator=gen)      # variances, window, mel bank, gains
        elif len(shape) >= 2:
            value = torch.randn(shape, generator=gen) * (1.0 / int(np.prod(shape[1:]))) ** 0.5
        else:
            value = 0.1 * torch.randn(shape, generator=gen)
        state["__S__." + name] = value
    return state


def without_prefix(state):
    return {k.removeprefix("__S__."): v for k, v in state.items()}


def renamed(name, renames):
    for old, new in renames.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


@pytest.mark.parametrize("entry", ["ResNetSE34L", "ResNetSE34L_ASP", "ResNetSE34V2", "VGGVox"])
def test_reference_names_shapes_and_parameter_count(entry, tmp_path):
    spec = reference_spec(entry)
    model = plugins.factory("models", spec["config"]["model"])(**spec["config"])
    assert count_parameters(model) == spec["parameters"]

    renames = getattr(type(model), "reference_renames", {})
    expected = {renamed(k, renames): tuple(shape) for k, shape in spec["state_dict"].items()}
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == expected

    # And through the trainer's loading path, value by value.
    state = reference_state(spec)
    torch.save(state, tmp_path / "reference.model")
    load_encoder_weights(model, tmp_path / "reference.model")
    loaded = model.state_dict()
    for key, value in state.items():
        ours = loaded[renamed(key.removeprefix("__S__."), renames)]
        assert torch.equal(ours, value.to(ours.dtype)), key


def test_vggvox_front_end_uses_the_reference_hann_window():
    window = build("VGGVox").features.melspec.spectrogram.window
    assert torch.equal(window, torch.hann_window(400))


# Independent forward passes of voxceleb_trainer's VGGVox and ResNetSE34V2, written with
# functional ops on the reference's own parameter names: the same weights must give the
# same embeddings as our modules.

def _bn(ref, x, name):
    return F.batch_norm(x, ref[name + ".running_mean"], ref[name + ".running_var"],
                        ref[name + ".weight"], ref[name + ".bias"], training=False, eps=1e-5)


def _log_mel(ref, wav, prefix):
    spec = torch.stft(wav, n_fft=512, hop_length=160, win_length=400,
                      window=ref[prefix + "spectrogram.window"], center=True, pad_mode="reflect",
                      return_complex=True).abs().pow(2)
    mel = (spec.transpose(1, 2) @ ref[prefix + "mel_scale.fb"]).transpose(1, 2)
    return F.instance_norm((mel + 1e-6).log(), eps=1e-5).unsqueeze(1)


def vggvox_reference_forward(ref, wav):
    x = _log_mel(ref, wav, "torchfb.")

    def conv(x, i, **kw):
        x = F.conv2d(x, ref[f"netcnn.{i}.weight"], ref[f"netcnn.{i}.bias"], **kw)
        return F.relu(_bn(ref, x, f"netcnn.{i + 1}"))

    x = F.max_pool2d(conv(x, 0, stride=(1, 2), padding=(2, 2)), (1, 3), (1, 2))
    x = F.max_pool2d(conv(x, 4, stride=(2, 2), padding=(1, 1)), (3, 3), (2, 2))
    x = conv(conv(conv(x, 8, padding=1), 11, padding=1), 14, padding=1)
    x = conv(F.max_pool2d(x, (3, 3), (2, 2)), 18)
    x = x.squeeze(2).permute(0, 2, 1)                                      # B x T x 512
    h = torch.tanh(F.linear(x, ref["sap_linear.weight"], ref["sap_linear.bias"]))
    w = F.softmax((h @ ref["attention"]).squeeze(2), dim=1).unsqueeze(2)
    return F.linear((x * w).sum(dim=1), ref["fc.weight"], ref["fc.bias"])


def _se_basic_block(ref, x, p, stride):
    """voxceleb_trainer's SEBasicBlock: conv, ReLU, BN, conv, BN, SE, + residual, ReLU."""
    out = _bn(ref, F.relu(F.conv2d(x, ref[p + "conv1.weight"], stride=stride, padding=1)), p + "bn1")
    out = _bn(ref, F.conv2d(out, ref[p + "conv2.weight"], padding=1), p + "bn2")
    gate = F.relu(F.linear(out.mean(dim=(2, 3)), ref[p + "se.fc.0.weight"], ref[p + "se.fc.0.bias"]))
    gate = torch.sigmoid(F.linear(gate, ref[p + "se.fc.2.weight"], ref[p + "se.fc.2.bias"]))
    residual = x
    if p + "downsample.0.weight" in ref:
        residual = _bn(ref, F.conv2d(x, ref[p + "downsample.0.weight"], stride=stride),
                       p + "downsample.1")
    return F.relu(out * gate[:, :, None, None] + residual)


def resnetse34v2_reference_forward(ref, wav):
    wav = F.conv1d(F.pad(wav.unsqueeze(1), (1, 0), mode="reflect"), ref["torchfb.0.flipped_filter"])
    x = _log_mel(ref, wav.squeeze(1), "torchfb.1.")
    x = _bn(ref, F.relu(F.conv2d(x, ref["conv1.weight"], ref["conv1.bias"], padding=1)), "bn1")
    for layer, (blocks, stride) in enumerate(zip((3, 4, 6, 3), (1, 2, 2, 2)), start=1):
        for b in range(blocks):
            x = _se_basic_block(ref, x, f"layer{layer}.{b}.", stride if b == 0 else 1)
    x = x.reshape(x.size(0), -1, x.size(-1))                               # B x (C * F) x T
    w = F.relu(F.conv1d(x, ref["attention.0.weight"], ref["attention.0.bias"]))
    w = F.conv1d(_bn(ref, w, "attention.2"), ref["attention.3.weight"], ref["attention.3.bias"])
    w = F.softmax(w, dim=2)
    mu = (x * w).sum(dim=2)
    sg = ((x.pow(2) * w).sum(dim=2) - mu.pow(2)).clamp(min=1e-5).sqrt()
    return F.linear(torch.cat([mu, sg], dim=1), ref["fc.weight"], ref["fc.bias"])


@pytest.mark.parametrize("entry, reference_forward", [("VGGVox", vggvox_reference_forward),
                                                      ("ResNetSE34V2", resnetse34v2_reference_forward)])
def test_same_weights_give_voxceleb_trainers_embeddings(entry, reference_forward, tmp_path):
    spec = reference_spec(entry)
    state = reference_state(spec)
    torch.save(state, tmp_path / "reference.model")
    model = plugins.factory("models", spec["config"]["model"])(**spec["config"])
    load_encoder_weights(model, tmp_path / "reference.model")
    wav = short_input(entry)
    with torch.no_grad():
        ours = model.eval()(wav)
        theirs = reference_forward(without_prefix(state), wav)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_command_rebuilds_the_run_and_loads_its_checkpoint(tmp_path, capsys):
    spec = reference_spec("VGGVox")
    state = reference_state(spec)
    torch.save(state, tmp_path / "reference.model")
    config = tmp_path / "options.yaml"
    config.write_text("".join(f"{k}: {v}\n" for k, v in spec["config"].items()))
    output = tmp_path / "vggvox.pt"
    main(["--export", "VGGVox", "--config", str(config), "--initial_model",
          str(tmp_path / "reference.model"), "--output", str(output)])
    assert float(capsys.readouterr().out.rsplit(":", 1)[1]) <= 1e-5

    wav = short_input("VGGVox")
    with torch.no_grad():
        exported = torch.jit.load(str(output))(wav)
        reference = vggvox_reference_forward(without_prefix(state), wav)
    torch.testing.assert_close(exported, reference, rtol=1e-4, atol=1e-4)


def test_strided_pointwise_conv_equals_a_strided_convolution():
    from models._layers import StridedPointwiseConv
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(8, 16, 1, stride=(2, 1), bias=False)
    ours = StridedPointwiseConv(8, 16, 1, stride=(2, 1), bias=False)
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(2, 8, 9, 7, requires_grad=True)
    y = torch.randn(2, 8, 9, 7).copy_(x.detach()).requires_grad_(True)
    expected, got = plain(x), ours(y)
    assert got.shape == expected.shape == (2, 16, 5, 7)
    assert torch.allclose(got, expected, atol=1e-6)
    expected.square().sum().backward()
    got.square().sum().backward()
    assert torch.allclose(y.grad, x.grad, atol=1e-5)
    assert torch.allclose(ours.weight.grad, plain.weight.grad, atol=1e-5)
    with pytest.raises(ValueError):
        StridedPointwiseConv(8, 16, 3, stride=2)
    # Layers of 16 channels and more compute exactly what nn.Conv2d does, gradients included.
    wide, reference = StridedPointwiseConv(16, 32, 1, stride=2, bias=False), torch.nn.Conv2d(16, 32, 1, stride=2, bias=False)
    wide.load_state_dict(reference.state_dict())
    z = torch.randn(2, 16, 9, 7)
    for layer in (wide, reference):
        layer(z).square().sum().backward()
    assert torch.equal(wide.weight.grad, reference.weight.grad)


def test_narrow_resnet_trains_in_channels_last(tmp_path):
    """A quarter-width ResNet-34 on 30 frames: the strided 1x1 shortcut's backward in channels-
    last crashed the process on an AMD EPYC (torch 2.14); run in a child so a crash fails here."""
    import subprocess
    import sys
    script = ("import sys, torch; sys.path.insert(0, %r); from models.ResNet import MainModel; "
              "torch.set_num_threads(1); m = MainModel(resnet_channels=8, nOut=32); "
              "m(torch.randn(3, 30 * 160 + 240)).sum().backward(); print('trained')"
              % str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-1000:]
