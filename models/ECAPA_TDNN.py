"""ECAPA-TDNN (Desplanques et al. 2020), the encoder of the curriculum-learning DINO paper
(Heo et al., "Curriculum learning for self-supervised speaker verification", sec. 5.2).

Frame layers (the paper's network topology), all length-preserving:
- a TDNN layer (Conv1D k=5 + ReLU + BN) from the 80 input features to C channels;
- three SE-Res2Blocks (kernel 3, dilations 2, 3, 4, Res2Net scale 8, SE bottleneck 128);
  each block's input is the sum of the stem's and all earlier blocks' outputs (the paper's
  multi-layer feature aggregation and summation);
- multi-layer feature aggregation: the three block outputs concatenated, 1x1 Conv1D to
  1536 channels + ReLU.
Utterance layers: channel- and context-dependent attentive statistics pooling (attention
bottleneck 128, each frame scored with the utterance mean and std) -> BN -> FC to
the embedding (--nOut; the paper's is 192) -> BN.

Parameters with a 192-d embedding: C=512 6,191,360 and C=1024 14,657,728 (the paper's
results table: 6.2 M and 14.7 M). Input: 80 log-mels (default) or 80 MFCCs as in the paper
(--input_features mfcc), both instance-normalised; --n_mels sets the number of either.

--ecapa_layout speechbrain / wespeaker computes the ECAPA-TDNN of those toolkits instead
(LAYOUTS), whose released weights load (speakernet/model/public_models.py), with their features
(--input_features speechbrain_fbank / kaldi_fbank).
"""
import itertools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torchaudio

from speakernet.core.errors import UserError
from models._ecapa_blocks import Conv1dReluBn, SERes2NetBlock
from speakernet.core.audio import HOP, SAMPLE_RATE
from models._frontends import (N_FFT, WINDOW, FrontEnd, KaldiFbankFrontend, LogMelFrontend, add_input_features_option)
from models._pooling import ChannelAttentiveStatsPooling, check_encoder_type
from models._speechbrain_fbank import SpeechBrainFbankFrontend

DILATIONS = (2, 3, 4)
RES2NET_SCALE = 8
SE_BOTTLENECK = 128
AGGREGATED_CHANNELS = 1536
ATTENTION_BOTTLENECK = 128

# Defaults of generic options when the user sets them neither in YAML nor on the command line
# (options.parse_options), the paper's instead of the generic 512 / 40 / no log / SAP:
# Desplanques et al. 2020 (ECAPA-TDNN, Interspeech): a 192-d embedding from 80-dimensional
# input features, attentive statistics pooling (the only pooling this model has). Log-mels
# are this model's own front-end default (the paper's are MFCCs: --input_features mfcc).
OPTION_DEFAULTS = {"nOut": 192, "n_mels": 80, "log_input": True, "encoder_type": "ASP"}


@dataclass(frozen=True)
class Layout:
    """Where ECAPA-TDNN implementations differ; each toolkit's weights compute its own."""
    dense_sum: bool                       # a block's input: the sum of all earlier outputs, or the last
    padding_mode: str                     # of the dilated convolutions
    res2net_passthrough_last: bool        # which Res2Net group passes unchanged
    aggregate_channels: Optional[int]     # None: 3 x --channels
    aggregate_bn: bool                    # BN after the aggregation's ReLU
    attention_norm: bool                  # ReLU and BN in the pooling's attention
    pooling_statistics: str               # models._pooling.POOLING_STATISTICS
    embedding_bn: bool                    # BN after the embedding layer


LAYOUTS = {
    # This module's network, the paper's.
    "paper": Layout(True, "zeros", False, AGGREGATED_CHANNELS, False, True, "default", True),
    # speechbrain lobes/models/ECAPA_TDNN.py: blocks in a chain, convolutions padded by
    # reflection, the aggregation a TDNN block (conv, ReLU, BN) of 3 x C channels, no BN
    # after the embedding layer.
    "speechbrain": Layout(False, "reflect", False, None, True, True, "speechbrain", False),
    # wespeaker models/ecapa_tdnn.py (ECAPA_TDNN_GLOB_c*): blocks in a chain, Res2Net's last
    # group passed on, ASTP attention without ReLU and BN, no BN after the embedding layer.
    "wespeaker": Layout(False, "zeros", True, AGGREGATED_CHANNELS, False, False, "wespeaker", False),
}
FRONT_ENDS = ("fbank", "mfcc", "kaldi_fbank", "speechbrain_fbank")


def add_arguments(parser):
    """ECAPA-TDNN's own options (read by options.parse_options when --model ECAPA_TDNN)."""
    parser.add_argument("--channels", type=int, default=512,
                        help="ECAPA-TDNN width C of the frame layers (Desplanques et al. 2020: "
                             "512 gives 6.2 M parameters, 1024 gives 14.7 M)")
    add_input_features_option(parser, FRONT_ENDS,
                              help="ECAPA-TDNN input: log-mel filterbanks or MFCCs (the paper's), "
                                   "--n_mels of them; kaldi_fbank and speechbrain_fbank are wespeaker's "
                                   "and speechbrain's features")
    parser.add_argument("--ecapa_layout", type=str, default="paper", choices=tuple(LAYOUTS),
                        help="ECAPA-TDNN as the paper describes it, or as speechbrain or wespeaker "
                             "implement it (their released weights compute their own network)")


