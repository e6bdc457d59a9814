"""AAM-softmax / ArcFace (Deng et al. 2019; Chung et al. 2020, sec. 2.1, eq. 4), with the
margin curriculum of Chung et al. 2020, sec. 3.3 ("Curriculum" rows of Table 2).

The target logit is s * cos(theta_y + m), the others s * cos(theta_j). Where theta_y + m
would pass pi, cos(theta + m) stops decreasing in theta, so (as in ArcFace) the target logit
falls back to the CosFace-like s * (cos(theta_y) - m sin m) there.

Curriculum: AAM-softmax with m = 0.3 diverges from random initialisation, so the paper
trains with m = 0.1 and switches to m = 0.3 after 100 epochs:
    --margin 0.3 --aam_initial_margin 0.1 --aam_curriculum_epochs 100
(--aam_ramp_epochs N ramps linearly over N epochs instead of switching.)
The weight is stored as 'weight' [nClasses, nOut], voxceleb_trainer's layout.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from loss._objective import Needs, Objective, flatten_labelled, top1_accuracy
from loss._curriculum import held_then_ramped
from speakernet.errors import OptionError


def add_arguments(parser):
    parser.add_argument("--aam_initial_margin", type=float, default=None,
                        help="margin curriculum: margin of the first --aam_curriculum_epochs "
                             "epochs, before --margin applies (Chung et al. 2020 sec. 3.3: 0.1)")
    parser.add_argument("--aam_curriculum_epochs", type=int, default=0,
                        help="margin curriculum: epochs trained with --aam_initial_margin "
                             "(paper: 100); 0 disables the curriculum")
    parser.add_argument("--aam_ramp_epochs", type=int, default=0,
                        help="margin curriculum: 0 switches to --margin at once, N ramps "
                             "linearly to it over N epochs")


class LossFunction(Objective):
    needs = Needs(classifier=True)
    test_normalize = True

    def __init__(self, nOut, nClasses, margin=0.2, scale=30.0, aam_initial_margin=None,
                 aam_curriculum_epochs=0, aam_ramp_epochs=0, **kwargs):
        super().__init__()
        if aam_curriculum_epochs < 0 or aam_ramp_epochs < 0:
            raise OptionError("--aam_curriculum_epochs and --aam_ramp_epochs must be 0 or more")
        if aam_curriculum_epochs > 0 and aam_initial_margin is None:
            raise OptionError("--aam_curriculum_epochs needs --aam_initial_margin (paper: 0.1)")
        self.final_margin = margin
        self.initial_margin = margin if aam_initial_margin is None else aam_initial_margin
        self.curriculum_epochs = aam_curriculum_epochs
        self.ramp_epochs = aam_ramp_epochs
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(nClasses, nOut))
        nn.init.xavier_normal_(self.weight, gain=1)
        self.on_epoch_start(1)

    def margin_at(self, epoch):
        return held_then_ramped(epoch, self.initial_margin, self.final_margin,
                                self.curriculum_epochs, self.ramp_epochs)

    def on_epoch_start(self, epoch):
        self.margin = self.margin_at(epoch)

    def forward(self, x, label=None):
        x, label = flatten_labelled(x, label)
        cosine = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T
        m = self.margin
        cos_y = cosine.gather(1, label[:, None])
        # Clamped away from 0: the derivative of sqrt is infinite there.
        sin_y = (1.0 - cos_y.pow(2)).clamp(min=1e-7).sqrt()
        # theta + m < pi  <=>  cos(theta) > cos(pi - m)
        target = torch.where(cos_y > math.cos(math.pi - m),
                             cos_y * math.cos(m) - sin_y * math.sin(m),
                             cos_y - m * math.sin(m))
        logits = self.scale * cosine.scatter(1, label[:, None], target)
        return F.cross_entropy(logits, label), top1_accuracy(cosine, label)
