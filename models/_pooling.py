"""Temporal pooling: B x T x C frame features -> B x D utterance vectors, with the padded-batch
masks of models/_padded.py."""
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from speakernet.core.errors import UserError


class TimePooling(nn.Module):
    """A pooling over the time axis `time_dim` of its input. `frame_lengths` (B valid frames,
    set for a zero-padded batch by models/_padded.py, else None) keeps padding out of it."""
    time_dim = 1
    frame_lengths = None

    def valid(self, frames):
        """B x T boolean of the real frames, or None when every frame is real."""
        if self.frame_lengths is None:
            return None
        positions = torch.arange(frames.shape[self.time_dim], device=frames.device)
        return positions[None, :] < self.frame_lengths[:, None].to(frames.device)


class SelfAttentivePooling(TimePooling):
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
        valid = self.valid(frames)
        if valid is not None:
            scores = scores.masked_fill(~valid[:, :, None], float("-inf"))
        weights = F.softmax(scores, dim=1)
        mean = torch.sum(frames * weights, dim=1)
        if not self.with_std:
            return mean
        var = torch.sum(frames.pow(2) * weights, dim=1) - mean.pow(2)
        return torch.cat([mean, var.clamp(min=1e-5).sqrt()], dim=1)


class TemporalAveragePooling(TimePooling):
    """TAP: the mean over frames (VGG-M-40's pooling, "In defence of metric learning" sec. 3.2)."""

    def __init__(self, channels):
        super().__init__()
        self.out_dim = channels

    def forward(self, frames):
        valid = self.valid(frames)
        if valid is None:
            return frames.mean(dim=1)
        return (frames * valid[:, :, None]).sum(dim=1) / valid.sum(dim=1, keepdim=True)


class TemporalMaxPooling(TimePooling):
    """MAX: each channel's largest activation over frames (a VGGVox option in voxceleb_trainer)."""

    def __init__(self, channels):
        super().__init__()
        self.out_dim = channels

    def forward(self, frames):
        valid = self.valid(frames)
        return (frames if valid is None else frames.masked_fill(~valid[:, :, None], float("-inf"))).amax(dim=1)


def _raw_moments(x, weights, floor):
    """Weighted mean and std over the last axis, the variance as E[x^2] - mean^2 floored."""
    mean = torch.sum(x * weights, dim=2)
    var = torch.sum(x.pow(2) * weights, dim=2) - mean.pow(2)
    return mean, var.clamp(min=floor).sqrt()


def _centred_moments(x, weights, floor):
    """Weighted mean and std over the last axis, the variance as E[(x - mean)^2] floored."""
    mean = torch.sum(x * weights, dim=2)
    var = torch.sum(weights * (x - mean.unsqueeze(2)).pow(2), dim=2)
    return mean, var.clamp(min=floor).sqrt()


def _population_context(x):
    return x.mean(dim=2), x.var(dim=2, correction=0).clamp(min=1e-5).sqrt()


def _uniform_centred_context(x):
    return _centred_moments(x, x.new_full((1, 1, x.shape[2]), 1.0 / x.shape[2]), 1e-12)


def _unbiased_context(x):
    return x.mean(dim=2), (x.var(dim=2) + 1e-7).sqrt()


# How an attentive pooling computes its statistics: (those of the whole utterance, which global
# context scores each frame with; the weighted mean and std it outputs). A released model's
# embedding depends on its toolkit's formulas and floors.
POOLING_STATISTICS = {
    "default": (_population_context, partial(_raw_moments, floor=1e-5)),
    # speechbrain's AttentiveStatisticsPooling (lobes/models/ECAPA_TDNN.py, eps 1e-12).
    "speechbrain": (_uniform_centred_context, partial(_centred_moments, floor=1e-12)),
    # wespeaker's ASTP (models/pooling_layers.py).
    "wespeaker": (_unbiased_context, partial(_raw_moments, floor=1e-7)),
}


class ChannelAttentiveStatsPooling(TimePooling):
    """Attention weights for every channel and frame, then the weighted mean (and std).

    attention: 1x1 conv to `bottleneck` -> ReLU -> BN [-> tanh] -> 1x1 conv back to `channels`
    -> softmax over frames. Without global context and tanh this is ResNetSE34V2's pooling in
    voxceleb_trainer (names `attention.0/2/3` as in its checkpoints); with both it is
    ECAPA-TDNN's channel- and context-dependent statistics pooling (Desplanques et al. 2020,
    bottleneck 128): each frame is scored together with the utterance's mean and
    std, so the weights can react to global properties such as noise or channel.
    `attention_norm=False` drops the ReLU and BN (wespeaker's ASTP: conv -> tanh -> conv);
    `statistics` names the formulas of POOLING_STATISTICS.
    """

    def __init__(self, channels, bottleneck=128, with_std=True, global_context=False, tanh=False,
                 attention_norm=True, statistics="default"):
        super().__init__()
        self.with_std = with_std
        self.global_context = global_context
        self.statistics = statistics
        scorer_channels = channels * 3 if global_context else channels
        layers = [nn.Conv1d(scorer_channels, bottleneck, kernel_size=1)]
        if attention_norm:
            layers += [nn.ReLU(), nn.BatchNorm1d(bottleneck)]
        if tanh:
            layers.append(nn.Tanh())
        layers += [nn.Conv1d(bottleneck, channels, kernel_size=1), nn.Softmax(dim=2)]
        self.attention = nn.Sequential(*layers)
        self.out_dim = channels * 2 if with_std else channels

    def forward(self, frames):
        x = frames.transpose(1, 2)                                          # B x C x T
        scorer_input = x
        valid = self.valid(frames)
        if valid is not None and self.global_context:
            raise NotImplementedError("global-context pooling of padded batches")
        if self.global_context:
            mean, std = POOLING_STATISTICS[self.statistics][0](x)
            scorer_input = torch.cat([x, mean.unsqueeze(2).expand_as(x), std.unsqueeze(2).expand_as(x)], dim=1)
        if valid is None:
            weights = self.attention(scorer_input)                          # sums to 1 over T
        else:
            scores = self.attention[:-1](scorer_input).masked_fill(~valid[:, None, :], float("-inf"))
            weights = self.attention[-1](scores)
        if not self.with_std:
            return torch.sum(x * weights, dim=2)
        return torch.cat(POOLING_STATISTICS[self.statistics][1](x, weights), dim=1)


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
