"""3D-Speaker's released CAM++ models, read for speakernet/model/public_models.py.

3D-Speaker releases its models on ModelScope (speakerlab/bin/infer_sv.py lists them): a model
folder holds configuration.json, whose 'model' names the architecture ('type', e.g. 'cam++-sv'),
its sizes ('model_config': fbank_dim, emb_size, sample_rate) and the weights file
('pretrained_model', a bare state dict, e.g. campplus_voxceleb.bin). Either that folder, a
weights file in it, or a weights file alone under the name infer_sv.py gives it (infer_sv.py
links only that file into its local folder; RELEASES) is accepted. configuration.json is read
as JSON; nothing in the files runs.

What this project cannot compute the same way (another architecture, another sample rate) is
refused in one line naming the file, never approximated.

The embedding equals infer_sv.py's: whole files, torchaudio.compliance.kaldi.fbank of the
samples in [-1, 1] with its defaults (povey window, no dither) minus their mean over the file
(speakerlab/process/processor.py FBank; models.CAMPPlus.PoveyKaldiFbank), the network in eval
mode. Its parameter names are 3D-Speaker's (speakerlab/models/campplus), which wespeaker's
CAM++ keeps (speakernet/model/public_wespeaker.py uses campplus_architecture).
"""
import json
from pathlib import Path

from models.CAMPPlus import BLOCKS, BOTTLENECK, GROWTH_RATE, TDNN_CHANNELS
from speakernet.core.audio import SAMPLE_RATE
from speakernet.core.errors import CheckpointError
from speakernet.model.public_common import Architecture, Release, refuse_unless, tensor_state, whole_number

NAME = "3D-Speaker"
CONFIG = "configuration.json"
FOLDER = f"ModelScope's {CONFIG} and the weights file it names"
CAMPPLUS = "cam++-sv"                   # configuration.json model type (modelscope Models.campplus_sv)
SUPPORTED = (f"3D-Speaker's CAM++ ({CAMPPLUS}) at {SAMPLE_RATE // 1000} kHz, on Kaldi fbank features "
             f"with mean normalisation")
MAX_CONFIG_BYTES = 1 << 20              # a configuration.json is under a kilobyte

# infer_sv.py's weights files (supports[...]['model_pt']) -> (architecture, embedding size);
# its CAM++ models all take 80 filterbank bins. The others are named to be refused.
RELEASES = {
    "campplus_voxceleb.bin": ("CAM++", 512),
    "campplus_cn_common.bin": ("CAM++", 192),
    "campplus_cn_en_common.pt": ("CAM++", 192),
    **{name: ("ERes2Net", None) for name in (
        "pretrained_eres2net.ckpt", "pretrained_eres2net_aug.ckpt", "pretrained_eres2net.pt",
        "eres2net_base_model.ckpt", "eres2net_large_model.ckpt")},
    **{name: ("ERes2NetV2", None) for name in ("pretrained_eres2netv2.ckpt",
                                                "pretrained_eres2netv2w24s4ep4.ckpt")},
    **{name: ("ECAPA-TDNN", None) for name in ("ecapa-tdnn.ckpt", "ecapa_tdnn.bin")},
}
RELEASE_FEATURES = 80
# The CAMPPlus(...) arguments of both toolkits that models/CAMPPlus.py fixes, with its values.
CAMPPLUS_FIXED = {"growth_rate": GROWTH_RATE, "bn_size": BOTTLENECK // GROWTH_RATE,
                  "init_channels": TDNN_CHANNELS, "config_str": "batchnorm-relu"}

# A D-TDNN layer's modules (speakerlab/models/campplus/layers.py CAMDenseTDNNLayer) -> ours
# (models/CAMPPlus.py DenseTDNNLayer).
_LAYER_NAMES = (("nonlinear1.batchnorm.", "bottleneck.0.0."), ("linear1.", "bottleneck.1."),
                ("nonlinear2.batchnorm.", "bottleneck.2.0."), ("cam_layer.linear_local.", "cam.local."),
                ("cam_layer.linear1.", "cam.mask.0."), ("cam_layer.linear2.", "cam.mask.2."))
_DENSE = "xvector.dense.linear.weight"


