"""The layers the SE-ResNet encoders share: squeeze-excitation residual blocks, and the
SE-ResNet-34 family, one parametrised network of which Fast, Thin and half-width ResNet-34
(ResNetSE34L, ResNetSE34, ResNetSE34V2) are named configurations, with voxceleb_trainer's
parameter names. Front ends are in models/_frontends.py, pooling in models/_pooling.py."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models._pooling import ChannelAttentiveStatsPooling, build_pooling, check_encoder_type


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


