"""SGDR: cosine annealing with warm restarts (Loshchilov & Hutter 2017), with a decaying peak.

The DINO curriculum paper's schedule (Heo et al. 2023, Table 1: "SGDR, restart period = 16,
decay = 0.8"): the learning rate falls from its peak to --sgdr_min_lr along a half cosine
over a cycle of --sgdr_period epochs, then restarts; each restart's peak is the previous
one times --sgdr_decay (cycle c, counted from 0, peaks at lr * decay^c). --sgdr_mult
multiplies each cycle's length by that factor (SGDR's T_mult; 1 = fixed period, the paper's).
One cycle as long as the run (--sgdr_period = max_epoch) is plain cosine annealing ("SGDR
without restart", the paper's fine-tuning schedule).

    lr(epoch e in cycle c, position p of T) = min_lr + (lr decay^c - min_lr)(1 + cos(pi p / T)) / 2

Unit: 'epoch'. The period is given in epochs and the paper's data curricula change on the
same 16-epoch boundaries; the scheduler is built before the data are known, so it could not
turn a period in epochs into iterations; and a value per epoch depends on the epoch alone,
so a resumed run gets exactly the same rates. The price is a staircase of 16 steps per cycle
instead of SGDR's per-iteration curve.
"""
import math

import torch

from speakernet.core.errors import OptionError


def add_arguments(parser):
    parser.add_argument("--sgdr_period", type=int, default=16,
                        help="SGDR: epochs of the first cycle (Heo et al. 2023 Table 1: 16)")
    parser.add_argument("--sgdr_decay", type=float, default=0.8,
                        help="SGDR: factor on the peak learning rate at each restart (paper: 0.8)")
    parser.add_argument("--sgdr_mult", type=int, default=1,
                        help="SGDR: factor on the cycle length at each restart (T_mult; paper: 1)")
    parser.add_argument("--sgdr_min_lr", type=float, default=0.0,
                        help="SGDR: learning rate at the end of each cycle")


def cycle_position(epoch_index, period, mult):
    """(cycle, position in the cycle, cycle length) of 0-based epoch `epoch_index`."""
    cycle, length = 0, period
    while epoch_index >= length:
        epoch_index -= length
        cycle += 1
        length *= mult
    return cycle, epoch_index, length


def lr_factor(epoch_index, period, decay, mult, min_ratio):
    cycle, position, length = cycle_position(epoch_index, period, mult)
    peak = max(decay ** cycle, min_ratio)
    return min_ratio + (peak - min_ratio) * (1.0 + math.cos(math.pi * position / length)) / 2.0


def Scheduler(optimizer, lr=0.001, sgdr_period=16, sgdr_decay=0.8, sgdr_mult=1, sgdr_min_lr=0.0,
              **kwargs):
    if sgdr_period < 1 or sgdr_mult < 1:
        raise OptionError("--sgdr_period and --sgdr_mult must be at least 1")
    if not 0.0 < sgdr_decay <= 1.0:
        raise OptionError(f"--sgdr_decay must lie in (0, 1], got {sgdr_decay}")
    if not 0.0 <= sgdr_min_lr < lr:
        raise OptionError(f"--sgdr_min_lr must lie in [0, lr={lr}), got {sgdr_min_lr}")
    min_ratio = sgdr_min_lr / lr

    def factor(epoch_index):       # LambdaLR passes the number of epochs completed
        return lr_factor(epoch_index, sgdr_period, sgdr_decay, sgdr_mult, min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "epoch"
