"""RawNet3 (Jung et al., Interspeech 2022, "Pushing the limits of raw waveform speaker
recognition"), as voxceleb_trainer implements it (models/RawNet3.py, models/RawNetBasicBlock.py,
configs/RawNet3_AAM.yaml of clovaai/voxceleb_trainer):

- front end on the raw waveform: pre-emphasis, instance norm with a learnt gain and bias, a
  parametrised sinc filterbank (128 band-pass pairs, even and odd, 251 taps, stride
  --sinc_stride samples), magnitude, log and per-channel mean removal;
- three Res2Net-style blocks with alpha feature-map scaling (AFMS), kernel 3, dilations 2, 3, 4,
  scale 8, 1024 channels, max-pooling by 5 and 3 after the first two; the third block's input is
  the sum of the second's output and the pooled first's;
- the three outputs (the first pooled to the others' length) aggregated by a 1x1 convolution
  to 1536 channels;
- channel- and context-dependent statistics pooling (--encoder_type ECA; ASP gives one weight
  per frame for all channels), BN, a linear layer to --nOut (256 in the paper).

16,280,322 parameters with configs/RawNet3_AAM.yaml's options, as voxceleb_trainer counts them:
its `bn1` (after the filterbank) and `bn6` (after the embedding) are built but never used in its
forward pass; they are kept, frozen, so that its checkpoints load and the count is the same.
Parameter names are voxceleb_trainer's, the front end's under `features.` (reference_renames).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models._frontends import PreEmphasis
from models._pooling import check_encoder_type
from speakernet.core.audio import SAMPLE_RATE
from speakernet.core.errors import UserError

# voxceleb_trainer's RawNet3 (MainModel and RawNet3.__init__): width C, Res2Net scale, filter
# length and the asteroid-filterbanks ParamSincFB defaults it relies on (min_low_hz, min_band_hz).
CHANNELS = 1024
RES2NET_SCALE = 8
SINC_FILTERS = CHANNELS // 4
SINC_TAPS = 251
MIN_LOW_HZ = 50.0
MIN_BAND_HZ = 50.0
AGGREGATED_CHANNELS = 1536
ATTENTION_BOTTLENECK = 128
BLOCKS = ((2, 5), (3, 3), (4, None))        # (dilation, max-pool after the block)
LOG_FLOOR = 1e-6
STATS_RANGE = (1e-4, 1e4)                   # variance clamp of the pooling, as the reference

# voxceleb_trainer rejects the generic SAP for RawNet3; its configuration uses ECA.
OPTION_DEFAULTS = {"encoder_type": "ECA"}


def add_arguments(parser):
    """RawNet3's own option (voxceleb_trainer's trainSpeakerNet.py: --sinc_stride, default 10)."""
    parser.add_argument("--sinc_stride", type=int, default=10,
                        help="RawNet3: stride in samples of the sinc filterbank on the waveform")


# ---------------------------------------------------------------------------------- front end

class PreprocessWaveform(nn.Sequential):
    """Pre-emphasis, then instance norm of each waveform with a learnt gain and bias (eps 1e-4).
    A Sequential so that the names are the reference's `preprocess.0` and `preprocess.1`."""

    def __init__(self):
        super().__init__(PreEmphasis(), nn.InstanceNorm1d(1, eps=1e-4, affine=True))

    def forward(self, wav):
        emphasis, norm = self
        return norm(emphasis(wav).unsqueeze(1))                 # B x 1 x samples


