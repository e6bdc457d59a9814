"""Evaluation after extraction: trial lists, metrics, AS-norm, score files, plots, export.

The trainer only turns audio into crop embeddings; everything after that lives here, so
--eval, validation during training and --extract share one path:

    trial_set = load_trial_lists(paths, test_path)   # every file checked, before any extraction
    crops = extract(trial_set.files, trial_set.lengths, test_path)   # files x crops x D
    report = evaluate_lists(crops, trial_set, settings, out_dir=..., tag="epoch0010")

`Evaluation` bundles those steps with the AS-norm cohort. `extract(files, lengths, root)` is
any callable returning files x crops x D crop embeddings, e.g. a closure over
Trainer.extract, so nothing here depends on the trainer's internals.

Scores follow scoring.score_trials: with cosine scoring (normalize=True) a trial's score is
the mean cosine similarity over all crop pairs, i.e. the dot product of the two files' mean
unit crop embeddings (`file_embeddings`). Rates in results (EER, FAR, FRR) are in percent;
thresholds follow tuneThreshold's rule: a trial is accepted when score >= threshold.
"""
import argparse
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import score_norm
from DatasetLoader import (ListError, NonFiniteAudio, TrialList, locate_bad_audio, read_train_list,
                           read_trial_list)
from errors import UserError
from scoring import score_trials
from speakernet.atomic import atomic_file, json_safe, write_text
from speakernet.option_types import (ListOption, OptionValueError, count, parse_float_list,  # noqa: F401
                                     probability_list, split_list)
# tuneThreshold's one-sort table of operating points, shared so that the figures here are
# computed exactly as compute_eer and compute_min_dcf compute them.
from tuneThreshold import _operating_points as operating_points

log = logging.getLogger(__name__)

# Files embedded per call of `extract`: bounds memory (4096 x 10 crops x 512 floats = 84 MB)
# on VoxCeleb1-E/H, whose 145k files would otherwise need 3 GB of crop embeddings at once.
EXTRACT_CHUNK = 4096
# Trials scored per step: the two gathered 1024 x 512 operands stay in the CPU cache, which
# made this 3x faster than one big gather (and bounds memory on million-trial lists).
SCORE_CHUNK = 1024


# ---------------------------------------------------------------------------- options

def add_arguments(parser):
    """Options of evaluation.py (options.py keeps --test_list, --dcf_p_target, --dcf_c_miss,
    --dcf_c_fa; see EvalSettings.from_options for the types it expects of them)."""
    g = parser.add_argument_group("evaluation (evaluation.py)")
    g.add_argument("--far_targets", type=probability_list, default="0.01",
                   help="also report the false-rejection rate (and threshold) at these "
                        "false-acceptance rates; comma-separated fractions, '' for none")
    g.add_argument("--frr_targets", type=probability_list, default="0.01",
                   help="also report the false-acceptance rate (and threshold) at these "
                        "false-rejection rates; comma-separated fractions, '' for none")
    g.add_argument("--asnorm_top_n", type=count, default=0,
                   help="adaptive s-norm: normalise with the mean/std of each side's N best "
                        "cohort scores, reported beside the raw scores (0 = off; 300 is usual "
                        "with the VoxCeleb2 training speakers as cohort)")
    g.add_argument("--cohort_utts", type=count, default=5,
                   help="AS-norm cohort: utterances per training speaker averaged into its "
                        "cohort embedding")
    g.add_argument("--cohort_speakers", type=count, default=0,
                   help="AS-norm cohort: at most this many training speakers, drawn with "
                        "--seed (0 = all; an unlabelled list counts each utterance as one)")
    g.add_argument("--extract", type=str, default="",
                   help="write embeddings ('names', 'embeddings' files x D, optionally "
                        "'crops') to this .npz and exit; needs --initial_model")
    g.add_argument("--extract_list", type=str, default="",
                   help="for --extract: 'speaker path' or 'path' lines under --train_path "
                        "(default: every file of the --test_list lists)")
    g.add_argument("--extract_crops", action=argparse.BooleanOptionalAction, default=False,
                   help="for --extract: also store every crop's embedding (files x crops x D)")
    return g


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

    def __post_init__(self):
        for name in ("p_targets", "far_targets", "frr_targets"):
            probability_list(getattr(self, name))
        if self.c_miss <= 0 or self.c_fa <= 0:
            raise UserError(f"--dcf_c_miss and --dcf_c_fa must be positive, got {self.c_miss} "
                            f"and {self.c_fa}")
        if self.asnorm_top_n < 0 or self.cohort_utts < 1 or self.cohort_speakers < 0:
            raise UserError("--asnorm_top_n and --cohort_speakers must be 0 or more, "
                            "--cohort_utts at least 1")

    @classmethod
    def from_options(cls, options):
        """From parsed options; --dcf_p_target may be a number, a '0.05,0.01' string or a list."""
        return cls(p_targets=probability_list(options.dcf_p_target), c_miss=options.dcf_c_miss,
                   c_fa=options.dcf_c_fa, far_targets=probability_list(options.far_targets),
                   frr_targets=probability_list(options.frr_targets),
                   asnorm_top_n=options.asnorm_top_n, cohort_utts=options.cohort_utts,
                   cohort_speakers=options.cohort_speakers, seed=options.seed)


