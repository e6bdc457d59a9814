"""DET curves and score histograms as PNG files.

Figures are drawn on matplotlib's Agg canvas directly (Figure + FigureCanvasAgg, no pyplot),
so plotting needs no display, changes no global backend and leaks no open figures in a
long training run. Files are written atomically: a crash never leaves half a PNG.

`scores` may be one array or a mapping {system name: scores} (e.g. {"cosine": s,
"AS-norm": s_norm}) over the same trials; every system is drawn on the same axes (DET) or
in its own panel (histogram). Trials labelled -1 (unlabelled) never enter a DET curve.
"""
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import norm

from speakernet.eval.metrics import det_curve

from speakernet.core.atomic import atomic_file

# Error rates that get a tick on DET axes (fractions); labels are printed in percent.
DET_TICKS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4,
             0.6, 0.8, 0.9, 0.95, 0.99)
# A million-trial DET curve has a million steps; points closer than this (in probit units)
# are dropped, which keeps a PNG fast to draw without visibly changing the curve.
DET_STEP = 0.005


def _systems(scores):
    if isinstance(scores, dict):
        return {name: np.asarray(s, dtype=np.float64) for name, s in scores.items()}
    return {"scores": np.asarray(scores, dtype=np.float64)}


def save_png(fig, path, dpi=100):
    """Draw `fig` into the PNG `path` (replaced atomically) -> path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", dpi=dpi)
    return path


def _thin(x, y, step):
    """Drop points of a polyline closer than `step` (path length) to the last kept one."""
    if len(x) <= 2:
        return x, y
    travelled = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))))
    _, keep = np.unique(np.floor(travelled / step), return_index=True)
    keep = np.union1d(keep, [len(x) - 1])
    return x[keep], y[keep]


def plot_det(scores, labels, path, title=""):
    """DET curve (FRR against FAR on normal-deviate axes, ticks in %) -> the PNG's path.

    Each system's equal-error point is marked. Raises ValueError unless the labelled trials
    hold both targets and non-targets (a DET curve needs both).
    """
    labels = np.asarray(labels)
    labelled = labels >= 0
    n_tar = int((labels[labelled] == 1).sum())
    n_non = int(labelled.sum()) - n_tar
    if n_tar == 0 or n_non == 0:
        raise ValueError(f"a DET curve needs target and non-target trials, got {n_tar} and {n_non}")
    # Rates below half a trial's worth are indistinguishable from 0: clip them onto the axis.
    floor = max(DET_TICKS[0], 0.5 / min(n_tar, n_non))
    curves, worst_eer = {}, 0.0
    for name, values in _systems(scores).items():
        far, frr, eer = det_curve(values, labels)
        worst_eer = max(worst_eer, eer)
        curves[name] = (far, frr, eer)
    ceiling = 0.5 if worst_eer < 0.3 else 0.99
    ticks = [t for t in DET_TICKS if floor <= t <= ceiling]

    def probit(rate):
        return norm.ppf(np.clip(rate, floor, ceiling))

    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot()
    for name, (far, frr, eer) in curves.items():
        x, y = _thin(probit(far), probit(frr), DET_STEP)
        line, = ax.plot(x, y, label=f"{name} (EER {100 * eer:.2f}%)")
        ax.plot(probit(eer), probit(eer), "o", color=line.get_color())
    limits = (probit(floor), probit(ceiling))
    ax.plot(limits, limits, ":", color="grey", linewidth=0.8)
    ax.set_xlim(limits)
    ax.set_ylim(limits)
    ax.set_xticks(probit(np.array(ticks)))
    ax.set_yticks(probit(np.array(ticks)))
    labels_pct = [f"{100 * t:g}" for t in ticks]
    ax.set_xticklabels(labels_pct, rotation=45)
    ax.set_yticklabels(labels_pct)
    ax.set_xlabel("False acceptance rate (%)")
    ax.set_ylabel("False rejection rate (%)")
    ax.set_title(title or "DET curve")
    ax.grid(True, linewidth=0.4, alpha=0.6)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return save_png(fig, path)


def plot_score_histogram(scores, labels, path, title="", thresholds=None):
    """Density histograms of target and non-target scores (unlabelled ones in grey, if any)
    -> the PNG's path. thresholds: optional {system name: threshold} drawn as a dashed line
    (the EER threshold, say); a bare number applies to a single system."""
    systems = _systems(scores)
    labels = np.asarray(labels)
    if thresholds is not None and not isinstance(thresholds, dict):
        thresholds = {name: thresholds for name in systems}
    thresholds = thresholds or {}
    groups = (("target", labels == 1, "tab:green"), ("non-target", labels == 0, "tab:red"),
              ("unlabelled", labels < 0, "tab:grey"))
    fig = Figure(figsize=(5.5 * len(systems), 4.2))
    for i, (name, values) in enumerate(systems.items(), start=1):
        ax = fig.add_subplot(1, len(systems), i)
        bins = np.linspace(values.min(), values.max(), 61) if values.size else 60
        for group, mask, colour in groups:
            if mask.any():
                # One filled outline per group rather than a patch per bin: 3x faster to draw.
                ax.hist(values[mask], bins=bins, density=True, alpha=0.5, color=colour,
                        histtype="stepfilled", label=f"{group} ({int(mask.sum())})")
        if thresholds.get(name) is not None and np.isfinite(thresholds[name]):
            ax.axvline(thresholds[name], color="black", linestyle="--", linewidth=1,
                       label=f"threshold {thresholds[name]:.3f}")
        ax.set_xlabel(f"{name} score" if len(systems) > 1 or name != "scores" else "score")
        ax.set_ylabel("density")
        ax.legend(fontsize="small")
    fig.suptitle(title or "Score distributions")
    fig.tight_layout()
    return save_png(fig, path)
