"""Start from a public model: wespeaker's released speaker models as --initial_model and as
Embedder.from_checkpoint's input.

A wespeaker model is a folder holding config.yaml (the training config wespeaker/bin/train.py
writes beside its checkpoints) and avg_model.pt (the averaged state dict of the last epochs,
wespeaker/bin/average_model.py); its released VoxCeleb models are such folders. Either the
folder or a .pt file beside config.yaml (or in its models/ subfolder, as in wespeaker's
experiment folders) is accepted. Nothing in them runs: config.yaml is read as plain YAML and
the weights with torch.load(weights_only=True) (speakernet.checkpoint.load_file).

config.yaml names the architecture ('model', 'model_args') and the features ('dataset_args'):
they choose our encoder and its options (WESPEAKER_MODELS), and the weights are renamed to
ours. What this project cannot compute the same way (another architecture, a second embedding
layer, other features) is refused in one line naming the file, never approximated. The
classifier ('projection', over wespeaker's own speaker order) is not loaded.

The embedding equals wespeaker's own (wespeaker/cli/speaker.py, bin/extract.py): whole files,
Kaldi filterbanks of the samples x 2^15 with CMN (models._layers.KaldiFbankFrontend), the
network in eval mode.
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from speakernet import checkpoint, plugins
from speakernet.audio import SAMPLE_RATE
from speakernet.config_file import load_config
from speakernet.errors import CheckpointError, OptionError
from speakernet.options import stored_options

log = logging.getLogger(__name__)

WESPEAKER_CONFIG = "config.yaml"
WESPEAKER_WEIGHTS = "avg_model.pt"
# Embed whole files, once, and score by cosine, as wespeaker does (the objective, needed by the
# option checks, is that of its VoxCeleb recipes: arc_margin, our aamsoftmax).
EVALUATION = {"eval_frames": 0, "num_eval": 1, "trainfunc": "aamsoftmax"}


@dataclass(frozen=True)
class Architecture:
    """Our encoder for a public model: its options and the renames of the weights' names."""
    description: str              # "wespeaker ResNet34 (80 Kaldi fbank bins, 256-d embedding)"
    options: dict                 # our encoder's options
    renames: dict                 # public name prefix -> ours
    dropped: tuple = ("projection.",)     # the training classifier


@dataclass(frozen=True)
class PublicModel:
    source: str
    architecture: Architecture
    encoder: nn.Module            # our encoder with the public weights, in eval mode
    options: object               # its options (Namespace), the evaluation protocol included


# ---------------------------------------------------------------------------- locating the files

def is_public_model(path):
    """Whether `path` is for this module: a folder (no checkpoint of this project is one), or a
    wespeaker .pt file with its config.yaml beside it or one folder up."""
    path = Path(path)
    return path.is_dir() or (path.suffix == ".pt" and _config_of_file(path) is not None)


def _config_of_file(path):
    for folder in (path.parent, path.parent.parent):
        if (folder / WESPEAKER_CONFIG).is_file():
            return folder / WESPEAKER_CONFIG
    return None


def _locate(path):
    """(config.yaml, weights file) of a model folder or weights file."""
    path = Path(path)
    if path.is_file():
        return _config_of_file(path), path
    config, weights = path / WESPEAKER_CONFIG, path / WESPEAKER_WEIGHTS
    if not config.is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:5]) or "nothing"
        raise CheckpointError(f"{path} is a folder without {WESPEAKER_CONFIG}, so not a model this project "
                              f"can read (found {found}); give a checkpoint file, or a wespeaker model "
                              f"folder with {WESPEAKER_CONFIG} and {WESPEAKER_WEIGHTS}")
    if not weights.is_file():
        raise CheckpointError(f"{path} has {WESPEAKER_CONFIG} but no {WESPEAKER_WEIGHTS} (wespeaker's "
                              f"released models hold both); give the .pt file to use, e.g. {path}/models/"
                              f"model_150.pt")
    return config, weights


# ---------------------------------------------------------------------------- wespeaker's config

def _section(config, key, path):
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: '{key}' is not a mapping (a wespeaker config has '{key}: "
                              f"{{name: value, ...}}')")
    return value


