"""AM-softmax / CosFace (Wang et al. 2018; Chung et al. 2020, sec. 2.1, eq. 3).

Logits are s * cos(theta_j) for the other classes and s * (cos(theta_y) - m) for the target,
where cos(theta_j) is the cosine between the embedding and class weight j.
The weight is stored as 'W' [nOut, nClasses], voxceleb_trainer's layout, so its checkpoints load.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from loss._objective import Needs, Objective, flatten_labelled, top1_accuracy


class LossFunction(Objective):
    needs = Needs(classifier=True)
    test_normalize = True

    def __init__(self, nOut, nClasses, margin=0.2, scale=30.0, **kwargs):
        super().__init__()
        self.margin = margin
        self.scale = scale
        self.W = nn.Parameter(torch.empty(nOut, nClasses))
        nn.init.xavier_normal_(self.W, gain=1)

    def forward(self, x, label=None):
        x, label = flatten_labelled(x, label)
        cosine = F.normalize(x, dim=1) @ F.normalize(self.W, dim=0)
        target = F.one_hot(label, cosine.size(1)).to(cosine.dtype)
        logits = self.scale * (cosine - self.margin * target)
        return F.cross_entropy(logits, label), top1_accuracy(cosine, label)
