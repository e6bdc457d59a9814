"""An evaluation's results: the typed report (EvaluationReport of ListResults), its log line
and metrics record, and the files it writes (scores, DET and histogram PNGs, JSON). Files are
never overwritten (a numbered name instead) and are written whole."""
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from speakernet.core.atomic import json_safe, write_text


# ---------------------------------------------------------------------------- the report

def describe_metrics(metrics, calibrated=None, intervals=None):
    """One log fragment of a tuneThreshold.Metrics (with its tuneThreshold.Intervals and
    calibration.CalibratedMetrics): 'EER 2.31% [2.05, 2.60]  minDCF(0.05) 0.1600 [0.14, 0.18]
    ...  FRR@FAR=1% 8.10%'."""
    if metrics.eer is None:
        return f"no EER ({metrics.targets} target, {metrics.nontargets} non-target trials)"

    def within(bounds, digits):
        return f" [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]" if bounds else ""

    parts = [f"EER {metrics.eer:.2f}%{within(intervals and intervals.eer, 2)}"]
    parts += [f"minDCF({p}) {v.value:.4f}{within(intervals and intervals.min_dcf.get(p), 4)}"
              for p, v in metrics.min_dcf.items()]
    parts += [f"FRR@FAR={100 * float(t):g}% {v.frr:.2f}%" for t, v in metrics.frr_at_far.items()]
    parts += [f"FAR@FRR={100 * float(t):g}% {v.far:.2f}%" for t, v in metrics.far_at_frr.items()]
    if calibrated is not None and calibrated.cllr is not None:
        parts += [f"actDCF({p}) {v:.4f}" for p, v in calibrated.act_dcf.items()]
        parts += [f"Cllr {calibrated.cllr:.4f}", f"minCllr {calibrated.min_cllr:.4f}"]
    return "  ".join(parts)


@dataclass
class ListResult:
    """One trial list's figures, scores and output files. Rates are in percent; thresholds
    follow tuneThreshold's rule (accept iff score >= threshold)."""
    name: str
    path: str                   # the trial list file
    trials: int                 # every trial of the list, labelled or not
    metrics: dict               # system ('raw', 'asnorm') -> tuneThreshold.Metrics
    scores: dict                # system -> numpy scores in list order (not in the JSON)
    calibrated: object = None   # calibration.CalibratedMetrics of the raw scores, or None
    outputs: dict = field(default_factory=dict)     # 'scores_file', 'det_png', ... -> path
    intervals: dict = field(default_factory=dict)   # system -> tuneThreshold.Intervals

    @property
    def raw(self):
        """The Metrics of the raw scores."""
        return self.metrics["raw"]

    @property
    def eer(self):
        """EER (%) of the raw scores; None without both targets and non-targets."""
        return self.raw.eer

    @property
    def eer_threshold(self):
        return self.raw.eer_threshold

    @property
    def min_dcf(self):
        """{'%g' % p_target: minDCF of the raw scores}, in --dcf_p_target order."""
        return {p: v.value for p, v in self.raw.min_dcf.items()}

    def describe(self):
        text = describe_metrics(self.raw, self.calibrated, self.intervals.get("raw"))
        if "asnorm" in self.metrics:
            text += f" | AS-norm: {describe_metrics(self.metrics['asnorm'], None, self.intervals.get('asnorm'))}"
        return text

    def as_dict(self):
        """The list's entry of results_<tag>.json."""
        metrics = {system: m.as_dict() for system, m in self.metrics.items()}
        for system, intervals in self.intervals.items():
            metrics[system]["intervals"] = intervals.as_dict()
        if self.calibrated is not None:
            metrics["raw"]["calibrated"] = self.calibrated.as_dict()
        return {"list": self.path, "trials": self.trials, "metrics": metrics,
                "outputs": dict(self.outputs)}


