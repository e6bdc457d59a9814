"""Imports point down the layers of docs/design.md, lazy imports included:

    entry points          trainSpeakerNet.py, data_prep.py, ablate.py, benchmarks/
    voxceleb_trainer's    SpeakerNet.py, DatasetLoader.py, tuneThreshold.py, utils.py
    machinery             speakernet/ (but the shared helpers)
    plug-ins              models/, loss/, optimizer/, scheduler/
    shared helpers        speakernet/: errors, audio, atomic, option_types, config_file

Each file may import its own layer and those below it, never one above."""
import ast

import pytest

from conftest import REPO

SHARED_HELPERS = {"speakernet.errors", "speakernet.audio", "speakernet.atomic", "speakernet.option_types",
                  "speakernet.config_file"}
PLUG_IN_FOLDERS = ("models", "loss", "optimizer", "scheduler")
VOXCELEB_TRAINER_FILES = ("SpeakerNet", "DatasetLoader", "tuneThreshold", "utils")
ENTRY_POINTS = ("trainSpeakerNet", "data_prep", "ablate", "benchmarks")
PROJECT_TOP = {"speakernet", *PLUG_IN_FOLDERS, *VOXCELEB_TRAINER_FILES, *ENTRY_POINTS}
LAYERS = ("shared helpers", "plug-ins", "machinery", "voxceleb_trainer's files", "entry points")


def layer_of(module):
    """The layer of a dotted module name of this project."""
    top = module.split(".")[0]
    if module in SHARED_HELPERS or any(module.startswith(h + ".") for h in SHARED_HELPERS):
        return "shared helpers"
    if top in PLUG_IN_FOLDERS:
        return "plug-ins"
    if top == "speakernet":
        return "machinery"
    if top in VOXCELEB_TRAINER_FILES:
        return "voxceleb_trainer's files"
    return "entry points"


def project_imports(source):
    """Modules of this project that `source` imports, anywhere in it (lazy imports too);
    `from speakernet import x` counts as speakernet.x."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] if node.module in PROJECT_TOP \
                else [node.module]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PROJECT_TOP}
    return found


def upward_imports(module, source):
    """['module imports X (layer)'] for every import of a layer above the module's own."""
    own = LAYERS.index(layer_of(module))
    return [f"{module} imports {name} ({layer_of(name)})" for name in sorted(project_imports(source))
            if LAYERS.index(layer_of(name)) > own]


def project_modules():
    """(dotted name, path) of every Python file of the project, benchmarks included."""
    for path in sorted(REPO.rglob("*.py")):
        relative = path.relative_to(REPO)
        if relative.parts[0] in ("tests", "exps", "data") or relative.parts[0].startswith("."):
            continue
        yield ".".join(relative.with_suffix("").parts).removesuffix(".__init__"), path


def test_every_import_points_down():
    problems = [p for module, path in project_modules() for p in upward_imports(module, path.read_text())]
    assert not problems, "\n".join(problems)


def test_every_layer_is_populated():
    layers = {layer_of(module) for module, _ in project_modules()}
    assert layers == set(LAYERS)


@pytest.mark.parametrize("module,line", [
    ("speakernet.evaluation", "from DatasetLoader import read_train_list"),
    ("speakernet.audio", "from speakernet import checkpoint"),
    ("speakernet.errors", "import models._layers"),
    ("models.ResNet", "from speakernet.options import OptionError"),
    ("loss.aamsoftmax", "def f():\n    from SpeakerNet import Trainer"),      # lazy
    ("speakernet.plots", "import tuneThreshold as metrics"),
    ("SpeakerNet", "from trainSpeakerNet import main"),
])
def test_an_injected_upward_import_is_caught(module, line):
    path = REPO / (module.replace(".", "/") + ".py")
    assert not upward_imports(module, path.read_text())
    assert upward_imports(module, path.read_text() + "\n" + line + "\n")


def test_plug_ins_and_helpers_import_within_their_layers():
    """The helpers import only each other; plug-ins only helpers and plug-in files."""
    for module, path in project_modules():
        layer = layer_of(module)
        if layer in ("shared helpers", "plug-ins"):
            allowed = {"shared helpers"} | ({"plug-ins"} if layer == "plug-ins" else set())
            assert {layer_of(n) for n in project_imports(path.read_text())} <= allowed, module
