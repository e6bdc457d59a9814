"""An ablation's numbers: each run's scores on the first trial list, per variant the mean and
spread over seeds with an interval over trials, and every variant against the base with a
paired test; written as a markdown table, a CSV file and a figure.

Two sources of uncertainty are kept apart. The spread over seeds is training's own randomness.
The interval and the paired test are over trials (tuneThreshold's file bootstrap): in each
replicate every run is weighted by the same resampled files, the figure of a variant is the
mean of its seeds' figures, and the difference to the base is taken replicate by replicate,
so what the trials share cancels from it. The trials' test cannot see the seeds' spread, so
each variant is also compared with the base over seeds: Welch's t-test of the per-seed EERs
(two-sided, unequal variances; Welch 1947), which needs two seeds or more on each side. A
difference is worth reporting when both tests support it.
"""
import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speakernet.core.atomic import make_folders, write_text
from speakernet.core.errors import UserError
from speakernet.eval.intervals import bootstrap_replicates
from speakernet.eval.metrics import compute_metrics

NOT_FINISHED = "not finished yet"   # why a run has no scores in a table written with --report


@dataclass
class RunScores:
    """The scores one finished run wrote for the first trial list of its last evaluation."""
    scores: np.ndarray
    labels: np.ndarray
    enroll: np.ndarray
    test: np.ndarray
    source: str


@dataclass
class VariantRow:
    name: str
    runs: int
    failed: list = field(default_factory=list)       # 'seed S: why' of runs without scores
    eer: float = None                                 # mean over seeds, %
    eer_sd: float = None                              # standard deviation over seeds
    eer_interval: tuple = None                        # over trials, of the mean
    min_dcf: float = None
    min_dcf_interval: tuple = None
    difference: float = None                          # mean EER minus the base's
    difference_interval: tuple = None
    p_value: float = None                             # over trials (file bootstrap)
    seed_p_value: float = None                        # over seeds (Welch's t-test)
    seed_eers: list = field(default_factory=list)     # each seed's EER, %


