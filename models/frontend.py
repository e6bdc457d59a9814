"""Acoustic front ends computed inside the encoder, so loaders move raw waveforms only."""
import torch
import torch.nn as nn
import torchaudio

SAMPLE_RATE = 16000
WINDOW = 400      # 25 ms at 16 kHz
HOP = 160         # 10 ms
N_FFT = 512


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


class LogMelFrontend(nn.Module):
    """Waveform (B x samples) -> instance-normalised (log-)mel filterbank (B x n_mels x frames).

    Runs in fp32 and without gradients even under autocast: the features are inputs,
    not something to learn, and half-precision logs of small energies lose the quiet bands.
    """

    def __init__(self, n_mels=40, log_input=True, preemphasis=False):
        super().__init__()
        self.log_input = log_input
        self.preemphasis = PreEmphasis() if preemphasis else None
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=N_FFT, win_length=WINDOW, hop_length=HOP,
            window_fn=torch.hamming_window, n_mels=n_mels)
        self.instancenorm = nn.InstanceNorm1d(n_mels)

    def forward(self, wav):
        with torch.no_grad(), torch.autocast(device_type=wav.device.type, enabled=False):
            wav = wav.float()
            if self.preemphasis is not None:
                wav = self.preemphasis(wav)
            feats = self.melspec(wav) + 1e-6
            if self.log_input:
                feats = feats.log()
            return self.instancenorm(feats)
