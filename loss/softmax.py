"""Softmax cross-entropy over training speakers (Chung et al. 2020, eq. 1)."""
import torch.nn as nn
import torch.nn.functional as F

from loss._objective import Needs, Objective, flatten_labelled, top1_accuracy


class LossFunction(Objective):
    needs = Needs(classifier=True)
    test_normalize = True   # score with cosine similarity

    def __init__(self, nOut, nClasses, **kwargs):
        super().__init__()
        self.fc = nn.Linear(nOut, nClasses)

    def forward(self, x, label=None):
        x, label = flatten_labelled(x, label)      # every view is one more labelled example
        logits = self.fc(x)
        return F.cross_entropy(logits, label), top1_accuracy(logits, label)
