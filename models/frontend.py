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

    def forward(self, wav):
        with torch.no_grad(), torch.autocast(device_type=wav.device.type, enabled=False):
            wav = wav.float()
            if self.preemphasis is not None:
                wav = self.preemphasis(wav)
            feats = self.melspec(wav) + 1e-6
            if self.log_input:
                feats = feats.log()
            return self.instancenorm(feats)


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

    def forward(self, wav):
        with torch.no_grad(), torch.autocast(device_type=wav.device.type, enabled=False):
            feats = self.spectrogram(wav.float()) + 1e-6
            if self.log_input:
                feats = feats.log()
            return self.instancenorm(feats)


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

    def forward(self, wav):
        with torch.no_grad(), torch.autocast(device_type=wav.device.type, enabled=False):
            return self.instancenorm(self.mfcc(wav.float()))
