"""VGG-M-40 (Chung et al. 2020, "In defence of metric learning", sec. 3.2, Table 1).

VGG-M adapted to speaker recognition (Nagrani et al. 2017) and modified to take 40 log-mel
filterbanks instead of a 513-bin spectrogram: five conv/BN/ReLU layers with three max-pools
shrink the 40 bands to 4, a 4x1 convolution collapses them into 512 channels per frame,
then temporal pooling: TAP (the paper's), SAP or MAX, all three as in voxceleb_trainer.

Layer sizes and the `netcnn.<index>` names are voxceleb_trainer's VGGVox, so its checkpoints
load: 4,032,448 parameters with nOut 512 and SAP (Table 1: 4.0 M), 0.53 GMACs for 2 s
(Table 1: 0.53 G). Its mel front end uses torchaudio's default Hann window (the spectrogram
window is also stored in the checkpoint).
"""
import torch
import torch.nn as nn

from speakernet.core.errors import UserError
from models._frontends import LogMelFrontend
from models._pooling import build_pooling

N_MELS = 40
EMBED_CHANNELS = 512
# Shortest input the unpadded convolutions and pools accept: 63 frames, about 0.63 s.
MIN_FRAMES = 63


def conv_bn_relu(in_channels, out_channels, kernel_size, stride=1, padding=0):
    return [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def vgg_m_40_trunk():
    """The convolutional trunk, B x 1 x 40 x frames -> B x 512 x 1 x frames/16 (netcnn.*)."""
    return nn.Sequential(
        *conv_bn_relu(1, 96, (5, 7), stride=(1, 2), padding=(2, 2)),
        nn.MaxPool2d(kernel_size=(1, 3), stride=(1, 2)),
        *conv_bn_relu(96, 256, (5, 5), stride=(2, 2), padding=(1, 1)),
        nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
        *conv_bn_relu(256, 384, (3, 3), padding=(1, 1)),
        *conv_bn_relu(384, 256, (3, 3), padding=(1, 1)),
        *conv_bn_relu(256, 256, (3, 3), padding=(1, 1)),
        nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
        *conv_bn_relu(256, EMBED_CHANNELS, (4, 1)),          # the 4 remaining bands -> 1
    )


class VGGM40(nn.Module):
    # voxceleb_trainer's parameter-name prefixes -> ours (its checkpoints load through this).
    reference_renames = {"torchfb.": "features.melspec.", "sap_linear.": "pool.sap_linear.",
                         "attention": "pool.attention"}

    def __init__(self, nOut=512, encoder_type="SAP", log_input=True):
        super().__init__()
        self.features = LogMelFrontend(n_mels=N_MELS, log_input=log_input,
                                       window_fn=torch.hann_window)
        self.netcnn = vgg_m_40_trunk()
        self.pool = build_pooling(encoder_type, EMBED_CHANNELS, choices=("TAP", "SAP", "MAX"))
        self.fc = nn.Linear(self.pool.out_dim, nOut)

    def forward(self, wav):
        x = self.features(wav).unsqueeze(1)                    # B x 1 x 40 x frames
        if not torch.jit.is_tracing() and x.size(-1) < MIN_FRAMES:
            raise UserError(f"VGG-M-40 needs at least {MIN_FRAMES} frames "
                             f"({(MIN_FRAMES - 1) * 160} samples); got {x.size(-1)}")
        x = self.netcnn(x)                                     # B x 512 x 1 x T
        return self.fc(self.pool(x.flatten(1, 2).transpose(1, 2)))


def MainModel(nOut=512, encoder_type="SAP", n_mels=N_MELS, log_input=True, **kwargs):
    if n_mels != N_MELS:
        raise UserError(f"VGG-M-40 is defined on {N_MELS} mel bands (its 4x1 convolution "
                         f"expects them); got --n_mels {n_mels}")
    return VGGM40(nOut=nOut, encoder_type=encoder_type, log_input=log_input)
