"""wespeaker's released speaker models, read for speakernet/model/public_models.py.

A wespeaker model is a folder holding config.yaml (the training config wespeaker/bin/train.py
writes beside its checkpoints) and avg_model.pt (the averaged state dict of the last epochs,
wespeaker/bin/average_model.py); its released VoxCeleb models are such folders. Either the
folder or a .pt file beside config.yaml (or in its models/ subfolder, as in wespeaker's
experiment folders) is accepted. config.yaml is read as plain YAML.

config.yaml names the architecture ('model', 'model_args') and the features ('dataset_args'):
they choose our encoder and its options (MODELS), and the weights are renamed to ours. What
this project cannot compute the same way (another architecture, a second embedding layer,
other features) is refused in one line naming the file, never approximated. The classifier
('projection', over wespeaker's own speaker order) is not loaded.

The embedding equals wespeaker's own (wespeaker/cli/speaker.py, bin/extract.py): whole files,
Kaldi filterbanks of the samples x 2^15 with CMN (models._frontends.KaldiFbankFrontend), the
network in eval mode.
"""

from speakernet.core.audio import SAMPLE_RATE
from speakernet.core.config_file import load_config
from speakernet.core.errors import CheckpointError, OptionError
from speakernet.model.public_common import (Architecture, Release, claims_release, locate_release, refuse_unless, tensor_state,
                                      whole_number)
from speakernet.model.public_3dspeaker import CAMPPLUS_FIXED, campplus_architecture

NAME = "wespeaker"
CONFIG = "config.yaml"
WEIGHTS = "avg_model.pt"
FOLDER = f"{CONFIG} and {WEIGHTS}"       # what a released model's folder holds
CLASSIFIER = ("projection.",)


def _config_of_file(path):
    for folder in (path.parent, path.parent.parent):
        if (folder / CONFIG).is_file():
            return folder / CONFIG
    return None


def claims(path):
    """A folder with config.yaml, or a .pt file with config.yaml beside it or one folder up."""
    return claims_release(path, CONFIG, ".pt", _config_of_file)


def _locate(path):
    """(config.yaml, weights file) of a model folder or weights file."""
    return locate_release(path, CONFIG, WEIGHTS, _config_of_file, "wespeaker",
                          f"give the .pt file to use, e.g. {path}/models/model_150.pt")


def _refuse_unless(condition, path, what):
    refuse_unless(condition, path, what, SUPPORTED)


def _section(config, key, path):
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: '{key}' is not a mapping (a wespeaker config has '{key}: "
                              f"{{name: value, ...}}')")
    return value


def kaldi_fbank_options(config, feat_dim, path):
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


def _model_args(model_args, allowed, path):
    unknown = sorted(set(model_args) - set(allowed))
    _refuse_unless(not unknown, path, f"model_args has {', '.join(unknown)}")


def _resnet(depth):
    """wespeaker/models/resnet.py ResNet<depth>(feat_dim, embed_dim, pooling_func, two_emb_layer)
    as models/ResNet.py (32 base channels, as ResNet<depth> fixes them); its layer names are
    ours except the embedding layer seg_1 (our fc)."""
    def architecture(config, model_args, path):
        _model_args(model_args, ("feat_dim", "embed_dim", "pooling_func", "two_emb_layer"), path)
        pooling = model_args.get("pooling_func", "TSTP")
        _refuse_unless(pooling == "TSTP", path, f"its pooling is {pooling!r} (models/ResNet.py has TSTP)")
        _refuse_unless(not model_args.get("two_emb_layer", False), path,
                       "it has a second embedding layer (two_emb_layer)")
        feat_dim = whole_number(model_args, "feat_dim", path, 40)
        embed_dim = whole_number(model_args, "embed_dim", path, 128)
        options = {"model": "ResNet", "resnet_depth": depth, "resnet_channels": 32, "nOut": embed_dim,
                   "encoder_type": "TSTP", **kaldi_fbank_options(config, feat_dim, path)}
        return Architecture(f"wespeaker ResNet{depth} ({feat_dim} Kaldi fbank bins, {embed_dim}-d "
                            f"embedding)", options, {"seg_1.": "fc."}, CLASSIFIER)
    return architecture


def _campplus(config, model_args, path):
    """wespeaker/models/campplus.py CAMPPlus(feat_dim, embed_dim, pooling_func, ...) as
    models/CAMPPlus.py: 3D-Speaker's network under its parameter names (speakernet/
    public_3dspeaker.py), with wespeaker's parameter-free TSTP pooling and its features."""
    _model_args(model_args, ("feat_dim", "embed_dim", "pooling_func", *CAMPPLUS_FIXED), path)
    pooling = model_args.get("pooling_func", "TSTP")
    _refuse_unless(pooling == "TSTP", path, f"its pooling is {pooling!r} (models/CAMPPlus.py has TSTP)")
    for key, ours in CAMPPLUS_FIXED.items():
        value = model_args.get(key, ours)
        _refuse_unless(value == ours, path, f"model_args {key} is {value!r}, not {ours!r}")
    feat_dim = whole_number(model_args, "feat_dim", path, 80)
    embed_dim = whole_number(model_args, "embed_dim", path, 512)
    options = {"nOut": embed_dim, **kaldi_fbank_options(config, feat_dim, path)}
    return campplus_architecture(f"wespeaker CAM++ ({feat_dim} Kaldi fbank bins, {embed_dim}-d embedding)",
                                 options, CLASSIFIER)


