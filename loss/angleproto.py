"""Angular prototypical loss (Chung et al. 2020, sec. 2.2, eq. 13 with eq. 8).

Each of the N speakers in the batch contributes M >= 2 utterances; the last one is the
query and the mean of the others the prototype. Logits are w * cos(query_j, proto_k) + b,
and each query must pick its own speaker's prototype.
"""
import torch
import torch.nn.functional as F

from loss._objective import Needs, ScaledCosineObjective, require_views, top1_accuracy


class LossFunction(ScaledCosineObjective):
    needs = Needs(min_views=2)
    test_normalize = True

    def forward(self, x, label=None):
        require_views(x, "angleproto")
        query = F.normalize(x[:, -1], dim=-1)
        prototype = F.normalize(x[:, :-1].mean(dim=1), dim=-1)
        logits = self.scaled(query @ prototype.T)
        target = torch.arange(x.size(0), device=x.device)
        return F.cross_entropy(logits, target), top1_accuracy(logits, target)
