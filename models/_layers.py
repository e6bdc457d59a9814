"""The layers every encoder shares, in the order a waveform meets them.

1. Front ends, computed inside the encoder so loaders move raw waveforms only. Waveforms are
   float, or int16 samples (packed crops as the loader sends them), scaled by 2^-15 exactly as a
   float read of the file would give them. Every front end ends with an optional SpecAugment
   (`spec_augment`, None unless --specaugment; models/_specaugment.py).
2. Squeeze-excitation residual blocks, and the SE-ResNet-34 family: one parametrised network of
   which Fast, Thin and half-width ResNet-34 (ResNetSE34L, ResNetSE34, ResNetSE34V2) are named
   configurations, with voxceleb_trainer's parameter names.
3. Temporal pooling: B x T x C frame features -> B x D utterance vectors.
"""
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio
from torchaudio.compliance.kaldi import get_mel_banks

from speakernet.core.audio import HOP, SAMPLE_RATE
from speakernet.core.errors import UserError

WINDOW = 400      # 25 ms at 16 kHz
N_FFT = 512


# ---------------------------------------------------------------------------------- front ends

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


# ------------------------------------------------------------------- squeeze-excitation blocks
class SqueezeExcitation(nn.Module):
    """Channel gating from globally pooled activations (Hu et al. 2018)."""

    def __init__(self, channels, reduction=8):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x):
        gate = self.fc(self.avg_pool(x).flatten(1))
        return x * gate[:, :, None, None]


class SEBasicBlock(nn.Module):
    """Two 3x3 convolutions with SE gating and a residual path.

    The ReLU comes before the first BatchNorm, as in the voxceleb_trainer models whose
    checkpoints we load: swapping them would change the function those weights compute.
    """

    def __init__(self, in_channels, channels, stride=1, reduction=8):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcitation(channels, reduction)
        self.downsample = None
        # A tuple stride, even (1, 1), gets a projection: the reference checkpoints have one.
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                StridedPointwiseConv(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels))

    def forward(self, x):
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