def _ecapa_renames(scale=8):
    """wespeaker's ECAPA_TDNN names -> models/ECAPA_TDNN.py's: layer1 is the stem, layer2-4
    the SE-Res2Blocks (se_res2block.0-3: 1x1 layer, Res2Net with its convs and bns apart, 1x1
    layer, SE), conv the aggregation, pool.linear1/2 the attention, bn the pooling's batch
    norm, linear the embedding layer."""
    renames = {"layer1.conv.": "stem.0.", "layer1.bn.": "stem.2.", "conv.": "aggregate.0.",
               "pool.linear1.": "pool.attention.0.", "pool.linear2.": "pool.attention.2.",
               "bn.": "pool_bn.", "linear.": "fc."}
    for layer in (2, 3, 4):
        public, ours = f"layer{layer}.se_res2block.", f"blocks.{layer - 2}."
        for index, name in ((0, "conv_in"), (2, "conv_out")):
            renames[f"{public}{index}.conv."] = f"{ours}{name}.0."
            renames[f"{public}{index}.bn."] = f"{ours}{name}.2."
        for group in range(scale - 1):
            renames[f"{public}1.convs.{group}."] = f"{ours}res2net.convs.{group}.0."
            renames[f"{public}1.bns.{group}."] = f"{ours}res2net.convs.{group}.2."
        renames[f"{public}3.linear1."] = f"{ours}se.gate.0."
        renames[f"{public}3.linear2."] = f"{ours}se.gate.2."
    return renames


def _ecapa(channels):
    """wespeaker/models/ecapa_tdnn.py ECAPA_TDNN_GLOB_c<channels>(feat_dim, embed_dim,
    pooling_func, emb_bn) as models/ECAPA_TDNN.py --ecapa_layout wespeaker --channels
    <channels>: global-context ASTP pooling over 1536 aggregated channels."""
    def architecture(config, model_args, path):
        _model_args(model_args, ("feat_dim", "embed_dim", "pooling_func", "emb_bn"), path)
        pooling = model_args.get("pooling_func", "ASTP")
        _refuse_unless(pooling == "ASTP", path, f"its pooling is {pooling!r} (models/ECAPA_TDNN.py has ASTP)")
        _refuse_unless(not model_args.get("emb_bn", False), path,
                       "its embedding layer is followed by a batch norm (emb_bn)")
        feat_dim = whole_number(model_args, "feat_dim", path)
        embed_dim = whole_number(model_args, "embed_dim", path)
        options = {"model": "ECAPA_TDNN", "ecapa_layout": "wespeaker", "channels": channels, "nOut": embed_dim,
                   "encoder_type": "ASP", **kaldi_fbank_options(config, feat_dim, path)}
        return Architecture(f"wespeaker ECAPA_TDNN_GLOB_c{channels} ({feat_dim} Kaldi fbank bins, {embed_dim}-d "
                            f"embedding)", options, _ecapa_renames(), CLASSIFIER)
    return architecture


# wespeaker's model name (config.yaml 'model') -> how to build it here.
MODELS = {f"ResNet{depth}": _resnet(depth) for depth in (34, 221, 293)}
MODELS["CAMPPlus"] = _campplus
MODELS.update({f"ECAPA_TDNN_GLOB_c{channels}": _ecapa(channels) for channels in (512, 1024)})
SUPPORTED = (f"wespeaker's {', '.join(MODELS)} with TSTP pooling (ASTP for ECAPA-TDNN) and one embedding layer, on "
             f"{SAMPLE_RATE // 1000} kHz Kaldi fbank features with mean normalisation")


def _architecture(path):
    try:
        config = load_config(path)
    except OptionError as err:
        raise CheckpointError(str(err).removeprefix("--config ")) from None
    name = config.get("model")
    if not isinstance(name, str) or not isinstance(config.get("model_args"), dict):
        raise CheckpointError(f"{path} is not a wespeaker model config: it needs 'model' (the "
                              f"architecture's name) and 'model_args', as wespeaker/bin/train.py writes them")
    if name not in MODELS:
        raise CheckpointError(f"{path}: model '{name}' is not an architecture this project has (it loads "
                              f"{SUPPORTED})")
    return MODELS[name](config, config["model_args"], path)


def read(path):
    config_path, weights_path = _locate(path)
    architecture = _architecture(config_path)
    state = tensor_state(weights_path, what="a wespeaker avg_model.pt")
    return Release(architecture, state, config_path, weights_path)
