"""Start from a public model: other toolkits' released speaker models as --initial_model and as
Embedder.from_checkpoint's input.

Each toolkit has a reader module (READERS) that recognises its release format, reads the
architecture and the features from the files that come with the weights, and chooses our
encoder and the options that compute the same embedding. This module builds that encoder,
renames and checks the weights, and offers the entry points the trainer, the calibration and
the Embedder use. Nothing in the files runs: configs are read as plain YAML and weights with
torch.load(weights_only=True) (speakernet.core.checkpoint.load_file). What cannot be computed
exactly is refused in one line naming the file, never approximated.
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from speakernet.core import checkpoint
from speakernet.run import plugins
from speakernet.model import public_3dspeaker, public_speechbrain, public_wespeaker
from speakernet.core.errors import CheckpointError
from speakernet.run.options import component_values, stored_options
from speakernet.model.public_common import Architecture

log = logging.getLogger(__name__)

READERS = (public_wespeaker, public_3dspeaker, public_speechbrain)
# Embed whole files, once, and score by cosine, as the toolkits' own inference does (the
# objective, needed by the option checks, is that of their VoxCeleb recipes: AAM softmax).
EVALUATION = {"eval_frames": 0, "num_eval": 1, "trainfunc": "aamsoftmax"}


@dataclass(frozen=True)
class PublicModel:
    source: str
    architecture: Architecture
    encoder: nn.Module            # our encoder with the public weights, in eval mode
    options: object               # its options (Namespace), the evaluation protocol included


def _formats():
    return "; ".join(f"{reader.NAME}: {reader.FOLDER}" for reader in READERS)


def _reader(path):
    return next((reader for reader in READERS if reader.claims(path)), None)


def is_public_model(path):
    """Whether `path` is for this module: a folder (no checkpoint of this project is one), or a
    weights file a reader recognises by the files beside it."""
    return Path(path).is_dir() or _reader(path) is not None


def _read(path):
    reader = _reader(path)
    if reader is None:
        path = Path(path)
        found = ", ".join(sorted(p.name for p in path.iterdir())[:5]) or "nothing"
        raise CheckpointError(f"{path} is a folder this project cannot read as a model (found {found}); "
                              f"give a checkpoint file, or a released model folder ({_formats()})")
    return reader.read(path)


def _our_state(state, architecture, encoder, release):
    """`state` under our names, checked against `encoder`: a wrong shape, a missing or an
    unexpected tensor is a CheckpointError naming them as the file does."""
    path = release.weights_path
    kept = {k: v for k, v in state.items() if not k.startswith(architecture.dropped)}
    if len(kept) < len(state):
        log.info("%s: not loaded (the training classifier): %s", path,
                 ", ".join(k for k in state if k not in kept))
    if architecture.convert is not None:
        kept = architecture.convert(kept)
    ours = {architecture.our_name(k): (k, v) for k, v in kept.items()}
    own = encoder.state_dict()
    wrong = [f"{old} {tuple(v.shape)}, expected {tuple(own[new].shape)}"
             for new, (old, v) in ours.items() if new in own and own[new].shape != v.shape]
    missing = [architecture.public_name(k) for k in own if k not in ours]
    unexpected = [old for new, (old, _) in ours.items() if new not in own]
    problems = [f"{label}: {', '.join(items[:3])}" + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
                for label, items in (("wrong shape", wrong), ("missing", missing), ("unexpected", unexpected))
                if items]
    if problems:
        raise CheckpointError(f"{path} does not fit the {architecture.description} that "
                              f"{Path(release.config_path).name} describes ({'; '.join(problems)}); use the "
                              f"weights released with that config")
    # Averaged checkpoints hold num_batches_tracked as floats.
    return {new: v.to(own[new].dtype) for new, (_, v) in ours.items()}


# ---------------------------------------------------------------------------- entry points

def load(path):
    """The public model at `path` (a folder or weights file) -> PublicModel; CheckpointError,
    one line naming the file and what was expected, for anything that cannot be loaded exactly."""
    release = _read(path)
    architecture = release.architecture
    options = stored_options({**architecture.options, **EVALUATION}, release.config_path)
    encoder = plugins.factory("models", options.model)(**component_values("models", options.model, options))
    encoder.load_state_dict(_our_state(release.state, architecture, encoder, release))
    log.info("%s: %s", path, architecture.description)
    return PublicModel(str(path), architecture, encoder.eval(), options)


def encoder_options(path):
    """The options of our encoder that computes the public model at `path`."""
    return dict(_read(path).architecture.options)


def our_state(path):
    """The public model's encoder state under the trainer's names ('encoder.' ...)."""
    return {"encoder." + k: v for k, v in load(path).encoder.state_dict().items()}


def option_line(options):
    """The trainer's command-line options that build the encoder of a public model."""
    return " ".join((f"--{k}" if v else f"--no-{k}") if isinstance(v, bool) else f"--{k} {v}"
                    for k, v in options.items())


def load_initial_weights(model, path):
    """--initial_model for a public model: its weights into `model` (encoder and objective, as
    the trainer builds them), whose encoder must be the one its config describes; otherwise a
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