def _whole_number(args, key, path, default=None):
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{path}: model_args {key} must be a positive whole number, got {value!r}")
    return value


def _refuse_unless(condition, path, what):
    if not condition:
        raise CheckpointError(f"{path}: {what}, which this project cannot compute as wespeaker does (it "
                              f"loads {SUPPORTED})")


def _kaldi_fbank_options(config, feat_dim, path):
    """Check that config.yaml's features are what KaldiFbankFrontend computes (wespeaker's
    defaults where a key is absent: dataset/dataset.py, processor.py compute_fbank)."""
    data = _section(config, "dataset_args", path)
    frontend = data.get("frontend", "fbank")
    _refuse_unless(frontend == "fbank", path, f"its features are dataset_args frontend '{frontend}'")
    rate = data.get("resample_rate", SAMPLE_RATE)
    _refuse_unless(rate == SAMPLE_RATE, path, f"it was trained at {rate} Hz, not {SAMPLE_RATE}")
    fbank = data.get("fbank_args") or {}
    _refuse_unless(isinstance(fbank, dict), path, "its fbank_args are not a mapping")
    for key, expected in (("num_mel_bins", feat_dim), ("frame_length", 25), ("frame_shift", 10)):
        value = fbank.get(key, 80 if key == "num_mel_bins" else expected)
        _refuse_unless(value == expected, path, f"fbank_args {key} is {value!r}, not {expected}")
    cmvn = data.get("cmvn_args") or {}
    _refuse_unless(data.get("cmvn", True) and cmvn.get("norm_mean", True) and not cmvn.get("norm_var", False),
                   path, "its features are not mean-normalised only (cmvn, cmvn_args)")
    return {"n_mels": feat_dim, "input_features": "kaldi_fbank", "log_input": True}


def _wespeaker_resnet(depth):
    """wespeaker/models/resnet.py ResNet<depth>(feat_dim, embed_dim, pooling_func, two_emb_layer)
    as models/ResNet.py (32 base channels, as ResNet<depth> fixes them); its layer names are
    ours except the embedding layer seg_1 (our fc)."""
    def architecture(config, model_args, path):
        unknown = sorted(set(model_args) - {"feat_dim", "embed_dim", "pooling_func", "two_emb_layer"})
        _refuse_unless(not unknown, path, f"model_args has {', '.join(unknown)}")
        pooling = model_args.get("pooling_func", "TSTP")
        _refuse_unless(pooling == "TSTP", path, f"its pooling is {pooling!r} (models/ResNet.py has TSTP)")
        _refuse_unless(not model_args.get("two_emb_layer", False), path,
                       "it has a second embedding layer (two_emb_layer)")
        feat_dim = _whole_number(model_args, "feat_dim", path, 40)
        embed_dim = _whole_number(model_args, "embed_dim", path, 128)
        options = {"model": "ResNet", "resnet_depth": depth, "resnet_channels": 32, "nOut": embed_dim,
                   "encoder_type": "TSTP", **_kaldi_fbank_options(config, feat_dim, path)}
        return Architecture(f"wespeaker ResNet{depth} ({feat_dim} Kaldi fbank bins, {embed_dim}-d "
                            f"embedding)", options, {"seg_1.": "fc."})
    return architecture


# wespeaker's model name (config.yaml 'model') -> how to build it here.
WESPEAKER_MODELS = {f"ResNet{depth}": _wespeaker_resnet(depth) for depth in (34, 221, 293)}
SUPPORTED = (f"wespeaker's {', '.join(WESPEAKER_MODELS)} with TSTP pooling and one embedding layer, on "
             f"{SAMPLE_RATE // 1000} kHz Kaldi fbank features with mean normalisation")


def _read_config(path):
    try:
        config = load_config(path)
    except OptionError as err:
        raise CheckpointError(str(err).removeprefix("--config ")) from None
    name = config.get("model")
    if not isinstance(name, str) or not isinstance(config.get("model_args"), dict):
        raise CheckpointError(f"{path} is not a wespeaker model config: it needs 'model' (the "
                              f"architecture's name) and 'model_args', as wespeaker/bin/train.py writes them")
    if name not in WESPEAKER_MODELS:
        raise CheckpointError(f"{path}: model '{name}' is not an architecture this project has (it loads "
                              f"{SUPPORTED})")
    return WESPEAKER_MODELS[name](config, config["model_args"], path)


