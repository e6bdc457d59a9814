"""Profile every encoder, or export one with TorchScript or ONNX.

    python3 -m speakernet.tools.model_tools --profile [--device cpu] [--batch 32] [--frames 200] [--iterations 3]
    python3 -m speakernet.tools.model_tools --export ECAPA_TDNN --nOut 192 --initial_model CKPT (or --random_weights)
                     [--config exps/x/options.yaml] --output ecapa.pt [--overwrite]
    python3 -m speakernet.tools.model_tools --export ResNetSE34L --format onnx --initial_model CKPT --output enc.onnx
    python3 -m speakernet.tools.model_tools --bench ResNetSE34L [--seconds 4] [--files 20] [--rounds 5] [--initial_model CKPT]

--profile lists, for every file in models/ that exposes MainModel: parameters, MACs for a
2-second input (torch.utils.flop_counter; MACs = FLOPs / 2, convolutions and matrix products
of the network, without the front end, as in "In defence of metric learning", Table 1) and
forward+backward throughput in segments/s on the chosen device. Each encoder is built with
its MainModel defaults (the paper configuration) unless options are given (speakernet/tools/profiling.py).

--export writes the encoder (waveform B x samples -> B x nOut embeddings) as TorchScript and
checks that the saved file gives the eager model's embedding for a random input of another
length than the one traced (max abs difference printed). Model options come from --config (a
run's options.yaml, so the exported network is exactly the trained one), then the command line.

--format onnx writes the same network (front end included) as ONNX with the batch and time
axes dynamic, checked with onnxruntime on inputs of other batch sizes and lengths; above
ONNX_TOLERANCE (or with any NaN or Inf) the export fails with exit status 2 and no file is
kept. Why tracing, which exporter and which opset: speakernet/tools/export.py.

--bench exports the encoder to a temporary ONNX file and times single files of --seconds
through PyTorch (eager) and onnxruntime on one CPU thread each, in interleaved rounds (so
a machine shared with other jobs slows both alike); it logs files/s per round and medians
(speakernet/tools/engine_bench.py).

This file is the command line: it parses, builds the encoder, and writes an export only once
it is complete and checked (a temporary file beside --output, renamed over it).
"""
import argparse
import logging
import math
import os
import sys
import tempfile
from pathlib import Path

from speakernet.run import plugins
from speakernet.model import public_models
from speakernet.core.errors import UserError
from speakernet.core.atomic import atomic_path, temporary_path
from speakernet.core.audio import SAMPLE_RATE
from speakernet.tools.engine_bench import compare_engines
from speakernet.tools.export import (ONNX_CHECKS, ONNX_MIN_SAMPLES, ONNX_OPSET, ONNX_TOLERANCE,
                            check_onnx, export_onnx, export_torchscript, load_encoder_weights,
                            max_abs_difference, onnx_metadata, onnx_parity, onnx_runtime,
                            onnx_session)
from speakernet.tools.profiling import (count_macs, count_parameters, profile, resolve_device,
                             samples_for, synchronize, training_throughput)

# The helpers' names stay reachable here: tests, benchmarks and scripts import them from
# speakernet.tools.model_tools, and the export paths below look export_* up in this module (so a test can
# replace them here).
__all__ = ["main", "run", "build_parser", "add_component_options", "open_output", "bench", "UserError",
           "ONNX_CHECKS", "ONNX_MIN_SAMPLES", "ONNX_OPSET", "ONNX_TOLERANCE", "check_onnx", "export_onnx",
           "export_torchscript", "load_encoder_weights", "max_abs_difference", "onnx_metadata",
           "onnx_parity", "onnx_runtime", "onnx_session", "count_macs", "count_parameters", "profile",
           "resolve_device", "samples_for", "synchronize", "training_throughput"]

log = logging.getLogger("speakernet.tools.model_tools")

# Options of every MainModel that the command line always offers (add_component_options adds
# the ones the chosen encoders declare).
MODEL_OPTIONS = ["nOut", "encoder_type", "n_mels", "log_input"]


# ---------------------------------------------------------------------------- command line

def build_parser():
    p = argparse.ArgumentParser(prog="python3 -m speakernet.model_tools", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--profile", action="store_true", help="profile every encoder in models/")
    mode.add_argument("--export", metavar="MODEL",
                      help="export this encoder (a file name in models/)")
    mode.add_argument("--bench", metavar="MODEL",
                      help="files/s of this encoder in PyTorch and onnxruntime (1 CPU thread)")
    p.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript",
                   help="file format of --export")
    p.add_argument("--seconds", type=float, default=4.0, help="input length of --bench")
    p.add_argument("--files", type=int, default=20, help="files per engine and round (--bench)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (--bench)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (profiling)")
    p.add_argument("--batch", type=int, default=32, help="segments per forward+backward pass")
    p.add_argument("--frames", type=int, default=200, help="segment length in 10 ms frames")
    p.add_argument("--iterations", type=int, default=3, help="timed passes after one warm-up")
    p.add_argument("--output", help="TorchScript or ONNX file to write (export)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output (export)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--initial_model", default="", help="checkpoint to export (export)")
    weights.add_argument("--random_weights", action="store_true",
                         help="export the untrained network instead of a checkpoint (export)")
    p.add_argument("--config", help="YAML of model options, e.g. a run's options.yaml (export)")
    g = p.add_argument_group("model options (default: each MainModel's own)")
    g.add_argument("--nOut", type=int, help="embedding size")
    g.add_argument("--encoder_type", help="pooling (SAP, ASP, TAP, MAX, as the model offers)")
    g.add_argument("--n_mels", type=int, help="mel bands of the front end")
    g.add_argument("--log_input", action=argparse.BooleanOptionalAction, default=None,
                   help="take the log of the filterbank energies")
    return p


