"""The objective contract: what the trainer and the sampler may ask of an objective.

voxceleb_trainer's convention is its core, so its loss files port unchanged:

    forward(x, label=None) -> (loss, metric)   x: N x V x D (V views per group), or N x D when V == 1

Everything else has a default here, documented once. An objective subclasses `Objective` and
overrides what it needs; a plain voxceleb_trainer-style `LossFunction(nn.Module)` is seen
through `as_contract` with the same defaults. A hook name that is not one of the contract's
(a misspelt `on_epoch_begin`) is an error when the class is defined, not a silent no-op.
Objectives see tensors only: data work (k-means over the training set) is done by the data
side on request (`data_request`) and handed back (`receive_data`).
"""
import difflib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Needs:
    """What the sampler must draw for an objective, declared in one value."""
    views: int = None          # views per group; None: --nPerSpeaker
    min_views: int = 1         # the fewest views per group forward accepts
    labels: bool = True        # False (self-supervised): groups are utterances, forward gets label=None
    classifier: bool = False   # has an output layer over --nClasses training speakers


@dataclass
class RunContext:
    """What the trainer knows of the run and an objective may read (given by on_train_start,
    kept current by the trainer): schedules per iteration need the steps of the epoch."""
    max_epoch: int = 1
    epoch: int = 1                 # the epoch in progress
    steps_per_epoch: int = 1       # optimizer steps this epoch plans on this rank (the real loader's)
    batch: int = 0                 # batches of this epoch done so far (resumed ones included)
    step: int = 0                  # optimizer steps of the run so far
    world_size: int = 1

    def progress(self):
        """Share of the run done, in [0, 1]: (epochs done + this epoch's share) / max_epoch."""
        within = min(self.batch / max(self.steps_per_epoch, 1), 1.0)
        return min((self.epoch - 1 + within) / max(self.max_epoch, 1), 1.0)


class ContractDefaults:
    """The defaults and no-op hooks of the contract."""
    needs = Needs()
    test_normalize = True      # score with cosine similarity (False: plain distance of crop means)
    takes_views = False        # True: forward(x, label, views=...) also gets the augmented waveforms

    def view_frames(self, epoch, rng):
        """Frames per view for the next batch, or None for --max_frames every view."""
        return None

    def utterance_subset(self, epoch, count):
        """Indices of the training utterances epoch `epoch` may use (data curricula); None: all."""
        return None

    def augment_fraction(self, epoch):
        """Share of crops augmented in `epoch` (augmentation curricula); None: --aug_fraction."""
        return None

    def data_request(self):
        """A dict the data side computes an answer to before training (receive_data), or None."""
        return None

    def receive_data(self, answer):
        """The data side's answer to data_request."""

    def on_train_start(self, run):
        """Once before training, with the trainer's RunContext (kept current during the run)."""

    def attach_encoder(self, encoder):
        """Given the encoder once, when SpeakerNet is built (momentum copies, teachers)."""

    def on_epoch_start(self, epoch):
        """Before each epoch: curricula of margins, mining or crop lengths."""

    def on_batch_start(self, frames):
        """The frames of every view of the coming batch (length-aware margins)."""

    def on_epoch_end(self, epoch):
        """After an epoch's last step: {name: number} to log and record with the epoch's
        statistics (diagnostics), or None."""
        return None

    def on_after_backward(self, parameters):
        """After backward, before the optimizer step, with the trained parameters (their
        gradients unscaled): gradient clipping."""

    def on_step_end(self, step):
        """After each optimizer step: EMA teachers, queues."""


HOOKS = tuple(name for name in vars(ContractDefaults) if not name.startswith("_"))
# The attribute protocol this contract replaced, and where each value went.
OLD_ATTRIBUTES = {"uses_labels": "Needs.labels", "num_views": "Needs.views", "min_views": "Needs.min_views"}


