"""Class-level circle loss with adaptive margins (Sun et al. 2020, "Circle loss: a unified
perspective of pair similarity optimization", with class-level labels; Xiao et al. 2021,
"Adaptive margin circle loss for speaker verification", sec. 3, eqs. 5-8).

With s_p = cos(x, w_y) and s_n = cos(x, w_j), j != y, the logits of the softmax
cross-entropy are
    target  s * alpha_p * (s_p - Delta_p),   alpha_p = [O_p - s_p]_+
    others  s * alpha_n * (s_n - Delta_n),   alpha_n = [s_n - O_n]_+
with O_p = 1 + m, O_n = -m, Delta_p = 1 - m, Delta_n = m, i.e. s * (m^2 - (1 - s_p)^2) and
s * (s_n^2 - m^2) (Xiao et al. eq. 6) while s_n >= -m. Xiao et al. write alpha_n = s_n + O_n,
a sign slip: only s_n - O_n gives their eq. 6. The paper's recipe: s = 60, m = 0.40.

By default the self-paced weights alpha are constants in back-propagation (stop-gradient),
so that the gradient on each similarity is scaled by its alpha as Sun et al. describe;
Xiao et al.'s gradients (eq. 7) differentiate through them instead
(--no-circle_detach_weights). The loss value is the same either way.

Adaptive margins, both driven by the epoch so that a resumed run behaves identically:
- stage-based (sec. 3.2): --circle_stage_margins 0.40 0.35 0.32 with stages starting at
  --circle_stage_epochs (Table 1's best row);
- chunk-based (sec. 3.3, eq. 8): m = (1 - lambda (L - L_min) / (L_max - L_min)) m0, with the
  batch's crop length L drawn per step from the stage's [L_min, L_max]
  (--circle_chunk_intervals 200-400 300-500 400-600 as in sec. 4.2, --circle_chunk_lambda).
The crop-length intervals apply whenever they are set (sec. 4.2 trains every system that
way); view_frames draws L for the sampler and on_batch_start tells the objective.

Where the paper is silent:
- stage epochs: stages change "when the learning rate drops" under a plateau schedule, at
  epochs the paper does not report. Epoch-driven stages keep resumes deterministic; set them
  to the epochs where the training log shows the learning-rate drops.
- lambda: not reported. We suggest 0.2, which spans m0 ... 0.8 m0 (0.40 ... 0.32), the same
  range as the best stage-based schedule.
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from loss._objective import Needs, Objective, flatten_labelled, top1_accuracy
from loss._curriculum import check_stage_starts, parse_intervals, parse_list, stage_of
from speakernet.core.errors import OptionError

# Defaults of generic options when the user sets them neither in YAML nor on the command line
# (options.parse_options): Xiao et al. 2021, sec. 4 ("As to circle loss, s is set to 60") and
# Table 1 (m = 0.40 is the best fixed margin), not the generic --margin 0.1 --scale 30.
OPTION_DEFAULTS = {"margin": 0.4, "scale": 60.0}


def add_arguments(parser):
    parser.add_argument("--circle_stage_epochs", type=int, nargs="*", default=[],
                        help="first epochs of training stages 2, 3, ... (e.g. 41 61); stage 1 "
                             "starts at epoch 1. Xiao et al. 2021 switch stages at the "
                             "learning-rate drops, at epochs they do not report")
    parser.add_argument("--circle_stage_margins", type=float, nargs="*", default=[],
                        help="stage-based margin: one margin per stage (Xiao et al. 2021 Table 1: "
                             "0.40 0.35 0.32); none: --margin throughout")
    parser.add_argument("--circle_chunk_intervals", type=str, nargs="*", default=[],
                        help="crop length L in frames, drawn per batch from each stage's interval "
                             "low-high (Xiao et al. 2021 sec. 4.2: 200-400 300-500 400-600); "
                             "none: fixed --max_frames crops")
    parser.add_argument("--circle_chunk_lambda", type=float, default=0.0,
                        help="chunk-based margin lambda of eq. 8 (not given in the paper; 0.2 "
                             "spans 0.40..0.32 from m0 0.40); 0 disables it")
    parser.add_argument("--circle_detach_weights", action=argparse.BooleanOptionalAction,
                        default=True, help="treat alpha_p, alpha_n as constants in "
                                           "back-propagation (Sun et al. 2020); --no-... "
                                           "differentiates through them (Xiao et al. eq. 7)")


class LossFunction(Objective):
    needs = Needs(classifier=True)
    test_normalize = True

    def __init__(self, nOut, nClasses, margin=0.4, scale=60.0, nPerSpeaker=1,
                 circle_stage_epochs=(), circle_stage_margins=(), circle_chunk_intervals=(),
                 circle_chunk_lambda=0.0, circle_detach_weights=True, **kwargs):
        super().__init__()
        self.stage_starts = parse_list(circle_stage_epochs, int, "circle_stage_epochs")
        check_stage_starts(self.stage_starts, "circle_stage_epochs")
        stages = len(self.stage_starts) + 1
        self.margins = self._per_stage(parse_list(circle_stage_margins, float, "circle_stage_margins")
                                       or [margin], stages, "circle_stage_margins")
        intervals = parse_intervals(circle_chunk_intervals, "circle_chunk_intervals")
        self.intervals = self._per_stage(intervals, stages, "circle_chunk_intervals") if intervals else []
        if not 0.0 <= circle_chunk_lambda <= 1.0:
            raise OptionError(f"--circle_chunk_lambda {circle_chunk_lambda}: must lie in [0, 1] "
                              f"(1 makes the margin 0 at the longest crops)")
        if circle_chunk_lambda and not self.intervals:
            raise OptionError("--circle_chunk_lambda needs --circle_chunk_intervals "
                              "(e.g. 200-400 300-500 400-600): the margin depends on the crop length")
        self.chunk_lambda = circle_chunk_lambda
        self.detach_weights = circle_detach_weights
        self.scale = scale
        self.views = nPerSpeaker
        self.weight = nn.Parameter(torch.empty(nClasses, nOut))
        nn.init.xavier_normal_(self.weight, gain=1)
        self.batch_frames = None
        self.on_epoch_start(1)

    @staticmethod
    def _per_stage(values, stages, option):
        if len(values) == 1:
            return values * stages
        if len(values) != stages:
            raise OptionError(f"--{option} gives {len(values)} values for {stages} stages "
                              f"(--circle_stage_epochs starts {stages - 1} more); give 1 or {stages}")
        return values

    def stage_at(self, epoch):
        return stage_of(epoch, self.stage_starts)

    def on_epoch_start(self, epoch):
        self.stage = self.stage_at(epoch)

    def view_frames(self, epoch, rng):
        """One crop length L for all views of a batch, drawn from the stage's interval."""
        if not self.intervals:
            return None                      # --max_frames for every view
        low, high = self.intervals[self.stage_at(epoch)]
        return (int(rng.integers(low, high + 1)),) * self.views

    def on_batch_start(self, frames):
        self.batch_frames = tuple(frames)

    def margin_for(self, frames=None):
        """Margin of the current stage, shrunk for long crops by the chunk-based rule (eq. 8)."""
        m0 = self.margins[self.stage]
        if not self.chunk_lambda or frames is None:
            return m0
        low, high = self.intervals[self.stage]
        position = min(max((frames - low) / (high - low), 0.0), 1.0)
        return (1.0 - self.chunk_lambda * position) * m0

    def _row_margins(self, views, rows, like):
        frames = self.batch_frames
        if frames is None:
            frames = (None,) * views
        elif len(frames) != views:
            raise ValueError(f"on_batch_start gave {len(frames)} crop lengths for {views} views")
        per_view = torch.tensor([self.margin_for(f) for f in frames], dtype=like.dtype,
                                device=like.device)
        return per_view.repeat(rows // views)[:, None]          # row n*V + v has view v

    def forward(self, x, label=None):
        views = x.size(1) if x.dim() == 3 else 1
        x, label = flatten_labelled(x, label)
        cosine = F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T
        # The quadratic logits are scaled by s = 60: keep them out of bf16/fp16.
        cosine = cosine.to(torch.promote_types(cosine.dtype, torch.float32))
        m = self._row_margins(views, cosine.size(0), cosine)
        target = F.one_hot(label, cosine.size(1)).bool()
        alpha = torch.where(target, 1.0 + m - cosine, cosine + m).clamp(min=0.0)
        if self.detach_weights:
            alpha = alpha.detach()
        delta = torch.where(target, 1.0 - m, m)
        logits = self.scale * alpha * (cosine - delta)
        return F.cross_entropy(logits, label), top1_accuracy(cosine, label)
