"""The checks of a run's parsed options, before anything runs: finite floats, ranges, sizes
that bound what one step holds, non-empty paths, the components' own checks. Each option owner
(augment, the evaluation, ...) checks its own options through check_options."""
import math

from speakernet.core.audio import HOP, SAMPLE_RATE
from speakernet.core.errors import OptionError
from speakernet.run import plugins
from models._frontends import N_FFT

FRAMES_PER_HOUR = 3600 * SAMPLE_RATE // HOP
# Upper bounds of the options that size what is allocated: each far above any recipe's value,
# so that a typo such as --max_frames 1000000000000 is one line here rather than numpy or torch
# asking for petabytes. {option: (largest value, what it is measured against)}.
UPPER_BOUNDS = {
    "max_frames": (FRAMES_PER_HOUR, "an hour of audio; recipes train on 2-3 s crops"),
    "eval_frames": (FRAMES_PER_HOUR, "an hour of audio; 0 scores whole files of any length"),
    "num_eval": (1000, "crops per file; voxceleb_trainer takes 10"),
    "nOut": (8192, "an embedding size; published encoders use 128 to 512"),
    "nClasses": (1_000_000, "classes: speakers, times 3 with --speed_perturb; the largest public "
                            "corpora have about 100 000 speakers"),
    "n_mels": (N_FFT // 2 + 1, f"the frequency bins of the front end's {N_FFT}-point FFT; more "
                               f"bands than bins leave bands empty"),
    "nDataLoaderThread": (256, "worker processes, each with its own copy of the loader"),
}
# Audio held at once, in frames: a training batch (every view of every group), or the crops
# of one file at evaluation. Ten hours of 16 kHz float samples are 2.3 GB.
MAX_FRAMES_AT_ONCE = 10 * FRAMES_PER_HOUR
# Path options that mean nothing when empty: an empty --save_path would write the run into the
# current folder, an empty --train_list fail later without naming the option.
REQUIRED_PATHS = {"save_path": "folder", "train_list": "file", "train_path": "folder",
                  "test_path": "folder", "musan_path": "folder", "rir_path": "folder"}


def _float_actions(parser):
    """The parser's float-typed options (core and component-declared, nargs lists included)."""
    return [a for a in parser._actions if a.option_strings and a.type is float]


def _check_finite(options, parser):
    """Every float option is a finite number: NaN or Inf would only surface inside torch."""
    for action in _float_actions(parser):
        value = getattr(options, action.dest, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            name = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
            shown = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
            what = "finite numbers" if isinstance(value, (list, tuple)) else "a finite number"
            raise OptionError(f"{name} must be {what}, got {shown}")


def _check_sizes(options):
    """The size options stay below UPPER_BOUNDS, and the audio they make one step hold below
    MAX_FRAMES_AT_ONCE."""
    for name, (largest, measure) in UPPER_BOUNDS.items():
        value = getattr(options, name)
        if value > largest:
            raise OptionError(f"--{name} {value} is more than {largest} ({measure}); lower it")
    for factors in (("batch_size", "nPerSpeaker", "max_frames"), ("num_eval", "eval_frames")):
        frames = math.prod(getattr(options, name) for name in factors)
        if frames > MAX_FRAMES_AT_ONCE:
            product = " x ".join(f"--{name} {getattr(options, name)}" for name in factors)
            raise OptionError(f"{product} is {frames / FRAMES_PER_HOUR:.1f} hours of audio at once, "
                              f"more than {MAX_FRAMES_AT_ONCE // FRAMES_PER_HOUR}; lower one of them")


def _check_paths(options):
    """No path option is empty (REQUIRED_PATHS, --config, --verify's files)."""
    named = [(f"--{name}", getattr(options, name), kind) for name, kind in REQUIRED_PATHS.items()]
    if getattr(options, "config", None) is not None:
        named.append(("--config", options.config, "file"))
    named += [("--verify", path, "file") for path in getattr(options, "verify", None) or ()]
    for option, value, kind in named:
        if not str(value).strip():
            hint = " ('.' for the current one)" if kind == "folder" else ""
            raise OptionError(f"{option} is empty; give a {kind}{hint}")


def _check_components(options):
    """Every mode builds its encoder and objective from --model and --trainfunc, except
    --verify, which takes both and their options from the checkpoint it needs."""
    if getattr(options, "verify", None):
        if not options.initial_model:
            raise OptionError("--verify needs --initial_model CKPT (a checkpoint written by --calibrate "
                              "gives an LLR and a decision)")
        return
    if not options.trainfunc:
        raise OptionError("--trainfunc is required (a file name in loss/, e.g. angleproto)")
    if not options.model:
        raise OptionError("--model is required (a file name in models/, e.g. ResNetSE34L)")
    for kind, name in (("models", options.model), ("loss", options.trainfunc)):
        check = getattr(plugins.load_module(kind, name), "check_options", None)   # the component's own
        if check is not None:
            check(**vars(options))


def validate(options, parser, owners=()):
    """Reject out-of-range values before anything runs. `parser` names the float options checked
    for NaN and Inf, component-declared ones included; `owners` are the modules whose
    check_options(options) checks what they declare."""
    _check_finite(options, parser)
    if options.keep_last < 0 or options.max_bad_steps < 0:
        raise OptionError("--keep_last and --max_bad_steps must be 0 or more")
    if options.checkpoint_minutes < 0 or options.checkpoint_steps < 0:
        raise OptionError("--checkpoint_minutes and --checkpoint_steps must be 0 (off) or more")
    positive = ["max_frames", "batch_size", "max_seg_per_spk", "test_interval", "max_epoch",
                "nPerSpeaker", "nClasses", "n_mels", "nOut", "num_eval"]
    for name in positive:
        if getattr(options, name) < 1:
            raise OptionError(f"--{name} must be at least 1, got {getattr(options, name)}")
    if options.eval_frames < 0:
        raise OptionError(f"--eval_frames must be 0 (whole files) or positive, got {options.eval_frames}")
    if options.eval_seconds and not options.eval:
        raise OptionError("--eval_seconds cuts the test files of an --eval run; add --eval")
    if options.nDataLoaderThread < 0:
        raise OptionError("--nDataLoaderThread must be 0 or more")
    if options.lr <= 0:
        raise OptionError(f"--lr must be positive, got {options.lr}")
    if not 0 < options.lr_decay <= 1:
        raise OptionError(f"--lr_decay must lie in (0, 1] (the factor on the learning rate at each "
                          f"steplr step; 1 keeps it), got {options.lr_decay:g}")
    if options.weight_decay < 0:
        raise OptionError(f"--weight_decay must be 0 or more, got {options.weight_decay:g}")
    if options.margin < 0:
        raise OptionError(f"--margin must be 0 or more, got {options.margin:g}")
    if options.scale <= 0:
        raise OptionError(f"--scale must be positive, got {options.scale:g}")
    if options.seed < 0:
        raise OptionError(f"--seed must be 0 or more, got {options.seed}")
    _check_sizes(options)
    _check_paths(options)
    for owner in owners:                    # each checks the options it declares
        owner.check_options(options)
    _check_components(options)
    if options.device != "auto" and not (options.device in ("cpu", "cuda") or
                                         options.device.startswith("cuda:")):
        raise OptionError(f"--device '{options.device}': use auto, cpu, cuda or cuda:N")
