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
"""
import torch
import torch.nn as nn
import torchaudio

from speakernet.errors import UserError
from models._ecapa_blocks import Conv1dReluBn, SERes2NetBlock
from models._layers import (HOP, N_FFT, SAMPLE_RATE, WINDOW, ChannelAttentiveStatsPooling, FrontEnd, LogMelFrontend,
                            add_input_features_option, check_encoder_type)
from models._specaugment import with_spec_augment

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


def add_arguments(parser):
    """ECAPA-TDNN's own options (read by options.parse_options when --model ECAPA_TDNN)."""
    parser.add_argument("--channels", type=int, default=512,
                        help="ECAPA-TDNN width C of the frame layers (Desplanques et al. 2020: "
                             "512 gives 6.2 M parameters, 1024 gives 14.7 M)")
    add_input_features_option(parser, ("fbank", "mfcc"),
                              help="ECAPA-TDNN input: log-mel filterbanks or MFCCs (the paper's), "
                                   "--n_mels of them")


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
    raise UserError(f"--input_features '{input_features}': choose fbank or mfcc")


class ECAPATDNN(nn.Module):
    def __init__(self, nOut=192, channels=512, n_mels=80, log_input=True, input_features="fbank"):
        super().__init__()
        self.features = build_frontend(input_features, n_mels, log_input)
        self.stem = Conv1dReluBn(n_mels, channels, kernel_size=5)
        self.blocks = nn.ModuleList(
            SERes2NetBlock(channels, kernel_size=3, dilation=d, scale=RES2NET_SCALE,
                           se_bottleneck=SE_BOTTLENECK) for d in DILATIONS)
        self.aggregate = nn.Sequential(
            nn.Conv1d(channels * len(DILATIONS), AGGREGATED_CHANNELS, kernel_size=1),
            nn.ReLU(inplace=True))
        self.pool = ChannelAttentiveStatsPooling(
            AGGREGATED_CHANNELS, bottleneck=ATTENTION_BOTTLENECK, with_std=True,
            global_context=True, tanh=True)
        self.pool_bn = nn.BatchNorm1d(self.pool.out_dim)
        self.fc = nn.Linear(self.pool.out_dim, nOut)
        self.embedding_bn = nn.BatchNorm1d(nOut)

    def forward(self, wav):
        x = self.stem(self.features(wav))                      # B x C x frames
        block_outputs = []
        for block in self.blocks:
            # Dense sum: each block sees the stem's and every earlier block's output.
            out = block(x)
            block_outputs.append(out)
            x = x + out
        frames = self.aggregate(torch.cat(block_outputs, dim=1))  # B x 1536 x frames
        utterance = self.pool_bn(self.pool(frames.transpose(1, 2)))
        return self.embedding_bn(self.fc(utterance))


def MainModel(nOut=192, encoder_type="ASP", n_mels=80, log_input=True, channels=512,
              input_features="fbank", **kwargs):
    # ECAPA-TDNN has one pooling, attentive statistics; naming another would silently
    # change nothing, so it is refused.
    check_encoder_type(encoder_type, ("ASP",))
    return with_spec_augment(ECAPATDNN(nOut=nOut, channels=channels, n_mels=n_mels, log_input=log_input,
                                       input_features=input_features), **kwargs)