# ---------------------------------------------------------------------------- trial lists

@dataclass
class TrialSet:
    """Several trial lists over one set of unique files, so shared files are embedded once."""
    paths: list                 # the trial list files
    names: list                 # short unique names (from the file names) for logs and outputs
    lists: list                 # one TrialList per path; pairs index `files`
    files: list                 # unique files of all lists, as written in the lists
    lengths: np.ndarray         # samples per file
    origins: list = None        # 'list:line' where each file first appears, for messages


def list_names(paths):
    """File-name-safe short names: the stems, made unique with the folder or a number."""
    def safe(text):
        return re.sub(r"[^\w.-]", "_", text)

    stems = [safe(Path(p).stem) for p in paths]
    names = [s if stems.count(s) == 1 else f"{safe(Path(p).parent.name)}_{s}"
             for s, p in zip(stems, paths)]
    repeated = {name for name in names if names.count(name) > 1}
    seen = {}
    for i, name in enumerate(names):
        if name in repeated:
            seen[name] = seen.get(name, 0) + 1
            names[i] = f"{name}_{seen[name]}"
    return names


def load_trial_lists(list_paths, test_path):
    """Read and validate every list (str, comma-separated str or list of paths) -> TrialSet.

    Every file of every list is checked before this returns; problems in all lists are
    reported together as one ListError naming each list and line.
    """
    paths = list(dict.fromkeys(split_list(list_paths)))     # a list named twice is read once
    if not paths:
        raise ListError("no trial list given (--test_list)")
    loaded, problems = [], []
    for path in paths:
        try:
            loaded.append(read_trial_list(path, test_path))
        except ListError as err:
            problems.append(str(err))
    if problems:
        if len(problems) == 1:
            raise ListError(problems[0])
        raise ListError(f"{len(problems)} trial lists cannot be used:\n  " + "\n  ".join(problems))
    index, files, lengths, remaps, origins = {}, [], [], [], []
    for trials in loaded:
        remap = np.empty(len(trials.files), dtype=np.int64)
        for i, (name, length, origin) in enumerate(zip(trials.files, trials.lengths, trials.origins)):
            if name not in index:
                index[name] = len(files)
                files.append(name)
                lengths.append(int(length))
                origins.append(origin)
            remap[i] = index[name]
        remaps.append(remap)
    lengths = np.array(lengths, dtype=np.int64)
    lists = [TrialList(labels=t.labels, pairs=remap[t.pairs], files=files, lengths=lengths)
             for t, remap in zip(loaded, remaps)]
    return TrialSet(paths=paths, names=list_names(paths), lists=lists, files=files, lengths=lengths,
                    origins=origins)


# ---------------------------------------------------------------------------- embeddings

def file_embeddings(crops, normalize=True):
    """files x crops x D -> files x D: the mean of the unit crop embeddings (normalize=True,
    so that a dot product of two rows is the mean crop-pair cosine of score_trials), or the
    plain crop mean."""
    crops = torch.as_tensor(crops).float()
    return (F.normalize(crops, dim=-1) if normalize else crops).mean(dim=1)


