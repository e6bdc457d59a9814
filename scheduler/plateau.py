"""Divide the learning rate when the training loss stops improving (ReduceLROnPlateau).

The recipe of Xiao et al. 2021 ("Adaptive margin circle loss", sec. 4.2): SGD from lr 0.1,
"reduced by 10x when the training loss reaches stability". The trainer steps this scheduler
once per epoch with the epoch's mean training loss (unit 'loss'). The paper gives no
patience; the default of 2 epochs suits epochs that are a full pass over VoxCeleb2.
"""
import torch


def add_arguments(parser):
    parser.add_argument("--plateau_factor", type=float, default=0.1,
                        help="plateau: multiply the learning rate by this when the training loss "
                             "stops improving (Xiao et al. 2021: 0.1)")
    parser.add_argument("--plateau_patience", type=int, default=2,
                        help="plateau: epochs without improvement of the training loss before the "
                             "learning rate drops")


def Scheduler(optimizer, plateau_factor=0.1, plateau_patience=2, **kwargs):
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=plateau_factor, patience=plateau_patience)
    return scheduler, "loss"
