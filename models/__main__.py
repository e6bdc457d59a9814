"""Profile every encoder, or export one with TorchScript.

    python -m models --profile [--device cpu] [--batch 32] [--frames 200] [--iterations 3]
    python -m models --export ECAPA_TDNN --nOut 192 --initial_model CKPT (or --random_weights)
                     [--config exps/x/options.yaml] --output ecapa.pt [--overwrite]

--profile lists, for every file in models/ that exposes MainModel: parameters, MACs for a
2-second input (torch.utils.flop_counter; MACs = FLOPs / 2, convolutions and matrix products
of the network, without the front end, as in "In defence of metric learning", Table 1) and
forward+backward throughput in segments/s on the chosen device. Each encoder is built with
its MainModel defaults (the paper configuration) unless options are given.

--export writes the encoder (waveform B x samples -> B x nOut embeddings) as TorchScript and
checks that the saved file gives the eager model's embedding for a random input of another
length than the one traced (max abs difference printed). Model options come from --config (a
run's options.yaml, so the exported network is exactly the trained one), then the command line.

Why torch.jit.trace rather than torch.jit.script, or torch.export: tracing needs no change
to the model code (scripting would reject **kwargs, the autocast context of the front ends
and Python-level helpers) and no dependency beyond PyTorch; the result is one file that
runs from Python (torch.jit.load) or C++ (libtorch) without this project's code. Tracing
records the operations run for the example; our encoders have no data-dependent branches
and take their sizes from the input, so the trace is valid for any length - which is why
the check uses a different length than the trace example. PyTorch 2.x marks torch.jit as
deprecated in favour of torch.export (its FutureWarnings are silenced here); TorchScript
files keep loading in libtorch, and torch.export.save would be the successor format.
"""
import argparse
import copy
import logging
import os
import sys
import time
import warnings

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from speakernet import checkpoint
from speakernet import plugins
from speakernet.errors import UserError
from speakernet.atomic import temporary_path
from speakernet.audio import crop_samples

log = logging.getLogger("models")

samples_for = crop_samples        # frames -> samples, as the trainer crops


# ---------------------------------------------------------------------------- measuring

def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def count_macs(model, samples):
    """Multiply-accumulates of one forward pass on a `samples`-long input, excluding the
    `features` front end (fixed signal processing, not counted by the papers).

    Counts depend on shapes only, so on a copy of the model the layers after the front end
    run on the meta device (shapes, no arithmetic): the front end runs for real on the CPU and
    its output is handed over as a meta tensor. Without a `features` child the copy runs on
    the CPU.
    """
    network = copy.deepcopy(model).cpu().eval()
    frontend = getattr(network, "features", None)
    if frontend is not None:
        for child in network.children():
            if child is not frontend:
                child.to("meta")
        frontend.register_forward_hook(lambda module, inputs, output: output.to("meta"))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.randn(1, samples))
    counts = counter.get_flop_counts()
    frontend_flops = sum(counts.get(f"{type(network).__name__}.features", {}).values())
    return (counter.get_total_flops() - frontend_flops) // 2


def training_throughput(model, batch, samples, device, iterations):
    """Segments per second of forward + backward passes (after one warm-up step)."""
    model.train()
    wav = torch.randn(batch, samples, device=device)

    def step():
        model.zero_grad(set_to_none=True)
        model(wav).square().mean().backward()

    step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    synchronize(device)
    return batch * iterations / (time.perf_counter() - start)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile(names, model_kwargs, device, batch, frames, iterations):
    two_seconds = samples_for(200)
    rows = []
    for name in names:
        log.info("profiling %s", name)
        try:
            model = plugins.factory("models", name)(**model_kwargs)
        except (ValueError, TypeError) as err:
            rows.append((name, f"not built: {err}"))
            continue
        params = count_parameters(model)
        macs = count_macs(model, two_seconds)
        rate = training_throughput(model.to(device), batch, samples_for(frames), device, iterations)
        rows.append((name, f"{params / 1e6:10.3f} {params:>12,} {macs / 1e9:10.3f} {rate:14.1f}"))
        del model
    print(f"device {device}, forward+backward on {batch} x {frames} frames, "
          f"MACs for 2 s ({two_seconds} samples)")
    print(f"{'model':<14} {'params (M)':>10} {'params':>12} {'GMACs/2 s':>10} {'segments/s':>14}")
    for name, text in rows:
        print(f"{name:<14} {text}")


# ---------------------------------------------------------------------------- exporting

