"""Evaluation after extraction: score every trial list, normalise, measure, write the results.

The trainer only turns audio into crop embeddings; everything after that goes through here, so
--eval, --calibrate and validation during training share one path:

    trial_set = load_trial_lists(paths, test_path)   # every file checked, before any extraction
    crops = extract(trial_set.files, trial_set.lengths, test_path)   # files x crops x D
    report = evaluate_lists(crops, trial_set, settings, out_dir=..., tag="epoch0010")
    report.primary.eer, report.primary.min_dcf["0.05"], report.lists["vox1_O"].metrics["asnorm"]

`Evaluation` bundles those steps with the AS-norm cohort and the calibration. `extract(files,
lengths, root)` is any callable returning files x crops x D crop embeddings, e.g. a closure
over Trainer.extract, so nothing here depends on the trainer's internals. The jobs live in
their own modules: trial_sets (lists and cohort), embeddings (extraction in chunks, export),
scoring and score_norm (scores, AS-norm), tuneThreshold (every metric), calibration (LLRs),
result_files (the typed report and the files written).

Scores follow scoring.score_trials: with cosine scoring (normalize=True) a trial's score is
the mean cosine similarity over all crop pairs, i.e. the dot product of the two files' mean
unit crop embeddings (`file_embeddings`). Rates in results (EER, FAR, FRR) are in percent;
thresholds follow tuneThreshold's rule: a trial is accepted when score >= threshold.
"""
import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from speakernet.eval import calibration as calibrating
from speakernet.eval import score_norm
from speakernet.core.train_list import read_train_list
from speakernet.eval.embeddings import cohort_embeddings, embed_files, file_embeddings
from speakernet.core.errors import OptionError, UserError
from speakernet.core.option_types import OptionValueError, count, durations, probability_list, resumable
from speakernet.eval.result_files import (EvaluationReport, ListResult, write_list_outputs,
                                     write_report)
from speakernet.eval.scoring import pair_scores, system_scores
from speakernet.eval.trial_sets import load_trial_lists, select_cohort, with_dev_list
from speakernet.eval.intervals import bootstrap_intervals
from speakernet.eval.metrics import compute_metrics

# Known by these names from here as well: the run folder's file naming (trainSpeakerNet) and
# extraction shared across ranks (distributed callers).
from speakernet.eval.embeddings import shared_extract  # noqa: F401,E402
from speakernet.eval.result_files import unique_path  # noqa: F401,E402

log = logging.getLogger(__name__)

COSINE_ONLY = "AS-norm needs cosine scoring; this objective scores by distance, so "


# ---------------------------------------------------------------------------- options

def add_arguments(parser):
    """Options of evaluation.py (options.py keeps --test_list, --dcf_p_target, --dcf_c_miss,
    --dcf_c_fa; see EvalSettings.from_options for the types it expects of them)."""
    g = parser.add_argument_group("evaluation (evaluation.py)")
    resumable(g.add_argument("--far_targets", type=probability_list, default="0.01",
                             help="also report the false-rejection rate (and threshold) at these "
                                  "false-acceptance rates; comma-separated fractions, '' for none"))
    resumable(g.add_argument("--frr_targets", type=probability_list, default="0.01",
                             help="also report the false-acceptance rate (and threshold) at these "
                                  "false-rejection rates; comma-separated fractions, '' for none"))
    resumable(g.add_argument("--ci_replicates", type=count, default=300,
                             help="report 95%% intervals beside EER and minDCF from this many bootstrap "
                                  "replicates, resampling files (trials share them); 0 = none, else at "
                                  "least 10"))
    resumable(g.add_argument("--asnorm_top_n", type=count, default=0,
                             help="adaptive s-norm: normalise with the mean/std of each side's N best "
                                  "cohort scores, reported beside the raw scores (0 = off; 300 is usual "
                                  "with the VoxCeleb2 training speakers as cohort)"))
    resumable(g.add_argument("--cohort_utts", type=count, default=5,
                             help="AS-norm cohort: utterances per training speaker averaged into its "
                                  "cohort embedding"))
    resumable(g.add_argument("--cohort_speakers", type=count, default=0,
                             help="AS-norm cohort: at most this many training speakers, drawn with "
                                  "--seed (0 = all; an unlabelled list counts each utterance as one)"))
    resumable(g.add_argument("--eval_seconds", type=durations, default="",
                             help="with --eval: also evaluate with every test file cut to each of these "
                                  "durations (its middle segment), comma-separated seconds, e.g. 1,2,3"))
    resumable(g.add_argument("--extract", type=str, default="",
                             help="write embeddings ('names', 'embeddings' files x D, optionally "
                                  "'crops') to this .npz and exit; needs --initial_model"))
    resumable(g.add_argument("--extract_list", type=str, default="",
                             help="for --extract: 'speaker path' or 'path' lines under --train_path "
                                  "(default: every file of the --test_list lists)"))
    resumable(g.add_argument("--extract_crops", action=argparse.BooleanOptionalAction, default=False,
                             help="for --extract: also store every crop's embedding (files x crops x D)"))
    g.add_argument("--calibrate", type=str, default="",
                   help="fit a score calibration (score -> LLR) on this labelled trial list, "
                        "scored with the same model; writes <checkpoint stem>.calibrated.model "
                        "beside --initial_model (never replacing a file) and reports actDCF, Cllr "
                        "and min Cllr of the --test_list lists")
    g.add_argument("--calibration_prior", type=prior_or_zero, default=0.0,
                   help="effective target prior of the calibration fit, and of --verify's "
                        "decision (0 = the first --dcf_p_target for the fit, the calibration's "
                        "own prior for --verify)")
    g.add_argument("--verify", nargs=2, metavar=("WAV1", "WAV2"), default="",
                   help="score two audio files with --initial_model and log score, LLR and the "
                        "decision (the model and its options come from the checkpoint)")
    return g


