"""Temporal pooling layers: B x T x C frame features -> B x D utterance vectors."""
import torch
import torch.nn as nn
import torch.nn.functional as F


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


def build_pooling(encoder_type, channels):
    """The pooling layer an --encoder_type names (SAP or ASP)."""
    kinds = {"SAP": False, "ASP": True}
    if encoder_type not in kinds:
        raise ValueError(f"--encoder_type '{encoder_type}' is not supported by this model; "
                         f"choose one of {', '.join(kinds)}")
    return SelfAttentivePooling(channels, with_std=kinds[encoder_type])
