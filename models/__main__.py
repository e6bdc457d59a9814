"""Profile every encoder, or export one with TorchScript or ONNX.

    python -m models --profile [--device cpu] [--batch 32] [--frames 200] [--iterations 3]
    python -m models --export ECAPA_TDNN --nOut 192 --initial_model CKPT (or --random_weights)
                     [--config exps/x/options.yaml] --output ecapa.pt [--overwrite]
    python -m models --export ResNetSE34L --format onnx --initial_model CKPT --output enc.onnx
    python -m models --bench ResNetSE34L [--seconds 4] [--files 20] [--rounds 5] [--initial_model CKPT]

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

--format onnx writes the same network (front end included: waveform in, embedding out) as
ONNX, with the batch and time axes dynamic. It uses the torch.export-based exporter
(torch.onnx.export(dynamo=True), needs onnxscript) at opset 18, the opset its operator
library is written in (others are converted from it). The TorchScript-based exporter
(dynamo=False) fails on the front end with "STFT does not currently support complex types":
torchaudio's Spectrogram calls torch.stft with return_complex=True. The torch.export path
lowers that STFT to ONNX's STFT operator, so the model code stays unchanged. The exporter's
graph optimizer is left off (optimize=False): it drops additions of constants within 1e-8
of zero, e.g. the 1e-8 under the square root of CAM++'s statistics pooling, whose dead
(all-zero) channels then give 0 instead of 1e-4 (onnxscript 0.7.2); onnxruntime optimises
the graph when it loads it. The file is checked with onnxruntime against the eager model on
three inputs of other batch sizes and lengths than the exported example: their max abs
difference and lowest cosine are logged, and above ONNX_TOLERANCE (or with any NaN or Inf)
the export fails with exit status 2 and no file is kept. The model's metadata
(metadata_props) name the encoder, the sample rate, the checkpoint and, for a checkpoint
written by --calibrate, its score calibration (JSON, speakernet/calibration.py).

--bench exports the encoder to a temporary ONNX file and times single files of --seconds
through PyTorch (eager) and onnxruntime on one CPU thread each, in interleaved rounds (so
a machine shared with other jobs slows both alike); it logs files/s per round and medians.
"""
import argparse
import contextlib
import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from speakernet import checkpoint
from speakernet import plugins
from speakernet.errors import UserError
from speakernet.atomic import temporary_path
from speakernet.audio import HOP, SAMPLE_RATE, WINDOW_EXTRA, crop_samples

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


# ONNX: opset of the torch.export-based exporter; parity with the eager model is required to
# this max abs difference of the embeddings. The checks use other batch sizes and lengths
# than the export example (2 x samples_for(200)), so the dynamic axes are what is tested.
ONNX_OPSET = 18
ONNX_TOLERANCE = 1e-4
ONNX_CHECKS = ((1, samples_for(100)), (3, samples_for(331) + 17), (2, samples_for(601) + 5))
# Shortest input the exported file declares: one 25 ms analysis window.
ONNX_MIN_SAMPLES = HOP + WINDOW_EXTRA


