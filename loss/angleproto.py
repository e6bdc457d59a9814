"""Angular prototypical loss (Chung et al. 2020, sec. 2.2, eq. 13 with eq. 8).

Each of the N speakers in the batch contributes M >= 2 utterances; the last one is the
query and the mean of the others the prototype. Logits are w * cos(query_j, proto_k) + b,
and each query must pick its own speaker's prototype.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from loss._objective import Needs, Objective, top1_accuracy


class LossFunction(Objective):
    needs = Needs(min_views=2)
    test_normalize = True

    def __init__(self, init_w=10.0, init_b=-5.0, **kwargs):
        super().__init__()
        # Initial scale and bias as in voxceleb_trainer (the paper does not give them).
        self.w = nn.Parameter(torch.tensor(init_w))
        self.b = nn.Parameter(torch.tensor(init_b))

    def forward(self, x, label=None):
        if x.dim() != 3 or x.size(1) < 2:
            raise ValueError("angleproto needs at least 2 utterances per speaker: set --nPerSpeaker 2")
        query = F.normalize(x[:, -1], dim=-1)
        prototype = F.normalize(x[:, :-1].mean(dim=1), dim=-1)
        # The scale must stay positive or the objective inverts; clamp where it is used.
        logits = self.w.clamp(min=1e-6) * (query @ prototype.T) + self.b
        target = torch.arange(x.size(0), device=x.device)
        return F.cross_entropy(logits, target), top1_accuracy(logits, target)
