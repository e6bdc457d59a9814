"""Step decay: multiply the learning rate by lr_decay every test_interval epochs.

With the defaults (0.95 every 10 epochs) this is the papers' "decrease by 5% every 10 epochs".
"""
import torch


def Scheduler(optimizer, test_interval=10, lr_decay=0.95, **kwargs):
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=test_interval, gamma=lr_decay)
    return scheduler, "epoch"
