"""SGD with momentum 0.9 (the circle-loss paper's optimiser)."""
import torch


def Optimizer(parameters, lr=0.1, weight_decay=0.0, momentum=0.9, **kwargs):
    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
