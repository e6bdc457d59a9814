"""DINO self-distillation for speaker verification (Heo et al. 2023, "Curriculum learning for
self-supervised speaker verification", sec. 3; Caron et al. 2021, "Emerging properties in
self-supervised vision transformers"), with the paper's curricula (loss._ssl_curricula.py).

Views: each utterance gives --dino_global_views long crops (paper: 2) and --dino_local_views
short crops (paper: 5), all augmented independently; `view_frames` asks the sampler for
(global,)*2 + (local,)*5 frames, which it collates into two runs. The paper gives no crop
lengths: the defaults, 300 and 200 frames, are wespeaker's speaker DINO recipe
(examples/voxceleb/v3/dino: 'num_frms 200 (short) 300 (long)').

Networks: the student is the trainer's encoder followed by a projection head; the teacher is
a copy of both (made in attach_encoder), never trained by gradients. The head is DINO's: a
3-layer MLP (hidden 2048, GELU) to a 256-d bottleneck, L2 normalisation, then a
weight-normalised linear layer without bias to --dino_out_dim prototypes (65,536) whose
norms are fixed to 1 (DINO's norm_last_layer). --dino_head_bn 1 adds batch norm after both
hidden layers (DINO's use_bn_in_head, off by default; on in wespeaker's speaker DINO recipe):
a random encoder's embeddings are nearly collinear (pairwise cosine ~0.98 for Fast ResNet-34 on
the demo corpus), so without it the centred teacher targets start almost uniform. Only the
encoder is evaluated and kept by a fine-tune (the student's: the trainer evaluates
SpeakerNet.encoder; DINO evaluates its teacher).

Loss (eq. 1, DINO eq. 3): for teacher outputs t of the global views and student outputs s of
all views,
    P_t = softmax((t - c) / tau_t),   log P_s = log_softmax(s / tau_s),
    L = mean over the batch and over pairs (global view g, any view v != g) of
        H(P_t(g), P_s(v)) = -sum_k P_t(g)_k log P_s(v)_k,
with tau_s = 0.1 and tau_t = 0.04 (sec. 3). The paper's eq. 1 sums over all v in V; DINO
skips the pair of a global view with itself, and so do we (2 x 7 - 2 = 12 pairs).
Centring: c <- mc c + (1 - mc) mean(t over the batch's global views), mc = 0.9 (DINO); under
--distributed the mean is all-reduced over the ranks, so it is the global batch's and every
rank keeps the same centre (as DINO does).
Teacher: theta_t <- m theta_t + (1 - m) theta_s after every optimizer step, with
m = 1 - (1 - m0)(1 + cos(pi (e - 1) / E)) / 2 for epoch e of E, from m0 = 0.996 towards 1
(DINO's cosine schedule; the paper gives none of its own). DINO evaluates it per iteration;
we hold it per epoch, so it depends on the epoch alone (steps per epoch are not known to
the objective) and a resumed run gets the same values. The teacher's and the centre's
updates happen in on_step_end, so a step skipped for a non-finite loss changes neither.
DINO also freezes the last layer's weights in the first epoch (--dino_freeze_last_layer 1).
Metric: how often the student's view and the teacher's global view pick the same prototype,
in percent; the teacher's pick is that of its target, i.e. of the centred output t - c (the raw
output's argmax is mostly the component shared by the whole batch, which the centre removes:
it reads near 100% while the targets are almost uniform and nothing is learnt).

Not here (the paper's text does not mention them and the trainer has no hook for them):
DINO's gradient clipping (3.0), its learning-rate warm-up, and its teacher-temperature
warm-up.
"""
import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from loss._objective import Needs, Objective
from loss._ssl_common import MomentumCopy, StudentLink, all_reduce_mean, full_precision, views_at
from loss._ssl_curricula import Curricula, CurriculumHooks
from loss._ssl_curricula import add_arguments as add_curriculum_arguments
from speakernet.errors import OptionError

log = logging.getLogger(__name__)


