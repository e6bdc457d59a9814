"""Softmax + angular prototypical (voxceleb_trainer's softmaxproto): the sum of the softmax
cross-entropy over training speakers (Chung et al. 2020, eq. 1, on every view) and the
angular prototypical loss (eq. 13 with eq. 8) on the same N x M batch.

Submodules are named 'softmax' and 'angleproto' so the state dict ('softmax.fc.*',
'angleproto.w', 'angleproto.b') matches voxceleb_trainer's checkpoints.
"""

from loss._objective import Needs, Objective, require_views
from loss.angleproto import LossFunction as AngularPrototypical
from loss.softmax import LossFunction as Softmax


class LossFunction(Objective):
    needs = Needs(min_views=2, classifier=True)
    test_normalize = True

    def __init__(self, nOut, nClasses, **kwargs):
        super().__init__()
        self.softmax = Softmax(nOut=nOut, nClasses=nClasses)
        self.angleproto = AngularPrototypical()

    def forward(self, x, label=None):
        require_views(x, "softmaxproto")
        softmax_loss, accuracy = self.softmax(x, label)
        prototypical_loss, _ = self.angleproto(x, None)
        return softmax_loss + prototypical_loss, accuracy
