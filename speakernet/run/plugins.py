"""Find models, objectives, optimizers and schedulers by file name.

`--model ECAPA_TDNN` imports `models/ECAPA_TDNN.py`; adding a component is adding a
file, with no central list to edit. Each kind names the factory its files must expose.
"""
import ast
import difflib
import importlib
import pkgutil
from pathlib import Path

from speakernet.core.errors import UnknownComponentError

FACTORIES = {
    "models": "MainModel",
    "loss": "LossFunction",
    "optimizer": "Optimizer",
    "scheduler": "Scheduler",
}
OPTION_FOR_KIND = {"models": "--model", "loss": "--trainfunc", "optimizer": "--optimizer",
                   "scheduler": "--scheduler"}
ROOT = Path(__file__).resolve().parents[2]      # the repository: models/, loss/, ...


def available(kind):
    """Names of the plug-ins of `kind`: every module in its folder whose name does not start
    with '_' (helper files such as loss/_objective.py start with one) and whose source defines
    the kind's factory (helpers kept under voxceleb_trainer's names, such as
    models/ResNetBlocks.py, define none)."""
    folder = ROOT / kind
    return sorted(info.name for info in pkgutil.iter_modules([str(folder)])
                  if not info.name.startswith("_")
                  and _binds(folder / info.name / "__init__.py" if info.ispkg else folder / f"{info.name}.py",
                             FACTORIES[kind]))


def _binds(source, name):
    """Whether the module's source defines, assigns or imports `name` (read, not imported)."""
    try:
        tree = ast.parse(source.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return True                     # importing it will say what is wrong
    nodes = list(ast.walk(tree))
    bound = {getattr(node, "asname", None) or getattr(node, "name", None) for node in nodes}
    bound |= {node.id for node in nodes if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    return name in bound or "*" in bound


def load_module(kind, name):
    """Import `kind/name.py`; raise UnknownComponentError naming the closest valid name."""
    choices = available(kind)
    if not name or name not in choices:
        if name and (ROOT / kind / f"{name}.py").is_file():       # a helper: models/ResNetBlocks.py
            raise _no_factory(kind, name)
        hint = difflib.get_close_matches(name or "", choices, n=1, cutoff=0.3)
        nearest = f" Did you mean '{hint[0]}'?" if hint else ""
        raise UnknownComponentError(
            f"{OPTION_FOR_KIND[kind]} '{name}': no such file {kind}/{name}.py.{nearest} "
            f"Available: {', '.join(choices)}")
    module = importlib.import_module(f"{kind}.{name}")
    if not hasattr(module, FACTORIES[kind]):
        raise _no_factory(kind, name)
    return module


def _no_factory(kind, name):
    return UnknownComponentError(f"{kind}/{name}.py has no {FACTORIES[kind]}: a plug-in of {kind}/ "
                                 f"defines one (helper files are named with a leading '_')")


def factory(kind, name):
    """The callable that builds component `name` of `kind`."""
    return getattr(load_module(kind, name), FACTORIES[kind])
