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
m = 1 - (1 - m0)(1 + cos(pi p)) / 2, p the share of the run done (RunContext.progress: epochs
done plus this epoch's batches over its planned steps, so it moves every iteration, as in
DINO, and a resumed run gets the same values), from m0 = 0.996 towards 1 (DINO's cosine
schedule; the paper gives none of its own). The teacher's and the centre's updates happen in
on_step_end, so a step skipped for a non-finite loss changes neither.
DINO also freezes the last layer's weights in the first epoch (--dino_freeze_last_layer 1).

Stabilisers that every speaker DINO recipe uses, though the paper's text does not name them:
- Gradient clipping (on_after_backward): each trained parameter's gradient is scaled to norm
  at most --dino_clip_grad (DINO's clip_gradients, per parameter, 3.0 in DINO main_dino.py and
  in 3D-Speaker's RDINO egs/voxceleb/sv-rdino/conf/rdino.yaml: clip_grad 3.0).
- Teacher-temperature warm-up: tau_t rises linearly from --dino_warmup_teacher_temp to
  --dino_teacher_temp over --dino_warmup_teacher_temp_epochs epochs, then stays (DINO's
  teacher_temp_schedule; RDINO: 0.04 -> 0.07 over 30 epochs). Default 0 epochs: the paper's
  fixed 0.04.
- Learning-rate warm-up is the scheduler's: --scheduler warmup_exp --warmup_decay cosine is
  DINO's linear warm-up then cosine decay, per iteration (RDINO: warmup_epochs 20).

Diagnostics (logged at the end of each epoch, from the epoch's batches): the teacher
targets' entropy (ln K when uniform: collapse to uniformity; 0: collapse to one prototype),
KL(teacher || student) (near 0 with a high entropy: both collapsed to uniform), and the
effective rank (exp of the entropy of the normalised singular values) of the student's
embeddings of the last batch (1: every utterance maps to one direction).

Metric: how often the student's view and the teacher's global view pick the same prototype,
in percent; the teacher's pick is that of its target, i.e. of the centred output t - c (the raw
output's argmax is mostly the component shared by the whole batch, which the centre removes:
it reads near 100% while the targets are almost uniform and nothing is learnt).
"""
import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from loss._objective import Needs, Objective, RunContext
from loss._ssl_common import MomentumCopy, StudentLink, all_reduce_mean, full_precision, views_at
from loss._ssl_curricula import Curricula, CurriculumHooks
from loss._ssl_curricula import add_arguments as add_curriculum_arguments
from speakernet.core.errors import OptionError

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
    add("--dino_clip_grad", type=float, default=3.0,
        help="DINO: largest gradient norm of each parameter (DINO and RDINO: 3.0); 0: no clipping")
    add("--dino_warmup_teacher_temp", type=float, default=0.04,
        help="DINO: teacher temperature at epoch 1, raised linearly to --dino_teacher_temp "
             "(DINO and RDINO: 0.04)")
    add("--dino_warmup_teacher_temp_epochs", type=int, default=0,
        help="DINO: epochs of teacher-temperature warm-up (DINO default 0, RDINO 30)")
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


def effective_rank(embeddings):
    """exp(entropy of the normalised singular values) of N x D embeddings (Roy & Vetterli 2007)."""
    values = torch.linalg.svdvals(embeddings.float() - embeddings.float().mean(0))
    shares = values / values.sum().clamp(min=1e-12)
    return float(torch.exp(-(shares * shares.clamp(min=1e-12).log()).sum()))


class DiagnosticTotals:
    """Running means of the collapse diagnostics over an epoch's batches."""

    def __init__(self):
        self.batches, self.entropy, self.kl, self.rank = 0, 0.0, 0.0, float("nan")

    def add(self, student, teacher, center, student_temp, teacher_temp, embeddings):
        targets = F.softmax((teacher - center) / teacher_temp, dim=-1)          # N x G x K
        log_targets = F.log_softmax((teacher - center) / teacher_temp, dim=-1)
        log_probs = F.log_softmax(student[:, :teacher.size(1)] / student_temp, dim=-1)
        self.entropy += float(-(targets * log_targets).sum(-1).mean())
        self.kl += float((targets * (log_targets - log_probs)).sum(-1).mean())
        self.rank = effective_rank(embeddings.flatten(0, 1))
        self.batches += 1

    def summary(self, prototypes):
        if not self.batches:
            return None
        return {"dino_teacher_entropy": self.entropy / self.batches,
                "dino_uniform_entropy": math.log(prototypes),
                "dino_kl_teacher_student": self.kl / self.batches, "dino_embedding_rank": self.rank}


class LossFunction(CurriculumHooks, Objective):
    test_normalize = True
    takes_views = True           # the teacher embeds the global crops itself

    def __init__(self, nOut=192, max_epoch=80, dino_global_frames=300, dino_local_frames=200,
                 dino_global_views=2, dino_local_views=5, dino_out_dim=65536, dino_hidden_dim=2048,
                 dino_bottleneck_dim=256, dino_student_temp=0.1, dino_teacher_temp=0.04,
                 dino_center_momentum=0.9, dino_teacher_momentum=0.996, dino_freeze_last_layer=1,
                 dino_head_bn=0, dino_clip_grad=3.0, dino_warmup_teacher_temp=0.04,
                 dino_warmup_teacher_temp_epochs=0, distributed=False, **kwargs):
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
        if min(dino_student_temp, dino_teacher_temp, dino_warmup_teacher_temp) <= 0:
            raise OptionError("--dino_student_temp, --dino_teacher_temp and "
                              "--dino_warmup_teacher_temp must be positive")
        if dino_clip_grad < 0 or dino_warmup_teacher_temp_epochs < 0:
            raise OptionError("--dino_clip_grad and --dino_warmup_teacher_temp_epochs must be 0 or more")
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
        self.warmup_teacher_temp = dino_warmup_teacher_temp
        self.warmup_temp_epochs = dino_warmup_teacher_temp_epochs
        self.clip_grad = dino_clip_grad
        self.run = RunContext(max_epoch=max_epoch)      # the trainer's, from on_train_start
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
        self._diagnostics = DiagnosticTotals()

    # ------------------------------------------------------------------ protocol hooks
    def view_frames(self, epoch, rng):
        return (self.global_frames,) * self.global_views + (self.local_frames,) * self.local_views

    def attach_encoder(self, encoder):
        self.student.set(encoder)
        self.teacher_encoder = MomentumCopy(encoder)

    def sync_teacher(self):
        self.teacher_encoder.sync(self.student.get("dino"))
        self.teacher_head.sync(self.student_head)

    def on_train_start(self, run):
        self.run = run

    def teacher_momentum(self, progress):
        return 1.0 - (1.0 - self.base_momentum) * (1.0 + math.cos(math.pi * progress)) / 2.0

    def teacher_temperature(self, epoch):
        if epoch > self.warmup_temp_epochs:
            return self.teacher_temp
        share = (epoch - 1) / max(self.warmup_temp_epochs - 1, 1)
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * share

    def on_epoch_start(self, epoch):
        self._diagnostics = DiagnosticTotals()
        self.epoch = self.run.epoch = epoch
        self.sync_teacher()
        self.student_head.trainable_last_layer(epoch > self.freeze_epochs)
        self.log_curricula(epoch)

    def on_epoch_end(self, epoch):
        return self._diagnostics.summary(self.student_head.last_layer.out_features)

    @torch.no_grad()
    def on_after_backward(self, parameters):
        if self.clip_grad:
            for p in parameters:
                norm = p.grad.norm()
                if norm > self.clip_grad:
                    p.grad.mul_(self.clip_grad / (norm + 1e-6))

    @torch.no_grad()
    def on_step_end(self, step):
        momentum = self.teacher_momentum(self.run.progress())
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
        teacher_temp = self.teacher_temperature(self.epoch)
        loss = dino_loss(student, teacher, self.center, self.student_temp, teacher_temp)
        self._pending_center = teacher.mean(dim=(0, 1)).unsqueeze(0)
        with torch.no_grad():
            metric = agreement(student, teacher, self.center)
            self._diagnostics.add(student, teacher, self.center, self.student_temp, teacher_temp, x)
        return loss, metric