def embed_files(extract, files, lengths, root, normalize=True, keep_crops=False,
                chunk=EXTRACT_CHUNK, origins=None):
    """Call extract(files, lengths, root) a chunk of files at a time -> (files x D file
    embeddings, files x crops x D crops or None). Crops are only kept when asked for. A file
    with NaN/Inf samples stops it, named with its list line from `origins` when given."""
    embeddings, kept = [], []
    for start in range(0, len(files), chunk):
        try:
            crops = extract(files[start:start + chunk], lengths[start:start + chunk], root)
        except NonFiniteAudio as err:
            raise locate_bad_audio(err, root, files, origins) from None
        embeddings.append(file_embeddings(crops, normalize))
        if keep_crops:
            kept.append(torch.as_tensor(crops).float())
    return torch.cat(embeddings), torch.cat(kept) if keep_crops else None


def shared_extract(extract):
    """`extract` split across the ranks of an initialised torch.distributed group: each rank
    embeds a disjoint share of the files (files[rank::world]) and every rank receives all of
    them, in order. Every rank must call it with the same files. Without a process group (or
    with one rank) it is `extract` itself."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return extract

    def run(files, lengths, root):
        rank, world = dist.get_rank(), dist.get_world_size()
        share = (len(files) - rank + world - 1) // world
        # A rank without files still needs the crop tensor's shape for the collective:
        # it embeds the first file and sends zeros.
        mine = torch.as_tensor(extract(files[rank::world] if share else files[:1],
                                       lengths[rank::world] if share else lengths[:1], root)).float()
        rows = -(-len(files) // world)
        padded = mine.new_zeros((rows, *mine.shape[1:]))
        padded[:share] = mine[:share]
        # NCCL gathers CUDA tensors only (init_distributed sets each rank's device).
        device = (torch.device("cuda", torch.cuda.current_device())
                  if dist.get_backend() == "nccl" else torch.device("cpu"))
        parts = [torch.empty_like(padded, device=device) for _ in range(world)]
        dist.all_gather(parts, padded.to(device))
        # Row j of rank r is file j * world + r: interleave, and the padding falls at the end.
        return torch.stack(parts, dim=1).flatten(0, 1)[:len(files)].cpu()

    return run


def _pair_scores(embeddings, pairs, normalize):
    """Scores of `pairs` from file embeddings (files x D, cosine scoring) or from crops
    (files x crops x D, needed by distance scoring)."""
    if embeddings.ndim == 3:
        return score_trials(embeddings, pairs, normalize=normalize).double().numpy()
    if not normalize:
        raise ValueError("distance scoring (test_normalize False) needs the crop embeddings, "
                         "files x crops x D, not file means")
    emb = embeddings.numpy()
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    scores = np.empty(len(pairs))
    for start in range(0, len(pairs), SCORE_CHUNK):
        block = pairs[start:start + SCORE_CHUNK]
        scores[start:start + len(block)] = np.einsum("ij,ij->i", emb[block[:, 0]], emb[block[:, 1]])
    return scores


# ---------------------------------------------------------------------------- cohort

@dataclass
class Cohort:
    """The utterances whose embeddings make up the AS-norm cohort, one mean per speaker."""
    files: list                 # paths as stored in the TrainList (already joined with its root)
    lengths: np.ndarray
    speaker: np.ndarray         # cohort speaker index of each file
    speakers: list              # speaker names


def select_cohort(train_list, utts_per_speaker=5, max_speakers=0, seed=10):
    """Pick at most utts_per_speaker random utterances of (at most max_speakers random)
    speakers of a TrainList. Chosen once, so every evaluation of a run uses the same cohort.
    A list without speaker labels counts each utterance as its own speaker."""
    labels = np.asarray(train_list.labels)
    rng = np.random.default_rng([seed, 2])
    if (labels < 0).all():
        labels = np.arange(len(labels))
        names = list(train_list.files)
    else:
        names = list(train_list.speakers)
    speakers = np.unique(labels)
    if max_speakers and max_speakers < len(speakers):
        speakers = np.sort(rng.choice(speakers, size=max_speakers, replace=False))
    # Random order within each speaker (sort by speaker, then by a random key); keep the
    # first utts_per_speaker of each: vectorised, so a million-utterance list is quick.
    candidates = np.flatnonzero(np.isin(labels, speakers))
    order = candidates[np.lexsort((rng.random(len(candidates)), labels[candidates]))]
    grouped = labels[order]
    first = np.searchsorted(grouped, grouped, side="left")
    chosen = np.sort(order[np.arange(len(order)) - first < utts_per_speaker])
    if len(speakers) > 20000:
        log.warning("the AS-norm cohort has %d speakers; --cohort_speakers limits the extra "
                    "extraction time", len(speakers))
    position = {int(s): i for i, s in enumerate(speakers)}
    return Cohort(files=[train_list.files[i] for i in chosen],
                  lengths=np.asarray(train_list.lengths)[chosen],
                  speaker=np.array([position[int(labels[i])] for i in chosen], dtype=np.int64),
                  speakers=[names[int(s)] for s in speakers])


def cohort_embeddings(extract, cohort, chunk=EXTRACT_CHUNK):
    """Speaker means of the cohort's file embeddings -> speakers x D tensor."""
    # Cohort paths already include the training root, so the root passed on is empty.
    emb, _ = embed_files(extract, cohort.files, cohort.lengths, "", normalize=True, chunk=chunk)
    speaker = torch.as_tensor(cohort.speaker)
    sums = torch.zeros(len(cohort.speakers), emb.shape[1]).index_add_(0, speaker, emb)
    counts = torch.bincount(speaker, minlength=len(cohort.speakers)).clamp_min(1)
    return sums / counts.unsqueeze(1)


