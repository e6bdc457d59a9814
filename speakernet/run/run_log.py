"""A training run's metrics as JSON lines, and a PNG of its training curves.

One JSON object per line, appended as the run goes (training stats after each epoch,
validation figures after each evaluation, in the same record or in records of their own;
records are matched by their "epoch"). Appending never rewrites earlier lines, so a crash
loses at most the line being written, and a resumed run simply continues the file.

Keys the curves know (anything else is kept in the file but not drawn):
    epoch                      x axis (records without one are numbered in order)
    loss, metric, lr           training loss, the objective's metric, learning rate
    data_wait                  share of training time spent waiting for data (0..1)
    val_eer/<list>             validation EER in %, one line per list (EvaluationReport.summary_record)
    val_eer_asnorm/<list>      the same after AS-norm
    val_min_dcf@<p>/<list>     minDCF at prior p (and val_min_dcf_asnorm@<p>/<list>)
"""
import json
import logging
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from speakernet.core.atomic import json_safe
from speakernet.core.errors import UserError
from speakernet.eval.plots import save_png

log = logging.getLogger(__name__)

# (panel title, which keys it draws, log-scale y axis, factor applied to the values)
PANELS = (
    ("training loss", lambda key: key == "loss", False, 1),
    ("training metric", lambda key: key == "metric", False, 1),
    ("learning rate", lambda key: key == "lr", True, 1),
    ("data wait (% of time)", lambda key: key == "data_wait", False, 100),
    ("validation EER (%)", lambda key: key.startswith("val_eer"), False, 1),
    ("validation minDCF", lambda key: key.startswith("val_min_dcf"), False, 1),
)


# The files a training run keeps in its save_path, and what each holds.
RUN_FILES = {"train.log": "log", "metrics.jsonl": "metrics", "training_curves.png": "training curves",
             "result/scores.txt": "scores", "model/best.model": "best checkpoint"}


def check_run_files(save_path):
    """Refuse, before any training, a save_path where something other than a plain file sits
    at the name of a file the run appends to or replaces (it would fail only at its first write)."""
    for name, what in RUN_FILES.items():
        path = Path(save_path) / name
        if path.exists() and not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise UserError(f"{path} is {kind}, where the run keeps its {what}; move it out of the "
                            f"way, or use another --save_path")


_REPORTED = set()          # (metrics file, line) already warned about


def append_metrics(path, record):
    """Append `record` (a flat dict) to the JSON-lines file `path` as one line."""
    line = json.dumps(json_safe(dict(record)), allow_nan=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        # After a crash mid-write the file ends inside a line: end that line first, so the
        # broken record stays alone on its line (skipped by read_metrics) and this one is kept.
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                line = "\n" + line
        handle.write((line + "\n").encode("utf-8"))
        handle.flush()


def read_metrics(path):
    """Every record of a JSON-lines metrics file; a malformed line (a crash mid-write, bytes
    that are not UTF-8) is skipped with a warning rather than failing the run."""
    records = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                if (str(path), number) not in _REPORTED:      # the file is read at every evaluation
                    _REPORTED.add((str(path), number))
                    log.warning("%s:%d: not a JSON record, skipped", path, number)
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def _series(records):
    """{key: (epochs, values)} of every numeric key except epoch, sorted by epoch. A resumed
    run logs the epochs after its checkpoint again; the later value of an epoch wins."""
    points = {}
    for index, record in enumerate(records, start=1):
        x = record.get("epoch", index)
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                points.setdefault(key, {})[x] = value
    return {key: (sorted(by_x), [by_x[x] for x in sorted(by_x)]) for key, by_x in points.items()}


def plot_training_curves(jsonl_path, png_path):
    """Draw loss, metric, learning rate, data wait, validation EER and minDCF against epoch
    from the metrics file into png_path (replaced atomically) -> png_path."""
    series = _series(read_metrics(jsonl_path))
    fig = Figure(figsize=(13, 7))
    for i, (title, wanted, log_scale, factor) in enumerate(PANELS, start=1):
        ax = fig.add_subplot(2, 3, i)
        drawn, named = 0, False
        for key in sorted(k for k in series if wanted(k)):
            xs, ys = series[key]
            ax.plot(xs, factor * np.asarray(ys, dtype=float), marker="o" if len(xs) < 30 else None,
                    markersize=3, label=key)
            drawn += 1
            named = named or "/" in key
        if drawn == 0:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes,
                    color="grey")
        elif log_scale and all(v > 0 for k in series if wanted(k) for v in series[k][1]):
            ax.set_yscale("log")
        if drawn > 1 or named:            # per-list keys need their list's name shown
            ax.legend(fontsize="x-small")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, linewidth=0.4, alpha=0.6)
    fig.tight_layout()
    return save_png(fig, png_path, dpi=90)