def make_stage(in_channels, channels, blocks, stride):
    """A ResNet stage: the first block may stride and widen, the rest keep the shape."""
    layers = [SEBasicBlock(in_channels, channels, stride)]
    layers += [SEBasicBlock(channels, channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def add_stages(module, channels, blocks, strides):
    """Attach the four stages as module.layer1..layer4 (voxceleb_trainer's parameter names)."""
    in_channels = channels[0]
    for i, (width, count, stride) in enumerate(zip(channels, blocks, strides), start=1):
        setattr(module, f"layer{i}", make_stage(in_channels, width, count, stride))
        in_channels = width


def init_resnet_weights(module):
    """He-normal convolutions and unit BatchNorm, the usual ResNet start."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def as_image(features):
    """B x F x T features -> B x 1 x F x T in channels-last layout, the fast convolution path
    of oneDNN and cuDNN (Fast ResNet-34 trains about 25% faster on this project's CPU)."""
    return features.unsqueeze(1).contiguous(memory_format=torch.channels_last)


def use_channels_last(module):
    """Store the module's convolution weights channels-last, to match `as_image` inputs."""
    return module.to(memory_format=torch.channels_last)


def _frequency_stride(stride):
    return stride if isinstance(stride, int) else stride[0]


class StridedPointwiseConv(nn.Conv2d):
    """A strided 1x1 convolution that, in layers of fewer than 16 input channels, trains as the
    1x1 convolution of the strided input: the same result, parameters and names. torch 2.14's
    backward of a strided 1x1 convolution on channels-last tensors crashes the process (SIGSEGV)
    for 2 to 15 input channels on an AMD EPYC with AVX-512 (16 and more never did); wider layers,
    inference and graphs traced for export (whose exporter cannot bound a strided slice of a
    dynamic length) keep the strided convolution, so their results stay bit-identical."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.kernel_size != (1, 1) or self.padding != (0, 0) or self.groups != 1:
            raise ValueError("StridedPointwiseConv is a 1x1 convolution without padding or groups")
        self.subsample_first = self.in_channels < 16

    def forward(self, x):
        if not self.subsample_first or not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return super().forward(x)
        rows, columns = self.stride
        return F.conv2d(x[:, :, ::rows, ::columns], self.weight, self.bias)


class SEResNet34(nn.Module):
    """ResNet-34's [3, 4, 6, 3] SE basic blocks after a stem, then pooling over time and a
    linear layer to nOut. A subclass is one named configuration: it sets the class attributes
    below and hands its front end to __init__. Parameter names (features, conv1, bn1, layer1..4,
    pool, fc) are voxceleb_trainer's, so its checkpoints load.
    """
    blocks = (3, 4, 6, 3)
    channels = (16, 32, 64, 128)                  # per stage
    stage_strides = (1, (2, 2), (2, 2), (2, 2))   # (frequency, time) or 1
    # "strided": 7x7 conv with stride (2, 1), no bias, BN, ReLU; "strided_maxpool": the same,
    # then a 3x3 max-pool with stride (2, 1); "plain": 3x3 conv, stride 1, bias, ReLU, then BN.
    stem = "strided"
    # "frequency_mean": average the bands, then SAP/ASP over channels; "channel_attentive":
    # channels x bands per frame, each weighted by its own attention (ResNetSE34V2).
    frame_pooling = "frequency_mean"
    attention_bottleneck = 128
    padded_batches = True         # files of different lengths batch exactly (models/_padded.py)

    def __init__(self, features, nOut, encoder_type, n_bins):
        super().__init__()
        if self.frame_pooling == "channel_attentive":
            check_encoder_type(encoder_type, ("SAP", "ASP"))
        self.features = features
        width = self.channels[0]
        if self.stem == "plain":
            self.conv1 = nn.Conv2d(1, width, kernel_size=3, stride=1, padding=1)
            self.relu = nn.ReLU(inplace=True)
            self.bn1 = nn.BatchNorm2d(width)
        else:
            self.conv1 = nn.Conv2d(1, width, kernel_size=7, stride=(2, 1), padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=(2, 1), padding=1) if self.stem == "strided_maxpool" else None
        add_stages(self, self.channels, self.blocks, self.stage_strides)
        if self.frame_pooling == "channel_attentive":
            self.pool = ChannelAttentiveStatsPooling(self.channels[-1] * self.bands_after_stages(n_bins),
                                                     bottleneck=self.attention_bottleneck,
                                                     with_std=encoder_type == "ASP")
        else:
            self.pool = build_pooling(encoder_type, self.channels[-1])
        self.fc = nn.Linear(self.pool.out_dim, nOut)
        init_resnet_weights(self)
        use_channels_last(self)

    def bands_after_stages(self, n_bins):
        """Frequency bands left after the stem and stages (every stride 2 gives ceil(n / 2))."""
        strides = [1 if self.stem == "plain" else 2] + [2] * (self.stem == "strided_maxpool")
        for stride in strides + [_frequency_stride(s) for s in self.stage_strides]:
            n_bins = (n_bins + 1) // 2 if stride == 2 else n_bins
        return n_bins

    def forward(self, wav):
        x = as_image(self.features(wav))                       # B x 1 x bins x frames
        if self.stem == "plain":
            x = self.bn1(self.relu(self.conv1(x)))             # ReLU before BN, as the reference
        else:
            x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.frame_pooling == "channel_attentive":
            x = x.flatten(1, 2).transpose(1, 2)                # B x T x (channels * bands)
        else:
            x = x.mean(dim=2).transpose(1, 2)                  # average frequency: B x T x C
        return self.fc(self.pool(x))


# ------------------------------------------------------------------------------------- pooling
class TimePooling(nn.Module):
    """A pooling over the time axis `time_dim` of its input. `frame_lengths` (B valid frames,
    set for a zero-padded batch by models/_padded.py, else None) keeps padding out of it."""
    time_dim = 1
    frame_lengths = None

    def valid(self, frames):
        """B x T boolean of the real frames, or None when every frame is real."""
        if self.frame_lengths is None:
            return None
        positions = torch.arange(frames.shape[self.time_dim], device=frames.device)
        return positions[None, :] < self.frame_lengths[:, None].to(frames.device)


class SelfAttentivePooling(TimePooling):
    """SAP (Cai et al. 2018): softmax attention over frames; ASP adds the weighted std.

    Parameter names (`sap_linear`, `attention`) follow voxceleb_trainer's checkpoints.
    """

    def __init__(self, channels, with_std=False):
        super().__init__()
        self.with_std = with_std
        self.sap_linear = nn.Linear(channels, channels)
        self.attention = nn.Parameter(torch.empty(channels, 1))
        nn.init.xavier_normal_(self.attention)
        self.out_dim = channels * 2 if with_std else channels

    def forward(self, frames):
        scores = torch.tanh(self.sap_linear(frames)) @ self.attention      # B x T x 1
        valid = self.valid(frames)
        if valid is not None:
            scores = scores.masked_fill(~valid[:, :, None], float("-inf"))
        weights = F.softmax(scores, dim=1)
        mean = torch.sum(frames * weights, dim=1)
        if not self.with_std:
            return mean
        var = torch.sum(frames.pow(2) * weights, dim=1) - mean.pow(2)
        return torch.cat([mean, var.clamp(min=1e-5).sqrt()], dim=1)


class TemporalAveragePooling(TimePooling):
    """TAP: the mean over frames (VGG-M-40's pooling, "In defence of metric learning" sec. 3.2)."""

    def __init__(self, channels):
        super().__init__()
        self.out_dim = channels

    def forward(self, frames):
        valid = self.valid(frames)
        if valid is None:
            return frames.mean(dim=1)
        return (frames * valid[:, :, None]).sum(dim=1) / valid.sum(dim=1, keepdim=True)


class TemporalMaxPooling(TimePooling):
    """MAX: each channel's largest activation over frames (a VGGVox option in voxceleb_trainer)."""

    def __init__(self, channels):
        super().__init__()
        self.out_dim = channels

    def forward(self, frames):
        valid = self.valid(frames)
        return (frames if valid is None else frames.masked_fill(~valid[:, :, None], float("-inf"))).amax(dim=1)


def _raw_moments(x, weights, floor):
    """Weighted mean and std over the last axis, the variance as E[x^2] - mean^2 floored."""
    mean = torch.sum(x * weights, dim=2)
    var = torch.sum(x.pow(2) * weights, dim=2) - mean.pow(2)
    return mean, var.clamp(min=floor).sqrt()


def _centred_moments(x, weights, floor):
    """Weighted mean and std over the last axis, the variance as E[(x - mean)^2] floored."""
    mean = torch.sum(x * weights, dim=2)
    var = torch.sum(weights * (x - mean.unsqueeze(2)).pow(2), dim=2)
    return mean, var.clamp(min=floor).sqrt()


def _population_context(x):
    return x.mean(dim=2), x.var(dim=2, correction=0).clamp(min=1e-5).sqrt()


def _uniform_centred_context(x):
    return _centred_moments(x, x.new_full((1, 1, x.shape[2]), 1.0 / x.shape[2]), 1e-12)


def _unbiased_context(x):
    return x.mean(dim=2), (x.var(dim=2) + 1e-7).sqrt()


# How an attentive pooling computes its statistics: (those of the whole utterance, which global
# context scores each frame with; the weighted mean and std it outputs). A released model's
# embedding depends on its toolkit's formulas and floors.
POOLING_STATISTICS = {
    "default": (_population_context, partial(_raw_moments, floor=1e-5)),
    # speechbrain's AttentiveStatisticsPooling (lobes/models/ECAPA_TDNN.py, eps 1e-12).
    "speechbrain": (_uniform_centred_context, partial(_centred_moments, floor=1e-12)),
    # wespeaker's ASTP (models/pooling_layers.py).
    "wespeaker": (_unbiased_context, partial(_raw_moments, floor=1e-7)),
}


class ChannelAttentiveStatsPooling(TimePooling):
    """Attention weights for every channel and frame, then the weighted mean (and std).

    attention: 1x1 conv to `bottleneck` -> ReLU -> BN [-> tanh] -> 1x1 conv back to `channels`
    -> softmax over frames. Without global context and tanh this is ResNetSE34V2's pooling in
    voxceleb_trainer (names `attention.0/2/3` as in its checkpoints); with both it is
    ECAPA-TDNN's channel- and context-dependent statistics pooling (Desplanques et al. 2020,
    bottleneck 128): each frame is scored together with the utterance's mean and
    std, so the weights can react to global properties such as noise or channel.
    `attention_norm=False` drops the ReLU and BN (wespeaker's ASTP: conv -> tanh -> conv);
    `statistics` names the formulas of POOLING_STATISTICS.
    """

    def __init__(self, channels, bottleneck=128, with_std=True, global_context=False, tanh=False,
                 attention_norm=True, statistics="default"):
        super().__init__()
        self.with_std = with_std
        self.global_context = global_context
        self.statistics = statistics
        scorer_channels = channels * 3 if global_context else channels
        layers = [nn.Conv1d(scorer_channels, bottleneck, kernel_size=1)]
        if attention_norm:
            layers += [nn.ReLU(), nn.BatchNorm1d(bottleneck)]
        if tanh:
            layers.append(nn.Tanh())
        layers += [nn.Conv1d(bottleneck, channels, kernel_size=1), nn.Softmax(dim=2)]
        self.attention = nn.Sequential(*layers)
        self.out_dim = channels * 2 if with_std else channels

    def forward(self, frames):
        x = frames.transpose(1, 2)                                          # B x C x T
        scorer_input = x
        valid = self.valid(frames)
        if valid is not None and self.global_context:
            raise NotImplementedError("global-context pooling of padded batches")
        if self.global_context:
            mean, std = POOLING_STATISTICS[self.statistics][0](x)
            scorer_input = torch.cat([x, mean.unsqueeze(2).expand_as(x), std.unsqueeze(2).expand_as(x)], dim=1)
        if valid is None:
            weights = self.attention(scorer_input)                          # sums to 1 over T
        else:
            scores = self.attention[:-1](scorer_input).masked_fill(~valid[:, None, :], float("-inf"))
            weights = self.attention[-1](scores)
        if not self.with_std:
            return torch.sum(x * weights, dim=2)
        return torch.cat(POOLING_STATISTICS[self.statistics][1](x, weights), dim=1)


POOLING_LAYERS = {
    "SAP": SelfAttentivePooling,
    "ASP": lambda channels: SelfAttentivePooling(channels, with_std=True),
    "TAP": TemporalAveragePooling,
    "MAX": TemporalMaxPooling,
}


def check_encoder_type(encoder_type, choices):
    """Refuse an --encoder_type the model does not offer, naming the ones it does."""
    if encoder_type not in choices:
        raise UserError(f"--encoder_type '{encoder_type}' is not supported by this model; "
                         f"choose one of {', '.join(choices)}")


def build_pooling(encoder_type, channels, choices=("SAP", "ASP")):
    """The pooling layer an --encoder_type names, among the `choices` a model offers."""
    check_encoder_type(encoder_type, choices)
    return POOLING_LAYERS[encoder_type](channels)
