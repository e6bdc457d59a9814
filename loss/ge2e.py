"""Generalised end-to-end loss (Wan et al. 2018; Chung et al. 2020, sec. 2.2, eqs. 9-12).

Every utterance x_{j,i} of the N x M batch is compared with every speaker's centroid; for
its own speaker the centroid leaves the utterance out, c_j^(-i) = (sum_m x_{j,m} - x_{j,i}) /
(M - 1) (eq. 10 prints the sum over all M: a typo, the text says "except the query itself").
Logits are w * cos + b with learnable w > 0 and b (init 10 and -5), and each utterance must
pick its own speaker. The loss is the mean over all N*M utterances (eq. 12 writes 1/N in
front of the double sum; the mean, as in voxceleb_trainer, keeps the scale independent of M).
"""
import torch
import torch.nn.functional as F

from loss._objective import Needs, ScaledCosineObjective, require_views, top1_accuracy


class LossFunction(ScaledCosineObjective):
    needs = Needs(min_views=2)
    test_normalize = True

    def forward(self, x, label=None):
        require_views(x, "ge2e")
        n, m, _ = x.shape
        total = x.sum(dim=1, keepdim=True)                                # N x 1 x D
        centroid = F.normalize(total.squeeze(1) / m, dim=-1)              # N x D
        own_centroid = F.normalize((total - x) / (m - 1), dim=-1)         # N x M x D
        unit = F.normalize(x, dim=-1)
        cos_all = unit @ centroid.T                                       # N x M x N
        cos_own = (unit * own_centroid).sum(dim=-1)                       # N x M
        own = torch.eye(n, dtype=torch.bool, device=x.device)[:, None, :]
        cosine = torch.where(own, cos_own[..., None], cos_all)
        logits = self.scaled(cosine).reshape(n * m, n)
        target = torch.arange(n, device=x.device).repeat_interleave(m)
        return F.cross_entropy(logits, target), top1_accuracy(logits, target)
