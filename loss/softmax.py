"""Softmax cross-entropy over training speakers (Chung et al. 2020, eq. 1)."""
import torch.nn as nn
import torch.nn.functional as F

from loss._objective import Needs, Objective, top1_accuracy


class LossFunction(Objective):
    needs = Needs(classifier=True)
    test_normalize = True   # score with cosine similarity

    def __init__(self, nOut, nClasses, **kwargs):
        super().__init__()
        self.fc = nn.Linear(nOut, nClasses)

    def forward(self, x, label=None):
        # Several views per speaker (N x V x D) are just more labelled examples here.
        if x.dim() == 3:
            label = label.repeat_interleave(x.size(1))
            x = x.reshape(-1, x.size(-1))
        logits = self.fc(x)
        return F.cross_entropy(logits, label), top1_accuracy(logits, label)
