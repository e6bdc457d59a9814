"""Imports point down the layers of docs/design.md, lazy imports included:

    entry points          trainSpeakerNet.py, data_prep.py, ablate.py, benchmarks/
    voxceleb_trainer's    SpeakerNet.py, DatasetLoader.py, tuneThreshold.py, utils.py
    tools                 speakernet/tools/, speakernet/prep/
    model                 speakernet/model/
    run                   speakernet/run/
    evaluation            speakernet/eval/
    data                  speakernet/data/
    plug-ins              models/, loss/, optimizer/, scheduler/
    shared helpers        speakernet/core/

Each file may import its own layer and those below it, never one above."""
import ast

import pytest

from conftest import REPO

PLUG_IN_FOLDERS = ("models", "loss", "optimizer", "scheduler")
VOXCELEB_TRAINER_FILES = ("SpeakerNet", "DatasetLoader", "tuneThreshold", "utils")
ENTRY_POINTS = ("trainSpeakerNet", "data_prep", "ablate", "benchmarks")
PROJECT_TOP = {"speakernet", *PLUG_IN_FOLDERS, *VOXCELEB_TRAINER_FILES, *ENTRY_POINTS}
SUBPACKAGES = {"core": "shared helpers", "data": "data", "eval": "evaluation", "run": "run", "model": "model",
               "tools": "tools", "prep": "tools"}
LAYERS = ("shared helpers", "plug-ins", "data", "evaluation", "run", "model", "tools",
          "voxceleb_trainer's files", "entry points")


def layer_of(module):
    """The layer of a dotted module name of this project."""
    parts = module.split(".")
    if module == "speakernet":
        return "shared helpers"         # the package's __init__, which imports nothing
    if parts[0] == "speakernet":
        if parts[1] not in SUBPACKAGES:
            raise AssertionError(f"{module}: not in a subpackage of speakernet/ ({', '.join(SUBPACKAGES)})")
        return SUBPACKAGES[parts[1]]
    if parts[0] in PLUG_IN_FOLDERS:
        return "plug-ins"
    if parts[0] in VOXCELEB_TRAINER_FILES:
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


def test_speakernet_holds_subpackages_only():
    """Every module of speakernet/ sits in the subpackage of its role (layer_of refuses others)."""
    loose = sorted(p.name for p in (REPO / "speakernet").glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside the subpackages: {loose}"
    assert {p.parent.name for p in (REPO / "speakernet").glob("*/__init__.py")} == set(SUBPACKAGES)


@pytest.mark.parametrize("module,line", [
    ("speakernet.eval.evaluation", "from DatasetLoader import read_train_list"),
    ("speakernet.core.audio", "from speakernet.run import options"),
    ("speakernet.data.sampler", "from speakernet.eval.metrics import compute_eer"),
    ("speakernet.eval.evaluation", "from speakernet.run.options import parse_options"),
    ("speakernet.run.resume", "from speakernet.model.embedder import Embedder"),
    ("speakernet.model.embedder", "def f():\n    from speakernet.tools import commands"),      # lazy
    ("speakernet.tools.commands", "import SpeakerNet"),
    ("speakernet.core.errors", "import models._layers"),
    ("models.ResNet", "from speakernet.run.options import OptionError"),
    ("loss.aamsoftmax", "def f():\n    from SpeakerNet import Trainer"),      # lazy
    ("speakernet.eval.plots", "import tuneThreshold as metrics"),
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
