"""Top-1 accuracy in percent, the progress-bar metric of the classification-like objectives."""
import torch


@torch.no_grad()
def top1_accuracy(logits, target):
    return (logits.argmax(dim=-1) == target).float().mean() * 100.0
