"""voxceleb_trainer's residual blocks, so its encoder files import unchanged
(`from models.ResNetBlocks import *`, `from models.ResNetBlocks import SEBasicBlock`).

Constructor arguments (inplanes, planes, stride, downsample, reduction=8), `expansion` and
parameter names (conv1, bn1, conv2, bn2, [conv3, bn3,] se.fc, downsample) are voxceleb_trainer's,
so its checkpoints' keys match. The basic block and the SE gate are models/_layers.py's; the
projection of the residual path is the caller's (`downsample`), as that project's encoders build
it. A helper of encoder files, not an encoder (no MainModel), named without the leading '_'
of this project's helpers because voxceleb_trainer's files import it by this name.
"""
import torch  # noqa: F401  (`import *` hands torch and nn on, as voxceleb_trainer's file does)
import torch.nn as nn

from models import _layers


class SELayer(_layers.SqueezeExcitation):
    """Squeeze-excitation gate over `channel` channels (hidden width channel // reduction)."""

    def __init__(self, channel, reduction=8):
        super().__init__(channel, reduction)


class SEBasicBlock(_layers.SEBasicBlock):
    """Two 3x3 convolutions (ReLU before the first BatchNorm), the SE gate, then the residual
    through `downsample` when given."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, reduction=8):
        super().__init__(inplanes, planes, stride, reduction)
        self.downsample = downsample          # replaces the projection the parent builds itself
        self.stride = stride


class SEBottleneck(nn.Module):
    """1x1 to `planes`, 3x3 carrying the stride, 1x1 to planes * 4, each followed by BatchNorm
    (and ReLU but the last), the SE gate, then the residual through `downsample` when given."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, reduction=8):
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(width, reduction)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)