def add_arguments(parser):
    add = parser.add_argument
    add("--dino_global_frames", type=int, default=300,
        help="DINO long (global) crop length in frames (the paper gives none; wespeaker: 300)")
    add("--dino_local_frames", type=int, default=200,
        help="DINO short (local) crop length in frames (the paper gives none; wespeaker: 200)")
    add("--dino_global_views", type=int, default=2, help="DINO global crops per utterance (paper: 2)")
    add("--dino_local_views", type=int, default=5, help="DINO local crops per utterance (paper: 5)")
    add("--dino_out_dim", type=int, default=65536,
        help="DINO prototypes: output size of the projection head (DINO: 65,536)")
    add("--dino_hidden_dim", type=int, default=2048, help="DINO head MLP width (DINO: 2048)")
    add("--dino_bottleneck_dim", type=int, default=256, help="DINO head bottleneck (DINO: 256)")
    add("--dino_head_bn", type=int, default=0,
        help="1 = batch norm after each hidden layer of the DINO head (DINO's --use_bn_in_head, "
             "default off; wespeaker's speaker DINO recipe: on)")
    add("--dino_student_temp", type=float, default=0.1, help="DINO student temperature (paper: 0.1)")
    add("--dino_teacher_temp", type=float, default=0.04, help="DINO teacher temperature (paper: 0.04)")
    add("--dino_center_momentum", type=float, default=0.9, help="DINO centre momentum (DINO: 0.9)")
    add("--dino_teacher_momentum", type=float, default=0.996,
        help="DINO teacher EMA momentum at epoch 1, raised to 1 by the last epoch along a cosine "
             "(DINO: 0.996)")
    add("--dino_freeze_last_layer", type=int, default=1,
        help="DINO: epochs during which the head's last layer is not trained (DINO: 1)")
    add_curriculum_arguments(parser)


class DINOHead(nn.Module):
    """MLP -> L2 normalisation -> weight-normalised linear layer with unit-norm rows."""

    def __init__(self, in_dim, out_dim=65536, hidden_dim=2048, bottleneck_dim=256, use_bn=False):
        super().__init__()
        norm = (lambda: [nn.BatchNorm1d(hidden_dim)]) if use_bn else (lambda: [])
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), *norm(), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim), *norm(), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(False)

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))

    def trainable_last_layer(self, trainable):
        self.last_layer.parametrizations.weight.original1.requires_grad_(trainable)


def agreement(student, teacher, center):
    """Percentage of (global view g, view v != g) pairs where the student's view v and the
    teacher's target for view g (centred output) have the same argmax."""
    picks_t = (teacher - center).argmax(-1)                               # N x G
    picks_s = student.argmax(-1)                                          # N x V
    same = [(picks_s[:, v] == picks_t[:, g]).float().mean()
            for g in range(teacher.size(1)) for v in range(student.size(1)) if v != g]
    return 100.0 * torch.stack(same).mean()


def dino_loss(student, teacher, center, student_temp, teacher_temp):
    """student N x V x K, teacher N x G x K (the first G student views are the same crops)."""
    targets = F.softmax((teacher - center) / teacher_temp, dim=-1)
    log_probs = F.log_softmax(student / student_temp, dim=-1)
    total, terms = 0.0, 0
    for g in range(teacher.size(1)):
        for v in range(student.size(1)):
            if v == g:
                continue
            total = total + (-targets[:, g] * log_probs[:, v]).sum(-1).mean()
            terms += 1
    return total / terms


