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
from models._frontends import LogMelFrontend
from models._layers import SEResNet34


class HalfResNet34ASP(SEResNet34):
    channels = (32, 64, 128, 256)     # half of ResNet-34's 64/128/256/512
    stage_strides = (1, (2, 2), (2, 2), (2, 2))
    stem = "plain"
    frame_pooling = "channel_attentive"
    attention_bottleneck = 128
    # voxceleb_trainer's parameter-name prefixes -> ours (its checkpoints load through this).
    reference_renames = {"torchfb.0.": "features.preemphasis.", "torchfb.1.": "features.melspec.",
                         "attention.": "pool.attention."}

    def __init__(self, nOut=512, encoder_type="ASP", n_mels=64, log_input=True):
        super().__init__(LogMelFrontend(n_mels=n_mels, log_input=log_input, preemphasis=True),
                         nOut, encoder_type, n_mels)


def MainModel(nOut=512, encoder_type="ASP", n_mels=64, log_input=True, **kwargs):
    return HalfResNet34ASP(nOut=nOut, encoder_type=encoder_type, n_mels=n_mels,
                           log_input=log_input)
