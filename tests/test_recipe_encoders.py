"""wespeaker's ResNet family (models/ResNet.py) and CAM++ (models/CAMPPlus.py): sizes and MACs
against the published tables, shapes, eval-mode determinism and batch
independence, a few training steps, TorchScript export, options and the recipe configs.

Published figures: wenet-e2e/wespeaker examples/voxceleb/v2/README.md (ResNet-34 / 221 / 293:
6.63 / 23.79 / 28.62 M parameters, 4.55 / 21.29 / 28.10 G; CAM++ 7.18 M, 1.15 G, its "Flops"
being thop MACs for 200 frames) and modelscope/3D-Speaker egs/voxceleb/sv-cam++/README.md
(CAM++ 7.18 M). Trainable checks use ResNet-34 at a quarter of the width (--resnet_channels 8)
and short inputs to stay within about a minute on two busy cores.
"""
import pytest
import torch

from speakernet.run import options
from speakernet.run import plugins
from loss.softmax import LossFunction
from speakernet.tools.model_tools import (add_component_options, build_parser, count_macs, count_parameters,
                             export_torchscript, max_abs_difference, samples_for)
from models.CAMPPlus import segment_means

SR = 16_000
# name -> (model file, MainModel options, published parameters, published MACs for 2 s)
PUBLISHED = {
    "ResNet34": ("ResNet", dict(resnet_depth=34), 6.63e6, 4.55e9),
    "ResNet221": ("ResNet", dict(resnet_depth=221), 23.79e6, 21.29e9),
    "ResNet293": ("ResNet", dict(resnet_depth=293), 28.62e6, 28.10e9),
    "CAMPPlus": ("CAMPPlus", dict(), 7.18e6, 1.15e9),
}
# The fast variants every behavioural test runs: (model file, options, embedding size).
FAST = {"ResNet34_c8": ("ResNet", dict(resnet_channels=8), 256),
        "CAMPPlus": ("CAMPPlus", dict(), 512)}
LENGTHS = (SR, samples_for(200), SR + 4_321)          # 1 s, 2 s (the trainer's crop), odd


def build(name, table=FAST, **overrides):
    module, kwargs = table[name][:2]
    torch.manual_seed(0)
    return plugins.factory("models", module)(**{**kwargs, **overrides})


