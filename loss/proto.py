"""Prototypical loss with squared Euclidean distance (Snell et al. 2017; Chung et al. 2020,
sec. 2.2, eqs. 6-8).

Each of the N speakers gives M >= 2 utterances; the last is the query and the mean of the
other M-1 the prototype. Query j is classified among the N prototypes with logits
-|x_{j,M} - c_k|^2 (eq. 8 prints exp(S) without the minus sign; a softmax over distances
must use negative distances, as the original prototypical networks do).
Embeddings are not normalised, so evaluation scores them without normalisation
(test_normalize False, as voxceleb_trainer's proto).
"""
import torch
import torch.nn.functional as F

from loss._objective import Needs, Objective, require_views, top1_accuracy


class LossFunction(Objective):
    needs = Needs(min_views=2)
    test_normalize = False

    def __init__(self, **kwargs):
        super().__init__()

    def forward(self, x, label=None):
        require_views(x, "proto")
        query = x[:, -1]
        prototype = x[:, :-1].mean(dim=1)
        logits = -torch.cdist(query, prototype).pow(2)
        target = torch.arange(x.size(0), device=x.device)
        return F.cross_entropy(logits, target), top1_accuracy(logits, target)