def add_component_options(parser, names):
    """Options the encoders declare themselves (add_arguments), without their defaults so
    that only values given on the command line reach MainModel. Returns their destinations."""
    group = parser.add_argument_group(
        "options declared by the encoders (default: each MainModel's own)")
    before = {a.dest for a in parser._actions}
    shadow = argparse.ArgumentParser(add_help=False)
    for name in names:
        module = plugins.load_module("models", name)
        if hasattr(module, "add_arguments"):
            module.add_arguments(shadow)
    for action in shadow._actions:
        if action.dest not in before:
            action.default = None
            group._add_action(action)
    return [a.dest for a in shadow._actions if a.dest not in before]


def chosen_encoders(parser, argv):
    """The encoders this command involves (all of them for --profile and --help): they
    decide which options exist, so they are read before the full parse."""
    mode = argparse.ArgumentParser(add_help=False)
    mode.add_argument("--export")
    mode.add_argument("--bench")
    first, _ = mode.parse_known_args(argv)
    chosen = first.export or first.bench
    names = [chosen] if chosen else plugins.available("models")
    try:
        plugins.load_module("models", names[0])
    except plugins.UnknownComponentError as err:
        parser.error(str(err))
    return names


# Counts of each mode that must be at least 1.
POSITIVE_COUNTS = {"profile": ("batch", "frames", "iterations"), "bench": ("files", "rounds"),
                   "export": ()}
POSITIVE_MODEL_OPTIONS = ("nOut", "n_mels")


def check_counts(args):
    mode = "profile" if args.profile else "bench" if args.bench else "export"
    for name in POSITIVE_COUNTS[mode]:
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.bench and not (math.isfinite(args.seconds) and args.seconds * SAMPLE_RATE >= ONNX_MIN_SAMPLES):
        raise UserError(f"--seconds must be a number of at least {ONNX_MIN_SAMPLES / SAMPLE_RATE:g} "
                        f"(one 25 ms window), got {args.seconds:g}")


def check_export_arguments(parser, args):
    if not args.output:
        parser.error("--export needs --output FILE.pt (or FILE.onnx with --format onnx)")
    # Random weights exported by mistake look like a working model until scored.
    if not (args.initial_model or args.random_weights):
        raise UserError("--export needs --initial_model CKPT (the trained weights); "
                        "pass --random_weights to export an untrained network")


def read_config(path, model):
    """The --config keys, checked as the trainer checks them: each an option of the trainer or of
    a component it loads (the encoder `model` of --export/--bench, which wins over the file's
    `model` as the command line does for the trainer, and the file's other components), each
    value of its option's type. A misspelt key is an OptionError naming the closest option."""
    from speakernet.run import options as trainer_options
    config = trainer_options.load_config(path)
    if model and config.get("model") not in (None, model):
        log.warning("%s holds the options of a %s run; building %s with them, as asked",
                    path, config["model"], model)
    parser = trainer_options.build_parser()
    chosen = {"model": model} if model else {}
    for option, kind in trainer_options.COMPONENT_OPTIONS.items():
        name = chosen.get(option, config.get(option, parser.get_default(option)))
        if name:
            module = plugins.load_module(kind, str(name))
            if hasattr(module, "add_arguments"):
                module.add_arguments(parser.add_argument_group(f"{kind}/{name}.py"))
    return trainer_options._checked_config(parser, config, path)


def check_model_options(kwargs):
    """The model options' numbers, from --config or the command line: finite, sizes positive."""
    for key, value in kwargs.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{key} must be a finite number, got {value}")
    for key in POSITIVE_MODEL_OPTIONS:
        if key in kwargs and kwargs[key] < 1:
            raise UserError(f"--{key} must be at least 1, got {kwargs[key]}")


def model_options(args, dests):
    """MainModel keyword arguments: every key of --config (as the trainer passes them), or
    without one, the architecture of a public model given as --initial_model; then the model
    options given on the command line."""
    model = args.export or args.bench
    if args.config:
        kwargs = read_config(args.config, model)
    elif args.initial_model and public_models.is_public_model(args.initial_model):
        kwargs = public_models.encoder_options(args.initial_model)
    else:
        kwargs = {}
    kwargs.update({d: getattr(args, d) for d in dests if getattr(args, d) is not None})
    check_model_options(kwargs)
    return kwargs