def read_run_scores(save_path):
    """RunScores of a finished run's last evaluation (result/results_epochNNNN.json and the
    scores file it names), or a UserError saying what is missing."""
    results = sorted(Path(save_path, "result").glob("results_epoch*.json"),
                     key=lambda p: (p.name.split(".")[0], p.stat().st_mtime_ns))
    if not results:
        raise UserError(f"{save_path}: no evaluation results (result/results_epoch*.json)")
    report = json.loads(results[-1].read_text(encoding="utf-8"))
    first = next(iter(report["lists"].values()))
    scores_file = first["outputs"].get("scores_file")
    if not scores_file or not Path(scores_file).is_file():
        raise UserError(f"{results[-1]}: its scores file is missing ({scores_file})")
    rows = [line.split() for line in Path(scores_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    return RunScores(scores=np.array([float(r[0]) for r in rows]),
                     labels=np.array([-1 if r[1] == "-" else int(r[1]) for r in rows]),
                     enroll=np.array([r[2] for r in rows]), test=np.array([r[3] for r in rows]),
                     source=scores_file)


def summarise(variants, p_target=0.05, replicates=1000, seed=0):
    """[VariantRow] from {variant name: {seed: RunScores or 'why it failed'}}; the first
    variant is the base. Every run must score the same trials (the same list)."""
    runs = [(name, s, r) for name, by_seed in variants.items() for s, r in by_seed.items()
            if isinstance(r, RunScores)]
    rows = {name: VariantRow(name=name, runs=sum(isinstance(r, RunScores) for r in by_seed.values()),
                             failed=[f"seed {s}: {r}" for s, r in by_seed.items() if not isinstance(r, RunScores)])
            for name, by_seed in variants.items()}
    if not runs:
        return list(rows.values())
    reference = runs[0][2]
    for name, s, r in runs:
        same = (len(r.labels) == len(reference.labels) and np.array_equal(r.enroll, reference.enroll)
                and np.array_equal(r.test, reference.test))
        if not same:
            raise UserError(f"{r.source} scores other trials than {reference.source}; an ablation "
                            f"compares runs on one trial list")
    key = f"{p_target:g}"
    figures = bootstrap_replicates([r.scores for _, _, r in runs], reference.labels, reference.enroll,
                                   reference.test, (p_target,), 1.0, 1.0, replicates, 0.95, seed)
    replicate_means = {}
    for name in variants:
        mine = [i for i, (n, _, _) in enumerate(runs) if n == name]
        if not mine:
            continue
        whole = [compute_metrics(runs[i][2].scores, reference.labels, (p_target,)) for i in mine]
        eers = [m.eer for m in whole]
        row = rows[name]
        row.eer, row.eer_sd = float(np.mean(eers)), float(np.std(eers, ddof=1)) if len(eers) > 1 else None
        row.seed_eers = [float(e) for e in eers]
        row.min_dcf = float(np.mean([m.min_dcf[key].value for m in whole]))
        replicate_means[name] = {k: np.mean([figures[i][k] for i in mine], axis=0) for k in ("eer", key)}
        row.eer_interval = _bounds(replicate_means[name]["eer"])
        row.min_dcf_interval = _bounds(replicate_means[name][key])
    base = next(iter(variants))
    if base in replicate_means:
        for name, means in replicate_means.items():
            if name == base:
                continue
            row = rows[name]
            row.difference = row.eer - rows[base].eer
            differences = means["eer"] - replicate_means[base]["eer"]
            row.difference_interval = _bounds(differences)
            row.p_value = float(min(1.0, 2 * min(np.mean(differences <= 0), np.mean(differences >= 0))))
            row.seed_p_value = welch_p_value(row.seed_eers, rows[base].seed_eers)
    return list(rows.values())


def welch_p_value(a, b):
    """Two-sided p of Welch's t-test between two samples, or None with fewer than two values on
    a side or no spread on either."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats
    if np.var(a) == 0 and np.var(b) == 0:
        return None
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _bounds(values):
    return tuple(float(v) for v in np.percentile(values, [2.5, 97.5]))


COLUMNS = ("variant", "runs", "EER %", "sd over seeds", "95% interval", "minDCF", "95% interval",
           "EER - base", "95% interval", "p (trials)", "p (seeds)")


def _cells(row, p_target):
    def number(value, digits):
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

    def span(bounds, digits):
        return "" if bounds is None else f"{bounds[0]:.{digits}f} to {bounds[1]:.{digits}f}"

    pending = sum(why.endswith(NOT_FINISHED) for why in row.failed)
    failed = len(row.failed) - pending
    runs = f"{row.runs}" + (f" ({failed} failed)" if failed else "") + (f" ({pending} to run)" if pending else "")
    return [row.name, runs, number(row.eer, 2), number(row.eer_sd, 2), span(row.eer_interval, 2),
            number(row.min_dcf, 4), span(row.min_dcf_interval, 4), number(row.difference, 2),
            span(row.difference_interval, 2), number(row.p_value, 3), number(row.seed_p_value, 3)]


def markdown_table(rows, p_target=0.05):
    header = [c if c != "minDCF" else f"minDCF({p_target:g})" for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cells(row, p_target)) + " |" for row in rows]
    failures = [f"- {row.name}, {why}" for row in rows for why in row.failed]
    if failures:
        lines += ["", "Runs without results:", *failures]
    return "\n".join(lines) + "\n"


def write_outputs(rows, folder, p_target=0.05, title="ablation"):
    """ablation.md, ablation.csv and ablation.png in `folder` -> their paths."""
    folder = Path(folder)
    make_folders(folder)            # every run may have failed before making it
    table = markdown_table(rows, p_target)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    writer.writerows(_cells(row, p_target) for row in rows)
    paths = [write_text(folder / "ablation.md", f"# {title}\n\n{table}"),
             write_text(folder / "ablation.csv", buffer.getvalue())]
    paths.append(plot(rows, folder / "ablation.png", title))
    return paths


def plot(rows, path, title):
    """EER per variant: the mean over seeds with its interval over trials."""
    from matplotlib.figure import Figure
    from speakernet.eval.plots import save_png

    shown = [row for row in rows if row.eer is not None]
    fig = Figure(figsize=(max(4, 1.2 * len(shown) + 2), 3.5))
    ax = fig.add_subplot(1, 1, 1)
    for x, row in enumerate(shown):
        low, high = row.eer_interval
        ax.errorbar([x], [row.eer], yerr=[[row.eer - low], [high - row.eer]], fmt="o", capsize=4)
    ax.set_xticks(range(len(shown)), [row.name for row in shown], rotation=20, ha="right", fontsize="small")
    ax.set_ylabel("EER (%), 95% interval over trials")
    ax.set_title(title)
    ax.grid(True, axis="y", linewidth=0.4, alpha=0.6)
    fig.tight_layout()
    return save_png(fig, path, dpi=90)
