"""1-D building blocks of ECAPA-TDNN (Desplanques et al. 2020): TDNN layers,
Res2Net multi-scale convolution, squeeze-excitation and the SE-Res2Block that joins them.

All tensors are B x channels x frames; every layer keeps the number of frames (no strides,
"same" padding), so the blocks accept any input length (with zero padding; reflected padding,
speechbrain's, needs more frames than the padding).
"""
import torch
import torch.nn as nn


class Conv1dReluBn(nn.Sequential):
    """A TDNN layer: dilated 1-D convolution -> ReLU -> BatchNorm, length-preserving.
    `padding_mode`: nn.Conv1d's ('zeros', or 'reflect' as speechbrain's convolutions pad)."""

    def __init__(self, in_channels, out_channels, kernel_size=1, dilation=1, padding_mode="zeros"):
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation,
                      padding=dilation * (kernel_size - 1) // 2, padding_mode=padding_mode),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(out_channels))


class Res2NetConv1d(nn.Module):
    """Res2Net's multi-scale convolution (Gao et al. 2019) in 1-D.

    The channels are split into `scale` groups; group 1 passes unchanged, group i > 1 goes
    through its own dilated TDNN layer after adding the previous group's output, so later
    groups see ever wider temporal context at little parameter cost (ECAPA: scale 8).
    `passthrough_last`: the last group passes unchanged and the others are convolved, from
    the first (wespeaker's Res2Conv1dReluBn; its weights compute another function otherwise).
    """

    def __init__(self, channels, kernel_size=3, dilation=1, scale=8, padding_mode="zeros",
                 passthrough_last=False):
        super().__init__()
        if channels % scale:
            raise ValueError(f"Res2Net needs channels divisible by its scale {scale}; "
                             f"got {channels}")
        self.width = channels // scale
        self.passthrough_last = passthrough_last
        self.convs = nn.ModuleList(Conv1dReluBn(self.width, self.width, kernel_size, dilation, padding_mode)
                                   for _ in range(scale - 1))

    def forward(self, x):
        groups = torch.split(x, self.width, dim=1)
        passed, convolved = (groups[-1], groups[:-1]) if self.passthrough_last else (groups[0], groups[1:])
        outputs = []
        previous = None
        for group, conv in zip(convolved, self.convs):
            previous = conv(group if previous is None else group + previous)
            outputs.append(previous)
        return torch.cat(outputs + [passed] if self.passthrough_last else [passed] + outputs, dim=1)


class SqueezeExcitation1d(nn.Module):
    """Channel gates from each channel's utterance mean (Hu et al. 2018; ECAPA: bottleneck 128)."""

    def __init__(self, channels, bottleneck=128):
        super().__init__()
        self.gate = nn.Sequential(
            nn.Linear(channels, bottleneck), nn.ReLU(inplace=True),
            nn.Linear(bottleneck, channels), nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x.mean(dim=2)).unsqueeze(2)


class SERes2NetBlock(nn.Module):
    """SE-Res2Block of ECAPA-TDNN: 1x1 TDNN -> dilated Res2Net TDNN -> 1x1 TDNN -> SE,
    with a residual connection around the whole block."""

    def __init__(self, channels, kernel_size=3, dilation=1, scale=8, se_bottleneck=128,
                 padding_mode="zeros", passthrough_last=False):
        super().__init__()
        self.conv_in = Conv1dReluBn(channels, channels, kernel_size=1)
        self.res2net = Res2NetConv1d(channels, kernel_size, dilation, scale, padding_mode, passthrough_last)
        self.conv_out = Conv1dReluBn(channels, channels, kernel_size=1)
        self.se = SqueezeExcitation1d(channels, se_bottleneck)

    def forward(self, x):
        return x + self.se(self.conv_out(self.res2net(self.conv_in(x))))
