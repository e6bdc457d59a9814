"""speechbrain's released speaker models, read for speakernet/model/public_models.py.

A speechbrain model is a folder holding hyperparams.yaml (HyperPyYAML: the objects its
pretrained interface builds) and the checkpoints it names, e.g. spkrec-ecapa-voxceleb's
embedding_model.ckpt, mean_var_norm_emb.ckpt, classifier.ckpt and label_encoder.txt. Either
the folder or its embedding_model.ckpt is accepted. hyperparams.yaml is read as plain YAML: its
tags (!new:class, !ref <key>, !name:function, ...) become data (Tagged), nothing they name is
imported or run; a !ref to one key (<n_mels>) is looked up, anything else is refused.

The embedding equals speechbrain's EncoderClassifier.encode_batch (inference/classifiers.py)
of a whole file: compute_features (Fbank) -> mean_var_norm (InputNormalization, sentence
means) -> embedding_model. encode_batch applies mean_var_norm_emb only when called with
normalize=True, which its default and verify_batch do not, so it is not loaded; nor is the
classifier (over speechbrain's own speaker order). Our encoder: models/ECAPA_TDNN.py with
--ecapa_layout speechbrain and --input_features speechbrain_fbank (models/_speechbrain_fbank.py).
What this project cannot compute the same way is refused in one line naming the file.
"""
import re
from dataclasses import dataclass

import yaml

from speakernet.core.audio import SAMPLE_RATE
from speakernet.core.config_file import load_config
from speakernet.core.errors import CheckpointError, OptionError
from speakernet.model.public_common import (Architecture, Release, claims_release, locate_release, refuse_unless, tensor_state,
                                      whole_number)

NAME = "speechbrain"
CONFIG = "hyperparams.yaml"
WEIGHTS = "embedding_model.ckpt"
FOLDER = f"{CONFIG} and {WEIGHTS}"       # what a released model's folder holds
ECAPA = "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN"
FBANK = "speechbrain.lobes.features.Fbank"
NORMALIZATION = "speechbrain.processing.features.InputNormalization"
SUPPORTED = ("speechbrain's ECAPA_TDNN with channels [C, C, C, C, 3C] and its other defaults on "
             f"{SAMPLE_RATE // 1000} kHz Fbank features with sentence mean normalisation, as in its "
             "spkrec-ecapa-voxceleb")

# Arguments that fix what the network or the features compute, at the values this project
# computes (speechbrain's defaults, those of spkrec-ecapa-voxceleb).
ECAPA_FIXED = {"kernel_sizes": [5, 3, 3, 3, 1], "dilations": [1, 2, 3, 4, 1], "attention_channels": 128,
               "res2net_scale": 8, "se_channels": 128, "global_context": True, "groups": [1, 1, 1, 1, 1],
               "activation": "name:torch.nn.ReLU"}
ECAPA_IGNORED = ("device", "dropout")                 # the device; dropout is off in inference
FBANK_FIXED = {"deltas": False, "context": False, "requires_grad": False, "sample_rate": SAMPLE_RATE,
               "f_min": 0, "n_fft": 400, "filter_shape": "triangular", "win_length": 25, "hop_length": 10}
# Unused by frozen filters without context; param_rand_factor changes them in training only.
FBANK_IGNORED = ("param_change_factor", "param_rand_factor", "left_frames", "right_frames")
REFERENCE = re.compile(r"<([\w.]+)>")


@dataclass(frozen=True, repr=False)
class Tagged:
    """A HyperPyYAML value with its tag ('new:class', 'ref', 'name:function', ...), as data;
    shown as written ('!ref <n_mels> * 2') in messages."""
    tag: str
    value: object

    def __repr__(self):
        return f"!{self.tag} {self.value}".strip()

    __str__ = __repr__


class HyperparamsLoader(yaml.SafeLoader):
    """yaml.SafeLoader reading any '!' tag as Tagged data (Python tags stay refused)."""


