"""Score calibration: an affine map from scores to log-likelihood ratios, and the figures that
judge LLRs (Cllr, min Cllr, actual DCF).

Linear calibration (Brümmer and du Preez 2006; the BOSARIS toolkit's train_linear_calibration):
llr = scale * score + offset, fitted by minimising the prior-weighted cross-entropy

    C_wxe(P) = P / N_tar * sum_tar softplus(-(llr + logit P))
             + (1 - P) / N_non * sum_non softplus(llr + logit P)

at an effective target prior P, i.e. logistic regression of the label on the score with the
two classes weighted P : (1 - P) whatever their counts; the fitted posterior log-odds minus
logit P is the LLR. The prior: --calibration_prior, by default the first --dcf_p_target
(0.05). The fit is judged most at that prior's operating point, which is the one these
evaluations report first (minDCF(0.05)); a fit at P = 0.5 minimises Cllr itself and suits
balanced use. The map is monotone, so EER and minDCF are unchanged by it.

Figures (trials labelled -1 are left out):
  cllr      Cllr of the LLRs, in bits: 1/2 (mean_tar log2(1 + e^-llr) + mean_non log2(1 + e^llr));
            1 for a system that always says llr = 0, 0 for a perfect one.
  min_cllr  Cllr after the optimal monotone calibration of the scores: pool adjacent violators
            (PAV) gives the posterior of each score at the list's own target share; its
            log-odds minus the log-odds of that share are the optimal LLRs. min_cllr <= cllr
            of any monotone calibration, cllr - min_cllr is the calibration loss.
  act_dcf   the normalised DCF of Bayes decisions: accept iff llr >= log(c_fa (1 - p) / (c_miss p)),
            normalised like minDCF by min(c_miss p, c_fa (1 - p)); minDCF <= act_dcf.

Where the map is kept: `--calibrate DEV_TRIALS` never changes the checkpoint it calibrates;
it writes a copy, `<checkpoint stem>.calibrated.model` beside it (calibrated_path), holding
the same weights, the options of the calibrating run and `calibration` (Calibration.to_dict).
That one file is what --eval, --verify, speakernet.model.embedder and the ONNX export
(metadata_props "speakernet.calibration") read. Calibrating a calibrated copy again writes
`<stem>.calibrated.2.model` (then .3, ...), never over its input. An existing file of that
name is refused.
"""
import logging
import math
import numbers
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from speakernet.core import checkpoint
from speakernet.core.errors import CheckpointError, UserError
from speakernet.eval.metrics import compute_eer, detection_cost, error_rates_at

log = logging.getLogger("evaluation")

LOG2 = math.log(2.0)
VERSION = 1
# The stem of a calibrated copy: <base>.calibrated, or <base>.calibrated.<N> once recalibrated.
CALIBRATED_STEM = re.compile(r"(?P<base>.+)\.calibrated(?:\.(?P<count>\d+))?")


def logit(p):
    return math.log(p) - math.log1p(-p)


def bayes_threshold(p_target, c_miss=1.0, c_fa=1.0):
    """The LLR above which accepting costs less than rejecting: log(c_fa (1 - p) / (c_miss p))."""
    return math.log(c_fa * (1 - p_target)) - math.log(c_miss * p_target)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_decision(p_target, c_miss, c_fa):
    """(p_target, c_miss, c_fa) as floats when bayes_threshold can use them: a prior in (0, 1)
    and positive costs (as --dcf_c_miss and --dcf_c_fa are checked); else one-line UserError."""
    if not (_is_number(p_target) and 0 < p_target < 1):
        raise UserError(f"p_target must lie in (0, 1) (the prior of a target trial), got {p_target!r}")
    for name, cost in (("c_miss", c_miss), ("c_fa", c_fa)):
        if not (_is_number(cost) and cost > 0):
            raise UserError(f"{name} must be a positive finite number (a cost; --dcf_{name}), got {cost!r}")
    return float(p_target), float(c_miss), float(c_fa)


def _labelled(scores, labels):
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores for {labels.size} labels")
    keep = labels >= 0
    return scores[keep], labels[keep] == 1


# ---------------------------------------------------------------------------- the map

@dataclass(frozen=True)
class Calibration:
    """llr = scale * score + offset, and where it came from."""
    scale: float
    offset: float
    prior: float                    # effective target prior of the fit
    c_miss: float = 1.0             # costs of the calibrating run (decision defaults)
    c_fa: float = 1.0
    trials: int = 0                 # labelled dev trials it was fitted on
    targets: int = 0
    source: str = ""                # the dev trial list
    eer_threshold: float = None     # raw score threshold of the dev EER
    dev_cllr: float = None          # Cllr and min Cllr of the dev LLRs (after the fit)
    dev_min_cllr: float = None
    version: int = VERSION

    def llr(self, scores):
        """LLRs of `scores` (array-like or a number)."""
        return self.scale * np.asarray(scores, dtype=np.float64) + self.offset

    def to_dict(self):
        return {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, stored, source="the checkpoint"):
        """From to_dict's output; a CheckpointError names what is wrong."""
        try:
            fields = {k: stored[k] for k in cls.__dataclass_fields__ if k in stored}
            made = cls(**fields)
            values = (made.scale, made.offset, made.prior, made.c_miss, made.c_fa)
            ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        except (TypeError, KeyError):
            ok = False
        if not ok or not 0 < made.prior < 1 or min(made.c_miss, made.c_fa) <= 0:
            raise CheckpointError(f"{source}: its 'calibration' entry is not a valid score calibration "
                                  f"(calibrate again with --calibrate DEV_TRIALS)")
        return made


