"""Front ends, computed inside the encoder so that loaders move raw waveforms only: float32
waveforms (the collation converts packed int16 crops) in, B x bins x frames features out. Every
front end ends with an optional SpecAugment (`spec_augment`, None unless --specaugment; the
trainer attaches it, models/_specaugment.py)."""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio
from torchaudio.compliance.kaldi import get_mel_banks

from speakernet.core.audio import HOP, SAMPLE_RATE

WINDOW = 400      # 25 ms at 16 kHz
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


class FrontEnd(nn.Module):
    """Waveforms -> features, in fp32 and without gradients even under autocast: the features
    are inputs, not something to learn, and half-precision logs of small energies lose the quiet
    bands. A subclass computes `compute_features(wav)`; SpecAugment, if any, follows. In a
    zero-padded batch of files (`sample_lengths` set, models/_padded.py) each file's features
    come from its own samples alone, normalised on their own and zero-padded in time."""
    sample_lengths = None

    def forward(self, wav):
        with torch.no_grad(), torch.autocast(device_type=wav.device.type, enabled=False):
            wav = wav.float()          # waveforms come as float (the loader converts packs' int16)
            if self.sample_lengths is None:
                feats = self.compute_features(wav)
            else:
                parts = [self.compute_features(w[:int(n)].unsqueeze(0))[0]
                         for w, n in zip(wav, self.sample_lengths)]
                feats = wav.new_zeros(len(parts), parts[0].shape[0], max(p.shape[-1] for p in parts))
                for row, part in zip(feats, parts):
                    row[:, :part.shape[-1]] = part
            return feats if self.spec_augment is None else self.spec_augment(feats)

    def frame_counts(self, sample_lengths):
        """Frames of files of these lengths in samples: centred STFT frames, one per hop."""
        return torch.div(sample_lengths, HOP, rounding_mode="floor") + 1


class LogMelFrontend(FrontEnd):
    """Waveform (B x samples) -> instance-normalised (log-)mel filterbank (B x n_mels x frames)."""

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

    def compute_features(self, wav):
        if self.preemphasis is not None:
            wav = self.preemphasis(wav)
        feats = self.melspec(wav) + 1e-6
        return self.instancenorm(feats.log() if self.log_input else feats)


class LogSpectrogramFrontend(FrontEnd):
    """Waveform (B x samples) -> instance-normalised log magnitude spectrogram (B x 257 x frames).

    The Thin ResNet-34's input (Chung et al. 2020, "In defence of metric learning", sec. 3.1:
    25 ms Hamming window, 10 ms step, 257-dimensional raw spectrograms from a 512-point FFT,
    mean and variance normalised by instance normalisation). Magnitudes, as in [39]; after the
    log and instance norm, power would give the same features.
    """

    def __init__(self, log_input=True):
        super().__init__()
        self.log_input = log_input
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=N_FFT, win_length=WINDOW, hop_length=HOP, window_fn=torch.hamming_window,
            power=1.0)
        self.instancenorm = nn.InstanceNorm1d(N_FFT // 2 + 1)
        self.spec_augment = None

    def compute_features(self, wav):
        feats = self.spectrogram(wav) + 1e-6
        return self.instancenorm(feats.log() if self.log_input else feats)


def add_input_features_option(parser, choices, help):
    """A model's --input_features (the front end; the first of `choices` is its default). Where
    another model declared it already (python3 -m speakernet.tools.model_tools reads every model's options into one
    parser), `choices` join that declaration's instead."""
    for action in parser._actions:
        if "--input_features" in action.option_strings:
            action.choices = tuple(dict.fromkeys((*action.choices, *choices)))
            return
    parser.add_argument("--input_features", type=str, default=choices[0], choices=tuple(choices), help=help)


KALDI_WINDOWS = {
    "hamming": lambda n: torch.hamming_window(n, periodic=False, alpha=0.54, beta=0.46),
    "povey": lambda n: torch.hann_window(n, periodic=False).pow(0.85),
}
KALDI_PREEMPHASIS = 0.97
KALDI_LOW_HZ = 20.0


class KaldiFbankFrontend(FrontEnd):
    """Waveform (B x samples) -> Kaldi log mel filterbank minus its mean over the file
    (B x n_mels x frames): wespeaker's input (--input_features kaldi_fbank).

    wespeaker (dataset/processor.py compute_fbank and apply_cmvn, bin/extract.py) computes
    torchaudio.compliance.kaldi.fbank of the samples scaled to 16-bit values (x 2^15) with
    num_mel_bins 80, frame_length 25, frame_shift 10, window_type hamming and its other
    defaults, then subtracts each bin's mean over the utterance (CMN, variance kept). The same
    steps are computed here for a whole batch, as Kaldi orders them: frames lying wholly in
    the file (snip_edges: 1 + (samples - 400) // 160), each minus its mean, pre-emphasis 0.97
    (first sample repeated), the window, the power spectrum of a 512-point FFT, Kaldi's mel
    bands from 20 Hz to Nyquist (torchaudio's get_mel_banks), log with a float-epsilon floor.
    Dither (wespeaker's training default 1.0) is added while training only; extraction uses
    none, as wespeaker's does."""

    def __init__(self, n_mels=80, window="hamming", waveform_scale=32768.0, dither=1.0):
        super().__init__()
        self.waveform_scale = waveform_scale
        self.dither = dither
        banks, _ = get_mel_banks(
            n_mels, N_FFT, float(SAMPLE_RATE), KALDI_LOW_HZ, 0.0, 100.0, -500.0, 1.0)
        # Not in the state dict: they follow from the options, as torchaudio's recompute them.
        self.register_buffer("mel_banks", F.pad(banks.float(), (0, 1)), persistent=False)
        self.register_buffer("window", KALDI_WINDOWS[window](WINDOW), persistent=False)
        self.spec_augment = None

    def frame_counts(self, sample_lengths):
        return torch.div(sample_lengths - WINDOW, HOP, rounding_mode="floor") + 1

    def compute_features(self, wav):
        frames = (wav * self.waveform_scale).unfold(-1, WINDOW, HOP)          # B x T x 400
        if self.training and self.dither:
            frames = frames + torch.randn_like(frames) * self.dither
        frames = frames - frames.mean(dim=-1, keepdim=True)
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - KALDI_PREEMPHASIS * previous) * self.window
        power = torch.fft.rfft(frames, n=N_FFT).abs().pow(2)
        log_mels = (power @ self.mel_banks.T).clamp(min=torch.finfo(power.dtype).eps).log()
        log_mels = log_mels.transpose(1, 2)                                    # B x bins x T
        return log_mels - log_mels.mean(dim=-1, keepdim=True)


