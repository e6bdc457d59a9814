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
import torch
import torch.nn as nn
import torch.nn.functional as F

from loss._objective import Needs, Objective, additive_angular_target, flatten_labelled, top1_accuracy
from loss._curriculum import held_then_ramped
from speakernet.core.errors import OptionError


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


def check_margin_curriculum(initial_margin, curriculum_epochs, ramp_epochs, usual_initial):
    """The options add_arguments declares; `usual_initial` names the usual initial margin
    (e.g. 'paper: 0.1') in the message of a curriculum without one."""
    if curriculum_epochs < 0 or ramp_epochs < 0:
        raise OptionError("--aam_curriculum_epochs and --aam_ramp_epochs must be 0 or more")
    if curriculum_epochs > 0 and initial_margin is None:
        raise OptionError(f"--aam_curriculum_epochs needs --aam_initial_margin ({usual_initial})")


class LossFunction(Objective):
    needs = Needs(classifier=True)
    test_normalize = True

    def __init__(self, nOut, nClasses, margin=0.2, scale=30.0, aam_initial_margin=None,
                 aam_curriculum_epochs=0, aam_ramp_epochs=0, **kwargs):
        super().__init__()
        check_margin_curriculum(aam_initial_margin, aam_curriculum_epochs, aam_ramp_epochs, "paper: 0.1")
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
        target = additive_angular_target(cosine.gather(1, label[:, None]), self.margin)
        logits = self.scale * cosine.scatter(1, label[:, None], target)
        return F.cross_entropy(logits, label), top1_accuracy(cosine, label)
