"""CAM++ (Wang et al., "CAM++: A Fast and Efficient Network for Speaker Verification Using
Context-Aware Masking", Interspeech 2023; modelscope/3D-Speaker,
speakerlab/models/campplus/DTDNN.py and layers.py, the same files in wenet-e2e/wespeaker
wespeaker/models/campplus/).

Hyperparameters and where they come from (paper sec. 2 and Fig. 1; DTDNN.py / layers.py):
- input: 80-dim log mel filterbank, mean-normalised per utterance (3D-Speaker egs/voxceleb/
  sv-cam++/README.md: "80-dim fbank, mean normalization");
- front-end convolution module (FCM): 3x3 conv to 32 channels, two stages of two residual
  BasicBlocks that stride frequency only by 2, a 3x3 conv striding frequency by 2; the
  32 x 10 map is flattened to 320 channels per frame (DTDNN.py FCM, m_channels 32);
- TDNN layer: kernel 5, stride 2 in time, 128 channels (init_channels 128);
- three D-TDNN blocks of 12 / 24 / 16 layers, kernel 3, dilations 1 / 2 / 2, growth rate 32,
  bottleneck 4 x 32 = 128 (growth_rate 32, bn_size 4); BN-ReLU before every convolution
  (config_str 'batchnorm-relu'); each layer's 3-tap convolution is gated by context-aware
  masking: a sigmoid mask from the utterance mean plus the mean of its 100-frame segment
  (multi-granularity pooling, seg_len 100), through a 1x1 bottleneck of half the channels
  (reduction 2);
- transit layers after each block: BN-ReLU and a 1x1 convolution halving the channels
  (512 -> 256, 1024 -> 512, 1024 -> 512);
- BN-ReLU, statistics pooling (mean and std, 1024), a linear layer to the embedding and
  BatchNorm without affine parameters (DenseLayer, config_str 'batchnorm_'). The embedding is
  512-d: 3D-Speaker's VoxCeleb recipe (egs/sv-cam++/voxceleb/conf/cam++.yaml embedding_size
  512) and wespeaker's (examples/voxceleb/v2/conf/campplus.yaml embed_dim 512), the models
  whose 7.18 M parameters and VoxCeleb1-O EERs are published. --nOut 192 (the embedding of
  3D-Speaker's 200k-speaker Chinese model, per its model cards) gives 6,848,544 parameters.

Size with the defaults: 7,176,224 parameters (3D-Speaker egs/voxceleb/sv-cam++/README.md
and wespeaker examples/voxceleb/v2/README.md: 7.18 M), 1.14 GMACs for 2 s (202 frames,
speakernet.tools.model_tools.count_macs; wespeaker's table: CAM++ "Flops" 1.15 G, thop MACs for 200 frames).
The paper's own complexity figure could not be checked here (for 3 s, 302 frames, this
network has 1.70 GMACs).

Differences from 3D-Speaker: by default a torchaudio mel filterbank inside the model instead of
Kaldi fbank; --input_features kaldi_fbank_povey computes 3D-Speaker's own features
(speakerlab/process/processor.py FBank: torchaudio.compliance.kaldi.fbank of the samples in
[-1, 1] with Kaldi's default povey window and no dither, minus their mean over the file) and
kaldi_fbank wespeaker's (x 2^15, Hamming window, models._frontends.KaldiFbankFrontend), which
their released models need (speakernet/model/public_models.py). The statistics pooling adds 1e-8
under the square root of the (unbiased) variance (3D-Speaker adds nothing, wespeaker 1e-7).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models._frontends import KaldiFbankFrontend, add_input_features_option
from models._layers import as_image, use_channels_last
from models._pooling import check_encoder_type
from models.ResNet import (BasicBlock, TemporalStatsPooling, make_stage,
                           mean_normalised_log_mels, strided_size)
from speakernet.core.errors import OptionError

# The paper's defaults when the user sets neither YAML nor command line (3D-Speaker VoxCeleb).
OPTION_DEFAULTS = {"nOut": 512, "n_mels": 80, "log_input": True, "encoder_type": "TSTP"}

FCM_CHANNELS = 32
FCM_STRIDES = (2, 2, 2)              # frequency strides of FCM's two stages and its last conv
TDNN_CHANNELS = 128
GROWTH_RATE = 32
BOTTLENECK = 4 * GROWTH_RATE
BLOCKS = ((12, 3, 1), (24, 3, 2), (16, 3, 2))   # (layers, kernel, dilation) per D-TDNN block
SEGMENT_FRAMES = 100
MASK_REDUCTION = 2


class PoveyKaldiFbank(KaldiFbankFrontend):
    """3D-Speaker's features: Kaldi fbank with CMN as wespeaker's, but of the samples in [-1, 1]
    (which moves the log floor of digital silence) with Kaldi's default povey window, and no
    dither in training either (processor.py FBank)."""

    def __init__(self, n_mels=80):
        super().__init__(n_mels, window="povey", waveform_scale=1.0, dither=0.0)


FRONT_ENDS = {"fbank": lambda n_mels, log_input: mean_normalised_log_mels(n_mels, log_input),
              "kaldi_fbank": lambda n_mels, log_input: KaldiFbankFrontend(n_mels),
              "kaldi_fbank_povey": lambda n_mels, log_input: PoveyKaldiFbank(n_mels)}


def add_arguments(parser):
    """CAM++'s own options (read by options.parse_options when --model CAMPPlus)."""
    add_input_features_option(parser, tuple(FRONT_ENDS),
                              help="fbank: torchaudio log-mels, mean-normalised; kaldi_fbank: wespeaker's "
                                   "Kaldi filterbank with CMN; kaldi_fbank_povey: 3D-Speaker's (povey "
                                   "window, samples in [-1, 1], no dither); their released models need them")


