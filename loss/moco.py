"""Momentum contrast for speaker representations, MoCoVox (Lee et al., "Momentum contrast
speaker representation learning", sec. 2.2), after MoCo (He et al. 2020).

Two crops of one utterance (paper: 1.8 s, both augmented) form a positive pair; labels are
never used. The trainer's encoder is the query encoder f_q and embeds both crops; this
objective keeps
  - the key encoder f_k: a copy of the query encoder made in attach_encoder, never trained
    by gradients, moved after every optimizer step by theta_k <- m theta_k + (1 - m) theta_q
    (eq. 2; m = 0.999, MoCo's, as MoCoVox follows MoCo's training process);
  - the dictionary: a FIFO queue of the last --moco_queue_size keys (paper: 65,536), a
    buffer. Only keys already enqueued are used as negatives: the queue starts empty rather
    than with MoCo's random vectors.
Both are buffers/submodules of the objective, so checkpoints hold them and a resumed run
continues with the same key encoder and dictionary.

One step: q = f_q(crop 1) (from the trainer), k+ = f_k(crop 2) (no gradient); InfoNCE
(eq. 1) over [k+, queue]:  L_q = -log exp(s(q, k+)) / (exp(s(q, k+)) + sum_queue exp(s(q, k)))
with the pretext similarity s (--moco_pretext, the paper's Table 2):
  insdis  instance discrimination: s = cos(q, k) / tau (tau = 0.07; the default);
  ap      angular prototypical: s = w cos(q, k) + b, learnable w > 0 and b (init 10, -5);
  p       prototypical: s = -||q - k||^2 on unnormalised embeddings (the queue then keeps
          unnormalised keys).
With one crop per side, each "prototype" is a single key. After the optimizer step
(on_step_end) the key encoder is updated and the batch's keys are enqueued; MoCo does both
inside the forward pass, which is the same sequence, except that here a step skipped for a
non-finite loss changes neither. --moco_symmetric also uses crop 2 as query against crop 1's
key and averages the two losses (MoCo v3 style; not the paper's, off by default). Under
--distributed the keys of all ranks are enqueued. MoCo's shuffled batch norm is not
implemented: on one device the query and key batches are normalised separately, and the
positive key's batch statistics may still serve as a shortcut (see MoCo sec. 3.3).
Metric: top-1 accuracy of picking k+ among the candidates, in percent.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from loss._objective import Needs, Objective, require_views, top1_accuracy
from loss._ssl_common import MomentumCopy, StudentLink, all_gather_rows, full_precision, views_at
from loss._ssl_curricula import Curricula, CurriculumHooks
from loss._ssl_curricula import add_arguments as add_curriculum_arguments
from speakernet.core.errors import OptionError

PRETEXTS = ("insdis", "ap", "p")


def add_arguments(parser):
    parser.add_argument("--moco_queue_size", type=int, default=65536,
                        help="MoCo dictionary size: keys kept as negatives (MoCoVox: 65,536)")
    parser.add_argument("--moco_momentum", type=float, default=0.999,
                        help="MoCo key-encoder momentum m of theta_k <- m theta_k + (1-m) theta_q "
                             "(MoCo: 0.999)")
    parser.add_argument("--moco_temperature", type=float, default=0.07,
                        help="MoCo InfoNCE temperature tau (MoCoVox: 0.07)")
    parser.add_argument("--moco_pretext", type=str, default="insdis", choices=PRETEXTS,
                        help="MoCo similarity (MoCoVox Table 2): insdis = cosine / tau, ap = angular "
                             "prototypical, p = prototypical (negative squared distance)")
    parser.add_argument("--moco_symmetric", action="store_true", default=False,
                        help="MoCo: also use the second crop as query against the first crop's key")
    add_curriculum_arguments(parser)


class LossFunction(CurriculumHooks, Objective):
    needs = Needs(views=2, min_views=2, labels=False)
    test_normalize = True
    takes_views = True           # the key encoder embeds the (augmented) waveforms itself

    def __init__(self, nOut=512, moco_queue_size=65536, moco_momentum=0.999, moco_temperature=0.07,
                 moco_pretext="insdis", moco_symmetric=False, init_w=10.0, init_b=-5.0, **kwargs):
        super().__init__()
        if moco_queue_size < 1:
            raise OptionError(f"--moco_queue_size must be at least 1, got {moco_queue_size}")
        if not 0.0 <= moco_momentum <= 1.0:
            raise OptionError(f"--moco_momentum must lie in [0, 1], got {moco_momentum}")
        if moco_temperature <= 0:
            raise OptionError(f"--moco_temperature must be positive, got {moco_temperature}")
        if moco_pretext not in PRETEXTS:
            raise OptionError(f"--moco_pretext '{moco_pretext}': choose one of {', '.join(PRETEXTS)}")
        self.momentum = moco_momentum
        self.temperature = moco_temperature
        self.pretext = moco_pretext
        self.symmetric = moco_symmetric
        if moco_pretext == "ap":
            self.scale = nn.ParameterDict({"w": nn.Parameter(torch.tensor(init_w)),
                                           "b": nn.Parameter(torch.tensor(init_b))})
        self.register_buffer("queue", torch.zeros(moco_queue_size, nOut))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))     # next slot
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # keys held
        self.key_encoder = None          # built by attach_encoder
        self.student = StudentLink()
        self.curricula = Curricula(**kwargs)
        self._pending = None             # keys of the last forward, enqueued after the step

    # ------------------------------------------------------------------ protocol hooks
    def attach_encoder(self, encoder):
        self.student.set(encoder)
        self.key_encoder = MomentumCopy(encoder)

    def on_epoch_start(self, epoch):
        self.key_encoder.sync(self.student.get("moco"))
        self.log_curricula(epoch)

    def on_step_end(self, step):
        self.key_encoder.update(self.student.get("moco"), self.momentum)
        if self._pending is not None:
            self.enqueue(all_gather_rows(self._pending))
            self._pending = None

    # ------------------------------------------------------------------ dictionary
    @torch.no_grad()
    def enqueue(self, keys):
        """Write `keys` over the oldest entries (FIFO); more keys than slots keeps the newest."""
        size = self.queue.size(0)
        keys = keys.detach().to(self.queue.dtype)[-size:]
        slots = (self.queue_ptr + torch.arange(len(keys), device=self.queue.device)) % size
        self.queue[slots] = keys
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)
        self.queue_filled.copy_(torch.clamp(self.queue_filled + len(keys), max=size))

    def negatives(self):
        """The keys held, oldest first (for inspection; the loss takes them in slot order)."""
        filled, ptr = int(self.queue_filled), int(self.queue_ptr)
        if filled < self.queue.size(0):
            return self.queue[:filled]
        return torch.cat([self.queue[ptr:], self.queue[:ptr]])

    # ------------------------------------------------------------------ loss
    def store(self, k):
        """The form a key takes in the queue: unit vectors, raw for the prototypical pretext."""
        return k if self.pretext == "p" else F.normalize(k, dim=-1)

    def logits(self, q, k, queue):
        """N x (1 + queue) similarities of each query to its key (column 0) and the queue."""
        if self.pretext == "p":
            positive = -(q - k).pow(2).sum(-1, keepdim=True)
            negative = -torch.cdist(q, queue).pow(2) if len(queue) else q.new_zeros(len(q), 0)
            return torch.cat([positive, negative], dim=1)
        q = F.normalize(q, dim=-1)
        cos = torch.cat([(q * k).sum(-1, keepdim=True), q @ queue.T], dim=1)
        if self.pretext == "ap":
            return self.scale["w"].clamp(min=1e-6) * cos + self.scale["b"]
        return cos / self.temperature

    def info_nce(self, q, k, queue):
        logits = self.logits(q, k, queue)
        target = torch.zeros(len(q), dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, target), top1_accuracy(logits, target)

    def forward(self, x, label=None, views=None):
        # `label` is never read: self-supervised (the trainer passes None anyway).
        require_views(x, "moco", exactly=2)
        if views is None:
            raise ValueError("moco needs the input views (takes_views): call it through SpeakerNet")
        student = self.student.get("moco")
        self.key_encoder.sync(student)
        x = full_precision(x)
        # The loss does not depend on the order of the negatives: use the slots as they are.
        queue = self.queue[:int(self.queue_filled)].detach()
        order = (1, 0) if self.symmetric else (1,)
        waves = views_at(views, order)                                   # N x len(order) x S
        keys = full_precision(self.key_encoder(waves.flatten(0, 1))).unflatten(0, waves.shape[:2])
        keys = self.store(keys)
        loss, metric = self.info_nce(x[:, 0], keys[:, 0], queue)
        if self.symmetric:
            loss_b, metric_b = self.info_nce(x[:, 1], keys[:, 1], queue)
            loss, metric = (loss + loss_b) / 2, (metric + metric_b) / 2
        self._pending = keys.transpose(0, 1).reshape(-1, keys.size(-1))
        return loss, metric