# ---------------------------------------------------------------------------- metrics

def _key(value):
    return f"{value:g}"


def compute_metrics(scores, labels, p_targets=(0.05, 0.01), c_miss=1.0, c_fa=1.0,
                    far_targets=(0.01,), frr_targets=(0.01,)):
    """EER, minDCF per prior and error rates at target operating points -> dict.

    Trials labelled -1 are left out. Keys: trials, targets, nontargets, unlabelled (counts);
    eer (%), eer_threshold; min_dcf {p: {value, threshold}}; frr_at_far {far target:
    {frr, far, threshold}} is the lowest FRR whose FAR does not exceed the target (far is
    the rate actually reached); far_at_frr likewise. Rates in %, targets keyed as '%g'.
    Values are None when the labelled trials lack targets or non-targets.

    EER and minDCF are exactly tuneThreshold.compute_eer / compute_min_dcf (same operating
    points, same tie rules), but every figure comes from one sort of the scores: a
    million trials with two priors take about as long as compute_eer plus one minDCF.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape} and "
                         f"{labels.shape}")
    labelled = labels >= 0
    if not labelled.all():
        scores, labels = scores[labelled], labels[labelled]
    is_target = labels == 1
    n_tar = int(np.count_nonzero(is_target))
    n_non = len(labels) - n_tar
    result = {"trials": len(labels), "targets": n_tar, "nontargets": n_non,
              "unlabelled": int(np.count_nonzero(~labelled)), "eer": None, "eer_threshold": None,
              "min_dcf": {_key(p): {"value": None, "threshold": None} for p in p_targets},
              "frr_at_far": {_key(t): {"frr": None, "far": None, "threshold": None} for t in far_targets},
              "far_at_frr": {_key(t): {"far": None, "frr": None, "threshold": None} for t in frr_targets}}
    if n_tar == 0 or n_non == 0:
        return result
    if not np.isfinite(scores).all():
        raise ValueError(f"{int(np.count_nonzero(~np.isfinite(scores)))} scores are NaN or "
                         f"infinite; the embeddings have diverged")
    # Ascending thresholds (each distinct score, then +inf), with miss and false-alarm counts.
    thresholds, miss, fa, _, _ = operating_points(scores, is_target)
    frr, far = miss / n_tar, fa / n_non
    # EER: closest FRR and FAR; of equal gaps the highest threshold. FRR is written as
    # compute_eer writes it (1 - TPR) so that both round alike and pick the same point.
    fnr = 1 - (n_tar - miss) / n_tar
    gap = np.abs(fnr - far)
    i = len(gap) - 1 - int(np.argmin(gap[::-1]))
    result["eer"], result["eer_threshold"] = float(max(fnr[i], far[i]) * 100), float(thresholds[i])
    for p in p_targets:
        # Normalised by the cost of the better trivial system; of equal costs the lowest
        # threshold (as compute_min_dcf).
        cost = (c_miss * p / n_tar) * miss + (c_fa * (1 - p) / n_non) * fa
        i = int(np.argmin(cost))
        result["min_dcf"][_key(p)] = {"value": float(cost[i] / min(c_miss * p, c_fa * (1 - p))),
                                      "threshold": float(thresholds[i])}
    for t in far_targets:
        # FAR falls as the threshold rises: the first point within the target is the lowest
        # threshold, hence the lowest FRR. The last point (+inf) has FAR 0, so one exists.
        i = int(np.argmax(fa <= _allowed(t, n_non)))
        result["frr_at_far"][_key(t)] = {"frr": 100 * float(frr[i]), "far": 100 * float(far[i]),
                                         "threshold": float(thresholds[i])}
    for t in frr_targets:
        # FRR rises with the threshold: the last point within the target has the lowest FAR.
        i = int(np.searchsorted(miss, _allowed(t, n_tar), side="right")) - 1
        result["far_at_frr"][_key(t)] = {"far": 100 * float(far[i]), "frr": 100 * float(frr[i]),
                                         "threshold": float(thresholds[i])}
    return result


def _allowed(rate, count):
    """Errors allowed by a target rate; the tolerance keeps 0.29 * 100 =
    28.999999999999996 from allowing only 28."""
    return int(math.floor(rate * count + 1e-9))


def format_metrics(metrics):
    """One log fragment: 'EER 2.31%  minDCF(0.05) 0.1600  ...  FRR@FAR=1% 8.10%'."""
    if metrics["eer"] is None:
        return f"no EER ({metrics['targets']} target, {metrics['nontargets']} non-target trials)"
    parts = [f"EER {metrics['eer']:.2f}%"]
    parts += [f"minDCF({p}) {v['value']:.4f}" for p, v in metrics["min_dcf"].items()]
    parts += [f"FRR@FAR={100 * float(t):g}% {v['frr']:.2f}%" for t, v in metrics["frr_at_far"].items()]
    parts += [f"FAR@FRR={100 * float(t):g}% {v['far']:.2f}%" for t, v in metrics["far_at_frr"].items()]
    return "  ".join(parts)


# ---------------------------------------------------------------------------- evaluation

def evaluate_lists(embeddings, trial_set, settings, normalize=True, cohort=None, out_dir=None,
                   tag="", plots=True):
    """Score every list of a TrialSet, optionally AS-normalised, and write the outputs.

    embeddings: files x crops x D crops of trial_set.files (or files x D file_embeddings
    with cosine scoring). cohort: speakers x D (cohort_embeddings) to add AS-norm with
    settings.asnorm_top_n, or None. With out_dir, for each list <name> and tag T it writes
    scores_T_<name>.txt (and scores_T_<name>_asnorm.txt): 'score label file1 file2' lines,
    label '-' when unlabelled; det_T_<name>.png, hist_T_<name>.png (both systems); and
    results_T.json with every figure. Existing files are never overwritten (a numeric
    suffix is added). Returns the report written to the JSON, where each list's entry also
    holds its scores as numpy arrays under 'scores' (left out of the JSON).
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
            log.warning("AS-norm needs cosine scoring; this objective scores by distance, so "
                        "only raw scores are reported")
    system_names = {"raw": "cosine" if normalize else "-distance", "asnorm": "AS-norm"}
    report = {"tag": tag, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "settings": asdict(settings),
              "files": len(trial_set.files), "lists": {}}
    for name, path, trials in zip(trial_set.names, trial_set.paths, trial_set.lists):
        scores = {"raw": _pair_scores(embeddings, trials.pairs, normalize)}
        if stats is not None:
            scores["asnorm"] = score_norm.apply_as_norm(scores["raw"], trials.pairs, *stats).numpy()
        metrics = {system: compute_metrics(values, trials.labels, settings.p_targets, settings.c_miss,
                                           settings.c_fa, settings.far_targets, settings.frr_targets)
                   for system, values in scores.items()}
        entry = {"list": str(path), "trials": len(trials.labels), "metrics": metrics, "outputs": {},
                 "scores": scores}
        if out_dir is not None:
            entry["outputs"] = _write_list_outputs(out_dir, tag, name, trials, scores, metrics,
                                                   system_names, plots)
        log.info("%s%s: %s%s (%d trials)", f"{tag} " if tag else "", name,
                 format_metrics(metrics["raw"]),
                 f" | AS-norm: {format_metrics(metrics['asnorm'])}" if "asnorm" in metrics else "",
                 len(trials.labels))
        report["lists"][name] = entry
    report["seconds"] = time.perf_counter() - started
    if out_dir is not None:
        report["results_file"] = str(write_json(Path(out_dir) / _output_name("results", tag, ext=".json"),
                                                report))
    return report