# ---------------------------------------------------------------------------- weights

def _public_state(path):
    """The state dict of tensors in a wespeaker weights file (bare, or under 'state_dict' or
    'model', as its loaders accept), without DistributedDataParallel's 'module.' prefix."""
    state = checkpoint.load_file(path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path} is not a state dict of tensors (a wespeaker avg_model.pt is one)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _renamed(name, renames):
    for old, new in renames.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _our_state(state, architecture, encoder, path):
    """`state` under our names, checked against `encoder`: a wrong shape, a missing or an
    unexpected tensor is a CheckpointError naming them as the file does."""
    kept = {k: v for k, v in state.items() if not k.startswith(architecture.dropped)}
    if len(kept) < len(state):
        log.info("%s: the training classifier (%s) is not loaded", path,
                 ", ".join(k for k in state if k not in kept))
    ours = {_renamed(k, architecture.renames): (k, v) for k, v in kept.items()}
    own = encoder.state_dict()
    public_name = {new: old for new, (old, _) in ours.items()}
    wrong = [f"{old} {tuple(v.shape)}, expected {tuple(own[new].shape)}"
             for new, (old, v) in ours.items() if new in own and own[new].shape != v.shape]
    missing = [_renamed(k, {v: o for o, v in architecture.renames.items()}) for k in own if k not in ours]
    unexpected = [public_name[k] for k in ours if k not in own]
    problems = [f"{label}: {', '.join(items[:3])}" + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
                for label, items in (("wrong shape", wrong), ("missing", missing), ("unexpected", unexpected))
                if items]
    if problems:
        raise CheckpointError(f"{path} does not fit the {architecture.description} its {WESPEAKER_CONFIG} "
                              f"describes ({'; '.join(problems)}); use the weights released with that config")
    # Averaged checkpoints hold num_batches_tracked as floats.
    return {new: v.to(own[new].dtype) for new, (_, v) in ours.items()}


# ---------------------------------------------------------------------------- entry points

def load(path):
    """The public model at `path` (a folder or weights file) -> PublicModel; CheckpointError,
    one line naming the file and what was expected, for anything that cannot be loaded exactly."""
    config_path, weights_path = _locate(path)
    architecture = _read_config(config_path)
    options = stored_options({**architecture.options, **EVALUATION}, config_path)
    encoder = plugins.factory("models", options.model)(**vars(options))
    state = _our_state(_public_state(weights_path), architecture, encoder, weights_path)
    encoder.load_state_dict(state)
    log.info("%s: %s", path, architecture.description)
    return PublicModel(str(path), architecture, encoder.eval(), options)


def our_state(path):
    """The public model's encoder state under the trainer's names ('encoder.' ...)."""
    return {"encoder." + k: v for k, v in load(path).encoder.state_dict().items()}


def option_line(options):
    """The trainer's command-line options that build the encoder of a public model."""
    return " ".join((f"--{k}" if v else f"--no-{k}") if isinstance(v, bool) else f"--{k} {v}"
                    for k, v in options.items())


def load_initial_weights(model, path):
    """--initial_model for a public model: its weights into `model` (encoder and objective, as
    the trainer builds them), whose encoder must be the one config.yaml describes; otherwise a
    CheckpointError giving the options that build it."""
    public = load(path)
    expected = public.encoder
    ours = model.encoder
    own_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    if (type(ours) is not type(expected) or type(ours.features) is not type(expected.features)
            or own_shapes != {k: v.shape for k, v in expected.state_dict().items()}):
        raise CheckpointError(f"{path} is a {public.architecture.description}, which this run's model is "
                              f"not; run with {option_line(public.architecture.options)}")
    state = {"encoder." + k: v for k, v in expected.state_dict().items()}
    checkpoint.load_weights(model, state, str(path), new_objective_shapes=True)
