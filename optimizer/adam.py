"""Adam (the papers' optimiser: lr 0.001, Chung et al. 2020 sec. 3.3)."""
import torch


def Optimizer(parameters, lr=0.001, weight_decay=0.0, **kwargs):
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
