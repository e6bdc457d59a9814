"""Where a run continues from: the newest readable checkpoint in save_path, whether the options
of the new start agree with it, and the mid-epoch checkpoints that make a crash cost minutes.

Progress is (completed epochs, batches of the next epoch): an epoch checkpoint of epoch E is
(E, 0), a mid-epoch checkpoint after k batches of epoch E is (E - 1, k); the largest wins.
"""
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speakernet.core import checkpoint
from speakernet.core.errors import ResumeConflict
from speakernet.run.options import build_parser, stored_options

log = logging.getLogger(__name__)



def resumable_options():
    """The options a resumed run may change: those declared with option_types.resumable
    (speakernet/run/options.py, evaluation.py, packed_audio.py, pseudo_labels.py)."""
    return frozenset(a.dest for a in build_parser()._actions if getattr(a, "resumable", False))


@dataclass
class ResumePoint:
    state: dict
    path: Path
    # False when the training list changed since a mid-epoch checkpoint: its epoch plan no
    # longer applies, so that epoch restarts from its first batch.
    plan_applies: bool = True

    @property
    def partial(self):
        return "batch" in self.state

    @property
    def start_epoch(self):
        """The epoch training continues in."""
        return self.state["epoch"] if self.partial else self.state["epoch"] + 1


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _progress(state):
    return (state["epoch"] - 1, state["batch"]) if "batch" in state else (state["epoch"], 0)


def find_resume_point(model_dir):
    """The readable checkpoint with the most progress in model_dir, or None. An unreadable or
    foreign newer one is skipped with a warning (it is replaced when its epoch is saved again)."""
    candidates = [path for _, path in checkpoint.list_checkpoints(model_dir)]
    partial = Path(model_dir) / checkpoint.PARTIAL
    if partial.is_file():
        candidates.append(partial)
    loaded, skipped = [], []
    for path in candidates:
        try:
            state = checkpoint.load_file(path)
            if not isinstance(state, dict) or state.get("format") != checkpoint.FORMAT:
                raise checkpoint.CheckpointError(f"{path} is not a resumable checkpoint of this project")
            if "options" in state:
                stored_options(state["options"], path)
            loaded.append((_progress(state), state, path))
        except checkpoint.CheckpointError as err:
            skipped.append((path, err))
    best = max(loaded, key=lambda item: item[0], default=None)
    for path, err in skipped:
        if best is None or _newer_name(path, best[2]):
            log.warning("%s; resuming from %s instead", err, best[2] if best else "the start")
    if best is None:
        if skipped:
            raise checkpoint.CheckpointError(f"{skipped[-1][1]} (no readable checkpoint is left in "
                                             f"{model_dir}: delete the broken files, or use another --save_path)")
        return None
    return ResumePoint(state=best[1], path=best[2])


def _newer_name(path, than):
    return path.name == checkpoint.PARTIAL or path.name > than.name


def check_options(options, point):
    """Refuse a restart whose options differ from the checkpoint's in anything not resumable,
    and an --initial_model other than the one the run started from; log what takes effect."""
    saved = point.state.get("options", {})
    current = vars(options)
    wanted = current.get("initial_model") or ""
    if wanted and wanted != (saved.get("initial_model") or ""):
        raise ResumeConflict(f"--initial_model {wanted}: {point.path.parent.parent} already holds a run to "
                             f"resume ({point.path}); drop --initial_model to resume it, or give a new "
                             f"--save_path to start from {wanted}")
    conflicts, changed = [], []
    resumable = resumable_options()
    for key in sorted(saved):
        if key not in current or _plain(saved[key]) == _plain(current[key]):
            continue
        (changed if key in resumable else conflicts).append(f"--{key} {saved[key]!r} -> {current[key]!r}")
    if conflicts:
        raise ResumeConflict(f"resuming {point.path} with options that change its training: "
                             f"{', '.join(conflicts)} (restore them to resume, or start a new --save_path, "
                             f"with --initial_model {point.path} to begin from these weights)")
    if changed:
        log.info("resuming with changed options, which take effect now: %s", ", ".join(changed))


def list_signature(train_list):
    """What the epoch plan is drawn from, as kept in every checkpoint: the list's entries (paths
    relative to --train_path, which may move), speakers, labels and lengths."""
    digest = hashlib.sha256()
    train_list.files.update_digest(digest)
    digest.update("\0".join(map(str, train_list.speakers)).encode("utf-8"))
    for array in (train_list.labels, train_list.lengths):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return {"sha256": digest.hexdigest(), "utterances": len(train_list.files),
            "speakers": len(train_list.speakers)}


def _described(signature):
    speakers = f" of {signature['speakers']} speakers" if signature.get("speakers") else ""
    return f"{signature.get('utterances')} utterances{speakers}"


def check_training_list(point, signature, list_path):
    """Compare the training list with the one the checkpoint was trained on. A changed list
    cannot continue a mid-epoch plan: that epoch restarts from its first batch over the new
    list, with a warning; after an epoch checkpoint the next epochs simply use the new list.
    Checkpoints written before lists were signed are not checked."""
    saved = point.state.get("train_list")
    if not isinstance(saved, dict) or saved.get("sha256") == signature["sha256"]:
        return
    change = f"{_described(saved)} -> {_described(signature)}"
    if point.partial:
        point.plan_applies = False
        log.warning("the training list %s changed since %s was written (%s): its plan for epoch %d "
                    "no longer applies, so epoch %d restarts from its first batch with the weights "
                    "of that checkpoint", list_path, point.path, change, point.start_epoch,
                    point.start_epoch)
    else:
        log.warning("the training list %s changed since %s was written (%s); the epochs from %d on "
                    "are planned over the new list", list_path, point.path, change, point.start_epoch)


class MidEpochCheckpoints:
    """Writes save_path/model/partial.model every `minutes` of wall time and/or every `steps`
    optimizer steps, so that a restart resumes at the next batch."""

    def __init__(self, model_dir, minutes=0.0, steps=0, enabled=True):
        self.path = Path(model_dir) / checkpoint.PARTIAL
        self.seconds = minutes * 60 if minutes > 0 else math.inf
        self.steps = steps
        self.enabled = enabled and (minutes > 0 or steps > 0)
        self.last = time.monotonic()

    def due(self, batch):
        return self.enabled and ((self.steps and batch % self.steps == 0)
                                 or time.monotonic() - self.last >= self.seconds)

    def save(self, state):
        checkpoint.save_atomic(state, self.path)
        self.last = time.monotonic()
        log.debug("mid-epoch checkpoint at epoch %d, batch %d", state["epoch"], state["batch"])

    def superseded(self):
        """An epoch checkpoint now holds more progress than the partial one."""
        if self.path.exists():
            self.path.unlink()
