"""Linear warm-up, then exponential (or cosine) decay to a floor, stepped every iteration.

exp (default): wespeaker's ExponentialDecrease (wenet-e2e/wespeaker,
wespeaker/utils/schedulers.py; examples/voxceleb/v2/conf/resnet.yaml: initial_lr 0.1,
final_lr 5e-5, warm_up_epoch 6, warm_from_zero True, 150 epochs). With t the iterations done
(0 at the first step), W = --warmup_epochs x iterations per epoch, T = --max_epoch x
iterations per epoch:

    lr(t) = lr * min(1, t / W) * (final_lr / lr) ^ (min(t, T) / T)

The decay runs from the first iteration; the warm-up factor t / W multiplies it (wespeaker's
BaseClass.get_multi_process_coeff with warm_from_zero), so the first step has lr 0. Past T
the rate stays at final_lr (wespeaker would keep decaying; its runs end at T).
--warmup_epochs 0 is wespeaker's warm_from_zero False (with scale_ratio 1): no warm-up.

cosine: 3D-Speaker's WarmupCosineScheduler (modelscope/3D-Speaker,
speakerlab/process/scheduler.py; egs/sv-cam++/voxceleb/conf/cam++.yaml: lr 0.1, min_lr 1e-4,
warmup_epoch 5, fix_epoch = num_epoch 60):

    lr(t) = final_lr + (lr - final_lr) t / W                                   t < W
    lr(t) = final_lr + (lr - final_lr) (1 + cos(pi (t - W) / (T - W))) / 2     W <= t < T
    lr(t) = final_lr                                                           t >= T

--lr is the peak rate actually used. wespeaker multiplies its initial_lr and final_lr by
scale_ratio = processes x batch per process / 64 (wespeaker/bin/train.py), so its ResNet-34
recipe (2 x 128) peaks at 0.4; 3D-Speaker uses its lr as given (batch 256 in all).

Unit 'iteration': the trainer steps the scheduler after every optimizer step, and the
checkpointed scheduler state holds t, so a resumed run (even mid-epoch) continues the curve.
The iterations per epoch are the trainer's: it plans the first epoch before building the
scheduler and passes the planned steps per process (`steps_per_epoch`); --iters_per_epoch N
overrides them. With a data curriculum the later epochs plan more steps than the first: the
curve is then stretched or squeezed in time, never cut.
"""
import logging
import math

import torch

from speakernet.core.errors import OptionError

log = logging.getLogger(__name__)

DECAYS = ("exp", "cosine")


def add_arguments(parser):
    parser.add_argument("--warmup_epochs", type=float, default=6.0,
                        help="warmup_exp: epochs of linear warm-up (wespeaker ResNet: 6, "
                             "3D-Speaker CAM++: 5, LM fine-tuning: 1); 0: none")
    parser.add_argument("--final_lr", type=float, default=5e-5,
                        help="warmup_exp: learning rate at --max_epoch and after (the floor; "
                             "wespeaker final_lr 5e-5 at lr 0.1, 3D-Speaker min_lr 1e-4)")
    parser.add_argument("--warmup_decay", type=str, default="exp", choices=DECAYS,
                        help="warmup_exp: exp = wespeaker ExponentialDecrease, cosine = "
                             "3D-Speaker WarmupCosineScheduler")
    parser.add_argument("--iters_per_epoch", type=int, default=0,
                        help="warmup_exp: optimizer steps per epoch per process; 0: the "
                             "steps the sampler plans for the first epoch")


def lr_at(t, lr, final_lr, warmup_iters, total_iters, decay="exp"):
    """The learning rate after `t` optimizer steps (the rate of step t + 1)."""
    if decay == "exp":
        warm = min(1.0, t / warmup_iters) if warmup_iters > 0 else 1.0
        return lr * warm * (final_lr / lr) ** (min(t, total_iters) / total_iters)
    if t < warmup_iters:
        return final_lr + (lr - final_lr) * t / warmup_iters
    if t >= total_iters:
        return final_lr
    return final_lr + (lr - final_lr) * (1.0 + math.cos(math.pi * (t - warmup_iters)
                                                        / (total_iters - warmup_iters))) / 2.0


def Scheduler(optimizer, lr=0.001, final_lr=5e-5, warmup_epochs=6.0, warmup_decay="exp",
              iters_per_epoch=0, max_epoch=500, steps_per_epoch=0, **kwargs):
    if warmup_decay not in DECAYS:
        raise OptionError(f"--warmup_decay '{warmup_decay}': choose exp or cosine")
    if max_epoch < 1:
        raise OptionError(f"--max_epoch must be at least 1, got {max_epoch}")
    if warmup_epochs < 0:
        raise OptionError(f"--warmup_epochs must be 0 or more, got {warmup_epochs:g}")
    if warmup_epochs > max_epoch:
        # Allowed (a shortened smoke run of a recipe config), but the peak is never reached.
        log.warning("warmup_exp: --warmup_epochs %g is longer than --max_epoch %d; the learning "
                    "rate never reaches --lr %g", warmup_epochs, max_epoch, lr)
    low = 0.0 < final_lr if warmup_decay == "exp" else 0.0 <= final_lr
    if not (low and final_lr <= lr):
        bound = "(0" if warmup_decay == "exp" else "[0"
        raise OptionError(f"--final_lr must lie in {bound}, --lr {lr:g}] for --warmup_decay "
                          f"{warmup_decay}, got {final_lr:g}")
    if iters_per_epoch < 0:
        raise OptionError(f"--iters_per_epoch must be 0 (computed) or more, got {iters_per_epoch}")
    if iters_per_epoch == 0 and steps_per_epoch < 1:
        raise OptionError("--scheduler warmup_exp needs the optimizer steps per epoch: the trainer "
                          "passes those it plans; built without it, give --iters_per_epoch")
    source = "planned by the sampler" if iters_per_epoch == 0 else "--iters_per_epoch"
    iters_per_epoch = iters_per_epoch or steps_per_epoch
    warmup_iters = round(warmup_epochs * iters_per_epoch)
    total_iters = max_epoch * iters_per_epoch
    log.info("warmup_exp: %s decay %g -> %g over %d iterations (%d per epoch, %s), %d of "
             "linear warm-up", warmup_decay, lr, final_lr, total_iters, iters_per_epoch, source,
             warmup_iters)

    def factor(t):                 # LambdaLR passes the number of steps taken
        return lr_at(t, lr, final_lr, warmup_iters, total_iters, warmup_decay) / lr

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scheduler.iters_per_epoch = iters_per_epoch
    return scheduler, "iteration"