class ParamSincFilterbank(nn.Module):
    """Learnt band-pass filters (SincNet, Ravanelli and Bengio 2018), each band as an even
    (cosine) and an odd (sine) impulse response (Pariente et al. 2020, asteroid-filterbanks'
    ParamSincFB, whose parameter and buffer names and shapes these are).

    Band i spans [low_i, high_i] Hz with low_i = 50 + |low_hz_[i]| and high_i = low_i + 50 +
    |band_hz_[i]| (kept within [50, sr/2]). At tap t (seconds) both responses are Hamming-windowed
    and divided by 2 (high_i - low_i) so that the even one is 1 at t = 0:
        even(t) = (sin(2 pi high t) - sin(2 pi low t)) / (pi t),   even(0) = 2 (high - low)
        odd(t)  = (cos(2 pi low t) - cos(2 pi high t)) / (pi t),   odd(0) = 0
    Initialised with bands evenly spaced on the mel scale from 30 Hz to sr/2 - 100 Hz.
    """

    def __init__(self, filters=SINC_FILTERS, taps=SINC_TAPS, sample_rate=SAMPLE_RATE):
        super().__init__()
        self.sample_rate = float(sample_rate)
        half = taps // 2
        edges = mel_spaced_hz(30.0, self.sample_rate / 2 - (MIN_LOW_HZ + MIN_BAND_HZ), filters // 2 + 1)
        self.low_hz_ = nn.Parameter(edges[:-1].view(-1, 1))
        self.band_hz_ = nn.Parameter(edges.diff().view(-1, 1))
        window = torch.hamming_window(taps, periodic=False, dtype=torch.float64)[:half]
        self.register_buffer("window_", window.float())
        # 2 pi t for the taps left of the centre, t = -half/sr .. -1/sr.
        self.register_buffer("n_", 2 * math.pi * (torch.arange(-half, 0.0) / self.sample_rate).view(1, -1))

    def filters(self):
        """The filters, even ones first: F x 1 x taps."""
        low = MIN_LOW_HZ + self.low_hz_.abs()
        high = (low + MIN_BAND_HZ + self.band_hz_.abs()).clamp(MIN_LOW_HZ, self.sample_rate / 2)
        band = high - low
        # The taps left of the centre; the right ones mirror them (even) or their negatives (odd).
        even_left = (torch.sin(high * self.n_) - torch.sin(low * self.n_)) / (self.n_ / 2) * self.window_
        odd_left = (torch.cos(low * self.n_) - torch.cos(high * self.n_)) / (self.n_ / 2) * self.window_
        even = torch.cat([even_left, 2 * band, even_left.flip(1)], dim=1)
        odd = torch.cat([odd_left, torch.zeros_like(band), -odd_left.flip(1)], dim=1)
        return (torch.cat([even, odd]) / (2 * band.repeat(2, 1))).unsqueeze(1)


def mel_spaced_hz(low_hz, high_hz, count):
    """`count` frequencies from low_hz to high_hz, evenly spaced on the (HTK) mel scale."""
    low_mel, high_mel = (2595 * math.log10(1 + hz / 700) for hz in (low_hz, high_hz))
    mels = torch.linspace(low_mel, high_mel, count, dtype=torch.float64)
    return (700 * (10 ** (mels / 2595) - 1)).float()


class SincConv(nn.Module):
    """The filterbank as a strided, unpadded convolution: B x 1 x samples -> B x F x frames."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride
        self.filterbank = ParamSincFilterbank()

    def forward(self, x):
        return F.conv1d(x, self.filterbank.filters(), stride=self.stride)


class SincFrontend(nn.Module):
    """Waveform (B x samples) -> log sinc-filterbank magnitudes with each channel's mean over
    time removed (B x 256 x frames, one frame per `stride` samples), then SpecAugment if on.

    Unlike the fixed front ends of models/_frontends.py this one learns (the instance norm's gain
    and bias, the band edges), so gradients flow through it; it runs in fp32 under autocast as
    the reference does. SpecAugment's widths count these frames and filters (the first 128
    filters are the even responses, the last 128 the odd ones).
    """

    def __init__(self, stride):
        super().__init__()
        self.preprocess = PreprocessWaveform()
        self.conv1 = SincConv(stride)
        self.spec_augment = None

    def forward(self, wav):
        with torch.autocast(device_type=wav.device.type, enabled=False):
            magnitudes = self.conv1(self.preprocess(wav)).abs()
            feats = torch.log(magnitudes + LOG_FLOOR)
            feats = feats - feats.mean(dim=-1, keepdim=True)
        return feats if self.spec_augment is None else self.spec_augment(feats)


# -------------------------------------------------------------------------------- frame layers

class AlphaFeatureMapScaling(nn.Module):
    """AFMS (RawNet2, Jung et al. 2020): add a learnt per-channel alpha, then scale each channel
    by a sigmoid gate of the channel means: (x + alpha) * sigmoid(fc(mean_t x))."""

    def __init__(self, channels):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels, 1))
        self.fc = nn.Linear(channels, channels)

    def forward(self, x):
        gate = torch.sigmoid(self.fc(x.mean(dim=2))).unsqueeze(2)
        return (x + self.alpha) * gate


class AFMSRes2Block(nn.Module):
    """1x1 conv -> ReLU -> BN; Res2Net (Gao et al. 2019): the channels split into `scale` groups,
    group i < scale - 1 through its own dilated conv -> ReLU -> BN after adding the previous
    group's output, the last group passed on unchanged; 1x1 conv -> ReLU -> BN; plus the input
    (projected without bias when the width changes); optional max-pool; AFMS.

    ReLU before BN and the last group passed through are the reference's choices (names too).
    """

    def __init__(self, in_channels, channels, kernel_size, dilation, scale, pool=None):
        super().__init__()
        self.width = channels // scale
        hidden = self.width * scale
        self.conv1 = nn.Conv1d(in_channels, hidden, kernel_size=1)
        self.bn1 = nn.BatchNorm1d(hidden)
        padding = kernel_size // 2 * dilation
        self.convs = nn.ModuleList(nn.Conv1d(self.width, self.width, kernel_size, dilation=dilation,
                                             padding=padding) for _ in range(scale - 1))
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(scale - 1))
        self.conv3 = nn.Conv1d(hidden, channels, kernel_size=1)
        self.bn3 = nn.BatchNorm1d(channels)
        self.relu = nn.ReLU()
        self.mp = nn.MaxPool1d(pool) if pool else None
        self.afms = AlphaFeatureMapScaling(channels)
        self.residual = (nn.Identity() if in_channels == channels else
                         nn.Sequential(nn.Conv1d(in_channels, channels, kernel_size=1, bias=False)))

    def multi_scale(self, x):
        groups = torch.split(x, self.width, dim=1)
        outputs, previous = [], None
        for group, conv, bn in zip(groups, self.convs, self.bns):
            previous = bn(self.relu(conv(group if previous is None else group + previous)))
            outputs.append(previous)
        return torch.cat(outputs + [groups[len(self.convs)]], dim=1)

    def forward(self, x):
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.bn3(self.relu(self.conv3(self.multi_scale(out))))
        out = out + self.residual(x)
        if self.mp is not None:
            out = self.mp(out)
        return self.afms(out)


# ------------------------------------------------------------------------------------- network

class RawNet3(nn.Module):
    """Waveforms (B x samples, at least `min_samples`: 541 at stride 10) -> B x nOut."""
    # voxceleb_trainer's parameter-name prefixes -> ours (its checkpoints load through this).
    reference_renames = {"preprocess.": "features.preprocess.", "conv1.": "features.conv1."}

    def __init__(self, nOut=256, encoder_type="ECA", sinc_stride=10):
        super().__init__()
        check_encoder_type(encoder_type, ("ECA", "ASP"))
        self.features = SincFrontend(sinc_stride)
        self.bn1 = unused_batch_norm(SINC_FILTERS)
        (d1, p1), (d2, p2), (d3, p3) = BLOCKS
        self.layer1 = AFMSRes2Block(SINC_FILTERS, CHANNELS, 3, d1, RES2NET_SCALE, pool=p1)
        self.layer2 = AFMSRes2Block(CHANNELS, CHANNELS, 3, d2, RES2NET_SCALE, pool=p2)
        self.layer3 = AFMSRes2Block(CHANNELS, CHANNELS, 3, d3, RES2NET_SCALE, pool=p3)
        self.layer4 = nn.Conv1d(3 * CHANNELS, AGGREGATED_CHANNELS, kernel_size=1)
        self.relu = nn.ReLU()
        self.mp3 = nn.MaxPool1d(p2)               # the first block's output to the others' rate
        # Each frame is scored with the utterance's mean and std (3 x 1536 inputs); ECA gives a
        # weight per channel and frame, ASP one per frame.
        self.attention = nn.Sequential(
            nn.Conv1d(3 * AGGREGATED_CHANNELS, ATTENTION_BOTTLENECK, kernel_size=1), nn.ReLU(),
            nn.BatchNorm1d(ATTENTION_BOTTLENECK),
            nn.Conv1d(ATTENTION_BOTTLENECK, AGGREGATED_CHANNELS if encoder_type == "ECA" else 1,
                      kernel_size=1),
            nn.Softmax(dim=2))
        self.bn5 = nn.BatchNorm1d(2 * AGGREGATED_CHANNELS)
        self.fc6 = nn.Linear(2 * AGGREGATED_CHANNELS, nOut)
        self.bn6 = unused_batch_norm(nOut)

    def frame_features(self, wav):
        """B x 1536 x frames, one frame per 15 filterbank frames."""
        x1 = self.layer1(self.features(wav))
        x2 = self.layer2(x1)
        x3 = self.layer3(self.mp3(x1) + x2)
        return self.relu(self.layer4(torch.cat([self.mp3(x1), x2, x3], dim=1)))

    def pool(self, x):
        """Attentive mean and std over time, the attention seeing each frame beside the
        utterance's mean and (unbiased) std: B x 3072."""
        context_std = x.var(dim=2, keepdim=True).clamp(*STATS_RANGE).sqrt()
        context = torch.cat([x, x.mean(dim=2, keepdim=True).expand_as(x), context_std.expand_as(x)], dim=1)
        weights = self.attention(context)
        mean = torch.sum(x * weights, dim=2)
        std = (torch.sum(x.square() * weights, dim=2) - mean.square()).clamp(*STATS_RANGE).sqrt()
        return torch.cat([mean, std], dim=1)

    @property
    def min_samples(self):
        """The shortest input that leaves two frames after the poolings (the pooling's unbiased
        std of a single frame is NaN)."""
        frames = 2 * self.layer1.mp.kernel_size * self.mp3.kernel_size
        return SINC_TAPS + (frames - 1) * self.features.conv1.stride

    def forward(self, wav):
        if not torch.jit.is_tracing() and wav.shape[-1] < self.min_samples:
            raise UserError(f"RawNet3 needs inputs of at least {self.min_samples} samples "
                            f"({self.min_samples / SAMPLE_RATE * 1000:.0f} ms at --sinc_stride "
                            f"{self.features.conv1.stride}); got {wav.shape[-1]}")
        return self.fc6(self.bn5(self.pool(self.frame_features(wav))))


def unused_batch_norm(channels):
    """A BatchNorm the reference builds but never applies: its tensors stay in the state dict
    (checkpoints, parameter count) and it is frozen, so that distributed training does not wait
    for gradients it never gets."""
    return nn.BatchNorm1d(channels).requires_grad_(False)


def MainModel(nOut=256, encoder_type="ECA", sinc_stride=10, **kwargs):
    if sinc_stride < 1:
        raise UserError(f"--sinc_stride must be at least 1 (samples), got {sinc_stride}")
    return RawNet3(nOut=nOut, encoder_type=encoder_type, sinc_stride=sinc_stride)