class LossFunction(CurriculumHooks, Objective):
    test_normalize = True
    takes_views = True           # the teacher embeds the global crops itself

    def __init__(self, nOut=192, max_epoch=80, dino_global_frames=300, dino_local_frames=200,
                 dino_global_views=2, dino_local_views=5, dino_out_dim=65536, dino_hidden_dim=2048,
                 dino_bottleneck_dim=256, dino_student_temp=0.1, dino_teacher_temp=0.04,
                 dino_center_momentum=0.9, dino_teacher_momentum=0.996, dino_freeze_last_layer=1,
                 dino_head_bn=0, distributed=False, **kwargs):
        super().__init__()
        for name, value in (("dino_global_frames", dino_global_frames),
                            ("dino_local_frames", dino_local_frames),
                            ("dino_global_views", dino_global_views),
                            ("dino_out_dim", dino_out_dim), ("dino_hidden_dim", dino_hidden_dim),
                            ("dino_bottleneck_dim", dino_bottleneck_dim)):
            if value < 1:
                raise OptionError(f"--{name} must be at least 1, got {value}")
        if dino_local_views < 0 or dino_freeze_last_layer < 0:
            raise OptionError("--dino_local_views and --dino_freeze_last_layer must be 0 or more")
        if dino_global_views + dino_local_views < 2:
            raise OptionError("DINO needs at least 2 views per utterance")
        if dino_student_temp <= 0 or dino_teacher_temp <= 0:
            raise OptionError("--dino_student_temp and --dino_teacher_temp must be positive")
        for name, value in (("dino_center_momentum", dino_center_momentum),
                            ("dino_teacher_momentum", dino_teacher_momentum)):
            if not 0.0 <= value <= 1.0:
                raise OptionError(f"--{name} must lie in [0, 1], got {value}")
        if dino_freeze_last_layer and distributed:
            # DistributedDataParallel fixes the set of trained parameters when it is built.
            log.warning("--dino_freeze_last_layer is ignored under --distributed")
            dino_freeze_last_layer = 0
        self.global_views, self.local_views = dino_global_views, dino_local_views
        self.global_frames, self.local_frames = dino_global_frames, dino_local_frames
        self.num_views = dino_global_views + dino_local_views
        self.needs = Needs(views=self.num_views, min_views=self.num_views, labels=False)
        self.student_temp, self.teacher_temp = dino_student_temp, dino_teacher_temp
        self.center_momentum = dino_center_momentum
        self.base_momentum = dino_teacher_momentum
        self.max_epoch = max_epoch
        self.freeze_epochs = dino_freeze_last_layer
        self.student_head = DINOHead(nOut, dino_out_dim, dino_hidden_dim, dino_bottleneck_dim,
                                     use_bn=bool(dino_head_bn))
        self.teacher_head = MomentumCopy(self.student_head)
        self.teacher_encoder = None       # built by attach_encoder
        self.register_buffer("center", torch.zeros(1, dino_out_dim))
        self.student = StudentLink()
        self.curricula = Curricula(**kwargs)
        self.epoch = 1
        self._pending_center = None

    # ------------------------------------------------------------------ protocol hooks
    def view_frames(self, epoch, rng):
        return (self.global_frames,) * self.global_views + (self.local_frames,) * self.local_views

    def attach_encoder(self, encoder):
        self.student.set(encoder)
        self.teacher_encoder = MomentumCopy(encoder)

    def sync_teacher(self):
        self.teacher_encoder.sync(self.student.get("dino"))
        self.teacher_head.sync(self.student_head)

    def teacher_momentum(self, epoch):
        progress = (epoch - 1) / max(self.max_epoch, 1)
        return 1.0 - (1.0 - self.base_momentum) * (1.0 + math.cos(math.pi * min(progress, 1.0))) / 2.0

    def on_epoch_start(self, epoch):
        self.epoch = epoch
        self.sync_teacher()
        self.student_head.trainable_last_layer(epoch > self.freeze_epochs)
        self.log_curricula(epoch)

    @torch.no_grad()
    def on_step_end(self, step):
        momentum = self.teacher_momentum(self.epoch)
        self.teacher_encoder.update(self.student.get("dino"), momentum)
        self.teacher_head.update(self.student_head, momentum)
        if self._pending_center is not None:
            batch_center = all_reduce_mean(self._pending_center)
            self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
            self._pending_center = None

    # ------------------------------------------------------------------ loss
    def teacher_outputs(self, views):
        waves = views_at(views, range(self.global_views))                # N x G x S
        with torch.no_grad():
            emb = self.teacher_encoder(waves.flatten(0, 1))
            out = full_precision(self.teacher_head(emb))
        return out.unflatten(0, waves.shape[:2])

    def forward(self, x, label=None, views=None):
        # `label` is never read: self-supervised (the trainer passes None anyway).
        if x.dim() != 3 or x.size(1) != self.num_views:
            raise ValueError(f"dino needs {self.num_views} views per utterance "
                             f"({self.global_views} global first), got {tuple(x.shape)}")
        if views is None:
            raise ValueError("dino needs the input views (takes_views): call it through SpeakerNet")
        self.sync_teacher()
        student = full_precision(self.student_head(x.flatten(0, 1))).unflatten(0, x.shape[:2])
        teacher = self.teacher_outputs(views)
        loss = dino_loss(student, teacher, self.center, self.student_temp, self.teacher_temp)
        self._pending_center = teacher.mean(dim=(0, 1)).unsqueeze(0)
        with torch.no_grad():
            metric = agreement(student, teacher, self.center)
        return loss, metric

