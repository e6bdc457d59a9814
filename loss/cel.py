"""Contrastive equilibrium learning, self-supervised (Mun et al. 2021, "Unsupervised
representation learning for speaker recognition via contrastive equilibrium learning").

A batch is K utterances, two crops of each (the sampler draws them, augmented independently;
the paper: 180 frames, K = 200). Labels are never used: groups are utterances and different
utterances of a batch are assumed to be different speakers.

    L_total = lambda * L_u + L_s                                              (eq. 7)

Uniformity L_u (eqs. 1-3): with unit embeddings z and the Gaussian potential
G_t(a, b) = exp(-t ||a - b||^2) (t = 2), for each view set v in {1, 2} separately,

    L_u = 1/2 sum_v log( mean over pairs i != j of G_t(z_{i,v}, z_{j,v}) ).

Pair normalisation: eq. 3 writes (1 / C(K,2)) * sum_{i != j}. Read literally, the sum over
ordered pairs counts each pair twice, so that is 2x the mean; we take the mean over the
K(K-1)/2 distinct pairs (equivalently over the K(K-1) ordered pairs), which is Wang & Isola's
uniformity loss [22] the paper follows. The two readings differ by the constant log 2 in the
loss value only: gradients are identical.

Similarity L_s, --cel_similarity:
  ap     angular prototypical (eq. 4): logits S[i, j] = w cos(z_{i,1}, z_{j,2}) + b, each
         first crop must pick its own second crop (loss/angleproto.py with the views swapped
         so that its query is the first crop, as in eq. 4);
  acont  angular contrastive (eq. 6): the same logits, averaged over rows and columns
         (loss/acont.py).
w and b are learnable (initial 10 and -5, angleproto's; the paper does not give them).
The progress-bar metric is the top-1 accuracy of the similarity term, in percent.
"""
import math

import torch
import torch.nn.functional as F

from loss import acont, angleproto
from loss._objective import Needs, Objective, require_views
from loss._ssl_common import full_precision
from loss._ssl_curricula import Curricula, CurriculumHooks
from loss._ssl_curricula import add_arguments as add_curriculum_arguments
from speakernet.core.errors import OptionError

SIMILARITIES = ("ap", "acont")


def add_arguments(parser):
    parser.add_argument("--cel_similarity", type=str, default="ap", choices=SIMILARITIES,
                        help="CEL similarity term: ap = angular prototypical (eq. 4, Table 1 "
                             "'Unif + A-Prot'), acont = angular contrastive (eq. 6)")
    parser.add_argument("--cel_lambda", type=float, default=1.0,
                        help="CEL weight lambda of the uniformity loss (eq. 7; paper: 1)")
    parser.add_argument("--cel_t", type=float, default=2.0,
                        help="CEL Gaussian potential parameter t (eq. 1; paper: 2)")
    add_curriculum_arguments(parser)


def uniformity_loss(z, t):
    """log of the mean Gaussian potential exp(-t ||z_i - z_j||^2) over pairs i != j of the
    rows of z (unit vectors, K x D)."""
    k = z.size(0)
    if k < 2:
        raise ValueError("the uniformity loss needs at least 2 utterances per batch")
    # ||a - b||^2 = 2 - 2 a.b for unit vectors; clamp the rounding below zero away.
    sq = (2.0 - 2.0 * (z @ z.T)).clamp(min=0.0)
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=z.device)
    return torch.logsumexp(-t * sq[off_diagonal], dim=0) - math.log(k * (k - 1))


class LossFunction(CurriculumHooks, Objective):
    needs = Needs(views=2, min_views=2, labels=False)
    test_normalize = True

    def __init__(self, cel_similarity="ap", cel_lambda=1.0, cel_t=2.0, init_w=10.0, init_b=-5.0,
                 **kwargs):
        super().__init__()
        if cel_similarity not in SIMILARITIES:
            raise OptionError(f"--cel_similarity '{cel_similarity}': choose {' or '.join(SIMILARITIES)}")
        if cel_t <= 0:
            raise OptionError(f"--cel_t must be positive, got {cel_t}")
        if cel_lambda < 0:
            raise OptionError(f"--cel_lambda must be 0 or more, got {cel_lambda}")
        self.kind = cel_similarity
        self.weight = cel_lambda
        self.t = cel_t
        module = angleproto if cel_similarity == "ap" else acont
        # Nested (objective.similarity.w/.b) so a supervised fine-tune's own w, b never
        # receive these values.
        self.similarity = module.LossFunction(init_w=init_w, init_b=init_b, nPerSpeaker=2)
        self.curricula = Curricula(**kwargs)

    def on_epoch_start(self, epoch):
        self.log_curricula(epoch)

    def uniformity(self, x):
        z = F.normalize(full_precision(x), dim=-1)
        return 0.5 * (uniformity_loss(z[:, 0], self.t) + uniformity_loss(z[:, 1], self.t))

    def forward(self, x, label=None):
        # `label` is never read: self-supervised (the trainer passes None anyway).
        require_views(x, "cel", exactly=2)
        x = full_precision(x)
        if self.kind == "ap":
            # angleproto's query is the last view and its prototype the mean of the others:
            # swapping the views makes the rows of S the first crops, as in eq. 4.
            similarity, metric = self.similarity(x.flip(1))
        else:
            similarity, metric = self.similarity(x)
        return self.weight * self.uniformity(x) + similarity, metric
