"""Result files of an evaluation: never overwritten (a numbered name instead), written whole."""
import json
from pathlib import Path

import numpy as np

from speakernet.atomic import json_safe, write_text


def unique_path(path):
    """`path`, or with a numbered suffix (name.1.txt, ...) if it exists: never overwrite."""
    path = Path(path)
    candidate, counter = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}.{counter}{path.suffix}")
        counter += 1
    return candidate


def _write_new_text(path, text):
    """Write `text` to `path` (or a numbered sibling when it exists), atomically."""
    path = unique_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, text)


def write_scores(path, scores, trials):
    """'score label file1 file2' per trial (label '-' when unlabelled) -> the path written."""
    files = trials.files
    lines = [f"{score:.6f} {label if label >= 0 else '-'} {files[a]} {files[b]}\n"
             for score, label, (a, b) in zip(np.asarray(scores).tolist(), trials.labels.tolist(),
                                             trials.pairs.tolist())]
    return _write_new_text(path, "".join(lines))


def write_json(path, report):
    """The report as JSON (scores arrays left out; infinite thresholds as "inf")."""
    return _write_new_text(path, json.dumps(json_safe(report, skip_keys=("scores",)), indent=1, allow_nan=False) + "\n")