def prior_or_zero(value):
    """A prior in (0, 1), or 0 for the default (--calibration_prior)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionValueError(f"'{value}' is not a number (a prior in (0, 1), or 0)") from None
    if not (number == 0 or 0 < number < 1):
        raise OptionValueError(f"{value} is not a prior in (0, 1) (or 0 for the default)")
    return number


def check_options(options):
    """The evaluation's options, checked where they are declared (option_checks.validate calls it)."""
    EvalSettings.from_options(options)


@dataclass(frozen=True)
class EvalSettings:
    """What to measure and how to normalise; EvalSettings.from_options(options) in the trainer."""
    p_targets: tuple = (0.05, 0.01)
    c_miss: float = 1.0
    c_fa: float = 1.0
    far_targets: tuple = (0.01,)
    frr_targets: tuple = (0.01,)
    asnorm_top_n: int = 0
    cohort_utts: int = 5
    cohort_speakers: int = 0
    seed: int = 10
    calibration_prior: float = 0.0      # 0: the first of p_targets (calibration.py)
    ci_replicates: int = 0              # bootstrap replicates of the intervals (0: none)

    def __post_init__(self):
        for name in ("p_targets", "far_targets", "frr_targets"):
            probability_list(getattr(self, name))
        for name, cost in (("dcf_c_miss", self.c_miss), ("dcf_c_fa", self.c_fa)):
            if cost <= 0:
                raise OptionError(f"--{name} must be positive (a cost), got {cost:g}")
        if self.ci_replicates and not 10 <= self.ci_replicates <= 100_000:
            raise OptionError(f"--ci_replicates must be 0 (no intervals) or 10 to 100000, got "
                            f"{self.ci_replicates} (300 gives stable 95% bounds)")
        if self.asnorm_top_n < 0 or self.cohort_utts < 1 or self.cohort_speakers < 0:
            raise OptionError("--asnorm_top_n and --cohort_speakers must be 0 or more, "
                            "--cohort_utts at least 1")

    @classmethod
    def from_options(cls, options):
        """From parsed options; --dcf_p_target may be a number, a '0.05,0.01' string or a list."""
        return cls(p_targets=probability_list(options.dcf_p_target), c_miss=options.dcf_c_miss,
                   c_fa=options.dcf_c_fa, far_targets=probability_list(options.far_targets),
                   frr_targets=probability_list(options.frr_targets),
                   asnorm_top_n=options.asnorm_top_n, cohort_utts=options.cohort_utts,
                   cohort_speakers=options.cohort_speakers, seed=options.seed,
                   calibration_prior=getattr(options, "calibration_prior", 0.0) or 0.0,
                   ci_replicates=getattr(options, "ci_replicates", 0))

    def within_cohort(self, speakers):
        """These settings with asnorm_top_n at most the cohort's `speakers` (warned here, once,
        rather than at every evaluation)."""
        if self.asnorm_top_n <= speakers:
            return self
        log.warning("--asnorm_top_n %d is more than the %d speakers of the AS-norm cohort; using %d",
                    self.asnorm_top_n, speakers, speakers)
        return dataclasses.replace(self, asnorm_top_n=speakers)

    @property
    def fit_prior(self):
        """The effective prior calibrations are fitted at."""
        if self.calibration_prior:
            return self.calibration_prior
        return self.p_targets[0] if self.p_targets else 0.5


