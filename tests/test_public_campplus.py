"""Released CAM++ models through Embedder.from_checkpoint and --initial_model
(speakernet/model/public_models.py): 3D-Speaker's (a ModelScope folder of configuration.json and
campplus_voxceleb.bin, or the file alone as speakerlab/bin/infer_sv.py keeps it) and wespeaker's
(config.yaml and avg_model.pt). Random weights in each toolkit's layout (names and shapes from
tests/fixtures/3dspeaker_campplus.json and wespeaker_campplus.json, taken from their own CAM++
modules) give the embedding of our CAMPPlus holding the same tensors in the same order, on
filterbanks computed here with torchaudio as each toolkit computes them; every file that cannot
be loaded exactly is one line naming it.
"""
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio
import yaml

from conftest import SR, train_argv
from models._frontends import KaldiFbankFrontend
from models.CAMPPlus import CAMPPlus, MainModel, PoveyKaldiFbank
from models.ResNet import MeanNormalization
from speakernet.model.embedder import Embedder
from speakernet.core.errors import CheckpointError, OptionError
from test_public_models import Given, kaldi_cmn, run_main, speech_like, wespeaker_state

FIXTURES = Path(__file__).parent / "fixtures"
SPEAKERLAB = json.loads((FIXTURES / "3dspeaker_campplus.json").read_text())
WESPEAKER = json.loads((FIXTURES / "wespeaker_campplus.json").read_text())
CONFIGURATION = SPEAKERLAB["configuration"]
WEIGHTS = SPEAKERLAB["model_pt"]
EMBEDDING = "xvector.dense."            # the embedding layer's tensors, sized by the embedding


def shapes_for(spec, embedding_size):
    """The published shapes with the embedding layer resized (3D-Speaker's 192-d models)."""
    return {name: ([embedding_size, *shape[1:]] if name.startswith(EMBEDDING) else shape)
            for name, shape in spec["state_dict"].items()}


@lru_cache(maxsize=None)
def published_state(layout="3dspeaker", embedding_size=512, seed=0):
    """Random tensors of the published names and shapes, batch norms with trained-looking
    statistics (wespeaker's averaged checkpoints hold num_batches_tracked as floats)."""
    spec = SPEAKERLAB if layout == "3dspeaker" else WESPEAKER
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes_for(spec, embedding_size).items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(5000.0 if layout == "wespeaker" else 5000)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 1:               # BN scale and shift, running means, biases
            state[name] = 0.2 * torch.randn(shape, generator=g) + (1.0 if name.endswith("weight") else 0.0)
        else:
            state[name] = torch.randn(shape, generator=g) / int(np.prod(shape[1:])) ** 0.5
    return state


def modelscope_folder(folder, state=None, configuration=None, weights=WEIGHTS):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(published_state() if state is None else state, folder / weights)
    (folder / "configuration.json").write_text(json.dumps(configuration or CONFIGURATION, indent=4))
    return folder


def configuration(**model_config):
    """configuration.json with these model_config values."""
    config = json.loads(json.dumps(CONFIGURATION))
    config["model"]["model_config"].update(model_config)
    return config


def wespeaker_config(**model_args):
    """The keys of wespeaker's config.yaml for its CAM++ (examples/voxceleb/v2/conf/campplus.yaml)."""
    return {"model": WESPEAKER["model"], "model_args": {**WESPEAKER["model_args"], **model_args},
            "dataset_args": {"resample_rate": 16000, "num_frms": 200,
                             "fbank_args": {"num_mel_bins": 80, "frame_shift": 10, "frame_length": 25,
                                            "dither": 1.0}},
            "projection_args": {"project_type": "arc_margin", "scale": 32.0}}


