"""wespeaker's ResNet r-vector family (Wang et al., "Wespeaker: a research and production
oriented speaker embedding learning toolkit", ICASSP 2023; wenet-e2e/wespeaker,
wespeaker/models/resnet.py and examples/voxceleb/v2/conf/resnet.yaml).

Hyperparameters and where they come from:
- input: 80-dim log mel filterbank, 25 ms / 10 ms, mean-normalised per utterance (CMN, no
  variance normalisation; resnet.yaml fbank_args num_mel_bins 80, frame_length 25,
  frame_shift 10, and wespeaker's per-utterance mean subtraction before the network);
- 2-D ResNet with m_channels = 32 base channels (resnet.py ResNet default), widths 32/64/128/256
  (x4 for Bottleneck), a 3x3 stem without stride or max-pooling, stride 2 (frequency and time)
  at the start of stages 2-4 (resnet.py);
- ResNet-34: BasicBlock [3, 4, 6, 3]; ResNet-221: Bottleneck [6, 16, 48, 3]; ResNet-293:
  Bottleneck [10, 20, 64, 3] (resnet.py ResNet34 / ResNet221 / ResNet293);
- temporal statistics pooling (TSTP: mean and std over time of the flattened channel x frequency
  map) and one 256-d linear embedding layer (resnet.yaml: pooling_func TSTP, embed_dim 256,
  two_emb_layer False).

Sizes with the defaults (80 mels, 256-d embedding); MACs for 2 s (32,240 samples, 202 frames)
from speakernet.tools.model_tools.count_macs, against wespeaker's VoxCeleb model table
(examples/voxceleb/v2/README.md: Params / "Flops", which are thop MACs for 200 frames):
    ResNet-34   6,634,336 parameters (published 6.63 M),   4.61 GMACs (4.55 G)
    ResNet-221 23,792,224 parameters (published 23.79 M), 21.32 GMACs (21.29 G)
    ResNet-293 28,626,016 parameters (published 28.62 M), 28.12 GMACs (28.10 G)
(our front end gives 202 frames for 2 s where Kaldi's gives 200, hence MACs up to 1.4% higher).

Differences from wespeaker: by default a torchaudio mel filterbank on the waveform inside the
model (a Hamming window, no Kaldi pre-emphasis, DC removal or dither) instead of Kaldi fbank
features; --input_features kaldi_fbank computes wespeaker's own features
(models._frontends.KaldiFbankFrontend), which its released models need (speakernet/model/public_models.py).
Initialisation is PyTorch's default, as in wespeaker: with the He-normal start of
models._layers an untrained ResNet-293 in eval mode (BN still the identity) doubles its
activations at every residual block and gives embeddings of order 1e16.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models._frontends import KaldiFbankFrontend, LogMelFrontend, add_input_features_option
from models._layers import StridedPointwiseConv, as_image, use_channels_last
from models._pooling import TimePooling, check_encoder_type
from speakernet.core.errors import OptionError

# The paper's defaults when the user sets neither YAML nor command line (resnet.yaml).
OPTION_DEFAULTS = {"nOut": 256, "n_mels": 80, "log_input": True, "encoder_type": "TSTP"}

BASE_CHANNELS = 32        # m_channels (resnet.py)
STAGE_STRIDES = (1, 2, 2, 2)
FRONT_ENDS = ("fbank", "kaldi_fbank")     # --input_features (build_frontend)


def add_arguments(parser):
    """ResNet's own options (read by options.parse_options when --model ResNet)."""
    parser.add_argument("--resnet_depth", type=int, default=34, choices=sorted(DEPTHS),
                        help="wespeaker ResNet depth: 34 (BasicBlock 3-4-6-3, 6.63 M), "
                             "221 (Bottleneck 6-16-48-3, 23.79 M), 293 (Bottleneck "
                             "10-20-64-3, 28.62 M)")
    parser.add_argument("--resnet_channels", type=int, default=BASE_CHANNELS,
                        help="ResNet base width m_channels (wespeaker: 32; smaller only for "
                             "quick experiments)")
    add_input_features_option(parser, FRONT_ENDS,
                              help="fbank: torchaudio log-mels, mean-normalised; kaldi_fbank: "
                                   "wespeaker's Kaldi filterbank with CMN (its released models need it)")


class MeanNormalization(nn.Module):
    """Subtract each feature's mean over time (per utterance): wespeaker's CMN, which keeps the
    variance, unlike the instance norm of LogMelFrontend that this replaces."""

    def forward(self, feats):                                  # B x bins x frames
        return feats - feats.mean(dim=-1, keepdim=True)


def mean_normalised_log_mels(n_mels, log_input):
    """LogMelFrontend with CMN instead of mean-and-variance normalisation (SpecAugment still
    masks with 0, which is the mean of mean-normalised features)."""
    frontend = LogMelFrontend(n_mels=n_mels, log_input=log_input)
    frontend.instancenorm = MeanNormalization()
    return frontend


