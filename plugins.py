"""Find models, objectives, optimizers and schedulers by file name.

`--model ECAPA_TDNN` imports `models/ECAPA_TDNN.py`; adding a component is adding a
file, with no central list to edit. Each kind names the factory its files must expose.
"""
import difflib
import importlib
import pkgutil
import re
from pathlib import Path

from errors import UnknownComponentError

FACTORIES = {
    "models": "MainModel",
    "loss": "LossFunction",
    "optimizer": "Optimizer",
    "scheduler": "Scheduler",
}
OPTION_FOR_KIND = {"models": "--model", "loss": "--trainfunc", "optimizer": "--optimizer",
                   "scheduler": "--scheduler"}
ROOT = Path(__file__).resolve().parent


def available(kind):
    """Names of the files of `kind` that expose the kind's factory."""
    names = []
    for info in pkgutil.iter_modules([str(ROOT / kind)]):
        if info.name.startswith("_"):
            continue
        source = ROOT / kind / f"{info.name}.py"
        # Read the source rather than import it: listing must not run every file.
        pattern = rf"^(def|class) {FACTORIES[kind]}\b"
        if source.exists() and re.search(pattern, source.read_text(), re.MULTILINE):
            names.append(info.name)
    return sorted(names)


def load_module(kind, name):
    """Import `kind/name.py`; raise UnknownComponentError naming the closest valid name."""
    choices = available(kind)
    if not name or name not in choices:
        hint = difflib.get_close_matches(name or "", choices, n=1, cutoff=0.3)
        nearest = f" Did you mean '{hint[0]}'?" if hint else ""
        raise UnknownComponentError(
            f"{OPTION_FOR_KIND[kind]} '{name}': no such file {kind}/{name}.py.{nearest} "
            f"Available: {', '.join(choices)}")
    return importlib.import_module(f"{kind}.{name}")


def factory(kind, name):
    """The callable that builds component `name` of `kind`."""
    return getattr(load_module(kind, name), FACTORIES[kind])
