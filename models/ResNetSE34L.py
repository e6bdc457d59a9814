"""Fast ResNet-34 (Chung et al. 2020, "In defence of metric learning", sec. 3.2, Table 1).

Quarter-width SE-ResNet-34 on 40 log-mels with early strides; SAP or ASP pooling.
1.44 M parameters with nOut 512 and SAP (the paper's Table 1 gives 1.4 M, 0.45 GMACs / 2 s).
"""
import torch.nn as nn

from models._frontend import LogMelFrontend, with_spec_augment
from models._pooling import build_pooling
from models._resnet_blocks import add_stages, as_image, init_resnet_weights, use_channels_last

CHANNELS = (16, 32, 64, 128)
BLOCKS = (3, 4, 6, 3)

class FastResNet34(nn.Module):
    # voxceleb_trainer's parameter-name prefixes -> ours (its checkpoints load through this).
    reference_renames = {"torchfb.": "features.melspec.", "sap_linear.": "pool.sap_linear.",
                         "attention": "pool.attention"}

    def __init__(self, nOut=512, encoder_type="SAP", n_mels=40, log_input=True):
        super().__init__()
        self.features = LogMelFrontend(n_mels=n_mels, log_input=log_input)
        self.conv1 = nn.Conv2d(1, CHANNELS[0], kernel_size=7, stride=(2, 1), padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(CHANNELS[0])
        self.relu = nn.ReLU(inplace=True)
        add_stages(self, CHANNELS, BLOCKS, strides=(1, (2, 2), (2, 2), (1, 1)))
        self.pool = build_pooling(encoder_type, CHANNELS[-1])
        self.fc = nn.Linear(self.pool.out_dim, nOut)
        init_resnet_weights(self)
        use_channels_last(self)

    def forward(self, wav):
        x = as_image(self.features(wav))           # B x 1 x mels x frames
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.mean(dim=2).transpose(1, 2)                      # average frequency: B x T x C
        return self.fc(self.pool(x))


def MainModel(nOut=512, encoder_type="SAP", n_mels=40, log_input=True, **kwargs):
    return with_spec_augment(FastResNet34(nOut=nOut, encoder_type=encoder_type, n_mels=n_mels,
                                          log_input=log_input), **kwargs)
