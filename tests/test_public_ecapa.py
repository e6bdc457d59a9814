"""Released ECAPA-TDNN models through Embedder.from_checkpoint (speakernet/model/public_models.py):
speechbrain's spkrec-ecapa-voxceleb (speakernet/model/public_speechbrain.py) and wespeaker's
ECAPA_TDNN_GLOB_c512/c1024 (speakernet/model/public_wespeaker.py).

Random weights in each toolkit's layout (names and shapes from tests/fixtures/
speechbrain_ecapa.json and wespeaker_ecapa_c512.json, taken from the toolkits' own modules)
give the embedding of our encoder with those weights, renamed here by rules of this file, on
features computed here: speechbrain's Fbank and sentence mean normalisation from their
formulas, wespeaker's Kaldi filterbanks with torchaudio minus their mean. Where speechbrain
or wespeaker is installed, the embedding equals that of the toolkit's own modules. Every file
that cannot be loaded exactly is one line naming it.
"""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import SR
from models.ECAPA_TDNN import ECAPATDNN, MainModel
from models._speechbrain_fbank import SpeechBrainFbankFrontend
from speakernet.model import public_models
from speakernet.model.embedder import Embedder
from speakernet.core.errors import CheckpointError, UserError
from speakernet.run.options import parse_options
from test_public_models import Given, kaldi_cmn, speech_like

FIXTURES = Path(__file__).parent / "fixtures"
SPEECHBRAIN = json.loads((FIXTURES / "speechbrain_ecapa.json").read_text())
WESPEAKER = json.loads((FIXTURES / "wespeaker_ecapa_c512.json").read_text())
# spkrec-ecapa-voxceleb's embedding_model (its hyperparams.yaml).
SPEECHBRAIN_ECAPA = dict(input_size=80, channels=[1024, 1024, 1024, 1024, 3072], kernel_sizes=[5, 3, 3, 3, 1],
                         dilations=[1, 2, 3, 4, 1], attention_channels=128, lin_neurons=192)