def _output_name(kind, tag, name="", suffix="", ext=".txt"):
    return "_".join(part for part in (kind, tag, name) if part) + suffix + ext


def _write_list_outputs(out_dir, tag, name, trials, scores, metrics, system_names, plots):
    import plots as plotting      # matplotlib is only loaded when figures are wanted

    out_dir = Path(out_dir)
    outputs = {}
    for system, values in scores.items():
        suffix = "" if system == "raw" else f"_{system}"
        key = "scores_file" if system == "raw" else f"scores_{system}_file"
        outputs[key] = str(write_scores(out_dir / _output_name("scores", tag, name, suffix),
                                        values, trials))
    if not plots:
        return outputs
    shown = {system_names[s]: v for s, v in scores.items()}
    title = f"{name} ({tag})" if tag else name
    if metrics["raw"]["eer"] is not None:
        outputs["det_png"] = str(plotting.plot_det(
            shown, trials.labels, unique_path(out_dir / _output_name("det", tag, name, ext=".png")),
            title=f"DET: {title}"))
    thresholds = {system_names[s]: m["eer_threshold"] for s, m in metrics.items()}
    outputs["hist_png"] = str(plotting.plot_score_histogram(
        shown, trials.labels, unique_path(out_dir / _output_name("hist", tag, name, ext=".png")),
        title=f"Scores: {title}", thresholds=thresholds))
    return outputs


