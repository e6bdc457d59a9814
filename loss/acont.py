"""Angular contrastive loss (Mun et al. 2021, "Contrastive equilibrium learning", sec. 2.1,
eqs. 5-6): the symmetric version of angular prototypical with one utterance per side.

Each of the K groups gives two utterances; S = w * cos(x_{i,1}, x_{j,2}) + b with learnable
w > 0 and b. The loss averages the cross-entropy of picking x_{i,2} among all second
utterances for x_{i,1} (rows of S) and of picking x_{i,1} among all first utterances for
x_{i,2} (columns of S). The paper gives no initial w, b; we take angleproto's 10 and -5.
Groups are speakers here (the supervised fine-tuning of the paper's Table 3).
"""
import torch
import torch.nn.functional as F

from loss._objective import Needs, ScaledCosineObjective, require_views, top1_accuracy
from speakernet.core.errors import OptionError


class LossFunction(ScaledCosineObjective):
    needs = Needs(min_views=2)
    test_normalize = True

    def __init__(self, init_w=10.0, init_b=-5.0, nPerSpeaker=2, **kwargs):
        super().__init__(init_w, init_b)
        if nPerSpeaker > 2:
            raise OptionError(f"acont compares exactly 2 utterances per group; set --nPerSpeaker 2 "
                              f"(got {nPerSpeaker})")

    def forward(self, x, label=None):
        require_views(x, "acont", exactly=2)
        first = F.normalize(x[:, 0], dim=1)
        second = F.normalize(x[:, 1], dim=1)
        logits = self.scaled(first @ second.T)
        target = torch.arange(x.size(0), device=x.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        return loss, top1_accuracy(logits, target)
