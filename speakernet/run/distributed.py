"""Several processes under torchrun: the process group's start (rank, world size, local rank),
rank 0's buffers shared before evaluation, and the group's teardown on every exit path."""
import os

import torch
import torch.distributed as dist

from speakernet.core.errors import OptionError


def init_distributed(options):
    """(rank, world_size, local_rank); initialises the process group under torchrun."""
    if not options.distributed:
        return 0, 1, 0
    if "RANK" not in os.environ:
        raise OptionError("--distributed needs torchrun (e.g. torchrun --nproc_per_node 2 trainSpeakerNet.py ...)")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if torch.cuda.is_available() and options.device != "cpu" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)     # NCCL collectives use the current device
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), local_rank

def share_buffers(module):
    """Rank 0's buffers on every rank. Each rank's last step updated its BatchNorm statistics
    with its own batch; evaluation must embed with the weights rank 0 saves."""
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)

def close_distributed(finished):
    """Tear the process group down on every exit path. After a normal end the ranks first meet
    at a barrier, so none exits while another still talks to it (which aborted the process
    with 'terminate called without an active exception'); after an error there is no barrier,
    since the other ranks may never reach it."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if finished:
            dist.barrier()
    finally:
        dist.destroy_process_group()
