"""SpecAugment (Park et al. 2019) at the end of every encoder's front end, with its options.

The masks are drawn per sample on the training device and applied only in training mode;
`attach_spec_augment` gives an encoder's front end (models/_frontends.FrontEnd) the SpecAugment the
options ask for; the trainer calls it once for the model it trains. It holds no parameters, so checkpoints are the same with and without it.
"""
import argparse
import logging

import torch
import torch.nn as nn

from speakernet.core.errors import UserError

log = logging.getLogger(__name__)

# Masks of each kind per sample: Park et al. 2019 use at most 2; each mask costs a batch x
# masks x size comparison, so a count like 10**9 would exhaust memory.
MAX_MASKS = 100
# (option, value, size) of the widths already reported as wider than the features.
_reported_clamps = set()


def add_arguments(parser):
    """SpecAugment's options (every encoder's front end applies it)."""
    # The papers train without SpecAugment; these defaults are wespeaker's recipe values
    # (spec_aug_args of its VoxCeleb configs: one mask of each kind, up to 10 frames and 8 bins,
    # on 60% of the samples); Park et al. 2019 (LibriSpeech basic policy) use 1 mask of up to
    # 27 of 80 mel bins and 1 of up to 100 frames on every sample.
    g = parser.add_argument_group("SpecAugment (--specaugment), in the encoder's front end")
    g.add_argument("--specaugment", action=argparse.BooleanOptionalAction, default=False,
                   help="mask random time spans and frequency bands of each training sample's "
                        "features (never at evaluation)")
    g.add_argument("--specaug_time_masks", type=int, default=1, help="time masks per sample")
    g.add_argument("--specaug_freq_masks", type=int, default=1, help="frequency masks per sample")
    g.add_argument("--specaug_max_time", type=int, default=10,
                   help="widest time mask, in 10 ms frames (width drawn from 1..this)")
    g.add_argument("--specaug_max_freq", type=int, default=8,
                   help="widest frequency mask, in feature bins (mel bands, spectrogram bins or MFCCs)")
    g.add_argument("--specaug_prob", type=float, default=0.6, help="share of samples that get masks")


class SpecAugment(nn.Module):
    """Per-sample time and frequency masking of B x bins x frames features (Park et al. 2019).

    Each sample, with probability `prob`, gets `freq_masks` bands of 1..`max_freq` bins and
    `time_masks` spans of 1..`max_time` frames set to 0, the mean of the instance-normalised
    features. Masks lie wholly inside the features and may overlap. Drawn with tensor
    comparisons on the features' device from torch's generator (reseeded every epoch), so a
    batch costs a few small kernels and no Python loop over samples. Eval mode passes through.
    """

    def __init__(self, time_masks=1, freq_masks=1, max_time=10, max_freq=8, prob=0.6):
        super().__init__()
        self.time_masks, self.freq_masks = time_masks, freq_masks
        self.max_time, self.max_freq = max_time, max_freq
        self.prob = prob

    @staticmethod
    def _bands(batch, count, max_width, size, device):
        """B x size boolean: `count` random bands of 1..max_width per row, inside [0, size)."""
        if count == 0 or max_width == 0:
            return torch.zeros(batch, size, dtype=torch.bool, device=device)
        top = min(max_width, size)
        width = 1 + (torch.rand(batch, count, 1, device=device) * top).long()
        start = (torch.rand(batch, count, 1, device=device) * (size - width + 1)).long()
        position = torch.arange(size, device=device)
        return ((position >= start) & (position < start + width)).any(dim=1)

    def draw_masks(self, batch, bins, frames, device):
        """(B x bins frequency mask, B x frames time mask); rows not augmented are all False."""
        chosen = torch.rand(batch, 1, device=device) < self.prob
        freq = self._bands(batch, self.freq_masks, self.max_freq, bins, device) & chosen
        time = self._bands(batch, self.time_masks, self.max_time, frames, device) & chosen
        return freq, time

    def forward(self, feats):
        if not self.training:
            return feats
        _report_clamp("specaug_max_freq", self.max_freq, feats.shape[1], "feature bins")
        _report_clamp("specaug_max_time", self.max_time, feats.shape[2], "frames of the training crops")
        freq, time = self.draw_masks(feats.shape[0], feats.shape[1], feats.shape[2], feats.device)
        return feats.masked_fill(freq.unsqueeze(2) | time.unsqueeze(1), 0.0)

    def extra_repr(self):
        return (f"time_masks={self.time_masks}, max_time={self.max_time}, freq_masks={self.freq_masks}, "
                f"max_freq={self.max_freq}, prob={self.prob}")


def _report_clamp(option, width, size, what):
    """Warn, once per process for each value and size, that masks of `width` are cut to `size`."""
    if width > size and (option, width, size) not in _reported_clamps:
        _reported_clamps.add((option, width, size))
        log.warning("--%s %d is more than the %d %s; using %d", option, width, size, what, size)


def spec_augment_from_options(specaugment=False, specaug_time_masks=1, specaug_freq_masks=1,
                              specaug_max_time=10, specaug_max_freq=8, specaug_prob=0.6, **_):
    """A SpecAugment for --specaugment (the options in augment.add_arguments), else None."""
    if not specaugment:
        return None
    counts = {"specaug_time_masks": specaug_time_masks, "specaug_freq_masks": specaug_freq_masks,
              "specaug_max_time": specaug_max_time, "specaug_max_freq": specaug_max_freq}
    for name, value in counts.items():
        if value < 0:
            raise UserError(f"--{name} must be 0 or more, got {value}")
    for name in ("specaug_time_masks", "specaug_freq_masks"):
        if counts[name] > MAX_MASKS:
            raise UserError(f"--{name} must be at most {MAX_MASKS} (masks per sample; Park et al. "
                            f"2019 use 1 or 2), got {counts[name]}")
    if not 0 <= specaug_prob <= 1:
        raise UserError(f"--specaug_prob must be between 0 and 1, got {specaug_prob}")
    return SpecAugment(time_masks=specaug_time_masks, freq_masks=specaug_freq_masks,
                       max_time=specaug_max_time, max_freq=specaug_max_freq, prob=specaug_prob)


def attach_spec_augment(encoder, **options):
    """Give the encoder's front end (`encoder.features`, a models._frontends.FrontEnd) the
    SpecAugment the options ask for: the trainer calls this once for the model it trains, so no
    MainModel handles it. It holds no parameters: checkpoints are the same with and without."""
    spec_augment = spec_augment_from_options(**options)
    if spec_augment is None:
        return encoder
    if not hasattr(getattr(encoder, "features", None), "spec_augment"):
        raise UserError(f"--specaugment masks the features of a front end of models/_frontends.py, which "
                        f"{type(encoder).__name__} does not use; drop --specaugment")
    encoder.features.spec_augment = spec_augment
    return encoder
