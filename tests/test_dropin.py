"""voxceleb_trainer's loss and encoder files drop in unchanged: their imports (`from utils import
accuracy`, `from utils import PreEmphasis`, `from models.ResNetBlocks import *`) resolve here,
to the same functions and to blocks whose parameters carry that project's checkpoint names."""
import importlib
import json
import sys
import uuid

import numpy as np
import pytest
import torch
import torch.nn as nn

import trainSpeakerNet
from conftest import REPO, train_argv
from models.ResNetBlocks import SEBasicBlock, SEBottleneck, SELayer
from speakernet.core import checkpoint
from speakernet.data import packed_audio
from speakernet.run import plugins
from utils import PreEmphasis, accuracy

REFERENCE = REPO / "tests" / "fixtures" / "voxceleb_trainer-state-dicts.json"

# A metric loss written as voxceleb_trainer writes them, its import lines first: the anchor of
# each speaker is the mean of its other views, the logits negative squared distances.
VT_PROTOTYPICAL_LOSS = '''import torch
import torch.nn as nn
import torch.nn.functional as F
from utils import accuracy


class LossFunction(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.test_normalize = False
        self.criterion = torch.nn.CrossEntropyLoss()

    def forward(self, x, label=None):
        anchor, positive = x[:, 1:, :].mean(dim=1), x[:, 0, :]
        logits = -torch.cdist(positive, anchor).pow(2)
        target = torch.arange(x.size(0), device=x.device)
        return self.criterion(logits, target), accuracy(logits.detach(), target, topk=(1,))[0]
'''

# An encoder written as voxceleb_trainer writes them: it computes its own features (no FrontEnd
# of this project) and records what it is given, for the test to read.
VT_ENCODER = '''import torch
import torchaudio
import torch.nn as nn
import torch.nn.functional as F
from models.ResNetBlocks import *
from utils import PreEmphasis

RECEIVED = []          # (training mode, input dtype) of every call


class TinySENet(nn.Module):
    def __init__(self, nOut, n_mels=40, **kwargs):
        super().__init__()
        self.torchfb = nn.Sequential(
            PreEmphasis(),
            torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=512, win_length=400,
                                                 hop_length=160, window_fn=torch.hamming_window,
                                                 n_mels=n_mels))
        self.instancenorm = nn.InstanceNorm1d(n_mels)
        self.conv1 = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        project = nn.Sequential(nn.Conv2d(8, 16, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.layer1 = nn.Sequential(SEBasicBlock(8, 16, 2, project), SEBasicBlock(16, 16))
        self.fc = nn.Linear(16 * SEBasicBlock.expansion, nOut)

    def forward(self, x):
        RECEIVED.append((self.training, x.dtype))
        with torch.no_grad():
            x = self.instancenorm((self.torchfb(x) + 1e-6).log()).unsqueeze(1)
        x = self.layer1(F.relu(self.conv1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def MainModel(nOut=256, **kwargs):
    return TinySENet(nOut, **kwargs)
'''


# ------------------------------------------------------------------- plug-ins written by a test

@pytest.fixture
def install(tmp_path, monkeypatch):
    """install(kind, source) -> name: `source` as a plug-in of `kind` found by its name, from a
    folder of this test only (a file in models/ or loss/ would show in other runs' listings)."""
    installed = []

    def install(kind, source):
        name = f"dropin_{uuid.uuid4().hex[:8]}"
        folder = tmp_path / "plugins" / kind
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.py").write_text(source)
        package = importlib.import_module(kind)
        monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
        listed = plugins.available
        monkeypatch.setattr(plugins, "available",
                            lambda k: sorted(listed(k) + [name]) if k == kind else listed(k))
        installed.append(f"{kind}.{name}")
        return name

    yield install
    for module in installed:
        sys.modules.pop(module, None)


def train_one_epoch(corpus, save, **overrides):
    argv = train_argv(corpus, save, max_epoch=1, **overrides)
    assert trainSpeakerNet.main([str(a) for a in argv]) == 0
    return checkpoint.load_file(checkpoint.checkpoint_path(save / "model", 1))