def load_encoder_weights(encoder, path):
    """Load this project's or voxceleb_trainer's checkpoint into a bare encoder, through the
    same checks and renames as the trainer (objective tensors are ignored)."""
    holder = nn.ModuleDict({"encoder": encoder})      # gives the state the trainer's names
    state = checkpoint.model_state(checkpoint.load_file(path), holder, path)
    checkpoint.load_weights(holder, state, path)


def export_torchscript(encoder, output, example_samples=samples_for(200)):
    """Trace `encoder` in eval mode, save it to `output` and return the reloaded module."""
    encoder.eval()
    with warnings.catch_warnings(), torch.no_grad():
        # torch.jit warns that it is deprecated in favour of torch.export; the format is
        # still what libtorch and torch.jit.load read, which is the point of this export.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        # InstanceNorm's input checks (channel count, more than one frame) become constants
        # in the trace: harmless, they hold for every input the model accepts.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn")
        # check_trace would rerun the example; max_abs_difference checks another length.
        traced = torch.jit.trace(encoder, torch.randn(2, example_samples), check_trace=False)
        traced.save(str(output))
        return torch.jit.load(str(output))


def max_abs_difference(encoder, exported, samples):
    """Largest difference between eager and exported embeddings on one random input."""
    wav = torch.randn(2, samples)
    with torch.no_grad():
        return (exported(wav) - encoder.eval()(wav)).abs().max().item()


# ---------------------------------------------------------------------------- command line

def build_parser():
    p = argparse.ArgumentParser(prog="python -m models", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--profile", action="store_true", help="profile every encoder in models/")
    mode.add_argument("--export", metavar="MODEL",
                      help="export this encoder (a file name in models/)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (profiling)")
    p.add_argument("--batch", type=int, default=32, help="segments per forward+backward pass")
    p.add_argument("--frames", type=int, default=200, help="segment length in 10 ms frames")
    p.add_argument("--iterations", type=int, default=3, help="timed passes after one warm-up")
    p.add_argument("--output", help="TorchScript file to write (export)")
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


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def open_output(output, overwrite):
    """A temporary file beside `output` (closed, empty) that the export is written to and then
    renamed over `output`: refuses an existing file first, and fails here, before the slow
    build and trace, when the folder cannot be written."""
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


def read_config(path):
    from speakernet.config_file import load_config
    try:                                # a folder or a binary file: load_config may let these by
        return load_config(path)
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror or err if isinstance(err, OSError) else "not a UTF-8 text file"
        raise UserError(f"--config {path}: {why} (give a run's options.yaml)") from None


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
    # Which encoders are involved decides which options they add (all of them for --help).
    mode = argparse.ArgumentParser(add_help=False)
    mode.add_argument("--export")
    first, _ = mode.parse_known_args(argv)
    names = [first.export] if first.export else plugins.available("models")
    try:
        plugins.load_module("models", names[0])
    except plugins.UnknownComponentError as err:
        parser.error(str(err))
    model_dests = ["nOut", "encoder_type", "n_mels", "log_input"]
    model_dests += add_component_options(parser, names)
    args = parser.parse_args(argv)

    if args.export:
        if not args.output:
            parser.error("--export needs --output FILE.pt")
        # Random weights exported by mistake look like a working model until scored.
        if not (args.initial_model or args.random_weights):
            raise UserError("--export needs --initial_model CKPT (the trained weights); "
                            "pass --random_weights to export an untrained network")
    model_kwargs = {}
    if args.config:
        model_kwargs.update(read_config(args.config))   # every key, as the trainer passes them
    model_kwargs.update({d: getattr(args, d) for d in model_dests if getattr(args, d) is not None})

    if args.profile:
        profile(names, model_kwargs, resolve_device(args.device), args.batch, args.frames,
                args.iterations)
        return
    tmp = open_output(args.output, args.overwrite)
    try:
        encoder = plugins.factory("models", args.export)(**model_kwargs)
        if args.initial_model:
            load_encoder_weights(encoder, args.initial_model)
        exported = export_torchscript(encoder, tmp)
        check_samples = samples_for(331) + 17         # another, odd length than traced
        diff = max_abs_difference(encoder, exported, check_samples)
        os.replace(tmp, args.output)                  # only a complete, checked export lands
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"exported {args.export} ({count_parameters(encoder):,} parameters) to {args.output}; "
          f"max abs difference to eager on {check_samples} samples: {diff:.3g}")


if __name__ == "__main__":
    sys.exit(main())