def _check_fit_input(s, is_tar, prior):
    """UserError unless a finite linear calibration can be fitted to these labelled scores."""
    n_tar = int(is_tar.sum())
    n_non = s.size - n_tar
    if n_tar == 0 or n_non == 0:
        raise UserError(f"calibration needs target and non-target trials, got {n_tar} target and "
                        f"{n_non} non-target labelled trials (give a labelled dev list)")
    if not np.isfinite(s).all():
        raise UserError("calibration: the scores hold NaN or Inf values")
    if s[is_tar].min() > s[~is_tar].max():
        raise UserError("calibration: every target trial scores above every non-target one, so no "
                        "finite map fits (the logistic fit diverges); use a larger or harder dev list")
    if not 0 < prior < 1:
        raise UserError(f"--calibration_prior must lie in (0, 1), got {prior}")
    return n_tar, n_non


def fit_linear(scores, labels, prior=0.5, max_iter=100, tol=1e-12):
    """(scale, offset) minimising C_wxe at effective prior `prior` (module docstring), by
    Newton's method with step halving on the convex two-parameter objective.

    Raises UserError when the labelled trials lack a class, or when every target scores above
    every non-target: the minimum is then at an infinite scale (no finite map)."""
    s, is_tar = _labelled(scores, labels)
    n_tar, n_non = _check_fit_input(s, is_tar, prior)
    # Centre and scale the scores for a well-conditioned Newton step.
    mu, sd = float(s.mean()), float(s.std()) or 1.0
    x = (s - mu) / sd
    y = is_tar.astype(np.float64)
    w = np.where(is_tar, prior / n_tar, (1 - prior) / n_non)
    shift = logit(prior)

    def cost(theta):
        z = theta[0] * x + theta[1] + shift
        return float(np.sum(w * np.where(is_tar, np.logaddexp(0, -z), np.logaddexp(0, z))))

    theta = np.zeros(2)
    current = cost(theta)
    for _ in range(max_iter):
        z = theta[0] * x + theta[1] + shift
        p = 0.5 * (1 + np.tanh(0.5 * z))                  # sigmoid without overflow
        r = w * (p - y)
        grad = np.array([np.dot(r, x), r.sum()])
        h = w * p * (1 - p)
        hess = np.array([[np.dot(h, x * x), np.dot(h, x)], [np.dot(h, x), h.sum()]])
        try:
            step = np.linalg.solve(hess + 1e-15 * np.eye(2), grad)
        except np.linalg.LinAlgError:
            step = grad
        if np.abs(grad).max() < tol:
            break
        t, value = 1.0, math.inf
        while t > 1e-10:
            candidate = theta - t * step
            value = cost(candidate)
            if value <= current:
                break
            t *= 0.5
        if not value <= current:          # no step lowers the cost: at the minimum
            break
        improvement = current - value
        theta, current = candidate, value
        if improvement < 1e-15:
            break
    scale = theta[0] / sd
    offset = theta[1] - theta[0] * mu / sd
    return float(scale), float(offset)


def fit(scores, labels, prior, c_miss=1.0, c_fa=1.0, source=""):
    """Calibration fitted on labelled dev `scores` (fit_linear), with its dev figures."""
    scale, offset = fit_linear(scores, labels, prior)
    s, is_tar = _labelled(scores, labels)
    calibration = Calibration(scale=scale, offset=offset, prior=float(prior), c_miss=float(c_miss),
                              c_fa=float(c_fa), trials=int(s.size), targets=int(is_tar.sum()),
                              source=str(source), eer_threshold=compute_eer(s, is_tar.astype(int))[1])
    llr = calibration.llr(s)
    return Calibration(**{**asdict(calibration), "dev_cllr": cllr(llr, is_tar),
                          "dev_min_cllr": min_cllr(s, is_tar)})


# ---------------------------------------------------------------------------- figures

def cllr(llrs, labels):
    """Cllr in bits of LLRs (labels 1 target, 0 non-target, -1 left out)."""
    llr, is_tar = _labelled(llrs, labels)
    if is_tar.all() or not is_tar.any():
        raise ValueError("Cllr needs target and non-target trials")
    with np.errstate(over="ignore"):
        tar = np.logaddexp(0, -llr[is_tar]).mean()
        non = np.logaddexp(0, llr[~is_tar]).mean()
    return float(0.5 * (tar + non) / LOG2)