def test_a_voxceleb_trainer_metric_loss_trains(install, corpus, tmp_path):
    name = install("loss", VT_PROTOTYPICAL_LOSS)
    train_one_epoch(corpus, tmp_path / "exp", trainfunc=name, nPerSpeaker=2)
    epoch = json.loads((tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 <= epoch["metric"] <= 100          # accuracy() is in percent


def received(name):
    """{training mode: the input dtypes the installed encoder was called with in it}."""
    seen = {}
    for training, dtype in sys.modules[f"models.{name}"].RECEIVED:
        seen.setdefault(training, set()).add(dtype)
    return seen


def test_a_voxceleb_trainer_encoder_trains(install, corpus, tmp_path):
    name = install("models", VT_ENCODER)
    state = train_one_epoch(corpus, tmp_path / "exp", model=name, packs="none")
    # Its parameters keep their own names under 'encoder.', the blocks' as voxceleb_trainer's.
    assert "encoder.layer1.0.se.fc.0.weight" in state["model"]
    assert "encoder.layer1.0.downsample.0.weight" in state["model"]
    assert received(name) == {True: {torch.float32}, False: {torch.float32}}     # train, evaluation


def test_an_encoder_without_frontend_gets_float32_from_packs(install, corpus, tmp_path):
    packed_audio.main(["--list", str(corpus.train_list), "--root", str(corpus.root)])
    name = install("models", VT_ENCODER)
    argv = train_argv(corpus, tmp_path / "exp", max_epoch=1, model=name)       # --packs auto
    code = trainSpeakerNet.main([str(a) for a in argv])
    assert received(name) == {True: {torch.float32}, False: {torch.float32}}     # train, evaluation
    assert code == 0


# ------------------------------------------------------------------------------------- utils

def direct_topk_accuracy(output, target, k):
    """Percent of rows whose target scores below fewer than k other classes."""
    hits = [int((row > row[t]).sum()) < k for row, t in zip(output, target)]
    return 100.0 * sum(hits) / len(hits)


def test_accuracy_is_top_k_percent():
    # Hand-worked: row 0's target is the best class, row 1's the 2nd, row 2's the 6th (last)
    # of 6: top-1 hits row 0 only (1 of 3), top-5 rows 0 and 1 (2 of 3).
    output = torch.tensor([[0.9, 0.1, 0.0, 0.2, 0.3, 0.4],
                           [0.5, 0.8, 0.1, 0.2, 0.3, 0.0],
                           [0.5, 0.8, 0.1, 0.2, 0.3, 0.7]])
    target = torch.tensor([0, 0, 2])
    top1, top5 = accuracy(output, target, topk=(1, 5))
    assert top1.shape == top5.shape == (1,)
    assert top1.item() == pytest.approx(100 * 1 / 3) and top5.item() == pytest.approx(100 * 2 / 3)
    # Random scores (distinct, so ranks are unambiguous), against the direct count.
    gen = torch.Generator().manual_seed(3)
    output, target = torch.randn(50, 12, generator=gen), torch.randint(0, 12, (50,), generator=gen)
    ks = (1, 2, 5, 12)
    for k, got in zip(ks, accuracy(output, target, topk=ks)):
        assert got.item() == pytest.approx(direct_topk_accuracy(output, target, k))
    assert accuracy(output, target)[0].item() == pytest.approx(direct_topk_accuracy(output, target, 1))


@pytest.mark.parametrize("coef", [0.97, 0.5])
def test_pre_emphasis_is_the_first_difference_with_a_reflected_start(coef):
    wav = np.random.default_rng(1).standard_normal((3, 101)).astype(np.float32)
    expected = np.empty_like(wav)
    for b in range(wav.shape[0]):
        expected[b, 0] = wav[b, 0] - coef * wav[b, 1]            # the sample before is x[1]
        for t in range(1, wav.shape[1]):
            expected[b, t] = wav[b, t] - coef * wav[b, t - 1]
    module = PreEmphasis() if coef == 0.97 else PreEmphasis(coef)         # 0.97: the default
    got = module(torch.from_numpy(wav)).numpy()
    assert got.shape == wav.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------ blocks

def make_layer(block, inplanes, planes, blocks, stride=1):
    """A stage as voxceleb_trainer's encoders build it: the caller makes the first block's
    projection when the stride (any tuple included) or the width changes."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion))
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def stages(block, channels, blocks, strides):
    net, inplanes = nn.Module(), channels[0]
    for i, (planes, count, stride) in enumerate(zip(channels, blocks, strides), start=1):
        setattr(net, f"layer{i}", make_layer(block, inplanes, planes, count, stride))
        inplanes = planes * block.expansion
    return net


# voxceleb_trainer's ResNetSE34L and ResNetSE34V2 stages: channels, blocks, strides.
REFERENCE_STAGES = {
    "ResNetSE34L": ((16, 32, 64, 128), (3, 4, 6, 3), (1, (2, 2), (2, 2), (1, 1))),
    "ResNetSE34V2": ((32, 64, 128, 256), (3, 4, 6, 3), (1, (2, 2), (2, 2), (2, 2))),
}


@pytest.mark.parametrize("model", sorted(REFERENCE_STAGES))
def test_se_basic_block_stages_have_the_checkpoint_names_and_shapes(model):
    reference = json.loads(REFERENCE.read_text())[model]["state_dict"]
    expected = {k: tuple(v) for k, v in reference.items() if k.startswith("layer")}
    built = stages(SEBasicBlock, *REFERENCE_STAGES[model]).state_dict()
    assert {k: tuple(v.shape) for k, v in built.items()} == expected


def test_se_layer_has_the_checkpoint_names_and_shapes():
    reference = json.loads(REFERENCE.read_text())["ResNetSE34L"]["state_dict"]
    prefix = "layer2.0.se."
    expected = {k[len(prefix):]: tuple(v) for k, v in reference.items() if k.startswith(prefix)}
    channels = expected["fc.2.bias"][0]
    assert {k: tuple(v.shape) for k, v in SELayer(channels).state_dict().items()} == expected


def randomized_batch_norms(module):
    """`module` in evaluation mode with random BatchNorm statistics and affine parameters, so
    that the order of BatchNorm and ReLU shows in the output."""
    gen = torch.Generator().manual_seed(5)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            for tensor, low in ((m.weight.data, 0.5), (m.bias.data, -1.0), (m.running_mean, -1.0),
                                (m.running_var, 0.5)):
                tensor.copy_(low + torch.rand(tensor.shape, generator=gen))
    return module.eval()


def test_se_basic_block_computes_voxceleb_trainers_order():
    torch.manual_seed(0)
    project = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
    block = randomized_batch_norms(SEBasicBlock(4, 8, 2, project))
    assert block.downsample is project and block.stride == 2
    x = torch.randn(2, 4, 10, 12)
    with torch.no_grad():
        out = block.bn1(torch.relu(block.conv1(x)))            # ReLU before the first BatchNorm
        out = block.se(block.bn2(block.conv2(out)))
        assert torch.allclose(block(x), torch.relu(out + project(x)), atol=1e-6)


def test_se_bottleneck_expands_gates_and_adds_the_residual():
    torch.manual_seed(0)
    planes, width = 4, 4 * SEBottleneck.expansion
    layer = randomized_batch_norms(make_layer(SEBottleneck, 8, planes, 2, stride=2))
    first, second = layer
    x = torch.randn(2, 8, 10, 12)
    names = {k.split(".", 1)[1] for k in layer.state_dict() if k.startswith("0.")}
    assert {"conv3.weight", "bn3.running_var", "se.fc.0.weight", "downsample.0.weight"} <= names
    assert first.se.fc[0].weight.shape == (width // 8, width)              # reduction 8
    with torch.no_grad():
        out = torch.relu(first.bn1(first.conv1(x)))          # BatchNorm before ReLU here
        out = torch.relu(first.bn2(first.conv2(out)))        # the 3x3 carries the stride
        out = first.se(first.bn3(first.conv3(out)))
        expected = torch.relu(out + first.downsample(x))
        assert expected.shape == (2, width, 5, 6)
        assert torch.allclose(first(x), expected, atol=1e-6)
        # With the last BatchNorm zeroed the residual branch is all that is left.
        nn.init.zeros_(second.bn3.weight)
        nn.init.zeros_(second.bn3.bias)
        assert torch.equal(second(expected), expected)
