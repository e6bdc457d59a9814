"""Pieces shared by the self-supervised objectives (cel, moco, dino): no LossFunction here.

- `StudentLink`: how an objective keeps the encoder it was attached to without registering
  it as a submodule (it already lives in SpeakerNet.encoder: registering it twice would put
  its weights twice in every checkpoint).
- `MomentumCopy`: a frozen copy of a module (MoCo's key encoder, DINO's teacher) updated as
  an exponential moving average of the live one. Its `synced` flag is a buffer, so it is
  saved with the objective: a fresh objective copies the live weights once, before the first
  step (`sync`); an objective restored from its own checkpoint keeps the restored copy;
  one whose checkpoint had no objective state (e.g. --initial_model from a supervised run)
  copies the *loaded* encoder, not the random one it was built with.
- `views_at`: picks views by index out of the trainer's list of N x V_run x samples runs.
- `all_gather_rows`: concatenates a tensor's rows over DistributedDataParallel ranks.
"""
import copy

import torch
import torch.distributed as dist
import torch.nn as nn


class StudentLink:
    """Holds a module by reference, invisible to nn.Module registration and state_dict."""

    def __init__(self):
        self._module = None

    def set(self, module):
        self._module = module

    def get(self, who):
        if self._module is None:
            raise RuntimeError(f"{who}: the objective has no encoder; SpeakerNet calls "
                               f"attach_encoder(encoder) when it is built")
        return self._module


class MomentumCopy(nn.Module):
    """`module` = frozen copy of a live module, moved towards it by `update(momentum)`:

        theta_copy <- m * theta_copy + (1 - m) * theta_live        (parameters only)

    Buffers (batch-norm running statistics) are not averaged: the copy runs in training mode
    like the live network and keeps its own statistics, as MoCo's key encoder and DINO's
    teacher do. The copy follows SpeakerNet.train()/eval() as a submodule.
    """

    def __init__(self, live):
        super().__init__()
        self.module = copy.deepcopy(live)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.register_buffer("synced", torch.tensor(False))

    @torch.no_grad()
    def sync(self, live):
        """Copy the live weights (parameters and buffers) once, unless restored from a checkpoint."""
        if bool(self.synced):
            return
        self.module.load_state_dict(live.state_dict())
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.synced.fill_(True)

    @torch.no_grad()
    def update(self, live, momentum):
        live_params = dict(live.named_parameters())
        for name, p in self.module.named_parameters():
            p.mul_(momentum).add_(live_params[name].detach(), alpha=1.0 - momentum)

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.module(*args, **kwargs)


def views_at(views, indices):
    """Views `indices` (positions in the concatenated view order) as one N x len x samples tensor.

    `views` is the trainer's list of runs (N x V_run x samples each, runs of equal-length
    views in order); the views picked must have equal length.
    """
    flat = []
    for run in views:
        flat.extend(run[:, v] for v in range(run.shape[1]))
    picked = [flat[i] for i in indices]
    lengths = {v.shape[-1] for v in picked}
    if len(lengths) != 1:
        raise ValueError(f"views {list(indices)} differ in length ({sorted(lengths)} samples)")
    return torch.stack(picked, dim=1)


def distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def all_gather_rows(x):
    """x from every rank, concatenated along dim 0 (x itself when not distributed)."""
    if not distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_reduce_mean(x):
    """Mean of x over ranks (x itself when not distributed)."""
    if not distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def full_precision(x):
    """Half-precision tensors (autocast) as float32; float32 and float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