# ---------------------------------------------------------------------------- evaluation

def evaluate_lists(embeddings, trial_set, settings, normalize=True, cohort=None, out_dir=None,
                   tag="", plots=True, calibration=None):
    """Score every list of a TrialSet, optionally AS-normalised, and write the outputs
    -> EvaluationReport (each ListResult also holds its scores as numpy arrays).

    embeddings: files x crops x D crops of trial_set.files (or files x D file_embeddings
    with cosine scoring). cohort: speakers x D (cohort_embeddings) to add AS-norm with
    settings.asnorm_top_n, or None. With out_dir, for each list <name> and tag T it writes
    scores_T_<name>.txt (and scores_T_<name>_asnorm.txt): 'score label file1 file2' lines,
    label '-' when unlabelled; det_T_<name>.png, hist_T_<name>.png (both systems); and
    results_T.json with every figure. Existing files are never overwritten (a numeric
    suffix is added).

    calibration: a calibration.Calibration of the raw scores, or None; with one, each
    ListResult also holds `calibrated` (Cllr, min Cllr and actDCF at each p_target).
    """
    started = time.perf_counter()
    embeddings = torch.as_tensor(embeddings).float()
    if normalize and embeddings.ndim == 3:
        embeddings = file_embeddings(embeddings)      # once for all lists
    stats = None
    if cohort is not None and settings.asnorm_top_n > 0:
        if normalize:
            stats = score_norm.cohort_stats(embeddings, cohort, settings.asnorm_top_n)
        else:
            log.warning(COSINE_ONLY + "only raw scores are reported")
    report = EvaluationReport(tag=tag, time=time.strftime("%Y-%m-%dT%H:%M:%S"), settings=settings,
                              files=len(trial_set.files), calibration=calibration)
    for name, path, trials in zip(trial_set.names, trial_set.paths, trial_set.lists):
        result = score_list(name, path, trials, embeddings, settings, normalize, stats, calibration)
        if out_dir is not None:
            result.outputs = write_list_outputs(out_dir, tag, result, trials, normalize, plots)
        log.info("%s%s: %s (%d trials)", f"{tag} " if tag else "", name, result.describe(),
                 result.trials)
        report.lists[name] = result
    report.seconds = time.perf_counter() - started
    if out_dir is not None:
        report.results_file = str(write_report(out_dir, report))
    return report


def score_list(name, path, trials, embeddings, settings, normalize=True, cohort_stats=None,
               calibration=None):
    """The ListResult of one TrialList (without output files): scores of every system and
    their figures."""
    scores = system_scores(embeddings, trials.pairs, normalize, cohort_stats)
    metrics = {system: compute_metrics(values, trials.labels, settings.p_targets, settings.c_miss,
                                       settings.c_fa, settings.far_targets, settings.frr_targets)
               for system, values in scores.items()}
    calibrated = None
    if calibration is not None:
        calibrated = calibrating.calibrated_metrics(scores["raw"], trials.labels, calibration,
                                                    settings.p_targets, settings.c_miss, settings.c_fa)
    intervals = {}
    if settings.ci_replicates:
        intervals = {system: bootstrap_intervals(values, trials.labels, trials.pairs[:, 0], trials.pairs[:, 1],
                                                 settings.p_targets, settings.c_miss, settings.c_fa,
                                                 replicates=settings.ci_replicates, seed=settings.seed)
                     for system, values in scores.items() if metrics[system].eer is not None}
    return ListResult(name=name, path=str(path), trials=len(trials.labels), metrics=metrics,
                      scores=scores, calibrated=calibrated, intervals=intervals)