def summary_record(report):
    """Flat validation figures of a report for run_log.append_metrics:
    {'val_eer/<list>': %, 'val_min_dcf@<p>/<list>': ..., and '_asnorm' variants}."""
    record = {}
    for name, entry in report["lists"].items():
        for system, metrics in entry["metrics"].items():
            suffix = "" if system == "raw" else f"_{system}"
            record[f"val_eer{suffix}/{name}"] = metrics["eer"]
            for p, value in metrics["min_dcf"].items():
                record[f"val_min_dcf{suffix}@{p}/{name}"] = value["value"]
    return record


class Evaluation:
    """Trial lists (and the AS-norm cohort) validated once; run() extracts and evaluates.

    Build it before training starts, so a missing file stops the run before any epoch;
    call run() at every validation and for --eval.
    """

    def __init__(self, list_paths, test_path, settings, out_dir=None, cohort_list=None, plots=True):
        self.test_path = test_path
        self.settings = settings
        self.out_dir = out_dir
        self.plots = plots
        self.trial_set = load_trial_lists(list_paths, test_path)
        self.cohort = None
        if settings.asnorm_top_n:
            if cohort_list is None:
                raise UserError("AS-norm (--asnorm_top_n) needs a cohort: give --train_list")
            self.cohort = select_cohort(cohort_list, settings.cohort_utts,
                                        settings.cohort_speakers, settings.seed)

    @classmethod
    def from_options(cls, options, train_list=None):
        """From parsed options; reads (and checks) --train_list for the cohort only when
        AS-norm is on and no TrainList is given."""
        settings = EvalSettings.from_options(options)
        if settings.asnorm_top_n and train_list is None:
            train_list = read_train_list(options.train_list, options.train_path, need_labels=False)
        return cls(options.test_list, options.test_path, settings,
                   out_dir=Path(options.save_path) / "result", cohort_list=train_list)

    def run(self, extract, normalize=True, tag="", score=True):
        """Embed the lists' files (and the cohort), score, write outputs -> report.

        With score=False it only embeds and returns None: the other ranks of a distributed
        run, whose `extract` (shared_extract) needs every rank to take part."""
        started = time.perf_counter()
        trial_set = self.trial_set
        embeddings, crops = embed_files(extract, trial_set.files, trial_set.lengths,
                                        self.test_path, keep_crops=not normalize, origins=trial_set.origins)
        cohort = None
        if self.cohort is not None and normalize:
            cohort = cohort_embeddings(extract, self.cohort)
        elif self.cohort is not None:
            log.warning("AS-norm needs cosine scoring; this objective scores by distance, so "
                        "the cohort is not embedded and only raw scores are reported")
        extracted = time.perf_counter() - started
        if not score:
            return None
        report = evaluate_lists(embeddings if normalize else crops, trial_set, self.settings,
                                normalize=normalize, cohort=cohort, out_dir=self.out_dir, tag=tag,
                                plots=self.plots)
        report["extract_seconds"] = extracted
        log.info("evaluated %d files%s in %.1f s (embedding %.1f s)", len(trial_set.files),
                 f" and {len(self.cohort.files)} cohort files" if cohort is not None else "",
                 time.perf_counter() - started, extracted)
        return report


