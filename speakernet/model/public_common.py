"""What every public-model reader shares (speakernet/model/public_models.py dispatches to them): the
description of our encoder for a released model, the refusal of what cannot be computed
exactly, and the reading of a weights file as a state dict of tensors."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from speakernet.core import checkpoint
from speakernet.core.errors import CheckpointError


@dataclass(frozen=True)
class Architecture:
    """Our encoder for a public model: its options and how the released weights' names map to
    ours. `renames` maps a public name prefix to ours (the longest prefix wins); names starting
    with one of `dropped` (the training classifier, ...) are not loaded; `convert`, when given,
    rewrites the public state before renaming (a tensor stored in another shape)."""
    description: str              # "wespeaker ResNet34 (80 Kaldi fbank bins, 256-d embedding)"
    options: dict                 # our encoder's options
    renames: dict = field(default_factory=dict)
    dropped: tuple = ()
    convert: Optional[Callable[[dict], dict]] = None

    def our_name(self, name):
        for old in sorted(self.renames, key=len, reverse=True):
            if name.startswith(old):
                return self.renames[old] + name[len(old):]
        return name

    def public_name(self, ours):
        for new, old in sorted(((n, o) for o, n in self.renames.items()), key=lambda p: len(p[0]), reverse=True):
            if ours.startswith(new):
                return old + ours[len(new):]
        return ours


@dataclass(frozen=True)
class Release:
    """What a reader found: the architecture, the weights under their public names, and the
    files they came from (named in every message)."""
    architecture: Architecture
    state: dict
    config_path: object           # the file that describes the model
    weights_path: object


def claims_release(path, config, suffix, config_of_file):
    """Whether `path` is a release folder holding `config`, or a weights file ending in `suffix`
    whose config `config_of_file(path)` finds."""
    path = Path(path)
    if path.is_dir():
        return (path / config).is_file()
    return path.suffix == suffix and config_of_file(path) is not None


def locate_release(path, config, weights, config_of_file, toolkit, fix):
    """(config file, weights file) of a release folder or weights file; a folder without its
    weights is a CheckpointError saying what to do (`fix`)."""
    path = Path(path)
    if path.is_file():
        return config_of_file(path), path
    if not (path / weights).is_file():
        raise CheckpointError(f"{path} has {config} but no {weights} ({toolkit}'s released models hold "
                              f"both); {fix}")
    return path / config, path / weights


def refuse_unless(condition, path, what, supported):
    """A CheckpointError naming `path` and what it holds unless `condition`."""
    if not condition:
        raise CheckpointError(f"{path}: {what}, which this project cannot compute as its toolkit does "
                              f"(it loads {supported})")


def whole_number(args, key, path, default=None):
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{path}: {key} must be a positive whole number, got {value!r}")
    return value


def tensor_state(path, containers=("state_dict", "model"), what="a state dict of tensors"):
    """The state dict of tensors in a weights file (bare, or under one of `containers`), without
    DistributedDataParallel's 'module.' prefix. Nothing in the file runs (weights_only)."""
    state = checkpoint.load_file(path)
    for key in containers:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path} is not a state dict of tensors ({what} is one)")
    return {k.removeprefix("module."): v for k, v in state.items()}