class Evaluation:
    """Trial lists (and the AS-norm cohort) validated once; run() extracts and evaluates.

    Build it before training starts, so a missing file stops the run before any epoch;
    call run() at every validation and for --eval.

    calibration: a calibration.Calibration applied to the raw scores of every list (actDCF,
    Cllr, min Cllr are then reported). dev_list: a labelled trial list (--calibrate) whose
    files are embedded with the lists' (shared files once); run() fits the calibration on its
    raw scores at settings.fit_prior and reports the lists with it.
    """

    def __init__(self, list_paths, test_path, settings, out_dir=None, cohort_list=None, plots=True,
                 calibration=None, dev_list=None, allow_outside=False, recheck=False):
        self.test_path = test_path
        self.settings = settings
        self.out_dir = out_dir
        self.plots = plots
        self.calibration = calibration
        self.dev_list, self.dev_trials = dev_list or None, None
        if self.dev_list:
            self.trial_set, self.dev_trials = with_dev_list(list_paths, self.dev_list, test_path, allow_outside,
                                                            recheck)
        else:
            self.trial_set = load_trial_lists(list_paths, test_path, allow_outside, recheck)
        self.cohort = None
        if settings.asnorm_top_n:
            if cohort_list is None:
                raise UserError("AS-norm (--asnorm_top_n) needs a cohort: give --train_list")
            self.cohort = select_cohort(cohort_list, settings.cohort_utts,
                                        settings.cohort_speakers, settings.seed)
            self.settings = settings.within_cohort(len(self.cohort.speakers))

    @classmethod
    def from_options(cls, options, train_list=None):
        """From parsed options; reads (and checks) --train_list for the cohort only when
        AS-norm is on and no TrainList is given."""
        settings = EvalSettings.from_options(options)
        outside, recheck = getattr(options, "allow_outside_paths", False), getattr(options, "recheck_audio", False)
        if settings.asnorm_top_n and train_list is None:
            train_list = read_train_list(options.train_list, options.train_path, need_labels=False,
                                         allow_outside=outside, recheck=recheck)
        dev_list = getattr(options, "calibrate", "") or None
        # --eval of a checkpoint written by --calibrate reports with its calibration.
        calibration = None
        if getattr(options, "eval", False) and not dev_list and getattr(options, "initial_model", ""):
            calibration = calibrating.load(options.initial_model)
            if calibration is not None:
                log.info("%s holds a calibration (fitted on %s at prior %g): reporting actDCF, "
                         "Cllr and min Cllr", options.initial_model, calibration.source,
                         calibration.prior)
        return cls(options.test_list, options.test_path, settings,
                   out_dir=Path(options.save_path) / "result", cohort_list=train_list,
                   calibration=calibration, dev_list=dev_list, allow_outside=outside,
                   recheck=recheck)

    def run(self, extract, normalize=True, tag="", score=True, on_calibrated=None):
        """Embed the lists' files (and the cohort), score, write outputs -> EvaluationReport.

        With score=False it only embeds and returns None: the other ranks of a distributed
        run, whose `extract` (shared_extract) needs every rank to take part. With a dev list
        the calibration is fitted first and passed to on_calibrated(calibration) (which
        stores it) before the lists are evaluated with it."""
        started = time.perf_counter()
        trial_set = self.trial_set
        embeddings, crops = embed_files(extract, trial_set.files, trial_set.lengths,
                                        self.test_path, keep_crops=not normalize, origins=trial_set.origins)
        cohort = None
        if self.cohort is not None and normalize:
            cohort = cohort_embeddings(extract, self.cohort)
        elif self.cohort is not None:
            log.warning(COSINE_ONLY + "the cohort is not embedded and only raw scores are reported")
        extracted = time.perf_counter() - started
        if not score:
            return None
        scored = embeddings if normalize else crops
        if self.dev_trials is not None:
            self.calibration = self.fit_calibration(scored, normalize)
            if on_calibrated is not None:
                on_calibrated(self.calibration)
        report = evaluate_lists(scored, trial_set, self.settings, normalize=normalize, cohort=cohort,
                                out_dir=self.out_dir, tag=tag, plots=self.plots,
                                calibration=self.calibration)
        report.extract_seconds = extracted
        log.info("evaluated %d files%s in %.1f s (embedding %.1f s)", len(trial_set.files),
                 f" and {len(self.cohort.files)} cohort files" if cohort is not None else "",
                 time.perf_counter() - started, extracted)
        return report

    def fit_calibration(self, embeddings, normalize=True):
        """The calibration of the dev list's raw scores (embeddings of trial_set.files)."""
        dev = self.dev_trials
        scores = pair_scores(torch.as_tensor(embeddings).float(), dev.pairs, normalize)
        try:
            fitted = calibrating.fit(scores, dev.labels, self.settings.fit_prior, self.settings.c_miss,
                                     self.settings.c_fa, source=self.dev_list)
        except UserError as err:
            raise UserError(f"--calibrate {self.dev_list}: {err}") from None
        log.info("calibration on %s (%d trials, %d targets, prior %g): llr = %.6g * score + %.6g; "
                 "dev Cllr %.4f, min Cllr %.4f", self.dev_list, fitted.trials, fitted.targets,
                 fitted.prior, fitted.scale, fitted.offset, fitted.dev_cllr, fitted.dev_min_cllr)
        if fitted.scale <= 0:
            log.warning("the calibration's scale is not positive: on %s non-targets score higher than "
                        "targets, so the model is no better than chance there", self.dev_list)
        return fitted