def build_frontend(input_features, n_mels, log_input):
    """The front end --input_features names; both are log filterbanks with CMN."""
    if input_features not in FRONT_ENDS:
        raise OptionError(f"--input_features '{input_features}': ResNet takes {' or '.join(FRONT_ENDS)}")
    if input_features == "kaldi_fbank":
        if not log_input:
            raise OptionError("--input_features kaldi_fbank gives log filterbanks; drop --log_input false")
        return KaldiFbankFrontend(n_mels)
    return mean_normalised_log_mels(n_mels, log_input)


class TemporalStatsPooling(TimePooling):
    """TSTP: mean and standard deviation over the last (time) axis of B x ... x T features,
    everything else flattened (x-vector statistics pooling, wespeaker pooling_layers.TSTP).
    The unbiased variance plus 1e-8 keeps sqrt's gradient finite for a constant channel."""
    time_dim = -1

    def __init__(self, in_dim):
        super().__init__()
        self.out_dim = 2 * in_dim

    def forward(self, x):
        valid = self.valid(x)
        if valid is None:
            mean, var = x.mean(dim=-1), torch.var(x, dim=-1)
        else:                                   # the real frames of a padded batch only
            mask = valid.reshape(valid.shape[0], *([1] * (x.dim() - 2)), -1).to(x.dtype)
            count = mask.sum(dim=-1)
            mean = (x * mask).sum(dim=-1) / count
            var = ((x - mean[..., None]).pow(2) * mask).sum(dim=-1) / (count - 1)
        return torch.cat((mean.flatten(1), torch.sqrt(var + 1e-8).flatten(1)), dim=1)


def _shortcut(in_channels, out_channels, stride):
    """Identity, or a strided 1x1 projection + BN where the shape changes (He et al. 2016 B)."""
    if stride in (1, (1, 1)) and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(StridedPointwiseConv(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions, conv-BN-ReLU order, plain residual (no SE). `stride` may be a
    tuple: CAM++'s front module strides frequency only, (2, 1)."""
    expansion = 1

    def __init__(self, in_channels, channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = _shortcut(in_channels, channels, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, residual (He et al. 2016; ResNet-221/293)."""
    expansion = 4

    def __init__(self, in_channels, channels, stride=1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


DEPTHS = {34: (BasicBlock, (3, 4, 6, 3)),
          221: (Bottleneck, (6, 16, 48, 3)),
          293: (Bottleneck, (10, 20, 64, 3))}


def make_stage(block, in_channels, channels, blocks, stride):
    """A stage of `blocks` blocks; the first may stride and widen. Returns (stage, out width)."""
    layers = []
    for i in range(blocks):
        layers.append(block(in_channels, channels, stride if i == 0 else 1))
        in_channels = channels * block.expansion
    return nn.Sequential(*layers), in_channels


def strided_size(size, strides):
    """Length left after 3x3 / padding 1 convolutions with these strides (ceil division)."""
    for stride in strides:
        size = (size - 1) // stride + 1
    return size


class ResNet(nn.Module):
    padded_batches = True         # files of different lengths batch exactly (models/_padded.py)

    def __init__(self, depth=34, nOut=256, n_mels=80, log_input=True, m_channels=BASE_CHANNELS,
                 input_features="fbank"):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"--resnet_depth {depth}: choose one of {sorted(DEPTHS)}")
        if m_channels < 1:
            raise ValueError(f"--resnet_channels must be positive, got {m_channels}")
        block, blocks = DEPTHS[depth]
        self.features = build_frontend(input_features, n_mels, log_input)
        self.conv1 = nn.Conv2d(1, m_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        width = m_channels
        for i, (count, stride) in enumerate(zip(blocks, STAGE_STRIDES)):
            stage, width = make_stage(block, width, m_channels * 2 ** i, count, stride)
            setattr(self, f"layer{i + 1}", stage)
        # Frequency bins left after the strided stages, flattened with the channels per frame.
        self.pool = TemporalStatsPooling(width * strided_size(n_mels, STAGE_STRIDES))
        self.fc = nn.Linear(self.pool.out_dim, nOut)
        use_channels_last(self)

    def forward(self, wav):
        x = as_image(self.features(wav))                        # B x 1 x mels x frames
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x))                            # pool: B x C x F x T -> B x 2CF


def MainModel(nOut=256, encoder_type="TSTP", n_mels=80, log_input=True, resnet_depth=34,
              resnet_channels=BASE_CHANNELS, input_features="fbank", **kwargs):
    # One pooling, statistics (TSTP); naming another would silently change nothing.
    check_encoder_type(encoder_type, ("TSTP",))
    return ResNet(depth=resnet_depth, nOut=nOut, n_mels=n_mels,
                  log_input=log_input, m_channels=resnet_channels,
                  input_features=input_features)