def pav(y, order_by):
    """Isotonic (non-decreasing in `order_by`) least-squares fit of `y` by pool adjacent
    violators; equal `order_by` values share one fitted value. -> fitted values, in the
    original order."""
    order_by = np.asarray(order_by, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    order = np.argsort(order_by, kind="mergesort")
    ordered = order_by[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sums = np.add.reduceat(y[order], starts)
    counts = np.diff(np.r_[starts, len(y)]).astype(np.float64)
    block_sum, block_count, block_groups = [], [], []
    for total, count in zip(sums.tolist(), counts.tolist()):
        block_sum.append(total)
        block_count.append(count)
        block_groups.append(1)
        while len(block_sum) > 1 and block_sum[-2] * block_count[-1] >= block_sum[-1] * block_count[-2]:
            total, count, groups = block_sum.pop(), block_count.pop(), block_groups.pop()
            block_sum[-1] += total
            block_count[-1] += count
            block_groups[-1] += groups
    group_values = np.repeat(np.array(block_sum) / np.array(block_count), block_groups)
    fitted = np.empty(len(y))
    fitted[order] = np.repeat(group_values, counts.astype(np.int64))
    return fitted


def pav_llrs(scores, labels):
    """The optimal monotone LLRs of `scores`: PAV posteriors at the trials' own target share,
    as log-odds minus the prior log-odds (+-inf where the posterior is 0 or 1)."""
    s, is_tar = _labelled(scores, labels)
    posterior = pav(is_tar.astype(np.float64), s)
    n_tar = int(is_tar.sum())
    with np.errstate(divide="ignore"):
        return np.log(posterior) - np.log1p(-posterior) - math.log(n_tar / (s.size - n_tar)), is_tar


def min_cllr(scores, labels):
    """Cllr after the optimal monotone calibration (PAV), in bits."""
    llr, is_tar = pav_llrs(scores, labels)
    return cllr(llr, is_tar)


def act_dcf(llrs, labels, p_target, c_miss=1.0, c_fa=1.0):
    """Normalised DCF of the Bayes decisions of LLRs at `p_target` (accept iff llr >= threshold)."""
    llr, is_tar = _labelled(llrs, labels)
    p_fa, p_miss = error_rates_at(llr, is_tar, bayes_threshold(p_target, c_miss, c_fa))
    return detection_cost(p_miss, p_fa, p_target, c_miss, c_fa)


@dataclass(frozen=True)
class CalibratedMetrics:
    """Figures of a list's LLRs under a calibration; None when the labelled trials lack a class."""
    cllr: float = None
    min_cllr: float = None
    act_dcf: dict = field(default_factory=dict)       # '%g' % p_target -> actDCF

    def as_dict(self):
        return {"cllr": self.cllr, "min_cllr": self.min_cllr, "act_dcf": dict(self.act_dcf)}


def calibrated_metrics(scores, labels, calibration, p_targets, c_miss=1.0, c_fa=1.0):
    """CalibratedMetrics of `scores` under `calibration`: Cllr, min Cllr, actDCF at each prior."""
    s, is_tar = _labelled(scores, labels)
    if is_tar.all() or not is_tar.any():
        return CalibratedMetrics(act_dcf={f"{p:g}": None for p in p_targets})
    llr = calibration.llr(s)
    return CalibratedMetrics(cllr=cllr(llr, is_tar), min_cllr=min_cllr(s, is_tar),
                             act_dcf={f"{p:g}": act_dcf(llr, is_tar, p, c_miss, c_fa)
                                      for p in p_targets})


# ---------------------------------------------------------------------------- storage

def calibrated_path(source):
    """Where --calibrate writes the calibrated copy of checkpoint `source`: <stem>.calibrated.model
    beside it; for a copy calibrated before (<base>.calibrated[.N].model) <base>.calibrated.<N+1>.model,
    so the suffix never stacks and the input is never the target."""
    source = Path(source)
    stem = source.name[:-len(".model")] if source.name.endswith(".model") else source.stem
    earlier = CALIBRATED_STEM.fullmatch(stem)
    if earlier is None:
        return source.with_name(f"{stem}.calibrated.model")
    return source.with_name(f"{earlier['base']}.calibrated.{int(earlier['count'] or 1) + 1}.model")


def check_new_file(path, source):
    """Refuse an existing `path`, and a folder that cannot be written, before any work."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise UserError(f"--calibrate would write {path}, which exists (from an earlier calibration "
                        f"of {source}); move or delete it, or calibrate another checkpoint")
    probe = path.with_name(f".{path.name}.write-test")
    try:
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err} (make {path.parent} writable, "
                        f"or copy {source} to a writable folder and calibrate the copy)") from None


def from_checkpoint(stored, source="the checkpoint"):
    """The Calibration in a loaded checkpoint, or None when it has none."""
    if isinstance(stored, dict) and stored.get("calibration") is not None:
        return Calibration.from_dict(stored["calibration"], source)
    return None


def load(path):
    """The Calibration stored in the checkpoint file `path`, or None (a public model folder has none)."""
    if Path(path).is_dir():
        return None
    return from_checkpoint(checkpoint.load_file(path), path)
