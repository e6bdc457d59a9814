"""Command-line options: defaults < YAML (--config) < command line.

voxceleb_trainer's option names, meanings and defaults are kept. Components add their own
options through an optional `add_arguments(parser)` in their file, so a YAML key is valid
when the core or any loaded component declares it; anything else is an error naming the
closest valid key.
"""
import argparse
import copy
import difflib
import inspect
import logging
import sys

import yaml

from speakernet.data import augment
from speakernet.eval import evaluation
from speakernet.data import packed_audio
from speakernet.run import plugins
from speakernet.data import pseudo_labels
from speakernet.data import sampler
from models import _specaugment as spec_augment
from speakernet.core.errors import CheckpointError, OptionError, UserError  # noqa: F401 (OptionError re-exported)
from speakernet.core.atomic import write_text
from speakernet.core.config_file import load_config  # noqa: F401 (re-exported)
from speakernet.run.option_checks import validate
from speakernet.core.option_types import (ListOption, OptionValueError, durations, probability_list, quoted, resumable,
                                     split_list)

# Modules that declare options of their own (add_arguments): each owner keeps its options.
OPTION_OWNERS = (augment, spec_augment, packed_audio, sampler, evaluation, pseudo_labels)
# Owners whose check_options(options) validates what they declare.
CHECKED_OWNERS = (augment, evaluation)
COMPONENT_OPTIONS = {"model": "models", "trainfunc": "loss", "optimizer": "optimizer",
                     "scheduler": "scheduler"}

log = logging.getLogger(__name__)

# Flags take --name / --no-name (voxceleb_trainer's YAML files give them as true/false).
FLAG = dict(action=argparse.BooleanOptionalAction, default=False)


