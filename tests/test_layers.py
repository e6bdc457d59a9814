"""Imports point down the layers of docs/design.md: plug-ins never import the option
parser, the trainer, the data side or the metrics (their own folders and speakernet/'s helpers
are below them), and the shared helpers import nothing of the project but each other."""
import ast

import pytest

from conftest import REPO

SHARED_HELPERS = {"speakernet.errors", "speakernet.audio", "speakernet.atomic", "speakernet.option_types",
                  "speakernet.config_file"}
PLUG_IN_FOLDERS = ("models", "loss", "optimizer", "scheduler")
ABOVE_PLUG_INS = {"speakernet.options", "trainSpeakerNet", "SpeakerNet", "DatasetLoader", "tuneThreshold", "data_prep"}
PROJECT_TOP = {"trainSpeakerNet", "SpeakerNet", "DatasetLoader", "tuneThreshold", "data_prep", "speakernet",
               *PLUG_IN_FOLDERS}


def project_imports(path):
    """Modules of this project that `path` imports, anywhere in the file (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PROJECT_TOP}
    return found


def module_files(folder):
    return sorted((REPO / folder).glob("*.py"))


@pytest.mark.parametrize("folder", PLUG_IN_FOLDERS)
def test_plug_ins_import_nothing_above_them(folder):
    for path in module_files(folder):
        for name in project_imports(path):
            assert not any(name == a or name.startswith(a + ".") for a in ABOVE_PLUG_INS), \
                f"{path.relative_to(REPO)} imports {name}"


def test_shared_helpers_import_nothing_above_them():
    for module in SHARED_HELPERS:
        path = REPO / (module.replace(".", "/") + ".py")
        for name in project_imports(path):
            assert name in SHARED_HELPERS or any(name.startswith(h + ".") for h in SHARED_HELPERS), \
                f"{path.relative_to(REPO)} imports {name}"