def _campplus_renames():
    """3D-Speaker's CAM++ names -> ours; the front module's (head.) are the same."""
    renames = {"xvector.tdnn.linear.": "tdnn.0.", "xvector.tdnn.nonlinear.batchnorm.": "tdnn.1.0.",
               "xvector.dense.linear.": "fc.", "xvector.dense.nonlinear.batchnorm.": "embedding_bn."}
    for b, (layers, _, _) in enumerate(BLOCKS):
        block, transit = f"backbone.{2 * b}.", f"backbone.{2 * b + 1}."
        for i in range(layers):
            renames.update({f"xvector.block{b + 1}.tdnnd{i + 1}.{public}": f"{block}{i}.{ours}"
                            for public, ours in _LAYER_NAMES})
        renames[f"xvector.transit{b + 1}.nonlinear.batchnorm."] = transit + "0.0."
        renames[f"xvector.transit{b + 1}.linear."] = transit + "1."
    renames["xvector.out_nonlinear.batchnorm."] = f"backbone.{2 * len(BLOCKS)}.0."
    return renames


CAMPPLUS_RENAMES = _campplus_renames()


def _dense_as_linear(state):
    """The embedding layer is a 1x1 Conv1d there (DenseLayer) and an nn.Linear here: the same
    weights without the kernel axis."""
    weight = state.get(_DENSE)
    if weight is not None and weight.dim() == 3 and weight.shape[-1] == 1:
        state = {**state, _DENSE: weight[..., 0]}
    return state


def campplus_architecture(description, options, dropped=()):
    """Our CAMPPlus for CAM++ weights under 3D-Speaker's names; `options` choose its sizes and
    features."""
    return Architecture(description, {"model": "CAMPPlus", "encoder_type": "TSTP", **options},
                        CAMPPLUS_RENAMES, dropped, _dense_as_linear)


def _campplus(feat_dim, embedding_size):
    options = {"nOut": embedding_size, "n_mels": feat_dim, "input_features": "kaldi_fbank_povey",
               "log_input": True}
    return campplus_architecture(f"3D-Speaker CAM++ ({feat_dim} Kaldi fbank bins, {embedding_size}-d "
                                 f"embedding)", options)


# ---------------------------------------------------------------------------- the files

def _config_beside(path):
    return path.parent / CONFIG if (path.parent / CONFIG).is_file() else None


def claims(path):
    """A folder with configuration.json, a file beside one, or a file named as infer_sv.py
    names the weights it downloads."""
    path = Path(path)
    if path.is_dir():
        return (path / CONFIG).is_file()
    return _config_beside(path) is not None or path.name in RELEASES


def _read_json(path):
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: larger than {MAX_CONFIG_BYTES // 2 ** 20} MB, too large for a "
                              f"ModelScope {CONFIG}")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text (a ModelScope {CONFIG} is JSON)") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}") from None


def _model_section(path):
    """configuration.json's 'model' mapping, with its 'type' and 'model_config' checked."""
    config = _read_json(path)
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("type"), str) \
            or not isinstance(model.get("model_config"), dict):
        raise CheckpointError(f"{path} is not a ModelScope model configuration: it needs 'model': "
                              f"{{'type': ..., 'model_config': {{...}}, 'pretrained_model': ...}}")
    refuse_unless(model["type"] == CAMPPLUS, path, f"its model type is '{model['type']}'", SUPPORTED)
    return model


def _configured(path):
    """(Architecture, the weights file named) of a configuration.json."""
    model = _model_section(path)
    model_config = model["model_config"]
    rate = model_config.get("sample_rate", SAMPLE_RATE)
    refuse_unless(rate == SAMPLE_RATE, path, f"it was trained at {rate} Hz, not {SAMPLE_RATE}", SUPPORTED)
    architecture = _campplus(whole_number(model_config, "fbank_dim", path),
                             whole_number(model_config, "emb_size", path))
    weights = model.get("pretrained_model")
    if not isinstance(weights, str) or not weights or Path(weights).name != weights:
        raise CheckpointError(f"{path}: 'pretrained_model' must name the weights file beside it, got "
                              f"{weights!r}")
    return architecture, path.parent / weights


def _released(path):
    """The Architecture infer_sv.py builds for the weights file of this name."""
    name, embedding_size = RELEASES[path.name]
    refuse_unless(name == "CAM++", path, f"infer_sv.py names such a file for 3D-Speaker's {name}", SUPPORTED)
    return _campplus(RELEASE_FEATURES, embedding_size)


def read(path):
    path = Path(path)
    config = path / CONFIG if path.is_dir() else _config_beside(path)
    if config is None:
        architecture, config, weights = _released(path), path, path
    else:
        architecture, weights = _configured(config)
        if not path.is_dir():
            weights = path                  # another weights file of that folder
        elif not weights.is_file():
            raise CheckpointError(f"{path} has {CONFIG} but not the weights file it names, {weights.name} "
                                  f"(download the whole ModelScope model)")
    state = tensor_state(weights, what="a 3D-Speaker CAM++ state dict")
    return Release(architecture, state, config, weights)