# ---------------------------------------------------------------------------- output files

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


# ---------------------------------------------------------------------------- export

@dataclass
class FileSet:
    """Files to embed for --extract, validated before any extraction."""
    files: list
    lengths: np.ndarray
    root: str
    names: list                         # as written in the list
    speakers: list = field(default=None)   # one per file, when the list names speakers
    origins: list = field(default=None)    # 'list:line' of each file, for messages


def files_to_export(options):
    """--extract_list (training-list format under --train_path) or every file of the
    --test_list lists -> FileSet. Raises ListError for bad files and UserError when --extract
    names an existing file (checked before any extraction)."""
    if Path(options.extract).exists():
        raise UserError(f"--extract {options.extract} exists; choose another file name")
    check_writable(Path(options.extract).parent, f"--extract {options.extract}")
    if not options.extract_list:
        trial_set = load_trial_lists(options.test_list, options.test_path)
        return FileSet(trial_set.files, trial_set.lengths, options.test_path, list(trial_set.files),
                       origins=trial_set.origins)
    train = read_train_list(options.extract_list, options.train_path, need_labels=False)
    root = str(Path(options.train_path))
    names = [f[len(root) + 1:] if f.startswith(root + os.sep) else f for f in train.files]
    speakers = [train.speakers[i] for i in train.labels] if train.speakers else None
    return FileSet(train.files, train.lengths, "", names, speakers,
                   origins=[train.origin(i) for i in range(len(train.files))])


def check_writable(folder, what):
    """Create `folder` if needed and prove a file can be written there, before any long job."""
    folder = Path(folder)
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write {what}: {err.strerror or err} in {folder} "
                        f"(choose a writable folder)") from None


def export_embeddings(path, names, crops, speakers=None, keep_crops=False, normalize=True):
    """Write one .npz: 'names' (files), 'embeddings' (files x D, file_embeddings of the crops),
    'crops' (files x crops x D) when keep_crops, 'speakers' when given -> the path written.
    Written atomically; an existing file is never overwritten (a numeric suffix is added)."""
    crops = torch.as_tensor(crops).float()
    return _write_npz(path, names, file_embeddings(crops, normalize), crops if keep_crops else None,
                      speakers)


def extract_to_npz(path, extract, file_set, keep_crops=False, normalize=True):
    """Embed a FileSet a chunk at a time and write it like export_embeddings -> the path."""
    embeddings, crops = embed_files(extract, file_set.files, file_set.lengths, file_set.root,
                                    normalize=normalize, keep_crops=keep_crops, origins=file_set.origins)
    path = _write_npz(path, file_set.names, embeddings, crops, file_set.speakers)
    log.info("wrote %d embeddings (%d dimensions) to %s", len(file_set.names), embeddings.shape[1], path)
    return path


def _write_npz(path, names, embeddings, crops, speakers):
    if len(names) != len(embeddings):
        raise ValueError(f"{len(names)} names for {len(embeddings)} embeddings")
    arrays = {"names": np.array([str(n) for n in names]), "embeddings": embeddings.numpy()}
    if crops is not None:
        arrays["crops"] = crops.numpy()
    if speakers is not None:
        arrays["speakers"] = np.array([str(s) for s in speakers])
    path = unique_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as handle:        # a file object: numpy adds no second .npz suffix
            np.savez(handle, **arrays)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err} (free space or choose another "
                        f"place; nothing was written)") from None
    return path