def onnx_runtime():
    """onnxruntime, after checking the exporter's packages are installed."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
        import onnxruntime
    except ImportError as err:
        raise UserError(f"--format onnx needs the packages onnx, onnxscript and onnxruntime "
                        f"({err.name} is missing: pip install -r requirements.txt)") from None
    return onnxruntime


def onnx_session(path, threads=1):
    """An onnxruntime CPU session of `path` on `threads` threads."""
    ort = onnx_runtime()
    settings = ort.SessionOptions()
    settings.intra_op_num_threads = threads
    settings.inter_op_num_threads = 1
    settings.log_severity_level = 3                     # errors only
    return ort.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs (e.g. 'torchvision is not installed') and warns at every call; its
    errors still raise."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript",
                                              "onnx_ir", "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _one_line(err):
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 300 else text[:297] + "..."


def export_onnx(encoder, output, name, example_samples=samples_for(200), metadata=None):
    """Export `encoder` (eval mode, front end included) as ONNX with dynamic batch and time
    axes to `output`, one file with its weights; `metadata` {key: text} go into the model's
    metadata_props. An encoder the exporter cannot convert is a UserError naming it."""
    onnx_runtime()
    encoder.eval()
    batch = torch.export.Dim("batch", min=1)
    samples = torch.export.Dim("samples", min=ONNX_MIN_SAMPLES)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                encoder, (torch.randn(2, example_samples),), dynamo=True, opset_version=ONNX_OPSET,
                input_names=["wav"], output_names=["embedding"],
                dynamic_shapes=({0: batch, 1: samples},), verbose=False, optimize=False)
    except Exception as err:    # the exporter's errors have no common base class
        raise UserError(f"--export {name}: the ONNX exporter cannot convert this encoder "
                        f"({_one_line(err)}); use --format torchscript") from None
    for key, value in (metadata or {}).items():
        program.model.metadata_props[key] = str(value)
    program.save(str(output), external_data=False)


def onnx_parity(encoder, path, checks=ONNX_CHECKS):
    """[(batch, samples, max abs difference, lowest cosine)] of the ONNX file at `path` run by
    onnxruntime against the eager `encoder` on random inputs of each (batch, samples);
    the difference is NaN when either output holds a NaN or Inf."""
    session = onnx_session(path)
    generator = torch.Generator().manual_seed(0)
    rows = []
    encoder.eval()
    for batch, samples in checks:
        wav = torch.randn(batch, samples, generator=generator)
        with torch.no_grad():
            expected = encoder(wav).double().numpy()
        got = session.run(None, {"wav": wav.numpy()})[0].astype(np.float64)
        if got.shape != expected.shape or not (np.isfinite(got).all() and np.isfinite(expected).all()):
            rows.append((batch, samples, float("nan"), float("nan")))
            continue
        norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
        cosine = float(np.min((got * expected).sum(axis=1) / np.maximum(norms, 1e-30)))
        rows.append((batch, samples, float(np.abs(got - expected).max()), cosine))
    return rows


def check_onnx(encoder, path, name):
    """Run onnx_parity, log every row, raise UserError when one is above ONNX_TOLERANCE or NaN."""
    rows = onnx_parity(encoder, path)
    for batch, samples, diff, cosine in rows:
        log.info("ONNX check %s, %d x %d samples: max abs difference %.3g, cosine %.7f",
                 name, batch, samples, diff, cosine)
    bad = [r for r in rows if not r[2] <= ONNX_TOLERANCE]         # NaN compares False
    if bad:
        batch, samples, diff, cosine = bad[0]
        what = ("NaN or Inf in the outputs" if np.isnan(diff) else
                f"max abs difference {diff:.3g} (cosine {cosine:.6f}) above {ONNX_TOLERANCE:g}")
        raise UserError(f"--export {name}: the ONNX file does not reproduce the eager model on "
                        f"{batch} x {samples} samples ({what}); no file was written")
    return rows


def onnx_metadata(name, initial_model):
    """metadata_props of an export: encoder, sample rate, checkpoint and its calibration."""
    metadata = {"speakernet.model": name, "speakernet.sample_rate": str(SAMPLE_RATE),
                "speakernet.input": "wav: batch x samples, float32 waveform at 16 kHz",
                "speakernet.output": "embedding: batch x nOut"}
    if initial_model:
        metadata["speakernet.checkpoint"] = os.path.abspath(initial_model)
        stored = checkpoint.load_file(initial_model)
        if isinstance(stored, dict) and isinstance(stored.get("calibration"), dict):
            metadata["speakernet.calibration"] = json.dumps(stored["calibration"], sort_keys=True)
        if isinstance(stored, dict) and isinstance(stored.get("options"), dict):
            opts = stored["options"]
            metadata["speakernet.eval_frames"] = str(opts.get("eval_frames", ""))
            metadata["speakernet.num_eval"] = str(opts.get("num_eval", ""))
    return metadata


# ---------------------------------------------------------------------------- benchmark

def bench(name, encoder, seconds, files, rounds):
    """files/s of PyTorch (eager) and onnxruntime on single `seconds`-long inputs, one CPU
    thread each, in interleaved rounds -> {'pytorch': [...], 'onnxruntime': [...]}."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder.eval()
        samples = int(round(seconds * SAMPLE_RATE))
        generator = torch.Generator().manual_seed(0)
        inputs = [torch.randn(1, samples, generator=generator) for _ in range(files)]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{name}.onnx"
            export_onnx(encoder, path, name)
            session = onnx_session(path, threads=1)
            arrays = [w.numpy() for w in inputs]

            def run_pytorch():
                with torch.inference_mode():
                    for w in inputs:
                        encoder(w)

            def run_onnxruntime():
                for a in arrays:
                    session.run(None, {"wav": a})

            engines = {"pytorch": run_pytorch, "onnxruntime": run_onnxruntime}
            for run_engine in engines.values():            # warm-up (allocations, kernels)
                run_engine()
            rates = {label: [] for label in engines}
            for r in range(rounds):
                order = list(engines) if r % 2 == 0 else list(engines)[::-1]
                for label in order:
                    start = time.perf_counter()
                    engines[label]()
                    rates[label].append(files / (time.perf_counter() - start))
                log.info("round %d: %s", r + 1, ", ".join(f"{k} {v[-1]:.2f} files/s"
                                                          for k, v in rates.items()))
    finally:
        torch.set_num_threads(threads)
    log.info("%s on %g s inputs, 1 thread, %d files x %d rounds: PyTorch %.2f files/s, "
             "onnxruntime %.2f files/s (medians; %.2fx)", name, seconds, files, rounds,
             statistics.median(rates["pytorch"]), statistics.median(rates["onnxruntime"]),
             statistics.median(rates["onnxruntime"]) / statistics.median(rates["pytorch"]))
    return rates


