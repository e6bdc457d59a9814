"""wespeaker's released models (a folder of config.yaml and avg_model.pt) through
Embedder.from_checkpoint and --initial_model (speakernet/model/public_models.py): random weights in
wespeaker's layout (names and shapes from tests/fixtures/wespeaker_resnet34.json, taken from
its own ResNet34) give the embedding of our encoder on Kaldi filterbanks computed here with
torchaudio as wespeaker computes them; the Kaldi front end against torchaudio's; --eval on a
folder; and every file that cannot be loaded exactly is one line naming it.
"""
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio
import yaml

import trainSpeakerNet
from conftest import SR, train_argv
from models._frontends import KaldiFbankFrontend
from models.ResNet import ResNet
from speakernet.model.embedder import Embedder
from speakernet.core.errors import CheckpointError

SPEC = json.loads((Path(__file__).parent / "fixtures" / "wespeaker_resnet34.json").read_text())
ARGS = SPEC["model_args"]


def wespeaker_state(seed=0):
    """Random tensors of the published names and shapes, batch norms with trained-looking
    statistics, num_batches_tracked as floats (what wespeaker's model averaging leaves)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in SPEC["state_dict"].items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(5000.0)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 1:               # BN scale and shift, running means, biases
            state[name] = 0.2 * torch.randn(shape, generator=g) + (1.0 if name.endswith("weight") else 0.0)
        else:
            fan_in = int(np.prod(shape[1:]))
            state[name] = torch.randn(shape, generator=g) / fan_in ** 0.5
    return state


def wespeaker_config(**changes):
    """The keys of the config.yaml wespeaker/bin/train.py writes that describe the model."""
    config = {"model": SPEC["model"], "model_args": dict(ARGS),
              "dataset_args": {"resample_rate": 16000, "num_frms": 200, "speed_perturb": True,
                               "fbank_args": {"num_mel_bins": 80, "frame_shift": 10, "frame_length": 25,
                                              "dither": 1.0}},
              "projection_args": {"project_type": "arc_margin", "scale": 32.0, "num_class": 17982}}
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            config[section][name] = value
        else:
            config[key] = value
    return config


def model_folder(folder, state=None, config=None):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(wespeaker_state() if state is None else state, folder / "avg_model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(wespeaker_config() if config is None else config))
    return folder


@pytest.fixture(scope="module")
def wespeaker_dir(tmp_path_factory):
    return model_folder(tmp_path_factory.mktemp("wespeaker") / "voxceleb_resnet34")


@pytest.fixture(scope="module")
def embedder(wespeaker_dir):
    return Embedder.from_checkpoint(str(wespeaker_dir))


def speech_like(seconds, seed):
    """A modulated tone with noise and a stretch of digital silence (Kaldi's log floor)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    audio = 0.3 * np.sin(2 * np.pi * (120 + 80 * rng.random()) * t) * (1 + 0.5 * np.sin(6 * np.pi * t))
    audio = audio + 0.03 * rng.standard_normal(len(t))
    audio[len(t) // 3: len(t) // 3 + 800] = 0.0
    return audio.astype(np.float32)


def kaldi_cmn(wav):
    """wespeaker's features, computed with torchaudio: 80 x frames."""
    fbank = torchaudio.compliance.kaldi.fbank(torch.as_tensor(wav)[None] * (1 << 15), num_mel_bins=80,
                                              frame_length=25, frame_shift=10, dither=0.0,
                                              sample_frequency=SR, window_type="hamming")
    return (fbank - fbank.mean(dim=0)).T


class Given(nn.Module):
    """A front end that returns features computed elsewhere."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def forward(self, wav):
        return self.features

    def frame_counts(self, sample_lengths):
        return torch.tensor(self.features.shape[-1])


def direct_embedding(state, wav):
    """Our ResNet-34 given the renamed weights, on the features computed here, unit length."""
    encoder = ResNet(depth=34, nOut=ARGS["embed_dim"], n_mels=ARGS["feat_dim"])
    encoder.features = Given(kaldi_cmn(wav)[None])
    renamed = {("fc." + k.removeprefix("seg_1.") if k.startswith("seg_1.") else k): v
               for k, v in state.items() if not k.startswith("projection.")}
    encoder.load_state_dict(renamed)                       # strict: every name maps
    with torch.no_grad():
        return F.normalize(encoder.eval()(torch.as_tensor(wav)[None]), dim=-1)[0]


# ------------------------------------------------------------------------------- front end

def test_kaldi_front_end_equals_torchaudio_fbank_minus_its_mean():
    frontend = KaldiFbankFrontend(80).eval()
    for samples in (400, 559, 560, SR + 37):
        batch = torch.stack([torch.from_numpy(speech_like(samples / SR + 0.1, seed)[:samples])
                             for seed in (1, 2)])
        batch[1] *= 0.01
        ours = frontend(batch)
        assert ours.shape == (2, 80, 1 + (samples - 400) // 160)
        assert torch.equal(frontend.frame_counts(torch.tensor([samples])), torch.tensor([ours.shape[-1]]))
        for row, wav in zip(ours, batch):
            assert (row - kaldi_cmn(wav)).abs().max() < 1e-4
    # Dither (wespeaker's training default) while training only.
    assert not torch.equal(frontend.train()(batch), frontend.eval()(batch))


def test_default_front_end_is_unchanged():
    assert type(ResNet().features) is not KaldiFbankFrontend


# ------------------------------------------------------------------------------- embeddings

@pytest.mark.parametrize("given", ["folder", "weights file"])
def test_wespeaker_folder_embeds_as_our_encoder_on_kaldi_features(wespeaker_dir, embedder, given):
    path = wespeaker_dir if given == "folder" else wespeaker_dir / "avg_model.pt"
    loaded = embedder if given == "folder" else Embedder.from_checkpoint(str(path))
    wav = speech_like(2.37, seed=3)
    expected = direct_embedding(wespeaker_state(), wav)
    assert (loaded.embed(wav) - expected).abs().max() < 1e-5
    assert (loaded.eval_frames, loaded.normalize) == (0, True)       # whole files, cosine


def test_files_embedded_together_equal_each_alone(embedder):
    waves = [speech_like(seconds, seed) for seconds, seed in ((1.0, 4), (3.1, 5), (1.73, 6))]
    together = embedder.embed(waves)
    alone = torch.stack([embedder.embed(w) for w in waves])
    assert F.cosine_similarity(together, alone).min() > 0.99999


def test_eval_with_a_wespeaker_folder_scores_as_the_embedder(corpus, tmp_path, wespeaker_dir, embedder):
    argv = train_argv(corpus, tmp_path / "eval", model="ResNet", input_features="kaldi_fbank", nOut=256,
                      n_mels=80, eval_frames=0, num_eval=1) + ["--eval", "--initial_model", str(wespeaker_dir)]
    assert trainSpeakerNet.main(argv) == 0
    lines = next((tmp_path / "eval" / "result").glob("scores_*.txt")).read_text().splitlines()
    scores = {(a, b): float(score) for score, _, a, b in map(str.split, lines)}
    assert len(scores) == len(corpus.trials)
    for _, a, b in corpus.trials[:4]:
        assert abs(scores[a, b] - embedder.score(str(corpus.root / a), str(corpus.root / b))) < 2e-6


def test_calibrating_a_folder_writes_a_checkpoint_of_ours_beside_it(corpus, tmp_path, wespeaker_dir, embedder):
    folder = model_folder(tmp_path / "voxceleb_resnet34")
    argv = train_argv(corpus, tmp_path / "cal", model="ResNet", input_features="kaldi_fbank", nOut=256,
                      n_mels=80, eval_frames=0, num_eval=1)
    argv += ["--eval", "--initial_model", str(folder), "--calibrate", str(corpus.test_list)]
    assert trainSpeakerNet.main(argv) == 0
    calibrated = Embedder.from_checkpoint(str(tmp_path / "voxceleb_resnet34.calibrated.model"))
    wav = speech_like(1.5, seed=8)
    assert calibrated.calibration is not None
    assert (calibrated.embed(wav) - embedder.embed(wav)).abs().max() < 1e-6


# ------------------------------------------------------------------------------- bad inputs

def without_config(folder):
    folder.mkdir()
    torch.save(wespeaker_state(), folder / "avg_model.pt")


def changed(drop=(), **config_changes):
    """A model folder whose config has these changes ('section__key' inside a section) and whose
    weights lack the tensors named in `drop`."""
    def write(folder):
        state = {k: v for k, v in wespeaker_state().items() if k not in drop}
        model_folder(folder, state, wespeaker_config(**config_changes))
    return write


BAD = {
    "no config.yaml": (without_config, ["config.yaml", "avg_model.pt"]),
    "no weights": (lambda folder: (folder.mkdir(), (folder / "config.yaml").write_text(
        yaml.safe_dump(wespeaker_config()))), ["avg_model.pt"]),
    "not a wespeaker config": (changed(model=None), ["config.yaml", "'model'"]),
    "an architecture we lack": (changed(model="SimAM_ResNet34_ASP"), ["SimAM_ResNet34_ASP", "ResNet34"]),
    "a second embedding layer": (changed(model_args__two_emb_layer=True), ["two_emb_layer"]),
    "another pooling": (changed(model_args__pooling_func="ASTP"), ["ASTP"]),
    "other features": (changed(dataset_args__frontend="s3prl"), ["frontend", "s3prl"]),
    "other filterbank": (changed(dataset_args__fbank_args={"num_mel_bins": 64}), ["num_mel_bins"]),
    "shapes that do not fit": (changed(model_args__embed_dim=192), ["avg_model.pt", "seg_1.weight", "192"]),
    "a missing tensor": (changed(drop=("layer4.2.bn2.weight",)), ["missing", "layer4.2.bn2.weight"]),
}


@pytest.mark.parametrize("case", BAD)
def test_what_cannot_be_loaded_exactly_is_one_line_naming_the_file(tmp_path, case):
    write, fragments = BAD[case]
    folder = tmp_path / "model"
    write(folder)
    with pytest.raises(CheckpointError) as caught:
        Embedder.from_checkpoint(str(folder))
    message = str(caught.value)
    assert "\n" not in message and str(folder) in message
    assert all(fragment in message for fragment in fragments), message


def run_main(argv, caplog):
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = trainSpeakerNet.main([str(a) for a in argv])
    return code, [r.getMessage() for r in caplog.records
                  if r.name == "trainSpeakerNet" and r.levelno >= logging.ERROR]


def test_eval_of_a_folder_without_config_exits_2_with_one_line(corpus, tmp_path, caplog):
    without_config(tmp_path / "model")
    code, errors = run_main(train_argv(corpus, tmp_path / "eval") + ["--eval", "--initial_model",
                                                                      tmp_path / "model"], caplog)
    assert code == 2 and len(errors) == 1 and "config.yaml" in errors[0]


def test_a_run_model_other_than_the_config_names_the_options_to_give(corpus, tmp_path, caplog, wespeaker_dir):
    # The run's ResNet without --input_features kaldi_fbank: refused, naming the options to give.
    argv = train_argv(corpus, tmp_path / "eval", model="ResNet", nOut=256, n_mels=80)
    code, errors = run_main(argv + ["--eval", "--initial_model", wespeaker_dir], caplog)
    assert code == 2 and len(errors) == 1
    assert str(wespeaker_dir) in errors[0] and "--input_features kaldi_fbank" in errors[0]
    suggested = errors[0].split("run with ")[1].split()
    code, errors = run_main(argv + suggested + ["--eval", "--initial_model", wespeaker_dir], caplog)
    assert code == 0 and not errors
