"""The objective contract (loss/_objective.py): every objective declares it, a plain
voxceleb_trainer-style loss file still drops in and trains, and a misspelt hook is an error."""
import inspect
import os
import uuid

import pytest
import torch
import torch.nn as nn

from speakernet.core import checkpoint
from speakernet.run import plugins
import trainSpeakerNet
from conftest import REPO, train_argv
from loss._objective import HOOKS, ContractDefaults, Needs, Objective, PlainObjective, as_contract

# A loss file as voxceleb_trainer writes them, its import lines included: nn.Module,
# test_normalize set in __init__, forward(x, label) -> (loss, precision from utils.accuracy).
# Of this project it imports only what voxceleb_trainer's files do (utils.py at the root).
VT_STYLE_LOSS = '''
import torch
import torch.nn as nn
import torch.nn.functional as F
from utils import accuracy


class LossFunction(nn.Module):
    def __init__(self, nOut, nClasses, **kwargs):
        super(LossFunction, self).__init__()
        self.test_normalize = True
        self.criterion = torch.nn.CrossEntropyLoss()
        self.fc = nn.Linear(nOut, nClasses)

    def forward(self, x, label=None):
        logits = self.fc(x)
        top1 = accuracy(logits.detach(), label.detach(), topk=(1,))[0]
        return self.criterion(logits, label), top1
'''


@pytest.fixture
def vt_style_loss():
    name = f"vtstyle_{uuid.uuid4().hex[:8]}"
    path = REPO / "loss" / f"{name}.py"
    path.write_text(VT_STYLE_LOSS)
    yield name
    path.unlink()


def test_a_voxceleb_trainer_loss_file_drops_in_and_trains(vt_style_loss, corpus, tmp_path):
    save = tmp_path / "exp"
    argv = train_argv(corpus, save, trainfunc=vt_style_loss, nPerSpeaker=1, nClasses=6, max_epoch=2)
    assert trainSpeakerNet.main([str(a) for a in argv]) == 0
    state = checkpoint.load_file(checkpoint.checkpoint_path(save / "model", 2))
    # Its parameters keep voxceleb_trainer's names under 'objective.' (no adapter prefix).
    assert {k for k in state["model"] if k.startswith("objective.")} == {"objective.fc.weight", "objective.fc.bias"}
    assert (save / "metrics.jsonl").read_text().count('"val_eer/test_list"') == 2


def test_plain_loss_is_seen_with_the_contract_defaults(vt_style_loss):
    module = plugins.factory("loss", vt_style_loss)(nOut=8, nClasses=3)
    contract = as_contract(module)
    assert isinstance(contract, PlainObjective)
    assert contract.needs == Needs() and contract.test_normalize is True and contract.takes_views is False
    assert contract.view_frames(1, None) is None and contract.utterance_subset(1, 10) is None
    assert contract.augment_fraction(1) is None and contract.data_request() is None
    x, label = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    torch.manual_seed(0)
    assert torch.equal(contract(x, label)[0], module(x, label)[0])


def test_every_objective_in_loss_declares_the_contract():
    for name in plugins.available("loss"):
        if name.startswith("vtstyle_"):
            continue
        factory = plugins.factory("loss", name)
        assert issubclass(factory, Objective), name
        # Declared by the objective itself (in its class or its __init__), not inherited from
        # the contract's default, which suits no objective in particular.
        declared = any("needs" in vars(k) for k in factory.__mro__ if k not in (ContractDefaults, Objective))
        source = inspect.getsource(factory.__init__) if "__init__" in vars(factory) else ""
        assert declared or "self.needs = Needs(" in source, name


@pytest.mark.parametrize("name, hint", [("on_epoch_begin", "on_epoch_end"), ("on_epoch_starts", "on_epoch_start"), ("on_step_ends", "on_step_end"),
                                        ("view_frame", "view_frames"), ("test_normalise", "test_normalize")])
def test_a_misspelt_hook_is_an_error_when_the_class_is_defined(name, hint):
    with pytest.raises(TypeError, match=f"did you mean '{hint}'"):
        type("Misspelt", (Objective,), {name: lambda self, *args: None})


def test_the_replaced_attribute_protocol_is_refused():
    with pytest.raises(TypeError, match="needs = Needs"):
        type("Old", (Objective,), {"min_views": 2})


def test_helpers_and_hooks_of_objectives_pass():
    """Ordinary helper methods and nn.Module methods are not mistaken for hooks."""
    class Fine(Objective):
        needs = Needs(min_views=2)

        def margin_for(self, frames):
            return 0.2

        def forward(self, x, label=None):
            return x.sum(), 0.0

        def on_epoch_start(self, epoch):
            self.epoch = epoch

    assert Fine().needs.min_views == 2 and "on_epoch_start" in HOOKS


def test_objectives_do_no_data_work():
    """loss/ reads no lists and runs no loaders: that is the data side's job."""
    for path in (REPO / "loss").glob("*.py"):
        text = path.read_text()
        for forbidden in ("read_train_list", "DataLoader", "soundfile", "import DatasetLoader",
                          "from DatasetLoader", "import options", "from options", "speakernet.run.options",
                          "from speakernet import options"):
            assert forbidden not in text, f"{path.name} uses {forbidden}"


PARSER_IMPORTS = ("import options", "from options ", "import speakernet.options",
                  "from speakernet.run.options ", "from speakernet import options")


def test_the_parser_import_check_catches_each_spelling():
    for line in ("from speakernet.run.options import OptionError", "import speakernet.options",
                 "from speakernet import options", "from options import x"):
        assert line.startswith(PARSER_IMPORTS), line


def test_plug_ins_never_import_the_option_parser():
    for folder in ("models", "loss", "optimizer", "scheduler"):
        for path in (REPO / folder).glob("*.py"):
            lines = [line.strip() for line in path.read_text().splitlines()]
            assert not any(line.startswith(PARSER_IMPORTS) for line in lines), path
