"""Sub-center AAM-softmax with the inter-top-k penalty: the objective of wespeaker's strongest
ResNet recipes.

Sources:
- Sub-center ArcFace (Deng et al., "Sub-center ArcFace: Boosting Face Recognition by
  Large-Scale Noisy Web Faces", ECCV 2020, sec. 3.1): every class has K sub-centres; the
  cosine of an embedding to a class is the largest of its K cosines, and the additive angular
  margin of ArcFace applies to that cosine.
- Inter-top-k penalty (Zhao et al., "Multi-query multi-head attention pooling and inter-topK
  penalty for speaker verification", ICASSP 2022, sec. 2.2): the k negative classes closest
  to the embedding get an extra angular margin m' that *raises* their logits, so the
  confusable speakers are pushed away harder.
- wespeaker: wespeaker/models/projections.py `ArcMarginProduct_intertopk_subcenter`
  (defaults K=3, k_top=5, mp=0.06) used by examples/voxceleb/v2/conf/
  resnet_mqmha_intertopk_subcenter.yaml (scale 32, margin 0 -> 0.2 by the exponential margin
  warm-up of wespeaker/utils/schedulers.py `MarginScheduler`, increase_type 'exp').

For an embedding x with label y, weights w_{c,k} (class c, sub-centre k):

    cos(theta_c) = max_k  <x / |x|, w_{c,k} / |w_{c,k}|>
    logit_y      = s cos(theta_y + m)                 (ArcFace; past pi the CosFace-like
                                                       s (cos(theta_y) - m sin m), as
                                                       loss/aamsoftmax.py does)
    logit_j      = s cos(theta_j - m')   for the k classes j != y of largest cos(theta_j)
    logit_j      = s cos(theta_j)        for the other classes
    loss         = cross-entropy(logits, y), averaged over the batch

The penalty is angular, cos(theta_j - m') = cos(theta_j) cos m' + sin(theta_j) sin m', as in
the paper's equation and wespeaker's `phi_mp`; the top k are chosen by cos(theta_j) (the
sub-centre maxima) without a gradient through the choice. With K = 1 and k = 0 this is
loss/aamsoftmax.py exactly (tests/test_recipe_objectives.py checks it on the same weights).

Margin warm-up: the options and the mechanism of loss/aamsoftmax.py (--aam_initial_margin,
--aam_curriculum_epochs, --aam_ramp_epochs through loss._curriculum.held_then_ramped), one
value per epoch. wespeaker's and 3D-Speaker's MarginScheduler ramp exponentially, not
linearly, so --aam_ramp_shape exp gives theirs: over the ramp, with p the linear progress in
[0, 1], the margin is m0 + (m - m0)(1 - 0.001^p) (wespeaker: 1 - exp(p ln(1e-3 / (1 + 1e-6)));
the 1e-6 is dropped), exactly m once the ramp is over. The extra margin m' follows the
margin as wespeaker's update() makes it (mp * margin / 0.2): m'(epoch) = --intertopk_margin x
margin(epoch) / --margin, so it is 0 while the margin is 0 and --intertopk_margin at the end.

Differences from wespeaker: the margin changes once per epoch, not per iteration; past pi
the target logit is s (cos theta_y - m sin m) (ArcFace's and loss/aamsoftmax.py's) where
wespeaker uses s (cos theta_y - 1 - cos(pi - m)); the weight is initialised Xavier-normal
(aamsoftmax.py's) instead of Xavier-uniform.

The weight is 'weight' [nClasses x K, nOut], sub-centre k of class c in row c K + k (the
layout of wespeaker's weight, whose logits are reshaped to classes x K); with K = 1 it is
loss/aamsoftmax.py's 'weight', so checkpoints of either load into the other.
Large-margin fine-tuning (configs/ResNet34_wespeaker_LM.yaml) turns the penalty off
(--intertopk_k 0), as wespeaker's do_lm does.
"""
import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from loss import aamsoftmax
from loss._curriculum import held_then_ramped
from loss._objective import Needs, Objective, additive_angular_target, flatten_labelled, sine_of, top1_accuracy
from speakernet.core.errors import OptionError

# wespeaker's recipe values (projections.py and resnet_mqmha_intertopk_subcenter.yaml) when the
# user sets the generic --margin / --scale neither in YAML nor on the command line.
OPTION_DEFAULTS = {"margin": 0.2, "scale": 32.0}

EXP_RAMP_FLOOR = 1e-3      # wespeaker / 3D-Speaker MarginScheduler: final_val of the exp ramp
# Sub-centres per class: Deng et al. 2020 try up to 10; the weight holds nClasses x K rows.
MAX_SUBCENTRES = 100

log = logging.getLogger(__name__)