def waveform(batch, samples, seed=1):
    return 0.3 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def relative_difference(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.fixture(scope="module")
def published_models():
    """Each published configuration, built once (ResNet-293 takes about a second)."""
    return {name: build(name, PUBLISHED) for name in PUBLISHED}


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_count_within_2_percent_of_published(name, published_models):
    params, target = count_parameters(published_models[name]), PUBLISHED[name][2]
    assert abs(params - target) <= 0.02 * target, f"{name}: {params:,} vs {target:,.0f}"


@pytest.mark.parametrize("name", PUBLISHED)
def test_macs_for_two_seconds_within_10_percent_of_published(name, published_models):
    macs, target = count_macs(published_models[name], samples_for(200)), PUBLISHED[name][3]
    assert abs(macs - target) <= 0.10 * target, f"{name}: {macs / 1e9:.2f} G vs {target / 1e9} G"


def test_defaults_are_the_papers():
    model = plugins.factory("models", "ResNet")()
    assert count_parameters(model) == count_parameters(build("ResNet34", PUBLISHED))
    assert model.fc.out_features == 256 and model.conv1.out_channels == 32
    assert model.features.melspec.n_mels == 80
    resolved = options.parse_options(["--model", "ResNet", "--trainfunc", "softmax"])
    assert (resolved.nOut, resolved.n_mels, resolved.log_input, resolved.encoder_type,
            resolved.resnet_depth, resolved.resnet_channels) == (256, 80, True, "TSTP", 34, 32)
    resolved = options.parse_options(["--model", "CAMPPlus", "--trainfunc", "softmax"])
    assert (resolved.nOut, resolved.n_mels, resolved.log_input) == (512, 80, True)


def test_depth_option_selects_the_network_and_bad_values_are_refused():
    resolved = options.parse_options(["--model", "ResNet", "--trainfunc", "softmax",
                                      "--resnet_depth", "221"])
    model = plugins.factory("models", "ResNet")(**vars(resolved))
    assert type(model.layer3[0]).__name__ == "Bottleneck" and len(model.layer3) == 48
    with pytest.raises(SystemExit):
        options.parse_options(["--model", "ResNet", "--trainfunc", "softmax",
                               "--resnet_depth", "50"])
    with pytest.raises(ValueError, match="resnet_depth"):
        plugins.factory("models", "ResNet")(resnet_depth=50)
    for module in ("ResNet", "CAMPPlus"):
        with pytest.raises(ValueError, match="SAP"):
            plugins.factory("models", module)(encoder_type="SAP")


def test_features_are_mean_normalised_not_variance_normalised():
    for name in FAST:
        feats = build(name).features(waveform(2, SR))
        assert feats.shape[1] == 80
        assert feats.mean(dim=-1).abs().max() < 1e-4
        assert (feats.std(dim=-1) - 1).abs().max() > 0.05      # instance norm would give 1


def test_segment_means_average_each_100_frame_segment_including_the_short_last_one():
    x = torch.randn(2, 3, 250)
    means = segment_means(x)
    assert means.shape == x.shape
    for start, end in ((0, 100), (100, 200), (200, 250)):
        expected = x[..., start:end].mean(dim=-1, keepdim=True).expand(-1, -1, end - start)
        assert torch.allclose(means[..., start:end], expected, atol=1e-6)


@pytest.mark.parametrize("name", FAST)
def test_output_is_batch_by_nout_for_several_lengths(name):
    model = build(name).eval()
    with torch.no_grad():
        for samples in LENGTHS:
            assert model(waveform(2, samples)).shape == (2, FAST[name][2])
    assert build(name, nOut=64).eval()(waveform(1, SR)).shape == (1, 64)


@pytest.mark.parametrize("name", FAST)
def test_int16_input_equals_float_input_scaled_by_2_to_the_minus_15(name):
    model = build(name).eval()
    pcm = (waveform(2, SR + 321) * 32768).round().clamp(-32768, 32767).to(torch.int16)
    with torch.no_grad():
        from_int = model(pcm)
        from_float = model(pcm.float() / 32768)
    assert relative_difference(from_float, from_int) <= 1e-6


@pytest.mark.parametrize("name", FAST)
def test_eval_is_deterministic_and_independent_of_the_rest_of_the_batch(name):
    model = build(name).eval()
    # 3.5 s: more than one 100-frame CAM segment after CAM++'s stride-2 TDNN layer.
    wav = waveform(3, 56_000)
    with torch.no_grad():
        together = model(wav)
        assert torch.equal(together, model(wav))
        alone = torch.cat([model(wav[i:i + 1]) for i in range(3)])
    assert relative_difference(together, alone) <= 1e-5


@pytest.mark.parametrize("name, lr, steps", [("ResNet34_c8", 3e-4, 8), ("CAMPPlus", 1e-3, 5)])
def test_a_few_steps_lower_a_softmax_loss_through_the_encoder_alone(name, lr, steps):
    """Four classes of fixed random waveforms; the classifier is frozen, so only the encoder's
    updates can lower the loss."""
    model = build(name).train()
    head = LossFunction(nOut=FAST[name][2], nClasses=4).requires_grad_(False)
    gen = torch.Generator().manual_seed(3)
    classes = 0.3 * torch.randn(4, 8_000, generator=gen)
    wav = classes.repeat_interleave(2, 0) + 0.05 * torch.randn(8, 8_000, generator=gen)
    labels = torch.arange(4).repeat_interleave(2)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    first = None
    for _ in range(steps):
        loss, _ = head(model(wav), labels)
        first = loss.item() if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        final = head(model(wav), labels)[0].item()
    assert final < 0.5 * first, f"{name}: loss {first:.3f} -> {final:.3f}"


@pytest.mark.parametrize("name", FAST)
def test_torchscript_export_matches_eager_on_another_length(name, tmp_path):
    model = build(name)
    exported = export_torchscript(model, tmp_path / f"{name}.pt", example_samples=SR)
    # 3.3 s: two CAM segments where the 1 s trace had one, and an odd length.
    assert max_abs_difference(model, exported, 52_807) <= 1e-4


def test_every_model_is_listed_and_the_profiler_takes_the_new_options():
    names = plugins.available("models")
    assert {"ResNet", "CAMPPlus", "ResNetSE34L", "ECAPA_TDNN"} <= set(names)
    parser = build_parser()
    dests = add_component_options(parser, names)
    assert {"resnet_depth", "resnet_channels"} <= set(dests)
    assert parser.parse_args(["--profile", "--resnet_depth", "293"]).resnet_depth == 293


@pytest.mark.parametrize("config, model, n_out", [
    ("configs/ResNet34_wespeaker_AAM.yaml", "ResNet", 256),
    ("configs/CAMPPlus_3dspeaker_AAM.yaml", "CAMPPlus", 512)])
def test_recipe_configs_parse_and_build(config, model, n_out):
    resolved = options.parse_options(["--config", config, "--nClasses", "10"])
    assert (resolved.model, resolved.nOut, resolved.n_mels, resolved.trainfunc,
            resolved.margin, resolved.scale) == (model, n_out, 80, "aamsoftmax", 0.2, 32.0)
    import trainSpeakerNet            # here, so that only this test depends on the trainer
    net = trainSpeakerNet.build_model(resolved)
    encoder, objective = net.encoder.eval(), net.objective
    with torch.no_grad():
        embeddings = encoder(waveform(2, SR))
    loss, _ = objective(embeddings, torch.tensor([0, 9]))
    assert embeddings.shape == (2, n_out) and torch.isfinite(loss)