def build_parser():
    p = argparse.ArgumentParser(
        description="Train or evaluate a speaker-embedding network.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    resumable(p.add_argument("--config", type=str, default=None, help="YAML file of options (command line wins)"))
    for add_group in CORE_GROUPS:
        add_group(p)
    for owner in OPTION_OWNERS:            # the modules that declare their own options
        owner.add_arguments(p)
    return p


def add_loader_options(p):
    g = p.add_argument_group("data loader")
    g.add_argument("--max_frames", type=int, default=200, help="training crop length in 10 ms frames")
    resumable(g.add_argument("--eval_frames", type=int, default=300,
                             help="evaluation crop length in frames; 0 scores whole files"))
    resumable(g.add_argument("--num_eval", type=int, default=10, help="evaluation crops per file"))
    g.add_argument("--batch_size", type=int, default=200, help="groups (speakers) per batch, per process")
    g.add_argument("--max_seg_per_spk", type=int, default=500, help="utterances per speaker per epoch, at most")
    resumable(g.add_argument("--nDataLoaderThread", type=int, default=5, help="data-loading worker processes"))
    g.add_argument("--augment", help="augment training crops with MUSAN noise and RIR reverberation", **FLAG)
    g.add_argument("--seed", type=int, default=10, help="seed for sampling, crops and initialisation")


def add_training_options(p):
    g = p.add_argument_group("training")
    resumable(g.add_argument("--test_interval", type=int, default=10, help="evaluate and save every this many epochs"))
    resumable(g.add_argument("--max_epoch", type=int, default=500, help="epochs to train"))
    g.add_argument("--trainfunc", type=str, default="", help="objective: a file name in loss/")
    g.add_argument("--optimizer", type=str, default="adam", help="a file name in optimizer/")
    g.add_argument("--scheduler", type=str, default="steplr", help="a file name in scheduler/")
    g.add_argument("--lr", type=float, default=0.001, help="learning rate")
    g.add_argument("--lr_decay", type=float, default=0.95, help="learning-rate factor per step of steplr")
    g.add_argument("--weight_decay", type=float, default=0.0, help="weight decay")


def add_objective_options(p):
    g = p.add_argument_group("objectives")
    g.add_argument("--hard_prob", type=float, default=0.5, help="triplet: probability of a hard negative")
    g.add_argument("--hard_rank", type=int, default=10, help="triplet: hard negatives drawn from this top rank")
    g.add_argument("--margin", type=float, default=0.1, help="margin of margin-based objectives")
    g.add_argument("--scale", type=float, default=30.0, help="scale of margin-based objectives")
    g.add_argument("--nPerSpeaker", type=int, default=1, help="utterances (views) per group")
    g.add_argument("--nClasses", type=int, default=5994, help="training speakers, for classifier objectives")


def add_evaluation_options(p):
    g = p.add_argument_group("evaluation")
    resumable(g.add_argument("--dcf_p_target", type=probability_list, default="0.05,0.01",
                             help="minDCF target priors, comma-separated (the papers: 0.05 and 0.01)"))
    resumable(g.add_argument("--dcf_c_miss", type=float, default=1.0, help="minDCF cost of a miss"))
    resumable(g.add_argument("--dcf_c_fa", type=float, default=1.0, help="minDCF cost of a false alarm"))


def add_checkpoint_options(p):
    g = p.add_argument_group("load and save")
    resumable(g.add_argument("--initial_model", type=str, default="", help="start from these weights "
                             "(this project's or voxceleb_trainer's checkpoint)"))
    resumable(g.add_argument("--save_path", type=str, default="exps/exp1", help="checkpoints, scores and logs go here"))
    resumable(g.add_argument("--keep_last", type=int, default=0,
                             help="keep only the newest N epoch checkpoints (0 keeps all); best.model is kept apart"))
    resumable(g.add_argument("--checkpoint_minutes", type=float, default=0.0,
                             help="also save a mid-epoch checkpoint (model/partial.model) every this many "
                                  "minutes, so a restart resumes at the next batch (0 = off)"))
    resumable(g.add_argument("--checkpoint_steps", type=int, default=0,
                             help="also save a mid-epoch checkpoint every this many batches (0 = off)"))


def add_data_options(p):
    g = p.add_argument_group("data")
    g.add_argument("--train_list", type=str, default="data/train_list.txt", help="'speaker path' lines")
    resumable(g.add_argument("--test_list", type=str, action=ListOption, default="data/test_list.txt",
                             help="'label path1 path2' trial lists: comma-separated or repeated; each is "
                                  "reported on its own, shared files are embedded once"))
    resumable(g.add_argument("--train_path", type=str, default="data/voxceleb2", help="root of train_list paths"))
    resumable(g.add_argument("--test_path", type=str, default="data/voxceleb1", help="root of test_list paths"))
    resumable(g.add_argument("--musan_path", type=str, default="data/musan_split", help="MUSAN noise root"))
    resumable(g.add_argument("--rir_path", type=str, default="data/RIRS_NOISES/simulated_rirs", help="RIR root"))
    resumable(g.add_argument("--recheck_audio", help="check every listed file's size and time again, rereading "
                             "changed headers (a later start otherwise trusts the manifest while the list and "
                             "the folders are unchanged)", **FLAG))
    resumable(g.add_argument("--allow_outside_paths", help="let list entries be absolute or use '..' "
                             "(by default they must stay under --train_path/--test_path)", **FLAG))


def add_model_options(p):
    g = p.add_argument_group("model")
    g.add_argument("--n_mels", type=int, default=40, help="mel bands of the front end")
    g.add_argument("--log_input", help="take the log of the filterbank energies", **FLAG)
    g.add_argument("--model", type=str, default="", help="encoder: a file name in models/")
    g.add_argument("--encoder_type", type=str, default="SAP", help="pooling (SAP, ASP, ...)")
    g.add_argument("--nOut", type=int, default=512, help="embedding size")


def add_run_options(p):
    g = p.add_argument_group("run")
    resumable(g.add_argument("--eval", help="only evaluate --initial_model (or the newest checkpoint)", **FLAG))
    resumable(g.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N"))
    resumable(g.add_argument("--mixedprec", help="mixed precision (bf16 on CPU, fp16 on CUDA)", **FLAG))
    resumable(g.add_argument("--distributed", help="DistributedDataParallel under torchrun", **FLAG))
    resumable(g.add_argument("--max_bad_steps", type=int, default=0,
                             help="steps with a NaN/Inf loss skipped per epoch before training stops"))
    resumable(g.add_argument("--tensorboard", help="also log training to TensorBoard in save_path/tensorboard: "
                             "loss, metric, learning rate, data wait, EER and minDCF per list, DET curves, and "
                             "test embeddings for the projector (needs the tensorboard package)", **FLAG))


# The core's option groups, in --help order.
CORE_GROUPS = (add_loader_options, add_training_options, add_objective_options, add_evaluation_options,
               add_checkpoint_options, add_data_options, add_model_options, add_run_options)


def parse_options(argv=None, replaced_components_ok=False):
    """Resolve options from defaults, the YAML file and the command line, in that order.

    replaced_components_ok: YAML options of a component the command line replaces (the YAML's
    cel_similarity under --trainfunc aamsoftmax) are dropped instead of refused, for runs
    whose stages share one YAML file (the pseudo-label rounds)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    # --help must wait until the chosen components have added their options.
    first, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    config = load_config(first.config) if first.config else {}
    # Component names decide which extra options exist: command line, else YAML, else default.
    explicit = _explicit_values(parser, argv)
    if replaced_components_ok:
        config = _without_replaced_components(config, explicit)
    _add_components(parser, lambda option: explicit.get(option, config.get(option, parser.get_default(option))))
    parser.set_defaults(**_checked_config(parser, config, first.config))
    options = parser.parse_args(argv)
    options.test_list = split_list(options.test_list)   # always a list of paths
    validate(options, parser, CHECKED_OWNERS)
    return options


def _without_replaced_components(config, explicit):
    """`config` less the options of the components it names that `explicit` replaces."""
    replaced = [option for option in COMPONENT_OPTIONS
                if option in explicit and option in config and explicit[option] != config[option]]
    if not replaced:
        return config
    theirs, ours = build_parser(), build_parser()
    _add_components(theirs, lambda option: config.get(option, theirs.get_default(option)))
    _add_components(ours, lambda option: explicit.get(option, config.get(option, ours.get_default(option))))
    kept = {a.dest for a in ours._actions}
    dropped = {a.dest for a in theirs._actions} - kept
    return {k: v for k, v in config.items() if k not in dropped}


def stored_options(values, source):
    """The run options a checkpoint stores, checked as a config file's would be -> Namespace
    (options added since it was written take their defaults; keys that are no longer options,
    and the options of components other than the encoder, are ignored: embedding needs no loss
    file). A file altered to hold `nOut: 'big'` or `eval_frames: -5` is refused with a
    CheckpointError naming it, instead of failing inside the encoder."""
    try:
        parser = build_parser()
        _add_components(parser, lambda option: values.get(option) if option == "model" else None)
        known = {a.dest for a in parser._actions if a.option_strings}
        plain = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()
                 if k in known and k != "config"}
        parser.set_defaults(**_checked_config(parser, plain, "its options"))
        options = parser.parse_args([])
        options.test_list = split_list(options.test_list)
        validate(options, parser, CHECKED_OWNERS)
    except UserError as err:
        raise CheckpointError(f"{source}: {err} (the file was altered or written by another version "
                              f"of this project; use another checkpoint)") from None
    return options


# The generic option groups a component may read beyond the options it declares and the
# parameters its factory names: voxceleb_trainer's files take them through **kwargs.
GENERIC_GROUPS = {"models": ("model",), "loss": ("objectives", "model"), "optimizer": ("training",),
                  "scheduler": ("training",)}


def component_values(kind, name, options):
    """What component `name` of `kind` is built with: the values of the options it declares
    (its add_arguments), of the parameters its factory names, and, when the factory takes
    **kwargs, of the generic options of its kind (GENERIC_GROUPS); not the whole option bag."""
    module = plugins.load_module(kind, str(name))
    wanted = set()
    if hasattr(module, "add_arguments"):
        declared = argparse.ArgumentParser(add_help=False)
        module.add_arguments(declared)
        wanted |= {a.dest for a in declared._actions}
    parameters = inspect.signature(getattr(module, plugins.FACTORIES[kind])).parameters
    wanted |= set(parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        wanted |= {a.dest for group in build_parser()._action_groups if group.title in GENERIC_GROUPS[kind]
                   for a in group._group_actions if a.dest not in COMPONENT_OPTIONS}      # not --model etc.
    if kind in ("optimizer", "scheduler"):     # Optimizer(parameters, ...), Scheduler(optimizer, ...):
        wanted.discard(next(iter(parameters)))    # the first argument comes from the trainer
    values = options if isinstance(options, dict) else vars(options)
    return {k: v for k, v in values.items() if k in wanted}


def _add_components(parser, chosen):
    """Add the options of the components `chosen(option)` names (model, objective, optimizer,
    scheduler) and their OPTION_DEFAULTS, which replace generic defaults."""
    components = []
    for option, kind in COMPONENT_OPTIONS.items():
        name = chosen(option)
        if name:
            module = plugins.load_module(kind, str(name))
            if hasattr(module, "add_arguments"):
                module.add_arguments(parser.add_argument_group(f"{kind}/{name}.py"))
            components.append((f"{kind}/{name}.py", module))
    parser.set_defaults(**_component_defaults(parser, components))


def _component_defaults(parser, components):
    """{option: value} from the loaded components' OPTION_DEFAULTS, checked like YAML.

    A component whose paper (or design) fixes a generic option such as --margin declares
    `OPTION_DEFAULTS = {"margin": 0.4}`; it applies when the user sets the option neither in
    YAML nor on the command line. Names that are no option are an error naming the component.
    """
    chosen, source = {}, {}
    for where, module in components:
        declared = getattr(module, "OPTION_DEFAULTS", None)
        if declared is None:
            continue
        label = f"{where} OPTION_DEFAULTS"
        if not isinstance(declared, dict):
            raise OptionError(f"{label}: must be a dict of option name -> value, "
                              f"got a {type(declared).__name__}")
        for key in declared:
            if key in COMPONENT_OPTIONS or key == "config":
                raise OptionError(f"{label}: '{key}' chooses components and cannot have a "
                                  f"component default; remove it")
        for key, value in _checked_config(parser, declared, label).items():
            if key in chosen and chosen[key] != value:
                log.warning("%s and %s give --%s different defaults (%r, %r); %s's is used "
                            "(set --%s to choose)", source[key], where, key, chosen[key], value,
                            where, key)
            chosen[key], source[key] = value, where
    return chosen


def _explicit_values(parser, argv):
    """Options given on the command line (not defaults), by destination."""
    shadow = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            quiet = copy.copy(action)
            quiet.default = argparse.SUPPRESS      # absent options must not appear at all
            shadow._add_action(quiet)
    values, _ = shadow.parse_known_args(argv)
    return vars(values)


def _checked_config(parser, config, path):
    """Validate YAML keys and value types against the parser's options."""
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    checked = {}
    for key, value in config.items():
        if key == "config":
            # The file is read once, before any of its keys: a 'config' key inside it can
            # neither include another file nor replace this one.
            raise OptionError(f"{path}: 'config' cannot be set inside a config (one file cannot "
                              f"include another); copy the options of {quoted(value)} into it")
        if key not in actions:
            hint = difflib.get_close_matches(str(key), list(actions), n=1, cutoff=0.5)
            nearest = f"; did you mean '{hint[0]}'?" if hint else ""
            raise OptionError(f"{path}: unknown option {quoted(str(key))}{nearest}")
        action = actions[key]
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise OptionError(f"{path}: '{key}' must be true or false, got {quoted(value)}")
        elif action.type is not None:
            value = _convert(path, key, action, value)
        checked[key] = value
    return checked


# Option types that read comma-separated numbers, a number or a list, and what they expect.
LIST_TYPES = {probability_list: "fractions in (0, 1)", durations: "durations in seconds above 0"}


def _convert(path, key, action, value):
    """A YAML value converted to the option's type (each element for list options); an error
    names the file, the key and the element that does not fit."""
    if isinstance(action, ListOption):
        return _path_list(path, key, value)
    if action.type in LIST_TYPES:
        return _typed(path, key, action.type, value, LIST_TYPES[action.type])
    many = action.nargs not in (None, "?")
    size = f"{action.nargs} " if isinstance(action.nargs, int) else ""
    expected = f"a list of {size}{action.type.__name__}" if many else action.type.__name__
    if many and (not isinstance(value, list) or isinstance(action.nargs, int) and len(value) != action.nargs):
        raise OptionError(f"{path}: '{key}' expects {expected}, got {quoted(value)}")
    if not many:
        return _typed(path, key, action.type, value, expected)
    converted = []
    for number, item in enumerate(value, 1):
        try:
            converted.append(_typed(path, key, action.type, item, action.type.__name__))
        except OptionError:
            raise OptionError(f"{path}: '{key}' expects {expected}; item {number} of "
                              f"{quoted(value)} is {quoted(item)}") from None
    return converted


def _typed(path, key, kind, value, expected):
    """kind(value) for a YAML scalar; OptionError naming file and key when it does not fit.
    An OptionValueError of the type's own (probability_list, count, ...) says what is wrong."""
    takes_lists = kind in LIST_TYPES                   # '0.05,0.01', 0.05 or [0.05, 0.01]
    if value is None or isinstance(value, (bool, dict)) or isinstance(value, list) and not takes_lists:
        raise OptionError(f"{path}: '{key}' expects {expected}, got {quoted(value)}")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise OptionError(f"{path}: '{key}' expects a whole number, got {quoted(value)}")
    try:
        return kind(value)
    except OptionValueError as err:
        raise OptionError(f"{path}: '{key}': {err}") from None
    except (TypeError, ValueError):
        raise OptionError(f"{path}: '{key}' expects {expected}, got {quoted(value)}") from None


def _path_list(path, key, value):
    """A ListOption's YAML value (a comma-separated string, or a list of them) -> paths."""
    items = value if isinstance(value, list) else [value]
    for number, item in enumerate(items, 1):
        if not isinstance(item, str):
            which = f"item {number} of {quoted(value)} is" if isinstance(value, list) else "got"
            hint = " (quote a path that reads as a number)" if isinstance(item, (int, float)) else ""
            raise OptionError(f"{path}: '{key}' expects file paths (a string or a list of strings); "
                              f"{which} {quoted(item)}{hint}")
    return split_list(items)


def save_options(options, path):
    """Write the resolved options as YAML (atomically), usable again as --config."""
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(options).items() if k != "config"}
    write_text(path, yaml.safe_dump(values, sort_keys=True))