def add_arguments(parser):
    aamsoftmax.add_arguments(parser)       # the same margin-curriculum options
    parser.add_argument("--aam_ramp_shape", type=str, default="linear", choices=("linear", "exp"),
                        help="margin curriculum: shape of the --aam_ramp_epochs ramp; exp is "
                             "wespeaker's and 3D-Speaker's MarginScheduler (increase_type exp)")
    parser.add_argument("--subcenter_k", type=int, default=3,
                        help="sub-centres per class (Deng et al. 2020; wespeaker K=3); 1: none")
    parser.add_argument("--intertopk_k", type=int, default=5,
                        help="inter-top-k penalty: hardest negative classes penalised "
                             "(Zhao et al. 2022; wespeaker k_top=5); 0 disables it")
    parser.add_argument("--intertopk_margin", type=float, default=0.06,
                        help="inter-top-k penalty: extra angular margin m' of those classes "
                             "(wespeaker mp=0.06), scaled with the margin warm-up; 0 disables it")


def ramp_ratio(progress, shape):
    """Share of the way from the initial to the final margin after `progress` in [0, 1]."""
    if progress >= 1.0:
        return 1.0
    if shape == "exp":
        return 1.0 - EXP_RAMP_FLOOR ** progress
    return progress


def penalised_classes(intertopk_k, num_classes):
    """The inter-top-k penalty's k: at most the classes other than the target (warned)."""
    others = num_classes - 1
    if intertopk_k > others:
        log.warning("--intertopk_k %d is more than the %d classes other than the target "
                    "(--nClasses %d); using %d", intertopk_k, others, num_classes, others)
        return others
    return intertopk_k


class LossFunction(Objective):
    needs = Needs(classifier=True)
    test_normalize = True

    def __init__(self, nOut, nClasses, margin=0.2, scale=32.0, subcenter_k=3, intertopk_k=5,
                 intertopk_margin=0.06, aam_initial_margin=None, aam_curriculum_epochs=0,
                 aam_ramp_epochs=0, aam_ramp_shape="linear", **kwargs):
        super().__init__()
        if not 1 <= subcenter_k <= MAX_SUBCENTRES:
            raise OptionError(f"--subcenter_k must lie in [1, {MAX_SUBCENTRES}] (1: no sub-centres; "
                              f"wespeaker: 3), got {subcenter_k}")
        if intertopk_k < 0 or intertopk_margin < 0:
            raise OptionError("--intertopk_k and --intertopk_margin must be 0 or more (0 disables "
                              "the inter-top-k penalty)")
        aamsoftmax.check_margin_curriculum(aam_initial_margin, aam_curriculum_epochs, aam_ramp_epochs,
                                           "wespeaker: 0.0")
        if aam_ramp_shape not in ("linear", "exp"):
            raise OptionError(f"--aam_ramp_shape '{aam_ramp_shape}': choose linear or exp")
        self.num_classes = nClasses
        self.k = subcenter_k
        self.top_k = penalised_classes(intertopk_k, nClasses)
        self.final_margin = margin
        self.initial_margin = margin if aam_initial_margin is None else aam_initial_margin
        self.curriculum_epochs = aam_curriculum_epochs
        self.ramp_epochs = aam_ramp_epochs
        self.ramp_shape = aam_ramp_shape
        self.final_penalty = intertopk_margin
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(nClasses * subcenter_k, nOut))
        nn.init.xavier_normal_(self.weight, gain=1)
        self.on_epoch_start(1)

    def margin_at(self, epoch):
        progress = held_then_ramped(epoch, 0.0, 1.0, self.curriculum_epochs, self.ramp_epochs)
        ratio = ramp_ratio(progress, self.ramp_shape)
        return self.initial_margin + (self.final_margin - self.initial_margin) * ratio

    def penalty_at(self, epoch):
        """The inter-top-k margin m' of `epoch`: --intertopk_margin scaled like the margin."""
        if self.final_margin == 0:
            return self.final_penalty
        return self.final_penalty * self.margin_at(epoch) / self.final_margin

    def on_epoch_start(self, epoch):
        self.margin = self.margin_at(epoch)
        self.penalty = self.penalty_at(epoch)

    def class_cosines(self, x):
        """N x nClasses: each class's largest sub-centre cosine."""
        cosine = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T
        if self.k == 1:
            return cosine
        return cosine.view(x.shape[0], self.num_classes, self.k).amax(dim=2)

    def forward(self, x, label=None):
        x, label = flatten_labelled(x, label)
        cosine = self.class_cosines(x)
        target = additive_angular_target(cosine.gather(1, label[:, None]), self.margin)
        logits = cosine
        if self.top_k > 0 and self.penalty > 0:
            others = cosine.detach().scatter(1, label[:, None], -math.inf)
            hardest = others.topk(self.top_k, dim=1).indices           # never the target
            cos_j = cosine.gather(1, hardest)
            mp = self.penalty
            logits = logits.scatter(1, hardest, cos_j * math.cos(mp) + sine_of(cos_j) * math.sin(mp))
        logits = self.scale * logits.scatter(1, label[:, None], target)
        return F.cross_entropy(logits, label), top1_accuracy(cosine, label)
