"""Triplet loss with hard negative mining (Schroff et al. 2015; Chung et al. 2020, sec. 2.2,
eq. 5, and curriculum hard negative mining, sec. 3.3 and the "CHNM" rows of Table 2).

Each speaker j gives an anchor x_{j,0} and a positive x_{j,1}; the negative is the positive
utterance x_{k,1} of another speaker k in the batch, picked by the mining mode:
    hard      with probability --hard_prob one of the --hard_rank closest negatives, else a
              random one (voxceleb_trainer's mining);
    semihard  a random negative farther than the positive but inside the margin (FaceNet);
              a random negative when there is none;
    random    a random negative;
    chnm      random negatives for the first --triplet_chnm_after epochs (paper: 100), then
              only the hardest --triplet_chnm_fraction of the negatives (paper: 1%).
Embeddings are length-normalised before the squared distances, as in voxceleb_trainer: the
paper's margins (0.1 to 0.4) assume distances on the unit sphere.
"""
import math

import torch
import torch.nn.functional as F

from loss._objective import Needs, Objective, require_views
from speakernet.core.errors import OptionError

MINING_MODES = ("hard", "semihard", "random", "chnm")


def add_arguments(parser):
    parser.add_argument("--triplet_mining", type=str, default="hard", choices=MINING_MODES,
                        help="negative mining: hard (--hard_rank/--hard_prob), semihard, random, "
                             "or chnm (curriculum hard negative mining, Chung et al. 2020 sec. 3.3)")
    parser.add_argument("--triplet_chnm_after", type=int, default=100,
                        help="chnm: epochs with random negatives before hard mining starts")
    parser.add_argument("--triplet_chnm_fraction", type=float, default=0.01,
                        help="chnm: after the switch, negatives come from this hardest fraction")


def check_options(hard_rank=10, hard_prob=0.5, triplet_chnm_fraction=0.01, **kwargs):
    """The mining settings, checked once here (option_checks.validate calls it for --trainfunc triplet)."""
    if not 0 <= hard_prob <= 1:
        raise OptionError(f"--hard_prob must lie in [0, 1] (a probability), got {hard_prob:g}")
    if hard_rank < 1:
        raise OptionError(f"--hard_rank must be at least 1, got {hard_rank}")
    if not 0 < triplet_chnm_fraction <= 1:
        raise OptionError(f"--triplet_chnm_fraction must lie in (0, 1], got {triplet_chnm_fraction:g}")


class LossFunction(Objective):
    needs = Needs(min_views=2)
    test_normalize = True

    def __init__(self, margin=0.1, hard_rank=10, hard_prob=0.5, triplet_mining="hard",
                 triplet_chnm_after=100, triplet_chnm_fraction=0.01, nPerSpeaker=2, **kwargs):
        super().__init__()
        if triplet_mining not in MINING_MODES:
            raise OptionError(f"--triplet_mining '{triplet_mining}': use one of {', '.join(MINING_MODES)}")
        if nPerSpeaker > 2:
            raise OptionError(f"triplet uses exactly 2 utterances per speaker (anchor, positive); "
                              f"set --nPerSpeaker 2 (got {nPerSpeaker})")
        check_options(hard_rank=hard_rank, hard_prob=hard_prob, triplet_chnm_fraction=triplet_chnm_fraction)
        self.margin = margin
        self.hard_rank = hard_rank
        self.hard_prob = hard_prob
        self.schedule = triplet_mining
        self.chnm_after = triplet_chnm_after
        self.chnm_fraction = triplet_chnm_fraction
        self.on_epoch_start(1)

    def mining_at(self, epoch):
        """-> (mode, hard_rank or hardest fraction, hard_prob) used during `epoch`."""
        if self.schedule == "chnm":
            if epoch <= self.chnm_after:
                return "random", None, 0.0
            return "hardest_fraction", self.chnm_fraction, 1.0
        return self.schedule, self.hard_rank, self.hard_prob

    def on_epoch_start(self, epoch):
        self.mining = self.mining_at(epoch)

    @torch.no_grad()
    def mine_negatives(self, dist):
        """dist[j, k] = squared distance anchor j - positive k -> index k != j per anchor."""
        n = dist.size(0)
        mode, rank, prob = self.mining
        eye = torch.eye(n, dtype=torch.bool, device=dist.device)
        neg = dist.masked_fill(eye, math.inf)
        # Rank 0 = the closest (hardest) negative; the anchor's own positive ranks last.
        ranks = neg.argsort(dim=1).argsort(dim=1)
        if mode == "hardest_fraction":
            rank, mode = max(1, math.ceil(rank * (n - 1))), "hard"
        if mode == "hard":
            allowed = ranks < min(rank, n - 1)
            allowed &= (torch.rand(n, 1, device=dist.device) < prob)
        elif mode == "semihard":
            positive = dist.diagonal()[:, None]
            allowed = (neg > positive) & (neg < positive + self.margin)
        else:
            allowed = torch.zeros_like(eye)
        # Rows with no allowed negative draw uniformly among all negatives.
        allowed |= ~allowed.any(dim=1, keepdim=True) & ~eye
        scores = torch.rand(n, n, device=dist.device).masked_fill(~allowed, -1.0)
        return scores.argmax(dim=1)

    def forward(self, x, label=None):
        require_views(x, "triplet", exactly=2)
        anchor = F.normalize(x[:, 0], dim=1)
        positive = F.normalize(x[:, 1], dim=1)
        # For unit vectors |a - p|^2 = 2 - 2 a.p; one matrix product, no N x N x D tensor.
        similarity = anchor @ positive.T
        # Margins of 0.1 are near bf16's resolution at 2: keep the hinge in float32 or wider.
        dist = 2.0 - 2.0 * similarity.to(torch.promote_types(similarity.dtype, torch.float32))
        negative = self.mine_negatives(dist.detach())
        rows = torch.arange(x.size(0), device=x.device)
        d_pos, d_neg = dist[rows, rows], dist[rows, negative]
        loss = F.relu(d_pos - d_neg + self.margin).mean()
        # Progress metric: share of triplets already ordered correctly.
        return loss, (d_pos < d_neg).float().mean().detach() * 100.0