class MFCCFrontend(FrontEnd):
    """Waveform (B x samples) -> instance-normalised MFCCs (B x n_mfcc x frames).

    ECAPA-TDNN's input in Desplanques et al. 2020 (80 MFCCs, 25 ms window, 10 ms step). The
    log is always taken (MFCCs are cepstra of log energies), with the same 1e-6 floor as the
    log-mels rather than torchaudio's dB scaling, whose top_db clamp depends on the loudest
    utterance of the batch. Cepstral mean and variance normalisation by instance norm.
    """

    def __init__(self, n_mfcc=80):
        super().__init__()
        self.mfcc = torchaudio.transforms.MFCC(
            sample_rate=SAMPLE_RATE, n_mfcc=n_mfcc, log_mels=True,
            melkwargs=dict(n_fft=N_FFT, win_length=WINDOW, hop_length=HOP,
                           window_fn=torch.hamming_window, n_mels=n_mfcc))
        self.instancenorm = nn.InstanceNorm1d(n_mfcc)
        self.spec_augment = None

    def compute_features(self, wav):
        return self.instancenorm(self.mfcc(wav))


def build_frontend(input_features, n_mels, log_input):
    if input_features == "fbank":
        return LogMelFrontend(n_mels=n_mels, log_input=log_input)
    if input_features == "mfcc":
        return MFCCFrontend(n_mfcc=n_mels)
    if input_features in ("kaldi_fbank", "speechbrain_fbank"):
        if not log_input:
            raise UserError(f"--input_features {input_features} gives log filterbanks; drop --log_input false")
        return KaldiFbankFrontend(n_mels) if input_features == "kaldi_fbank" else SpeechBrainFbankFrontend(n_mels)
    raise UserError(f"--input_features '{input_features}': choose {', '.join(FRONT_ENDS)}")


class ECAPATDNN(nn.Module):
    def __init__(self, nOut=192, channels=512, n_mels=80, log_input=True, input_features="fbank",
                 layout="paper"):
        super().__init__()
        self.layout_name, self.layout = layout, LAYOUTS[layout]
        self.features = build_frontend(input_features, n_mels, log_input)
        padding_mode = self.layout.padding_mode
        self.stem = Conv1dReluBn(n_mels, channels, kernel_size=5, padding_mode=padding_mode)
        self.blocks = nn.ModuleList(
            SERes2NetBlock(channels, kernel_size=3, dilation=d, scale=RES2NET_SCALE,
                           se_bottleneck=SE_BOTTLENECK, padding_mode=padding_mode,
                           passthrough_last=self.layout.res2net_passthrough_last) for d in DILATIONS)
        aggregated = self.layout.aggregate_channels or channels * len(DILATIONS)
        aggregate = [nn.Conv1d(channels * len(DILATIONS), aggregated, kernel_size=1), nn.ReLU(inplace=True)]
        if self.layout.aggregate_bn:
            aggregate.append(nn.BatchNorm1d(aggregated))
        self.aggregate = nn.Sequential(*aggregate)
        self.pool = ChannelAttentiveStatsPooling(
            aggregated, bottleneck=ATTENTION_BOTTLENECK, with_std=True, global_context=True, tanh=True,
            attention_norm=self.layout.attention_norm, statistics=self.layout.pooling_statistics)
        self.pool_bn = nn.BatchNorm1d(self.pool.out_dim)
        self.fc = nn.Linear(self.pool.out_dim, nOut)
        self.embedding_bn = nn.BatchNorm1d(nOut) if self.layout.embedding_bn else nn.Identity()

    def check_length(self, wav):
        """Reflected padding of p frames needs more than p frames (the stem's and the blocks'
        largest p), so a shorter input is refused in one line instead of failing inside torch."""
        paddings = [self.stem[0].padding[0]] + [block.res2net.convs[0][0].padding[0] for block in self.blocks]
        min_frames = 1 + max(paddings)
        if int(self.features.frame_counts(torch.tensor(wav.shape[-1]))) < min_frames:
            samples = next(n for n in itertools.count(wav.shape[-1])
                           if int(self.features.frame_counts(torch.tensor(n))) >= min_frames)
            raise UserError(f"ECAPA-TDNN with --ecapa_layout {self.layout_name} needs inputs of at least "
                            f"{samples} samples ({min_frames} frames); got {wav.shape[-1]}")

    def forward(self, wav):
        # Not while tracing or exporting: the check is a Python branch on the input's length.
        if self.layout.padding_mode != "zeros" and not (torch.jit.is_tracing() or torch.compiler.is_exporting()):
            self.check_length(wav)
        x = self.stem(self.features(wav))                      # B x C x frames
        block_outputs = []
        for block in self.blocks:
            out = block(x)
            block_outputs.append(out)
            # Dense sum (the paper's): each block sees the stem's and every earlier block's
            # output; in a chain, only the previous block's.
            x = x + out if self.layout.dense_sum else out
        frames = self.aggregate(torch.cat(block_outputs, dim=1))  # B x aggregated x frames
        utterance = self.pool_bn(self.pool(frames.transpose(1, 2)))
        return self.embedding_bn(self.fc(utterance))


def MainModel(nOut=192, encoder_type="ASP", n_mels=80, log_input=True, channels=512,
              input_features="fbank", ecapa_layout="paper", **kwargs):
    # ECAPA-TDNN has one pooling, attentive statistics; naming another would silently
    # change nothing, so it is refused.
    check_encoder_type(encoder_type, ("ASP",))
    return ECAPATDNN(nOut=nOut, channels=channels, n_mels=n_mels, log_input=log_input,
                     input_features=input_features, layout=ecapa_layout)
