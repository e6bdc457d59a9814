"""speechbrain's filterbank features, the input of its released speaker models
(--input_features speechbrain_fbank).

speechbrain's EncoderClassifier.encode_batch computes lobes.features.Fbank, then
processing.features.InputNormalization(norm_type sentence, std_norm False). With the default
Fbank options (those of its spkrec-ecapa-voxceleb release) that is, per file:
- the power spectrum |STFT|^2 of 25 ms Hamming windows (torch's periodic one) every 10 ms, a
  400-point FFT (201 bins), frames centred on every hop with zero padding (1 + samples // 160
  frames);
- speechbrain's own mel filterbank: n_mels + 2 points evenly spaced on the mel scale
  2595 log10(1 + f / 700) from 0 Hz to Nyquist, each filter a triangle in Hz centred on its
  point whose half-width on both sides is the distance to the point below it;
- 10 log10 of the band energies floored at 1e-10 (amin; ref_value 1 subtracts nothing), and
  each value raised to at least the file's largest minus 80 dB (top_db);
- each band minus its mean over the file (the variance is kept).
"""
import math

import torch

from models._frontends import FrontEnd
from speakernet.core.audio import HOP, SAMPLE_RATE

N_FFT = 400           # also the window: 25 ms at 16 kHz
AMIN = 1e-10
TOP_DB = 80.0


def _to_mel(hz):
    return 2595 * math.log10(1 + hz / 700)


def speechbrain_mel_banks(n_mels, n_fft=N_FFT, sample_rate=SAMPLE_RATE):
    """(n_fft // 2 + 1) x n_mels filter matrix, in float32 as speechbrain's Filterbank builds it."""
    mel = torch.linspace(_to_mel(0), _to_mel(sample_rate // 2), n_mels + 2)
    hz = 700 * (10 ** (mel / 2595) - 1)
    centre, half_width = hz[1:-1], (hz[1:] - hz[:-1])[:-1]
    bins = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    slope = (bins[None, :] - centre[:, None]) / half_width[:, None]
    return torch.clamp(torch.minimum(slope + 1.0, 1.0 - slope), min=0.0).T


class SpeechBrainFbankFrontend(FrontEnd):
    """Waveform (B x samples) -> speechbrain's log filterbanks minus their mean over the file
    (B x n_mels x frames); see the module docstring."""

    def __init__(self, n_mels=80):
        super().__init__()
        # Not in the state dict: they follow from the options.
        self.register_buffer("window", torch.hamming_window(N_FFT), persistent=False)
        self.register_buffer("mel_banks", speechbrain_mel_banks(n_mels), persistent=False)
        self.spec_augment = None

    def compute_features(self, wav):
        spectrum = torch.stft(wav, N_FFT, HOP, N_FFT, self.window, center=True, pad_mode="constant",
                              onesided=True, return_complex=True)
        power = torch.view_as_real(spectrum).pow(2).sum(-1).transpose(1, 2)      # B x T x bins
        decibels = 10 * torch.log10((power @ self.mel_banks).clamp(min=AMIN))
        floor = decibels.amax(dim=(-2, -1), keepdim=True) - TOP_DB
        decibels = torch.maximum(decibels, floor)
        return (decibels - decibels.mean(dim=1, keepdim=True)).transpose(1, 2)