def build_frontend(input_features, n_mels, log_input):
    """The front end --input_features names; all are log filterbanks with CMN."""
    if input_features not in FRONT_ENDS:
        raise OptionError(f"--input_features '{input_features}': CAMPPlus takes {', '.join(FRONT_ENDS)}")
    if input_features != "fbank" and not log_input:
        raise OptionError(f"--input_features {input_features} gives log filterbanks; drop --log_input false")
    return FRONT_ENDS[input_features](n_mels, log_input)


def bn_relu(channels):
    return nn.Sequential(nn.BatchNorm1d(channels), nn.ReLU(inplace=True))


class FrontConvModule(nn.Module):
    """FCM: 2-D residual convolutions over (frequency, time), striding frequency only, so
    the TDNN backbone sees fine time-frequency detail (paper sec. 2.3)."""

    def __init__(self, n_mels, channels=FCM_CHANNELS):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1, _ = make_stage(BasicBlock, channels, channels, 2, (FCM_STRIDES[0], 1))
        self.layer2, _ = make_stage(BasicBlock, channels, channels, 2, (FCM_STRIDES[1], 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(FCM_STRIDES[2], 1), padding=1,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * strided_size(n_mels, FCM_STRIDES)

    def forward(self, feats):                                   # B x mels x frames
        x = F.relu(self.bn1(self.conv1(as_image(feats))))
        x = self.layer2(self.layer1(x))
        x = F.relu(self.bn2(self.conv2(x)))                     # B x C x mels/8 x frames
        return x.flatten(1, 2)                                  # B x C*mels/8 x frames


def segment_means(x, frames=SEGMENT_FRAMES):
    """Each frame's mean over its `frames`-long segment (the last one may be shorter and is
    averaged over the frames it has), B x C x T -> B x C x T."""
    seg = F.avg_pool1d(x, kernel_size=frames, stride=frames, ceil_mode=True)
    return seg.repeat_interleave(frames, dim=-1)[..., :x.shape[-1]]


class ContextAwareMask(nn.Module):
    """A dilated 3-tap TDNN whose output is gated per channel and frame by a sigmoid mask
    predicted from utterance- and segment-level means (CAM, paper sec. 2.2, eqs. 2-4)."""

    def __init__(self, in_channels, out_channels, kernel_size, dilation):
        super().__init__()
        self.local = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation,
                               padding=(kernel_size - 1) // 2 * dilation, bias=False)
        self.mask = nn.Sequential(
            nn.Conv1d(in_channels, in_channels // MASK_REDUCTION, 1), nn.ReLU(inplace=True),
            nn.Conv1d(in_channels // MASK_REDUCTION, out_channels, 1), nn.Sigmoid())

    def forward(self, x):
        context = x.mean(dim=-1, keepdim=True) + segment_means(x)
        return self.local(x) * self.mask(context)


class DenseTDNNLayer(nn.Module):
    """BN-ReLU, 1x1 bottleneck to 4 x growth, BN-ReLU, CAM-gated TDNN to `growth` channels."""

    def __init__(self, in_channels, growth, kernel_size, dilation):
        super().__init__()
        self.bottleneck = nn.Sequential(bn_relu(in_channels),
                                        nn.Conv1d(in_channels, BOTTLENECK, 1, bias=False),
                                        bn_relu(BOTTLENECK))
        self.cam = ContextAwareMask(BOTTLENECK, growth, kernel_size, dilation)

    def forward(self, x):
        return self.cam(self.bottleneck(x))


class DenseTDNNBlock(nn.ModuleList):
    """Dense connectivity: every layer sees the block input and all earlier layers' outputs."""

    def __init__(self, layers, in_channels, growth, kernel_size, dilation):
        super().__init__(DenseTDNNLayer(in_channels + i * growth, growth, kernel_size, dilation)
                         for i in range(layers))
        self.out_channels = in_channels + layers * growth

    def forward(self, x):
        for layer in self:
            x = torch.cat([x, layer(x)], dim=1)
        return x


def transit_layer(in_channels, out_channels):
    """BN-ReLU and a 1x1 convolution, between D-TDNN blocks (halves the channels)."""
    return nn.Sequential(bn_relu(in_channels), nn.Conv1d(in_channels, out_channels, 1, bias=False))


class CAMPPlus(nn.Module):
    def __init__(self, nOut=512, n_mels=80, log_input=True, input_features="fbank"):
        super().__init__()
        self.features = build_frontend(input_features, n_mels, log_input)
        self.head = FrontConvModule(n_mels)
        self.tdnn = nn.Sequential(
            nn.Conv1d(self.head.out_channels, TDNN_CHANNELS, 5, stride=2, padding=2, bias=False),
            bn_relu(TDNN_CHANNELS))
        stages, channels = [], TDNN_CHANNELS
        for layers, kernel_size, dilation in BLOCKS:
            block = DenseTDNNBlock(layers, channels, GROWTH_RATE, kernel_size, dilation)
            stages += [block, transit_layer(block.out_channels, block.out_channels // 2)]
            channels = block.out_channels // 2
        self.backbone = nn.Sequential(*stages, bn_relu(channels))
        self.pool = TemporalStatsPooling(channels)
        self.fc = nn.Linear(self.pool.out_dim, nOut, bias=False)
        self.embedding_bn = nn.BatchNorm1d(nOut, affine=False)
        self._init_weights()
        use_channels_last(self.head)

    def _init_weights(self):
        # As 3D-Speaker: He-normal (fan-in) 1-D convolutions and linear layers, zero biases;
        # the 2-D front module keeps PyTorch's default.
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, wav):
        x = self.tdnn(self.head(self.features(wav)))            # B x 128 x frames/2
        x = self.backbone(x)                                    # B x 512 x frames/2
        return self.embedding_bn(self.fc(self.pool(x)))


def MainModel(nOut=512, encoder_type="TSTP", n_mels=80, log_input=True, input_features="fbank", **kwargs):
    # One pooling, statistics (TSTP); naming another would silently change nothing.
    check_encoder_type(encoder_type, ("TSTP",))
    return CAMPPlus(nOut=nOut, n_mels=n_mels, log_input=log_input,
                    input_features=input_features)
