"""Acoustic front ends computed inside the encoder, so loaders move raw waveforms only.

Waveforms are float, or int16 samples (packed crops as the loader sends them), which are
scaled by 2^-15 exactly as a float read of the file would give them.

Every front end ends with an optional SpecAugment (`spec_augment`, None unless --specaugment):
time and frequency masks drawn per sample, applied only in training mode.
"""
import argparse

import torch
import torch.nn as nn
import torchaudio

from speakernet.errors import UserError
from speakernet.audio import HOP, SAMPLE_RATE, to_float

WINDOW = 400      # 25 ms at 16 kHz
N_FFT = 512


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


class PreEmphasis(nn.Module):
    """y[t] = x[t] - coef * x[t-1], with the first sample reflected (ResNetSE34V2's input)."""

    def __init__(self, coef=0.97):
        super().__init__()
        self.coef = coef
        # Kept as a buffer named like the reference so its checkpoints load unchanged.
        self.register_buffer("flipped_filter", torch.tensor([[[-coef, 1.0]]]))

    def forward(self, wav):
        padded = nn.functional.pad(wav.unsqueeze(1), (1, 0), mode="reflect")
        return nn.functional.conv1d(padded, self.flipped_filter).squeeze(1)


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
        freq, time = self.draw_masks(feats.shape[0], feats.shape[1], feats.shape[2], feats.device)
        return feats.masked_fill(freq.unsqueeze(2) | time.unsqueeze(1), 0.0)

    def extra_repr(self):
        return (f"time_masks={self.time_masks}, max_time={self.max_time}, freq_masks={self.freq_masks}, "
                f"max_freq={self.max_freq}, prob={self.prob}")


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
    if not 0 <= specaug_prob <= 1:
        raise UserError(f"--specaug_prob must be between 0 and 1, got {specaug_prob}")
    return SpecAugment(time_masks=specaug_time_masks, freq_masks=specaug_freq_masks,
                       max_time=specaug_max_time, max_freq=specaug_max_freq, prob=specaug_prob)


def with_spec_augment(encoder, **options):
    """Give `encoder.features` the SpecAugment the options ask for (every MainModel calls this);
    it holds no parameters, so checkpoints are the same with and without it."""
    encoder.features.spec_augment = spec_augment_from_options(**options)
    return encoder


def _masked(frontend, feats):
    return feats if frontend.spec_augment is None else frontend.spec_augment(feats)


class LogMelFrontend(nn.Module):
    """Waveform (B x samples) -> instance-normalised (log-)mel filterbank (B x n_mels x frames).

    Runs in fp32 and without gradients even under autocast: the features are inputs,
    not something to learn, and half-precision logs of small energies lose the quiet bands.
    """

    def __init__(self, n_mels=40, log_input=True, preemphasis=False,
                 window_fn=torch.hamming_window):
        super().__init__()
        self.log_input = log_input
        self.preemphasis = PreEmphasis() if preemphasis else None
        # window_fn: VGGVox's reference front end uses torchaudio's default Hann window.
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=N_FFT, win_length=WINDOW, hop_length=HOP,
            window_fn=window_fn, n_mels=n_mels)
        self.instancenorm = nn.InstanceNorm1d(n_mels)
        self.spec_augment = None

    def forward(self, wav):
        with torch.no_grad(), torch.autocast(device_type=wav.device.type, enabled=False):
            wav = to_float(wav)
            if self.preemphasis is not None:
                wav = self.preemphasis(wav)
            feats = self.melspec(wav) + 1e-6
            if self.log_input:
                feats = feats.log()
            return _masked(self, self.instancenorm(feats))


class LogSpectrogramFrontend(nn.Module):
    """Waveform (B x samples) -> instance-normalised log magnitude spectrogram (B x 257 x frames).

    The Thin ResNet-34's input (Chung et al. 2020, "In defence of metric learning", sec. 3.1:
    25 ms Hamming window, 10 ms step, 257-dimensional raw spectrograms from a 512-point FFT,
    mean and variance normalised by instance normalisation). Magnitudes, as in [39]; after the
    log and instance norm, power would give the same features. fp32 and no gradients, as above.
    """

    def __init__(self, log_input=True):
        super().__init__()
        self.log_input = log_input
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=N_FFT, win_length=WINDOW, hop_length=HOP, window_fn=torch.hamming_window,
            power=1.0)
        self.instancenorm = nn.InstanceNorm1d(N_FFT // 2 + 1)
        self.spec_augment = None

    def forward(self, wav):
        with torch.no_grad(), torch.autocast(device_type=wav.device.type, enabled=False):
            feats = self.spectrogram(to_float(wav)) + 1e-6
            if self.log_input:
                feats = feats.log()
            return _masked(self, self.instancenorm(feats))


class MFCCFrontend(nn.Module):
    """Waveform (B x samples) -> instance-normalised MFCCs (B x n_mfcc x frames).

    ECAPA-TDNN's input in Desplanques et al. 2020 (80 MFCCs, 25 ms window, 10 ms step). The
    log is always taken (MFCCs are cepstra of log energies), with the same 1e-6 floor as the
    log-mels rather than torchaudio's dB scaling, whose top_db clamp depends on the loudest
    utterance of the batch. Cepstral mean and variance normalisation by instance norm.
    """

    def __init__(self, n_mfcc=80):
        super().__init__()
        self.mfcc = torchaudio.transforms.MFCC(
            sample_rate=SAMPLE_RATE, n_mfcc=n_mfcc, log_mels=True,
            melkwargs=dict(n_fft=N_FFT, win_length=WINDOW, hop_length=HOP,
                           window_fn=torch.hamming_window, n_mels=n_mfcc))
        self.instancenorm = nn.InstanceNorm1d(n_mfcc)
        self.spec_augment = None

    def forward(self, wav):
        with torch.no_grad(), torch.autocast(device_type=wav.device.type, enabled=False):
            return _masked(self, self.instancenorm(self.mfcc(to_float(wav))))
