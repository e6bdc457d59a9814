"""AdaCos with the dynamically adaptive scale (Zhang et al. 2019, "AdaCos: Adaptively scaling
cosine logits for effectively learning deep face representations", CVPR); used for speakers
in Mun et al. 2021, Table 3.

Logits are s * cos(theta_j), no margin. The scale starts at the fixed value
s_0 = sqrt(2) * log(C - 1) and, at every training step t, before the loss is computed,
becomes
    s_t = log(B_avg) / cos(min(pi/4, theta_med))
where theta_med is the median angle between the embeddings and their own class weights in
the batch and B_avg = (1/N) sum_i sum_{k != y_i} exp(s_{t-1} cos(theta_{i,k})) is the batch
average of the non-target exp-logits under the previous scale. The update is computed
without gradient: the scale is a statistic of the batch, not a trained parameter. It is kept
in a buffer so that checkpoints resume with it.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from loss._objective import Needs, Objective, flatten_labelled, top1_accuracy
from speakernet.core.errors import OptionError


class LossFunction(Objective):
    needs = Needs(classifier=True)
    test_normalize = True

    def __init__(self, nOut, nClasses, **kwargs):
        super().__init__()
        if nClasses < 3:
            raise OptionError(f"adacos needs --nClasses of at least 3 (its initial scale "
                              f"sqrt(2) log(C-1) is 0 for C = 2), got {nClasses}")
        self.weight = nn.Parameter(torch.empty(nClasses, nOut))
        nn.init.xavier_normal_(self.weight, gain=1)
        self.register_buffer("scale", torch.tensor(math.sqrt(2.0) * math.log(nClasses - 1)))

    @torch.no_grad()
    def updated_scale(self, cosine, label):
        cosine = cosine.to(torch.promote_types(cosine.dtype, torch.float32))  # not in bf16
        target = F.one_hot(label, cosine.size(1)).bool()
        others = torch.exp(self.scale * cosine).masked_fill(target, 0.0)
        b_avg = others.sum(dim=1).mean()
        theta_target = torch.acos(cosine.gather(1, label[:, None]).clamp(-1.0, 1.0))
        theta_median = theta_target.quantile(0.5)
        return torch.log(b_avg) / torch.cos(theta_median.clamp(max=math.pi / 4))

    def forward(self, x, label=None):
        x, label = flatten_labelled(x, label)
        cosine = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T
        if self.training:
            self.scale.copy_(self.updated_scale(cosine.detach(), label))
        logits = self.scale * cosine
        return F.cross_entropy(logits, label), top1_accuracy(cosine, label)
