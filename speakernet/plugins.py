"""Find models, objectives, optimizers and schedulers by file name.

`--model ECAPA_TDNN` imports `models/ECAPA_TDNN.py`; adding a component is adding a
file, with no central list to edit. Each kind names the factory its files must expose.
"""
import difflib
import importlib
import pkgutil
from pathlib import Path

from speakernet.errors import UnknownComponentError

FACTORIES = {
    "models": "MainModel",
    "loss": "LossFunction",
    "optimizer": "Optimizer",
    "scheduler": "Scheduler",
}
OPTION_FOR_KIND = {"models": "--model", "loss": "--trainfunc", "optimizer": "--optimizer",
                   "scheduler": "--scheduler"}
ROOT = Path(__file__).resolve().parents[1]      # the repository: models/, loss/, ...


def available(kind):
    """Names of the plug-ins of `kind`: every module in its folder whose name does not start
    with '_' (helper files such as loss/_objective.py start with one)."""
    return sorted(info.name for info in pkgutil.iter_modules([str(ROOT / kind)])
                  if not info.name.startswith("_"))


def load_module(kind, name):
    """Import `kind/name.py`; raise UnknownComponentError naming the closest valid name."""
    choices = available(kind)
    if not name or name not in choices:
        hint = difflib.get_close_matches(name or "", choices, n=1, cutoff=0.3)
        nearest = f" Did you mean '{hint[0]}'?" if hint else ""
        raise UnknownComponentError(
            f"{OPTION_FOR_KIND[kind]} '{name}': no such file {kind}/{name}.py.{nearest} "
            f"Available: {', '.join(choices)}")
    module = importlib.import_module(f"{kind}.{name}")
    if not hasattr(module, FACTORIES[kind]):
        raise UnknownComponentError(f"{kind}/{name}.py has no {FACTORIES[kind]}: a plug-in of {kind}/ "
                                    f"defines one (helper files are named with a leading '_')")
    return module


def factory(kind, name):
    """The callable that builds component `name` of `kind`."""
    return getattr(load_module(kind, name), FACTORIES[kind])