class Objective(ContractDefaults, nn.Module):
    """Base class of every objective in loss/: subclass it, declare `needs`, override hooks."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in vars(cls):
            if name in OLD_ATTRIBUTES:
                raise TypeError(f"{cls.__module__}.{cls.__name__}.{name}: declare "
                                f"needs = Needs(...) instead ({OLD_ATTRIBUTES[name]})")
            if name in HOOKS or name.startswith("_") or hasattr(nn.Module, name):
                continue
            # Any on_* name is meant as a hook; other names only when they are nearly one.
            close = difflib.get_close_matches(name, HOOKS, n=1, cutoff=0.6 if name.startswith("on_") else 0.8)
            if name.startswith("on_") or close:
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise TypeError(f"{cls.__module__}.{cls.__name__}.{name} is not a hook of the "
                                f"objective contract{hint} (hooks: {', '.join(HOOKS)})")


class PlainObjective(ContractDefaults):
    """A voxceleb_trainer-style LossFunction (an nn.Module with forward(x, label) and a
    test_normalize attribute) seen through the contract's defaults."""

    def __init__(self, module):
        self.module = module
        self.test_normalize = bool(getattr(module, "test_normalize", True))

    def __call__(self, x, label=None):
        # voxceleb_trainer's convention: N x D with one utterance per speaker.
        return self.module(x.squeeze(1) if x.size(1) == 1 else x, label)


def as_contract(objective):
    """The objective itself when it is an Objective, else its PlainObjective view."""
    return objective if isinstance(objective, Objective) else PlainObjective(objective)


# ---------------------------------------------------------------------------- helpers of objectives
# Batch shape of the contract: x is N x V x D (V views per group; V may be 1). The helpers
# also take N x D, which plain voxceleb_trainer-style files get when V is 1.

def flatten_labelled(x, label):
    """Classifier objectives: every view is one more labelled example.

    N x V x D with N labels -> N*V x D with N*V labels (row n*V + v is view v of group n);
    N x D passes through.
    """
    if x.dim() == 3:
        label = label.repeat_interleave(x.size(1))
        x = x.reshape(-1, x.size(-1))
    return x, label


def require_views(x, name, minimum=2, exactly=None):
    """Metric objectives need N x V x D with enough views; fail with the fix in the message."""
    views = x.size(1) if x.dim() == 3 else 1
    if views < minimum or (exactly is not None and views != exactly):
        wanted = exactly if exactly is not None else f"at least {minimum}"
        raise ValueError(f"{name} needs {wanted} utterances per speaker, got {views}: "
                         f"set --nPerSpeaker {exactly or minimum}")


@torch.no_grad()
def top1_accuracy(logits, target):
    """Top-1 accuracy in percent, the progress-bar metric of the classification-like objectives."""
    return (logits.argmax(dim=-1) == target).float().mean() * 100.0


def sine_of(cosine):
    """sin(theta) from cos(theta) for theta in [0, pi], clamped away from 0: the derivative of
    sqrt is infinite there."""
    return (1.0 - cosine.pow(2)).clamp(min=1e-7).sqrt()


def additive_angular_target(cos_y, margin):
    """ArcFace's target cosine cos(theta_y + m) (before the scale). Where theta_y + m would pass
    pi, cos(theta + m) stops decreasing in theta, so there it is the CosFace-like
    cos(theta_y) - m sin m."""
    # theta + m < pi  <=>  cos(theta) > cos(pi - m)
    return torch.where(cos_y > math.cos(math.pi - margin),
                       cos_y * math.cos(margin) - sine_of(cos_y) * math.sin(margin),
                       cos_y - margin * math.sin(margin))


class ScaledCosineObjective(Objective):
    """Base of the metric objectives whose logits are w * cos + b, with a learnable scale
    w > 0 and bias b (angleproto, ge2e, acont). The parameters keep voxceleb_trainer's names,
    'w' and 'b', so its checkpoints load; its initial values (10, -5) are the defaults, as
    the papers give none."""

    def __init__(self, init_w=10.0, init_b=-5.0, **kwargs):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(init_w))
        self.b = nn.Parameter(torch.tensor(init_b))

    def scaled(self, cosine):
        # w must stay positive or the objective inverts; clamp where it is used.
        return self.w.clamp(min=1e-6) * cosine + self.b
