"""Checkpoint files: atomic writes, safe loads, and voxceleb_trainer compatibility."""
import logging
import math
import os
import random
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from speakernet.core.errors import CheckpointError
from speakernet.core.atomic import atomic_file

log = logging.getLogger(__name__)

FORMAT = "speakernet-checkpoint-1"
NAME = re.compile(r"^model(\d{9})\.model$")
# The mid-epoch checkpoint (--checkpoint_minutes/--checkpoint_steps): one file, replaced each time.
PARTIAL = "partial.model"
TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")       # speakernet.core.atomic's .NAME.PID.tmp


def checkpoint_path(model_dir, epoch):
    return Path(model_dir) / f"model{epoch:09d}.model"


def list_checkpoints(model_dir):
    """[(epoch, path)] of this project's checkpoints in `model_dir`, oldest first."""
    found = []
    if Path(model_dir).is_dir():
        for path in Path(model_dir).iterdir():
            match = NAME.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found)


def prune_checkpoints(model_dir, keep_last):
    """Delete all but the newest `keep_last` epoch checkpoints (0 keeps everything)."""
    if keep_last > 0:
        for _, path in list_checkpoints(model_dir)[:-keep_last]:
            path.unlink(missing_ok=True)


def save_atomic(obj, path):
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`:
    a crash mid-write leaves the previous file intact. A failed write (disk full, read-only
    folder) is a CheckpointError that says so."""
    path = Path(path)
    try:
        with atomic_file(path, fsync=True) as handle:
            torch.save(obj, handle)
    except (OSError, RuntimeError) as err:
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise CheckpointError(f"cannot write {path}: {_write_failure(path, err)}; {kept} (free some "
                              f"space in {path.parent} and run again to resume)") from None


# Less than this free after a failed write means the disk is full.
FULL_DISK_BYTES = 1 << 20


def _write_failure(path, err):
    """Why a checkpoint write failed, in words. torch's archive writer reports a short write (a
    full disk) as a RuntimeError about stream positions, without the system's error."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    try:
        full = shutil.disk_usage(path.parent).free < FULL_DISK_BYTES
    except OSError:
        full = False
    first_line = (str(err).splitlines() or [""])[0]
    return "No space left on device" if full else f"the write failed ({first_line})"


def remove_stale_temporaries(folder):
    """Delete save_atomic's temporary files left by writers that were killed (their pid is gone);
    returns how many bytes were freed."""
    freed = 0
    if not Path(folder).is_dir():
        return freed
    for path in Path(folder).iterdir():
        match = TEMPORARY.match(path.name)
        if match and not pid_alive(int(match.group(1))):
            try:
                freed += path.stat().st_size
                path.unlink()
            except OSError:
                pass
    if freed:
        log.info("removed %.1f MB of temporary files left by interrupted writes in %s", freed / 1e6, folder)
    return freed


def pid_alive(pid):
    """Whether process `pid` exists on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:            # exists, owned by someone else
        return True
    return True


def load_file(path):
    """Read a checkpoint without running code from it (weights_only)."""
    path = Path(path)
    if not path.is_file():
        what = "a directory, not a checkpoint file" if path.is_dir() else "not found"
        raise CheckpointError(f"checkpoint {path}: {what} (check --initial_model)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable checkpoint: {_why_unreadable(path, err)}") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        problem = _malformed_entry(obj)
        if problem:
            raise CheckpointError(f"{path} is not a usable checkpoint: {problem} (the file was altered "
                                  f"or damaged; use another checkpoint)")
    return obj


def _is_count(value, least):
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_plain(value):
    """An option value as the trainer stores it: text, a number, a flag, None, or a list of them."""
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item) for item in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _is_rng_state(value):
    return (isinstance(value, dict) and isinstance(value.get("python"), (list, tuple))
            and len(value["python"]) == 3 and isinstance(value.get("numpy"), (list, tuple))
            and len(value["numpy"]) == 5 and isinstance(value["numpy"][1], torch.Tensor)
            and isinstance(value.get("torch"), torch.Tensor) and value["torch"].dtype == torch.uint8)


# What each entry of this project's checkpoints must be, where present: a file that loads under
# weights_only can still hold a string where a tensor belongs, which would fail deep in torch.
ENTRY_CHECKS = {
    "model": ("a dict of tensors",
              lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                    for k, t in v.items())),
    "epoch": ("a whole number of at least 1", lambda v: _is_count(v, 1)),
    "batch": ("a whole number of at least 1", lambda v: _is_count(v, 1)),
    "options": ("a dict of option values",
                lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_plain(x) for k, x in v.items())),
    "trainer": ("a dict with a step count", lambda v: isinstance(v, dict) and _is_count(v.get("step"), 0)),
    "rng": ("the random-generator states", _is_rng_state),
    "stats": ("a dict", lambda v: isinstance(v, dict)),
    "totals": ("a dict", lambda v: isinstance(v, dict)),
    "eer": ("a finite number", _is_number),
    "eer_threshold": ("a finite number", lambda v: v is None or _is_number(v)),
    "train_list": ("a list signature", lambda v: isinstance(v, dict) and isinstance(v.get("sha256"), str)),
}


def _malformed_entry(obj):
    """'its X is not Y' for the first entry of a project checkpoint that has the wrong kind, or None."""
    for key, (expected, valid) in ENTRY_CHECKS.items():
        if key in obj and not valid(obj[key]):
            return f"its '{key}' entry is not {expected} (found {type(obj[key]).__name__})"
    return None


def _why_unreadable(path, err):
    text = str(err)
    if path.stat().st_size == 0:
        return "the file is empty"
    if "GLOBAL" in text or "Unsupported global" in text:
        # weights_only refused a pickled class or function: loading it could run code.
        detail = next((line.strip() for line in text.splitlines() if "GLOBAL" in line), "")
        return (f"it holds Python objects other than tensors ({detail}); refused, because loading "
                f"it could run code (re-save the state dict with torch.save(model.state_dict()))")
    if zipfile.is_zipfile(path) or "zip archive" in text:
        return "a PyTorch file that is truncated or corrupt (copy it again, or use an earlier checkpoint)"
    return "not a PyTorch checkpoint (corrupt, truncated or another kind of file)"


def model_state(obj, model, source="the checkpoint"):
    """The model state dict (our parameter names) inside a loaded checkpoint of either format."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if not isinstance(obj.get("model"), dict):
            raise CheckpointError(f"{source} has no model weights (a checkpoint of this project "
                                  f"without its 'model' entry; use another checkpoint)")
        return obj["model"]
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if isinstance(obj, dict) and set(obj) == {"model"} and isinstance(obj["model"], dict):
        # voxceleb_trainer's released weights (RawNet3's model.pt): the bare encoder's state.
        obj = {"__S__." + key: value for key, value in obj["model"].items()}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{source} is not a state dict of tensors (give a checkpoint written "
                              f"by this project or voxceleb_trainer)")
    renames = getattr(model.encoder, "reference_renames", {})
    state = {}
    for key, value in obj.items():
        key = key.removeprefix("module.")
        if key.startswith("__S__."):
            key = "encoder." + _rename(key.removeprefix("__S__."), renames)
        elif key.startswith("__L__."):
            key = "objective." + key.removeprefix("__L__.")
        state[key] = value
    return state


def _rename(key, renames):
    for old, new in renames.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def load_weights(model, state, source, new_objective_shapes=False):
    """Copy `state` into `model`, refusing tensors that do not fit, named one by one.

    Objective parameters may be absent (weights trained with another objective): they keep
    their initial values. Missing encoder parameters are an error. new_objective_shapes (a
    fresh start from --initial_model): objective tensors of another shape (a classifier over
    another number of speakers) keep their initial values too.
    """
    own = model.state_dict()
    if new_objective_shapes:
        reshaped = [k for k, v in state.items() if k.startswith("objective.") and k in own
                    and own[k].shape != v.shape]
        if reshaped:
            log.warning("%s: %s of another shape; starting from initial values", source,
                        ", ".join(f"{k} {tuple(state[k].shape)} -> {tuple(own[k].shape)}" for k in reshaped[:5]))
            state = {k: v for k, v in state.items() if k not in reshaped}
    wrong = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and k.startswith("encoder.")]
    unexpected = [k for k in state if k not in own and k.startswith("encoder.")]
    if wrong or missing or unexpected:
        parts = []
        for label, items in (("wrong shape", wrong), ("missing", missing), ("unexpected", unexpected)):
            if items:
                parts.append(f"{label}: {', '.join(items[:5])}" + (f" (+{len(items) - 5} more)"
                                                                   if len(items) > 5 else ""))
        raise CheckpointError(f"{source} does not fit this model ({'; '.join(parts)}); "
                              f"check --model, --nOut, --encoder_type and --n_mels")
    skipped = [k for k in state if k not in own]
    if skipped:
        log.warning("%s: ignoring %d objective tensors this objective does not have (%s)",
                    source, len(skipped), ", ".join(skipped[:5]))
    kept = [k for k in own if k not in state]
    if kept:
        log.warning("%s has no values for %s; they keep their initial values", source, ", ".join(kept[:5]))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


# ---------------------------------------------------------------------------- RNG states

def capture_rng():
    """Every random-number-generator state a resumed run needs, as plain tensors and lists."""
    version, internal, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
