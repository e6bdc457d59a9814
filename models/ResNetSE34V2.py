"""H/ASP: half-width SE-ResNet-34 with channel-wise attentive pooling (voxceleb_trainer's
ResNetSE34V2, the larger model of its README; Heo et al. 2020, "Clova baseline system for
the VoxCeleb Speaker Recognition Challenge 2020").

ResNet-34's [3, 4, 6, 3] SE basic blocks at half width (32/64/128/256 channels) on 64
log-mels with pre-emphasis (coefficient 0.97). The stem is a 3x3 convolution with stride 1
and a bias, followed by ReLU then BatchNorm; stages 2-4 halve frequency and time, so 64 mels
leave 8 bands. Channels x bands (2048) form each frame's feature vector; a 1x1-conv attention
(2048 -> 128 -> ReLU -> BN -> 2048, softmax over time) weights every feature of every frame,
and SAP takes the weighted mean, ASP the weighted mean and std.

Names, layer order and the computed function follow voxceleb_trainer's ResNetSE34V2, so its
checkpoints load (renames below): 8,028,492 parameters with nOut 512, ASP and 64 mels.
"""
import torch.nn as nn

from models._frontend import LogMelFrontend, with_spec_augment
from models._pooling import ChannelAttentiveStatsPooling, check_encoder_type
from models._resnet_blocks import add_stages, as_image, init_resnet_weights, use_channels_last

CHANNELS = (32, 64, 128, 256)     # half of ResNet-34's 64/128/256/512
BLOCKS = (3, 4, 6, 3)
STAGE_STRIDES = (1, (2, 2), (2, 2), (2, 2))
ATTENTION_BOTTLENECK = 128


def bands_after_stages(n_mels):
    """Frequency bands left after the stride-2 stages (3x3 kernels, padding 1: ceil(n / 2))."""
    for stride in STAGE_STRIDES:
        if stride != 1:
            n_mels = (n_mels + 1) // 2
    return n_mels


class HalfResNet34ASP(nn.Module):
    # voxceleb_trainer's parameter-name prefixes -> ours (its checkpoints load through this).
    reference_renames = {"torchfb.0.": "features.preemphasis.", "torchfb.1.": "features.melspec.",
                         "attention.": "pool.attention."}

    def __init__(self, nOut=512, encoder_type="ASP", n_mels=64, log_input=True):
        super().__init__()
        check_encoder_type(encoder_type, ("SAP", "ASP"))
        self.features = LogMelFrontend(n_mels=n_mels, log_input=log_input, preemphasis=True)
        self.conv1 = nn.Conv2d(1, CHANNELS[0], kernel_size=3, stride=1, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn1 = nn.BatchNorm2d(CHANNELS[0])
        add_stages(self, CHANNELS, BLOCKS, STAGE_STRIDES)
        frame_dim = CHANNELS[-1] * bands_after_stages(n_mels)
        self.pool = ChannelAttentiveStatsPooling(frame_dim, bottleneck=ATTENTION_BOTTLENECK,
                                                 with_std=encoder_type == "ASP")
        self.fc = nn.Linear(self.pool.out_dim, nOut)
        init_resnet_weights(self)
        use_channels_last(self)

    def forward(self, wav):
        x = as_image(self.features(wav))           # B x 1 x mels x frames
        x = self.bn1(self.relu(self.conv1(x)))                 # ReLU before BN, as the reference
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.flatten(1, 2).transpose(1, 2)                    # B x T x (channels * bands)
        return self.fc(self.pool(x))


def MainModel(nOut=512, encoder_type="ASP", n_mels=64, log_input=True, **kwargs):
    return with_spec_augment(HalfResNet34ASP(nOut=nOut, encoder_type=encoder_type, n_mels=n_mels,
                                             log_input=log_input), **kwargs)