def wespeaker_folder(folder, config=None):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(published_state("wespeaker"), folder / "avg_model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(config or wespeaker_config()))
    return folder


def speakerlab_fbank(wav):
    """3D-Speaker's features (speakerlab/process/processor.py FBank(80, 16000, mean_nor=True)
    on the float samples infer_sv.py loads): 80 x frames."""
    fbank = torchaudio.compliance.kaldi.fbank(torch.as_tensor(wav)[None], num_mel_bins=80,
                                              sample_frequency=SR, dither=0)
    return (fbank - fbank.mean(dim=0, keepdim=True)).T


def direct_embedding(state, wav, features, embedding_size=512):
    """Our CAMPPlus holding the published tensors in their published order (the toolkits'
    modules are built in ours; only the embedding layer, a 1x1 Conv1d there, loses its kernel
    axis), on `features(wav)`, unit length."""
    encoder = CAMPPlus(nOut=embedding_size)
    encoder.features = Given(features(wav)[None])
    ours = encoder.state_dict()
    published = [(k, v) for k, v in state.items() if not k.startswith("projection.")]
    assert len(published) == len(ours)
    for (name, own), (public, tensor) in zip(ours.items(), published):
        assert own.shape == tensor.shape or (name, public) == ("fc.weight", EMBEDDING + "linear.weight")
    encoder.load_state_dict({name: tensor.reshape(own.shape)
                             for (name, own), (_, tensor) in zip(ours.items(), published)})
    with torch.no_grad():
        return F.normalize(encoder.eval()(torch.as_tensor(wav)[None]), dim=-1)[0]


@pytest.fixture(scope="module")
def speakerlab_dir(tmp_path_factory):
    return modelscope_folder(tmp_path_factory.mktemp("modelscope") / "speech_campplus_sv_en_voxceleb_16k")


# ------------------------------------------------------------------------------- front ends

def test_default_front_end_is_unchanged():
    features = CAMPPlus().features
    assert not isinstance(features, KaldiFbankFrontend)
    assert type(features.instancenorm) is MeanNormalization


def test_front_ends_that_do_not_exist_are_option_errors():
    with pytest.raises(OptionError, match="kaldi_fbank_povey gives log filterbanks"):
        MainModel(input_features="kaldi_fbank_povey", log_input=False)
    with pytest.raises(OptionError, match="CAMPPlus takes fbank, kaldi_fbank, kaldi_fbank_povey"):
        MainModel(input_features="mfcc")


def test_povey_front_end_equals_3dspeakers_fbank():
    frontend = PoveyKaldiFbank(80)
    for samples in (400, 559, 560, SR + 37):
        batch = torch.stack([torch.from_numpy(speech_like(samples / SR + 0.1, seed)[:samples])
                             for seed in (1, 2)])
        batch[1] *= 0.01
        ours = frontend.eval()(batch)
        assert ours.shape == (2, 80, 1 + (samples - 400) // 160)
        for row, wav in zip(ours, batch):
            assert (row - speakerlab_fbank(wav)).abs().max() < 1e-4
        assert torch.equal(frontend.train()(batch), ours)           # no dither in training either
    # wespeaker's Kaldi features (Hamming window, samples x 2^15) are others.
    assert (KaldiFbankFrontend(80).eval()(batch) - ours).abs().max() > 0.1


# ------------------------------------------------------------------------------- embeddings

@pytest.mark.parametrize("given", ["ModelScope folder", "weights file in it", "infer_sv.py's file alone"])
def test_3dspeaker_release_embeds_as_our_encoder_on_its_features(speakerlab_dir, tmp_path, given):
    path = {"ModelScope folder": speakerlab_dir, "weights file in it": speakerlab_dir / WEIGHTS,
            "infer_sv.py's file alone": tmp_path / WEIGHTS}[given]
    if given == "infer_sv.py's file alone":
        torch.save(published_state(), path)
    embedder = Embedder.from_checkpoint(str(path))
    wav = speech_like(2.37, seed=3)
    expected = direct_embedding(published_state(), wav, speakerlab_fbank)
    assert (embedder.embed(wav) - expected).abs().max() < 1e-5
    assert (embedder.eval_frames, embedder.normalize) == (0, True)       # whole files, cosine


@pytest.mark.parametrize("given", ["ModelScope folder", "infer_sv.py's file alone"])
def test_3dspeaker_192_d_models_embed_as_our_encoder(tmp_path, given):
    state = published_state(embedding_size=192, seed=1)
    if given == "ModelScope folder":
        config = configuration(emb_size=192)
        config["model"]["pretrained_model"] = "campplus_cn_common.bin"
        path = modelscope_folder(tmp_path / "speech_campplus_sv_zh-cn_16k-common", state, config,
                                 weights="campplus_cn_common.bin")
    else:
        path = tmp_path / "campplus_cn_common.bin"
        torch.save(state, path)
    wav = speech_like(1.6, seed=4)
    expected = direct_embedding(state, wav, speakerlab_fbank, embedding_size=192)
    assert (Embedder.from_checkpoint(str(path)).embed(wav) - expected).abs().max() < 1e-5


def test_wespeaker_campplus_folder_embeds_as_our_encoder_on_its_features(tmp_path):
    folder = wespeaker_folder(tmp_path / "voxceleb_CAM++")
    wav = speech_like(2.9, seed=5)
    expected = direct_embedding(published_state("wespeaker"), wav, kaldi_cmn)
    assert (Embedder.from_checkpoint(str(folder)).embed(wav) - expected).abs().max() < 1e-5


def test_eval_with_a_3dspeaker_folder_needs_its_front_end_and_scores_as_the_embedder(
        corpus, tmp_path, caplog, speakerlab_dir):
    # wespeaker's Kaldi front end is another function of the samples: refused, naming the options.
    argv = train_argv(corpus, tmp_path / "eval", model="CAMPPlus", nOut=512, n_mels=80, eval_frames=0,
                      num_eval=1, input_features="kaldi_fbank")
    code, errors = run_main(argv + ["--eval", "--initial_model", speakerlab_dir], caplog)
    assert code == 2 and len(errors) == 1
    assert str(speakerlab_dir) in errors[0] and "--input_features kaldi_fbank_povey" in errors[0]
    suggested = errors[0].split("run with ")[1].split()
    code, errors = run_main(argv + suggested + ["--eval", "--initial_model", speakerlab_dir], caplog)
    assert code == 0 and not errors
    lines = next((tmp_path / "eval" / "result").glob("scores_*.txt")).read_text().splitlines()
    scores = {(a, b): float(score) for score, _, a, b in map(str.split, lines)}
    embedder = Embedder.from_checkpoint(str(speakerlab_dir))
    for _, a, b in corpus.trials[:3]:
        assert abs(scores[a, b] - embedder.score(str(corpus.root / a), str(corpus.root / b))) < 2e-6


# ------------------------------------------------------------------------------- bad inputs

def in_folder(state=None, config=None, weights=WEIGHTS):
    """A ModelScope folder with these weights (or a function making them) and configuration."""
    def write(path):
        return modelscope_folder(path, state() if callable(state) else state, config, weights)
    return write


def file_alone(name, state="random"):
    def write(path):
        path.mkdir()
        if state is not None:
            torch.save(published_state() if state == "random" else state, path / name)
        return path / name
    return write


def text_as_configuration(text):
    def write(path):
        folder = modelscope_folder(path)
        (folder / "configuration.json").write_text(text)
        return folder
    return write


def weights_removed(path):
    folder = modelscope_folder(path)
    (folder / WEIGHTS).unlink()
    return folder


def without(name):
    return {k: v for k, v in published_state().items() if k != name}


def config_with(**model):
    config = json.loads(json.dumps(CONFIGURATION))
    config["model"].update(model)
    return config


def wespeaker_with(**model_args):
    return lambda path: wespeaker_folder(path, wespeaker_config(**model_args))


BAD = {
    "a folder of no release": (lambda path: file_alone("model.bin")(path).parent, ["configuration.json",
                                                                                     "3D-Speaker"]),
    "configuration.json not JSON": (text_as_configuration("{'model': 1"), ["configuration.json", "JSON"]),
    "not a model configuration": (text_as_configuration('{"task": "speaker-verification"}'),
                                  ["configuration.json", "'model'"]),
    "another architecture": (in_folder(config=config_with(type="eres2net-sv")), ["eres2net-sv", "cam++-sv"]),
    "another sample rate": (in_folder(config=configuration(sample_rate=8000)), ["8000 Hz"]),
    "no embedding size": (in_folder(config=configuration(emb_size=None)), ["emb_size"]),
    "weights named outside the folder": (in_folder(config=config_with(pretrained_model="../x.bin")),
                                         ["pretrained_model", "../x.bin"]),
    "the weights it names are missing": (weights_removed, [WEIGHTS, "ModelScope"]),
    "shapes that do not fit": (in_folder(config=configuration(emb_size=192)),
                               [WEIGHTS, "xvector.dense.linear.weight", "192"]),
    "a missing tensor": (in_folder(state=lambda: without("xvector.block3.tdnnd16.cam_layer.linear2.bias")),
                         ["missing", "xvector.block3.tdnnd16.cam_layer.linear2.bias"]),
    "another model's weights": (in_folder(state=wespeaker_state), ["missing", "unexpected", "conv1.weight"]),
    "not a state dict": (in_folder(state=[1, 2]), [WEIGHTS, "state dict"]),
    "a released ERes2Net file": (file_alone("pretrained_eres2net.ckpt"), ["ERes2Net", "CAM++"]),
    "a released name, no file": (file_alone(WEIGHTS, state=None), ["not found"]),
    "wespeaker: another pooling": (wespeaker_with(pooling_func="ASTP"), ["config.yaml", "ASTP"]),
    "wespeaker: another width": (wespeaker_with(growth_rate=64), ["config.yaml", "growth_rate", "64"]),
    "wespeaker: an argument we lack": (wespeaker_with(two_emb_layer=True), ["config.yaml", "two_emb_layer"]),
    "wespeaker: shapes that do not fit": (wespeaker_with(embed_dim=256), ["avg_model.pt", "256"]),
}


@pytest.mark.parametrize("case", BAD)
def test_what_cannot_be_loaded_exactly_is_one_line_naming_the_file(tmp_path, case):
    write, fragments = BAD[case]
    path = write(tmp_path / "model")
    with pytest.raises(CheckpointError) as caught:
        Embedder.from_checkpoint(str(path))
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert all(fragment in message for fragment in fragments), message