# ---------------------------------------------------------------------------- command line

def build_parser():
    p = argparse.ArgumentParser(prog="python -m models", description=__doc__.split("\n\n")[0],
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
    mode.add_argument("--bench")
    first, _ = mode.parse_known_args(argv)
    chosen = first.export or first.bench
    names = [chosen] if chosen else plugins.available("models")
    try:
        plugins.load_module("models", names[0])
    except plugins.UnknownComponentError as err:
        parser.error(str(err))
    model_dests = ["nOut", "encoder_type", "n_mels", "log_input"]
    model_dests += add_component_options(parser, names)
    args = parser.parse_args(argv)

    if args.export:
        if not args.output:
            parser.error("--export needs --output FILE.pt (or FILE.onnx with --format onnx)")
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
    if args.bench:
        if args.seconds * SAMPLE_RATE < ONNX_MIN_SAMPLES or args.files < 1 or args.rounds < 1:
            raise UserError("--bench needs --seconds of at least 0.025, --files and --rounds of "
                            "at least 1")
        onnx_runtime()
        encoder = plugins.factory("models", args.bench)(**model_kwargs)
        if args.initial_model:
            load_encoder_weights(encoder, args.initial_model)
        bench(args.bench, encoder, args.seconds, args.files, args.rounds)
        return
    if args.format == "onnx":
        onnx_runtime()                                # before the output and the build
        export_onnx_file(args, model_kwargs)
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



def export_onnx_file(args, model_kwargs):
    """--export MODEL --format onnx: build, load, export to a temporary file, check it with
    onnxruntime, and only then rename it to --output."""
    tmp = open_output(args.output, args.overwrite)
    try:
        encoder = plugins.factory("models", args.export)(**model_kwargs)
        if args.initial_model:
            load_encoder_weights(encoder, args.initial_model)
        export_onnx(encoder, tmp, args.export, metadata=onnx_metadata(args.export, args.initial_model))
        rows = check_onnx(encoder, tmp, args.export)
        os.replace(tmp, args.output)                  # only a complete, checked export lands
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    worst = max(rows, key=lambda r: r[2])
    log.info("exported %s (%s parameters) to %s as ONNX (opset %d, dynamic batch and time); "
             "onnxruntime vs eager on %d inputs: max abs difference %.3g, lowest cosine %.7f",
             args.export, f"{count_parameters(encoder):,}", args.output, ONNX_OPSET, len(rows),
             worst[2], min(r[3] for r in rows))


if __name__ == "__main__":
    sys.exit(main())