def random_state(shapes, seed=0):
    """Random tensors of the published names and shapes, batch norms with trained-looking
    statistics, num_batches_tracked as wespeaker's averaging leaves them (floats)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(5000.0)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 1:
            state[name] = 0.2 * torch.randn(shape, generator=g) + (1.0 if name.endswith("weight") else 0.0)
        else:
            state[name] = torch.randn(shape, generator=g) / int(np.prod(shape[1:])) ** 0.5
    return state


def renamed(state, rules, linear=()):
    """`state` under our names: each rule (pattern, replacement) applied in turn to every name;
    the weights of names ending in one of `linear` lose their kernel axis."""
    ours = {}
    for name, value in state.items():
        for pattern, replacement in rules:
            name = re.sub(pattern, replacement, name)
        ours[name] = value[..., 0] if name.endswith(linear) else value
    return ours


SPEECHBRAIN_RULES = [
    (r"^blocks\.0\.conv\.conv\.", "stem.0."), (r"^blocks\.0\.norm\.norm\.", "stem.2."),
    (r"^blocks\.([123])\.", lambda m: f"blocks.{int(m[1]) - 1}.@"),
    (r"@tdnn1\.", "@conv_in."), (r"@tdnn2\.", "@conv_out."), (r"@res2net_block\.blocks\.", "@res2net.convs."),
    (r"@se_block\.conv1\.conv\.", "@se.gate.0."), (r"@se_block\.conv2\.conv\.", "@se.gate.2."),
    (r"^mfa\.", "aggregate."), (r"^asp\.tdnn\.", "pool.attention."), (r"^asp\.conv\.conv\.", "pool.attention.4."),
    (r"^asp_bn\.norm\.", "pool_bn."), (r"^fc\.conv\.", "fc."),
    (r"conv\.conv\.", "0."), (r"norm\.norm\.", "2."), (r"@", ""),
]
WESPEAKER_RULES = [
    (r"^layer1\.conv\.", "stem.0."), (r"^layer1\.bn\.", "stem.2."),
    (r"^layer([234])\.se_res2block\.", lambda m: f"blocks.{int(m[1]) - 2}.@"),
    (r"@0\.conv\.", "conv_in.0."), (r"@0\.bn\.", "conv_in.2."), (r"@2\.conv\.", "conv_out.0."),
    (r"@2\.bn\.", "conv_out.2."), (r"@1\.convs\.(\d)\.", r"res2net.convs.\1.0."),
    (r"@1\.bns\.(\d)\.", r"res2net.convs.\1.2."), (r"@3\.linear1\.", "se.gate.0."), (r"@3\.linear2\.", "se.gate.2."),
    (r"^conv\.", "aggregate.0."), (r"^pool\.linear1\.", "pool.attention.0."),
    (r"^pool\.linear2\.", "pool.attention.2."), (r"^bn\.", "pool_bn."), (r"^linear\.", "fc."),
]


def speechbrain_features(wav, n_mels=80):
    """speechbrain's Fbank and sentence mean normalisation, from their formulas in float64:
    |STFT|^2 of periodic-Hamming 400-sample frames centred every 160 samples (zero padding),
    triangles in Hz at points evenly spaced in mel whose half-width is the distance to the
    point below, 10 log10 floored at 1e-10 and at the file's maximum - 80 dB, minus the mean
    over time. n_mels x frames."""
    padded = np.pad(np.asarray(wav, dtype=np.float64), 200)
    frames = np.lib.stride_tricks.sliding_window_view(padded, 400)[::160]
    window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(400) / 400)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    points = 700 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 8000 / 700), n_mels + 2) / 2595) - 1)
    slope = (np.linspace(0, 8000, 201)[None] - points[1:-1, None]) / (points[1:-1] - points[:-2])[:, None]
    banks = np.maximum(0, np.minimum(1 + slope, 1 - slope))
    decibels = 10 * np.log10(np.maximum(power @ banks.T, 1e-10))
    decibels = np.maximum(decibels, decibels.max() - 80)
    return torch.from_numpy((decibels - decibels.mean(axis=0)).T).float()


def direct_embedding(encoder, state, features, wav):
    """`encoder` given `state` (strict: every name maps), on `features`, unit length."""
    encoder.features = Given(features[None])
    encoder.load_state_dict(state)
    with torch.no_grad():
        return F.normalize(encoder.eval()(torch.as_tensor(wav)[None]), dim=-1)[0]


def speechbrain_folder(folder, hyperparams=None, state=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hyperparams.yaml").write_text(SPEECHBRAIN["hyperparams_yaml"] if hyperparams is None else hyperparams)
    if state is not False:
        torch.save(random_state(SPEECHBRAIN["state_dict"]) if state is None else state,
                   folder / "embedding_model.ckpt")
    return folder


def wespeaker_config(**model_args):
    return {"model": WESPEAKER["model"], "model_args": {**WESPEAKER["model_args"], **model_args},
            "dataset_args": {"resample_rate": 16000, "fbank_args": {"num_mel_bins": 80, "frame_shift": 10,
                                                                    "frame_length": 25, "dither": 1.0}},
            "projection_args": {"project_type": "arc_margin", "scale": 32.0}}


def wespeaker_folder(folder, config=None, state=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(wespeaker_config() if config is None else config))
    torch.save(random_state(WESPEAKER["state_dict"]) if state is None else state, folder / "avg_model.pt")
    return folder


@pytest.fixture(scope="module")
def speechbrain_dir(tmp_path_factory):
    return speechbrain_folder(tmp_path_factory.mktemp("speechbrain") / "spkrec-ecapa-voxceleb")


@pytest.fixture(scope="module")
def speechbrain_embedder(speechbrain_dir):
    return Embedder.from_checkpoint(str(speechbrain_dir))


@pytest.fixture(scope="module")
def wespeaker_dir(tmp_path_factory):
    return wespeaker_folder(tmp_path_factory.mktemp("wespeaker") / "voxceleb_ECAPA512")


@pytest.fixture(scope="module")
def wespeaker_embedder(wespeaker_dir):
    return Embedder.from_checkpoint(str(wespeaker_dir))


# ------------------------------------------------------------------------------- front end

def test_speechbrain_front_end_equals_its_formulas():
    frontend = SpeechBrainFbankFrontend(80).eval()
    for samples in (400, 1000, SR + 37):
        batch = torch.stack([torch.from_numpy(speech_like(samples / SR + 0.1, seed)[:samples]) for seed in (1, 2)])
        batch[1] *= 0.01
        ours = frontend(batch)
        assert ours.shape == (2, 80, 1 + samples // 160)
        assert torch.equal(frontend.frame_counts(torch.tensor([samples])), torch.tensor([ours.shape[-1]]))
        for row, wav in zip(ours, batch):
            assert (row - speechbrain_features(wav.numpy())).abs().max() < 2e-3          # dB


# ------------------------------------------------------------------------------- embeddings

@pytest.mark.parametrize("given", ["folder", "weights file"])
def test_speechbrain_folder_embeds_as_our_encoder_on_its_features(speechbrain_dir, speechbrain_embedder, given):
    loaded = (speechbrain_embedder if given == "folder"
              else Embedder.from_checkpoint(str(speechbrain_dir / "embedding_model.ckpt")))
    wav = speech_like(2.37, seed=3)
    state = renamed(random_state(SPEECHBRAIN["state_dict"]), SPEECHBRAIN_RULES, ("se.gate.0.weight",
                                                                                "se.gate.2.weight", "fc.weight"))
    encoder = ECAPATDNN(nOut=192, channels=1024, layout="speechbrain", input_features="speechbrain_fbank")
    expected = direct_embedding(encoder, state, speechbrain_features(wav), wav)
    assert (loaded.embed(wav) - expected).abs().max() < 1e-4
    assert (loaded.eval_frames, loaded.normalize) == (0, True)
    assert sum(p.numel() for p in loaded.encoder.parameters()) == SPEECHBRAIN["parameters"]


def test_wespeaker_ecapa_folder_embeds_as_our_encoder_on_kaldi_features(wespeaker_embedder):
    wav = speech_like(2.37, seed=4)
    state = renamed({k: v for k, v in random_state(WESPEAKER["state_dict"]).items()
                     if not k.startswith("projection.")}, WESPEAKER_RULES)
    encoder = ECAPATDNN(nOut=192, channels=512, layout="wespeaker", input_features="kaldi_fbank")
    expected = direct_embedding(encoder, state, kaldi_cmn(wav), wav)
    assert (wespeaker_embedder.embed(wav) - expected).abs().max() < 1e-5
    assert sum(p.numel() for p in wespeaker_embedder.encoder.parameters()) == WESPEAKER["parameters"]


def test_speechbrain_embedding_equals_speechbrain_own(speechbrain_embedder):
    import speechbrain.lobes.models.ECAPA_TDNN as ecapa        # requirements.txt installs it
    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization
    model = ecapa.ECAPA_TDNN(**SPEECHBRAIN_ECAPA)
    model.load_state_dict({k: v.long() if k.endswith("num_batches_tracked") else v
                           for k, v in random_state(SPEECHBRAIN["state_dict"]).items()})
    features, normalise = Fbank(n_mels=80), InputNormalization(norm_type="sentence", std_norm=False)
    for seconds, seed in ((1.0, 5), (3.3, 6)):
        wav = torch.from_numpy(speech_like(seconds, seed))[None]
        with torch.no_grad():       # EncoderClassifier.encode_batch's steps, relative lengths 1
            lengths = torch.ones(1)
            theirs = model.eval()(normalise(features(wav), lengths), lengths)[0, 0]
        ours = speechbrain_embedder.embed(wav[0].numpy())
        assert F.cosine_similarity(ours, theirs, dim=0) > 0.99999
        assert (ours - F.normalize(theirs, dim=0)).abs().max() < 1e-5


def batch_norm(x, state, prefix):
    return F.batch_norm(x, state[prefix + "running_mean"], state[prefix + "running_var"], state[prefix + "weight"],
                        state[prefix + "bias"], training=False, eps=1e-5)


def conv_relu_bn(x, state, conv, norm, dilation=1, padding_mode="constant"):
    """conv -> ReLU -> batch norm, 'same' length: padded by dilation x (kernel - 1) / 2 each side."""
    pad = dilation * (state[conv + "weight"].shape[-1] - 1) // 2
    x = F.conv1d(F.pad(x, (pad, pad), mode=padding_mode), state[conv + "weight"], state[conv + "bias"],
                 dilation=dilation)
    return batch_norm(F.relu(x), state, norm)


def wespeaker_ecapa(state, features):
    """wespeaker's ECAPA_TDNN_GLOB (models/ecapa_tdnn.py, pooling_layers.ASTP) from its formulas,
    in eval mode, on 80 x T features: SE-Res2Blocks in a chain whose Res2Net passes its last
    group on, the blocks' outputs aggregated by conv + ReLU, global-context attention without
    ReLU/BN (context std unbiased + 1e-7), BN, linear."""
    x = conv_relu_bn(features[None], state, "layer1.conv.", "layer1.bn.")
    outputs = []
    for layer, dilation in ((2, 2), (3, 3), (4, 4)):
        block = f"layer{layer}.se_res2block."
        y = conv_relu_bn(x, state, block + "0.conv.", block + "0.bn.")
        groups, convolved = y.split(y.shape[1] // 8, dim=1), []
        for i in range(7):
            previous = groups[i] if i == 0 else convolved[-1] + groups[i]
            convolved.append(conv_relu_bn(previous, state, f"{block}1.convs.{i}.", f"{block}1.bns.{i}.", dilation))
        y = conv_relu_bn(torch.cat(convolved + [groups[7]], dim=1), state, block + "2.conv.", block + "2.bn.")
        squeeze = F.relu(F.linear(y.mean(dim=2), state[block + "3.linear1.weight"], state[block + "3.linear1.bias"]))
        gate = torch.sigmoid(F.linear(squeeze, state[block + "3.linear2.weight"], state[block + "3.linear2.bias"]))
        x = x + y * gate[..., None]
        outputs.append(x)
    h = F.relu(F.conv1d(torch.cat(outputs, dim=1), state["conv.weight"], state["conv.bias"]))
    context = torch.cat([h, h.mean(dim=2, keepdim=True).expand_as(h),
                         (h.var(dim=2, keepdim=True) + 1e-7).sqrt().expand_as(h)], dim=1)
    scores = torch.tanh(F.conv1d(context, state["pool.linear1.weight"], state["pool.linear1.bias"]))
    weights = torch.softmax(F.conv1d(scores, state["pool.linear2.weight"], state["pool.linear2.bias"]), dim=2)
    mean = (weights * h).sum(dim=2)
    std = ((weights * h * h).sum(dim=2) - mean ** 2).clamp(min=1e-7).sqrt()
    return F.linear(batch_norm(torch.cat([mean, std], dim=1), state, "bn."), state["linear.weight"],
                    state["linear.bias"])[0]


def centred_statistics(x, weights, floor=1e-12):
    mean = (weights * x).sum(dim=2)
    return mean, (weights * (x - mean[..., None]) ** 2).sum(dim=2).clamp(min=floor).sqrt()


def speechbrain_ecapa(state, features):
    """speechbrain's ECAPA_TDNN (lobes/models/ECAPA_TDNN.py) from its formulas, in eval mode, on
    n_mels x T features: every convolution padded by reflection, SE-Res2Blocks in a chain whose
    Res2Net passes its first group on, SE and embedding layers as 1x1 convolutions, the blocks'
    outputs aggregated by a TDNN block (conv, ReLU, BN), global-context attention (TDNN block,
    tanh, conv) with centred statistics floored at 1e-12, BN, 1x1 conv."""
    def tdnn(x, prefix, dilation=1):
        return conv_relu_bn(x, state, prefix + "conv.conv.", prefix + "norm.norm.", dilation, "reflect")

    x = tdnn(features[None], "blocks.0.")
    outputs = []
    for block, dilation in ((1, 2), (2, 3), (3, 4)):
        prefix = f"blocks.{block}."
        y = tdnn(x, prefix + "tdnn1.")
        groups, convolved = y.split(y.shape[1] // 8, dim=1), []
        for i in range(1, 8):
            previous = groups[i] if i == 1 else convolved[-1] + groups[i]
            convolved.append(tdnn(previous, f"{prefix}res2net_block.blocks.{i - 1}.", dilation))
        y = tdnn(torch.cat([groups[0]] + convolved, dim=1), prefix + "tdnn2.")
        squeeze = F.relu(F.conv1d(y.mean(dim=2, keepdim=True), state[prefix + "se_block.conv1.conv.weight"],
                                  state[prefix + "se_block.conv1.conv.bias"]))
        gate = torch.sigmoid(F.conv1d(squeeze, state[prefix + "se_block.conv2.conv.weight"],
                                      state[prefix + "se_block.conv2.conv.bias"]))
        x = x + y * gate
        outputs.append(x)
    h = tdnn(torch.cat(outputs, dim=1), "mfa.")
    mean, std = centred_statistics(h, torch.full((1, 1, h.shape[2]), 1.0 / h.shape[2]))
    context = torch.cat([h, mean[..., None].expand_as(h), std[..., None].expand_as(h)], dim=1)
    scores = torch.tanh(tdnn(context, "asp.tdnn."))
    weights = torch.softmax(F.conv1d(scores, state["asp.conv.conv.weight"], state["asp.conv.conv.bias"]), dim=2)
    pooled = batch_norm(torch.cat(centred_statistics(h, weights), dim=1), state, "asp_bn.norm.")
    return F.conv1d(pooled[..., None], state["fc.conv.weight"], state["fc.conv.bias"])[0, :, 0]


def test_speechbrain_embedding_equals_its_formulas(speechbrain_embedder):
    wav = speech_like(1.3, seed=10)
    expected = F.normalize(speechbrain_ecapa(random_state(SPEECHBRAIN["state_dict"]), speechbrain_features(wav)), dim=0)
    assert (speechbrain_embedder.embed(wav) - expected).abs().max() < 1e-4


def test_wespeaker_ecapa_embedding_equals_its_formulas(wespeaker_embedder):
    wav = speech_like(1.7, seed=9)
    expected = F.normalize(wespeaker_ecapa(random_state(WESPEAKER["state_dict"]), kaldi_cmn(wav)), dim=0)
    assert (wespeaker_embedder.embed(wav) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("folder", ["speechbrain_dir", "wespeaker_dir"])
def test_the_suggested_options_build_the_released_encoder(request, folder):
    """What --initial_model of a run with other options suggests builds this encoder."""
    public = public_models.load(request.getfixturevalue(folder))
    argv = public_models.option_line(public.architecture.options).split() + ["--trainfunc", "aamsoftmax"]
    options = parse_options(argv)
    ours = MainModel(**vars(options))
    assert type(ours.features) is type(public.encoder.features)
    assert ours.layout == public.encoder.layout
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in public.encoder.state_dict().items()}


def test_an_input_shorter_than_reflected_padding_is_one_line(speechbrain_embedder):
    # The dilation-4 convolutions pad 4 frames by reflection: 5 frames, 640 samples, at least.
    with pytest.raises(UserError, match="needs inputs of at least 640 samples"):
        speechbrain_embedder.embed(speech_like(0.03, seed=8))
    assert speechbrain_embedder.embed(speech_like(0.04, seed=8)).isfinite().all()


# ------------------------------------------------------------------------------- bad inputs

def edited(old, new):
    return SPEECHBRAIN["hyperparams_yaml"].replace(old, new, 1)


def without(name):
    return {k: v for k, v in random_state(SPEECHBRAIN["state_dict"]).items() if k != name}


SPEECHBRAIN_BAD = {
    "another model's hyperparams": (dict(hyperparams=edited("ECAPA_TDNN.ECAPA_TDNN", "Xvector.Xvector")),
                                    ["hyperparams.yaml", "Xvector", "ECAPA_TDNN"]),
    "not a speechbrain model": (dict(hyperparams="n_mels: 80\n"), ["hyperparams.yaml", "'embedding_model'"]),
    "no embedding_model.ckpt": (dict(state=False), ["embedding_model.ckpt"]),
    "std normalised features": (dict(hyperparams=edited("std_norm: False", "std_norm: True")), ["std_norm"]),
    "other features": (dict(hyperparams=edited("n_mels: !ref <n_mels>", "n_mels: !ref <n_mels>\n    deltas: True")),
                       ["compute_features", "deltas"]),
    "channels we lack": (dict(hyperparams=edited("1024, 3072]", "1024, 1536]")), ["channels"]),
    "a reference to an expression": (dict(hyperparams=edited("input_size: !ref <n_mels>",
                                                             "input_size: !ref <n_mels> * 2")),
                                     ["input_size", "!ref <n_mels> * 2", "write the value"]),
    "a Python tag": (dict(hyperparams="x: !!python/object/apply:os.getcwd []\n" + SPEECHBRAIN["hyperparams_yaml"]),
                     ["hyperparams.yaml", "python/object"]),
    "shapes that do not fit": (dict(hyperparams=edited("[1024, 1024, 1024, 1024, 3072]", "[512, 512, 512, 512, 1536]")),
                               ["embedding_model.ckpt", "wrong shape", "blocks.0.conv.conv.weight (1024, 80, 5)"]),
    "a missing tensor": (dict(state=without("fc.conv.bias")), ["embedding_model.ckpt", "missing", "fc.conv.bias"]),
}


@pytest.mark.parametrize("case", SPEECHBRAIN_BAD)
def test_a_speechbrain_folder_that_cannot_be_loaded_exactly_is_one_line_naming_the_file(tmp_path, case):
    changes, fragments = SPEECHBRAIN_BAD[case]
    folder = speechbrain_folder(tmp_path / "model", **changes)
    with pytest.raises(CheckpointError) as caught:
        Embedder.from_checkpoint(str(folder))
    message = str(caught.value)
    assert "\n" not in message and str(folder) in message
    assert all(fragment in message for fragment in fragments), message


WESPEAKER_BAD = {
    "a batch norm after the embedding": (dict(config=wespeaker_config(emb_bn=True)), ["config.yaml", "emb_bn"]),
    "another pooling": (dict(config=wespeaker_config(pooling_func="ASP")), ["config.yaml", "'ASP'"]),
    "weights of the other width": (dict(config={**wespeaker_config(), "model": "ECAPA_TDNN_GLOB_c1024"}),
                                   ["avg_model.pt", "wrong shape", "layer1.conv.weight (512, 80, 5)"]),
    "a missing tensor": (dict(state={k: v for k, v in random_state(WESPEAKER["state_dict"]).items()
                                     if k != "layer3.se_res2block.1.bns.6.running_var"}),
                         ["avg_model.pt", "missing", "layer3.se_res2block.1.bns.6.running_var"]),
}


@pytest.mark.parametrize("case", WESPEAKER_BAD)
def test_a_wespeaker_ecapa_that_cannot_be_loaded_exactly_is_one_line_naming_the_file(tmp_path, case):
    changes, fragments = WESPEAKER_BAD[case]
    folder = wespeaker_folder(tmp_path / "model", **changes)
    with pytest.raises(CheckpointError) as caught:
        Embedder.from_checkpoint(str(folder))
    message = str(caught.value)
    assert "\n" not in message and str(folder) in message
    assert all(fragment in message for fragment in fragments), message