def build_encoder(name, model_kwargs, initial_model):
    try:
        encoder = plugins.factory("models", name)(**model_kwargs)
    except UserError:
        raise
    except (ValueError, TypeError, RuntimeError) as err:     # e.g. a layer of negative size
        raise UserError(f"{name} cannot be built with these options ({str(err).strip()}); check the "
                        f"model options (--config and the command line)") from None
    if initial_model:
        load_encoder_weights(encoder, initial_model)
    return encoder


def main(argv=None):
    """The command line; returns the exit status (2 for bad input, logged as one line)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(argv)
    except UserError as err:                         # CheckpointError included
        log.error("%s", err)
        return 2
    return 0


def run(argv):
    parser = build_parser()
    names = chosen_encoders(parser, argv)
    dests = MODEL_OPTIONS + add_component_options(parser, names)
    args = parser.parse_args(argv)
    if args.export:
        check_export_arguments(parser, args)
    check_counts(args)
    model_kwargs = model_options(args, dests)
    if args.profile:
        profile(names, model_kwargs, resolve_device(args.device), args.batch, args.frames,
                args.iterations)
    elif args.bench:
        bench_command(args, model_kwargs)
    elif args.format == "onnx":
        onnx_runtime()                                # before the output and the build
        export_onnx_file(args, model_kwargs)
    else:
        export_torchscript_file(args, model_kwargs)


# ---------------------------------------------------------------------------- writing exports

def open_output(output, overwrite):
    """The temporary file beside `output` (closed, empty) that atomic_path then writes the
    export to: refuses an existing file first, and fails here, before the slow build and
    trace, when the folder cannot be written."""
    if os.path.isdir(output):
        raise UserError(f"--output {output} is a folder (give a file path)")
    if os.path.lexists(output) and not overwrite:
        raise UserError(f"--output {output} exists; choose another path or pass --overwrite")
    tmp = str(temporary_path(os.path.abspath(output)))   # open(), not mkstemp: the usual mode
    try:
        open(tmp, "wb").close()
    except OSError as err:
        raise UserError(f"cannot write --output {output}: {err.strerror or err} "
                        f"(choose a writable folder)") from None
    return tmp


def export_torchscript_file(args, model_kwargs):
    """--export MODEL: build, load, trace to a temporary file, compare it with the eager model
    on another length, and only then rename it to --output. The result line is the
    command's output (stdout)."""
    open_output(args.output, args.overwrite)
    with atomic_path(os.path.abspath(args.output)) as tmp:   # only a complete, checked export lands
        encoder = build_encoder(args.export, model_kwargs, args.initial_model)
        exported = export_torchscript(encoder, str(tmp))
        check_samples = samples_for(331) + 17         # another, odd length than traced
        diff = max_abs_difference(encoder, exported, check_samples)
    print(f"exported {args.export} ({count_parameters(encoder):,} parameters) to {args.output}; "
          f"max abs difference to eager on {check_samples} samples: {diff:.3g}")


def export_onnx_file(args, model_kwargs):
    """--export MODEL --format onnx: build, load, export to a temporary file, check it with
    onnxruntime, and only then rename it to --output."""
    open_output(args.output, args.overwrite)
    with atomic_path(os.path.abspath(args.output)) as tmp:   # only a complete, checked export lands
        encoder = build_encoder(args.export, model_kwargs, args.initial_model)
        export_onnx(encoder, str(tmp), args.export, metadata=onnx_metadata(args.export, args.initial_model))
        rows = check_onnx(encoder, str(tmp), args.export)
    worst = max(rows, key=lambda r: r[2])
    log.info("exported %s (%s parameters) to %s as ONNX (opset %d, dynamic batch and time); "
             "onnxruntime vs eager on %d inputs: max abs difference %.3g, lowest cosine %.7f",
             args.export, f"{count_parameters(encoder):,}", args.output, ONNX_OPSET, len(rows),
             worst[2], min(r[3] for r in rows))


# ---------------------------------------------------------------------------- benchmark

def bench_command(args, model_kwargs):
    onnx_runtime()
    encoder = build_encoder(args.bench, model_kwargs, args.initial_model)
    bench(args.bench, encoder, args.seconds, args.files, args.rounds)


def bench(name, encoder, seconds, files, rounds):
    """files/s of PyTorch (eager) and onnxruntime on single `seconds`-long inputs, one CPU
    thread each, in interleaved rounds -> {'pytorch': [...], 'onnxruntime': [...]}. The ONNX
    file is a temporary export, removed afterwards."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.onnx"
        export_onnx(encoder, path, name)
        return compare_engines(name, encoder, path, seconds, files, rounds)


if __name__ == "__main__":
    sys.exit(main())