def _tagged(loader, suffix, node):
    if isinstance(node, yaml.MappingNode):
        return Tagged(suffix, loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Tagged(suffix, loader.construct_sequence(node, deep=True))
    return Tagged(suffix, loader.construct_scalar(node))


HyperparamsLoader.add_multi_constructor("!", _tagged)


# ------------------------------------------------------------------------------- the files

def _config_of_file(path):
    config = path.parent / CONFIG
    return config if config.is_file() else None


def claims(path):
    """A folder with hyperparams.yaml, or a .ckpt file with hyperparams.yaml beside it."""
    return claims_release(path, CONFIG, ".ckpt", _config_of_file)


def _locate(path):
    """(hyperparams.yaml, weights file) of a model folder or weights file."""
    return locate_release(path, CONFIG, WEIGHTS, _config_of_file, "speechbrain",
                          f"download {WEIGHTS} of that release into {path}")


def _refuse_unless(condition, path, what):
    refuse_unless(condition, path, what, SUPPORTED)


# ------------------------------------------------------------------------ hyperparams.yaml

def _referenced(value, config):
    """The value a !ref or !copy of one key (<n_mels>, <a.b>) stands for, or None."""
    match = REFERENCE.fullmatch(str(value.value).strip())
    if match is None:
        return None
    target = config
    for key in match.group(1).split("."):
        if not isinstance(target, dict) or key not in target:
            return None
        target = target[key]
    return target


def _resolved(value, config):
    """`value` with references to one key replaced by that key's value (items of a list too);
    other tags, and references to expressions, are kept (and refused where they matter)."""
    for _ in range(10):                  # a reference to a reference; a cycle stays a reference
        if not (isinstance(value, Tagged) and value.tag in ("ref", "copy")):
            break
        target = _referenced(value, config)
        if target is None:
            return value
        value = target
    if isinstance(value, list):
        return [_resolved(item, config) for item in value]
    return value


def _object(config, name):
    """The module `name` of hyperparams.yaml, through its 'modules' mapping where it lists it."""
    modules = config.get("modules")
    value = modules.get(name) if isinstance(modules, dict) and name in modules else config.get(name)
    return _resolved(value, config)


def _class_of(value):
    return value.tag.removeprefix("new:") if isinstance(value, Tagged) and value.tag.startswith("new:") else None


def _arguments(value, config, path, name):
    """The keyword arguments of a !new: object, references resolved."""
    arguments = value.value if value.value != "" else {}
    _refuse_unless(isinstance(arguments, dict), path, f"its {name} has positional arguments ({value})")
    arguments = {key: _resolved(item, config) for key, item in arguments.items()}
    for key, item in arguments.items():
        if isinstance(item, Tagged) and item.tag in ("ref", "copy"):
            raise CheckpointError(f"{path}: its {name} has {key} {item}, a reference this project does not "
                                  f"evaluate (only one to a key, like !ref <n_mels>); write the value there")
    return arguments


def _component(config, name, cls, path):
    value = _object(config, name)
    found = _class_of(value)
    _refuse_unless(found == cls, path, f"its {name} is {found or value}, not {cls.rsplit('.', 1)[-1]}")
    return _arguments(value, config, path, name)


def _check_values(arguments, fixed, other_keys, path, name):
    """Refuse a key neither in `fixed` nor in `other_keys`, and a fixed key at another value
    (a tagged one compared as its tag, e.g. 'name:torch.nn.ReLU')."""
    unknown = sorted(set(arguments) - set(fixed) - set(other_keys))
    _refuse_unless(not unknown, path, f"its {name} sets {', '.join(unknown)}")
    for key, expected in fixed.items():
        value = arguments.get(key, expected)
        value = value.tag if isinstance(value, Tagged) and value.value in ("", None) else value
        _refuse_unless(value == expected, path, f"its {name} has {key} {value}, not {expected}")


def _features(config, path):
    """Fbank's n_mels, after checking that compute_features and mean_var_norm are what
    models/_speechbrain_fbank.py computes."""
    fbank = _component(config, "compute_features", FBANK, path)
    _check_values(fbank, FBANK_FIXED, FBANK_IGNORED + ("n_mels", "f_max"), path, "compute_features")
    f_max = fbank.get("f_max")
    _refuse_unless(f_max in (None, SAMPLE_RATE // 2), path, f"its compute_features has f_max {f_max}")
    norm = _component(config, "mean_var_norm", NORMALIZATION, path)
    for key, expected, default in (("norm_type", "sentence", "global"), ("std_norm", False, True),
                                   ("mean_norm", True, True)):
        value = norm.get(key, default)
        _refuse_unless(value == expected, path, f"its mean_var_norm has {key} {value}, not {expected}")
    return whole_number(fbank, "n_mels", path, 40)


def _ecapa(config, path):
    value = _object(config, "embedding_model")
    found = _class_of(value)
    if found is None and value is None:
        raise CheckpointError(f"{path} is not a speechbrain model's {CONFIG}: it needs 'embedding_model' "
                              f"(a !new: object), as speechbrain's EncoderClassifier reads it")
    if found != ECAPA:
        raise CheckpointError(f"{path}: embedding_model '{found or value}' is not an architecture this "
                              f"project has (it loads {SUPPORTED})")
    arguments = _arguments(value, config, path, "embedding_model")
    _check_values(arguments, ECAPA_FIXED, ECAPA_IGNORED + ("input_size", "lin_neurons", "channels"), path,
                  "embedding_model")
    return arguments


def _channels(arguments, path):
    channels = arguments.get("channels", [512, 512, 512, 512, 1536])
    width = channels[0] if isinstance(channels, list) and channels else None
    _refuse_unless(isinstance(width, int) and not isinstance(width, bool) and width > 0 and width % 8 == 0
                   and channels == [width] * 4 + [3 * width], path,
                   f"its embedding_model has channels {channels}, not [C, C, C, C, 3C] with C a multiple of 8")
    return width


def _renames(scale):
    """speechbrain's ECAPA_TDNN names -> models/ECAPA_TDNN.py's: blocks.0 is the stem,
    blocks.1-3 the SE-Res2Blocks, mfa the aggregation, asp/asp_bn the pooling and its BN; each
    of its convolutions and batch norms sits one level deeper (conv.conv, norm.norm)."""
    renames = {"blocks.0.conv.conv.": "stem.0.", "blocks.0.norm.norm.": "stem.2.",
               "mfa.conv.conv.": "aggregate.0.", "mfa.norm.norm.": "aggregate.2.",
               "asp.tdnn.conv.conv.": "pool.attention.0.", "asp.tdnn.norm.norm.": "pool.attention.2.",
               "asp.conv.conv.": "pool.attention.4.", "asp_bn.norm.": "pool_bn.", "fc.conv.": "fc."}
    for block in (1, 2, 3):
        public, ours = f"blocks.{block}.", f"blocks.{block - 1}."
        for layer, our_layer in (("tdnn1", "conv_in"), ("tdnn2", "conv_out")):
            renames[f"{public}{layer}.conv.conv."] = f"{ours}{our_layer}.0."
            renames[f"{public}{layer}.norm.norm."] = f"{ours}{our_layer}.2."
        for group in range(scale - 1):
            renames[f"{public}res2net_block.blocks.{group}.conv.conv."] = f"{ours}res2net.convs.{group}.0."
            renames[f"{public}res2net_block.blocks.{group}.norm.norm."] = f"{ours}res2net.convs.{group}.2."
        renames[f"{public}se_block.conv1.conv."] = f"{ours}se.gate.0."
        renames[f"{public}se_block.conv2.conv."] = f"{ours}se.gate.2."
    return renames


def _as_linear(state):
    """The 1x1 convolutions speechbrain uses where ours are linear layers (the SE gates and the
    embedding layer), their weights without the kernel axis."""
    def linear(name):
        return name == "fc.conv.weight" or name.endswith(("se_block.conv1.conv.weight", "se_block.conv2.conv.weight"))
    return {k: v[..., 0] if linear(k) and v.dim() == 3 and v.shape[-1] == 1 else v for k, v in state.items()}


def _architecture(path):
    try:
        config = load_config(path, HyperparamsLoader)
    except OptionError as err:
        raise CheckpointError(str(err).removeprefix("--config ")) from None
    arguments = _ecapa(config, path)
    n_mels = _features(config, path)
    input_size = whole_number(arguments, "input_size", path)
    _refuse_unless(input_size == n_mels, path, f"its embedding_model takes {input_size} inputs, but "
                                               f"compute_features gives {n_mels}")
    channels = _channels(arguments, path)
    embedding = whole_number(arguments, "lin_neurons", path, 192)
    options = {"model": "ECAPA_TDNN", "ecapa_layout": "speechbrain", "channels": channels, "nOut": embedding,
               "n_mels": n_mels, "input_features": "speechbrain_fbank", "log_input": True, "encoder_type": "ASP"}
    return Architecture(f"speechbrain ECAPA-TDNN (C={channels}, {n_mels} Fbank bins, {embedding}-d embedding)",
                        options, _renames(ECAPA_FIXED["res2net_scale"]), convert=_as_linear)


def read(path):
    config_path, weights_path = _locate(path)
    architecture = _architecture(config_path)
    state = tensor_state(weights_path, what=f"a speechbrain {WEIGHTS}")
    return Release(architecture, state, config_path, weights_path)