@dataclass
class EvaluationReport:
    """What Evaluation.run / evaluate_lists measured, list by list in --test_list order."""
    tag: str
    time: str
    settings: object                # evaluation.EvalSettings
    files: int                      # unique files embedded for the lists
    lists: dict = field(default_factory=dict)       # name -> ListResult
    calibration: object = None      # calibration.Calibration the lists were reported with
    seconds: float = None           # scoring, metrics and outputs
    extract_seconds: float = None   # embedding (Evaluation.run only)
    results_file: str = None        # the JSON written, when there was an output folder

    @property
    def primary(self):
        """The first list's result: the one training keeps the best checkpoint by."""
        return next(iter(self.lists.values()))

    def as_dict(self):
        """The content of results_<tag>.json."""
        report = {"tag": self.tag, "time": self.time, "settings": asdict(self.settings),
                  "files": self.files, "lists": {name: r.as_dict() for name, r in self.lists.items()}}
        if self.calibration is not None:
            report["calibration"] = self.calibration.to_dict()
        report["seconds"] = self.seconds
        return report

    def summary_record(self):
        """Flat validation figures for run_log.append_metrics: {'val_eer/<list>': %,
        'val_min_dcf@<p>/<list>': ..., their intervals as 'ci_val_eer/<list>': [low, high],
        '_asnorm' variants, and the calibrated figures}."""
        record = {}
        for name, result in self.lists.items():
            for system, metrics in result.metrics.items():
                suffix = "" if system == "raw" else f"_{system}"
                record[f"val_eer{suffix}/{name}"] = metrics.eer
                for p, value in metrics.min_dcf.items():
                    record[f"val_min_dcf{suffix}@{p}/{name}"] = value.value
                intervals = result.intervals.get(system)
                if intervals is not None:     # lists: kept in the file, not drawn as curves
                    record[f"ci_val_eer{suffix}/{name}"] = list(intervals.eer)
                    for p, bounds in intervals.min_dcf.items():
                        record[f"ci_val_min_dcf{suffix}@{p}/{name}"] = list(bounds)
                calibrated = result.calibrated if system == "raw" else None
                if calibrated is not None:
                    record[f"val_cllr/{name}"] = calibrated.cllr
                    record[f"val_min_cllr/{name}"] = calibrated.min_cllr
                    for p, value in calibrated.act_dcf.items():
                        record[f"val_act_dcf@{p}/{name}"] = value
        return record


# ---------------------------------------------------------------------------- files

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


def write_json(path, data):
    """`data` as JSON (infinite thresholds as "inf") -> the path written."""
    return _write_new_text(path, json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n")


def output_name(kind, tag, name="", suffix="", ext=".txt"):
    """'<kind>_<tag>_<list><suffix><ext>', leaving out empty parts."""
    return "_".join(part for part in (kind, tag, name) if part) + suffix + ext


def write_report(out_dir, report):
    """results_<tag>.json of an EvaluationReport -> the path written."""
    return write_json(Path(out_dir) / output_name("results", report.tag, ext=".json"), report.as_dict())


def write_list_outputs(out_dir, tag, result, trials, normalize=True, plots=True):
    """A ListResult's files: scores_<tag>_<list>.txt (and _asnorm), with plots det_ and hist_
    PNGs of every system -> {'scores_file', 'scores_asnorm_file', 'det_png', 'hist_png': path}."""
    out_dir = Path(out_dir)
    outputs = {}
    for system, values in result.scores.items():
        suffix = "" if system == "raw" else f"_{system}"
        key = "scores_file" if system == "raw" else f"scores_{system}_file"
        outputs[key] = str(write_scores(out_dir / output_name("scores", tag, result.name, suffix),
                                        values, trials))
    if not plots:
        return outputs
    from speakernet.eval import plots as plotting  # matplotlib is only loaded when figures are wanted

    names = {"raw": "cosine" if normalize else "-distance", "asnorm": "AS-norm"}
    shown = {names[s]: v for s, v in result.scores.items()}
    title = f"{result.name} ({tag})" if tag else result.name
    if result.eer is not None:
        outputs["det_png"] = str(plotting.plot_det(
            shown, trials.labels, unique_path(out_dir / output_name("det", tag, result.name, ext=".png")),
            title=f"DET: {title}"))
    thresholds = {names[s]: m.eer_threshold for s, m in result.metrics.items()}
    outputs["hist_png"] = str(plotting.plot_score_histogram(
        shown, trials.labels, unique_path(out_dir / output_name("hist", tag, result.name, ext=".png")),
        title=f"Scores: {title}", thresholds=thresholds))
    return outputs
