"""Temporal pooling layers: B x T x C frame features -> B x D utterance vectors."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from speakernet.errors import UserError


class SelfAttentivePooling(nn.Module):
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
        weights = F.softmax(scores, dim=1)
        mean = torch.sum(frames * weights, dim=1)
        if not self.with_std:
            return mean
        var = torch.sum(frames.pow(2) * weights, dim=1) - mean.pow(2)
        return torch.cat([mean, var.clamp(min=1e-5).sqrt()], dim=1)


class TemporalAveragePooling(nn.Module):
    """TAP: the mean over frames (VGG-M-40's pooling, "In defence of metric learning" sec. 3.2)."""

    def __init__(self, channels):
        super().__init__()
        self.out_dim = channels

    def forward(self, frames):
        return frames.mean(dim=1)


class TemporalMaxPooling(nn.Module):
    """MAX: each channel's largest activation over frames (a VGGVox option in voxceleb_trainer)."""

    def __init__(self, channels):
        super().__init__()
        self.out_dim = channels

    def forward(self, frames):
        return frames.amax(dim=1)


class ChannelAttentiveStatsPooling(nn.Module):
    """Attention weights for every channel and frame, then the weighted mean (and std).

    attention: 1x1 conv to `bottleneck` -> ReLU -> BN [-> tanh] -> 1x1 conv back to `channels`
    -> softmax over frames. Without global context and tanh this is ResNetSE34V2's pooling in
    voxceleb_trainer (names `attention.0/2/3` as in its checkpoints); with both it is
    ECAPA-TDNN's channel- and context-dependent statistics pooling (Desplanques et al. 2020,
    bottleneck 128): each frame is scored together with the utterance's mean and
    std, so the weights can react to global properties such as noise or channel.
    """

    def __init__(self, channels, bottleneck=128, with_std=True, global_context=False, tanh=False):
        super().__init__()
        self.with_std = with_std
        self.global_context = global_context
        scorer_channels = channels * 3 if global_context else channels
        layers = [nn.Conv1d(scorer_channels, bottleneck, kernel_size=1),
                  nn.ReLU(), nn.BatchNorm1d(bottleneck)]
        if tanh:
            layers.append(nn.Tanh())
        layers += [nn.Conv1d(bottleneck, channels, kernel_size=1), nn.Softmax(dim=2)]
        self.attention = nn.Sequential(*layers)
        self.out_dim = channels * 2 if with_std else channels

    def forward(self, frames):
        x = frames.transpose(1, 2)                                          # B x C x T
        scorer_input = x
        if self.global_context:
            mean = x.mean(dim=2, keepdim=True).expand_as(x)
            std = x.var(dim=2, keepdim=True, correction=0).clamp(min=1e-5).sqrt().expand_as(x)
            scorer_input = torch.cat([x, mean, std], dim=1)
        weights = self.attention(scorer_input)                              # sums to 1 over T
        mean = torch.sum(x * weights, dim=2)
        if not self.with_std:
            return mean
        var = torch.sum(x.pow(2) * weights, dim=2) - mean.pow(2)
        return torch.cat([mean, var.clamp(min=1e-5).sqrt()], dim=1)


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
