"""Export an encoder (waveform B x samples -> B x nOut embeddings) as TorchScript or ONNX, and
check the file against the eager model (`python3 -m speakernet.tools.model_tools --export`).

Why torch.jit.trace rather than torch.jit.script, or torch.export: tracing needs no change
to the model code (scripting would reject **kwargs, the autocast context of the front ends
and Python-level helpers) and no dependency beyond PyTorch; the result is one file that
runs from Python (torch.jit.load) or C++ (libtorch) without this project's code. Tracing
records the operations run for the example; our encoders have no data-dependent branches
and take their sizes from the input, so the trace is valid for any length - which is why
the check uses a different length than the trace example. PyTorch 2.x marks torch.jit as
deprecated in favour of torch.export (its FutureWarnings are silenced here); TorchScript
files keep loading in libtorch, and torch.export.save would be the successor format.

ONNX: the same network (front end included: waveform in, embedding out) with the batch and
time axes dynamic. It uses the torch.export-based exporter (torch.onnx.export(dynamo=True),
needs onnxscript) at opset 18, the opset its operator library is written in (others are
converted from it). The TorchScript-based exporter (dynamo=False) fails on the front end with
"STFT does not currently support complex types": torchaudio's Spectrogram calls torch.stft
with return_complex=True. The torch.export path lowers that STFT to ONNX's STFT operator, so
the model code stays unchanged. The exporter's graph optimizer is left off (optimize=False):
it drops additions of constants within 1e-8 of zero, e.g. the 1e-8 under the square root of
CAM++'s statistics pooling, whose dead (all-zero) channels then give 0 instead of 1e-4
(onnxscript 0.7.2); onnxruntime optimises the graph when it loads it. The file is checked
with onnxruntime against the eager model on three inputs of other batch sizes and lengths
than the exported example: their max abs difference and lowest cosine are logged, and above
ONNX_TOLERANCE (or with any NaN or Inf) the export fails. The model's metadata
(metadata_props) name the encoder, the sample rate, the checkpoint and, for a checkpoint
written by --calibrate, its score calibration (JSON, speakernet/eval/calibration.py).
"""
import contextlib
import json
import logging
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn as nn

from speakernet.core import checkpoint
from speakernet.core.audio import HOP, SAMPLE_RATE, WINDOW_EXTRA, crop_samples
from speakernet.core.errors import UserError

log = logging.getLogger("speakernet.tools.model_tools")

# ONNX: opset of the torch.export-based exporter; parity with the eager model is required to
# this max abs difference of the embeddings. The checks use other batch sizes and lengths
# than the export example (2 x crop_samples(200)), so the dynamic axes are what is tested.
ONNX_OPSET = 18
ONNX_TOLERANCE = 1e-4
ONNX_CHECKS = ((1, crop_samples(100)), (3, crop_samples(331) + 17), (2, crop_samples(601) + 5))
# Shortest input the exported file declares: one 25 ms analysis window.
ONNX_MIN_SAMPLES = HOP + WINDOW_EXTRA


def load_encoder_weights(encoder, path):
    """Load this project's or voxceleb_trainer's checkpoint, or a wespeaker model folder, into a
    bare encoder, through the same checks and renames as the trainer (objective tensors are
    ignored)."""
    holder = nn.ModuleDict({"encoder": encoder})      # gives the state the trainer's names
    from speakernet.model import public_models
    if public_models.is_public_model(path):           # a wespeaker model folder
        return public_models.load_initial_weights(holder, path)
    state = checkpoint.model_state(checkpoint.load_file(path), holder, path)
    checkpoint.load_weights(holder, state, path)


# ---------------------------------------------------------------------------- TorchScript

def export_torchscript(encoder, output, example_samples=crop_samples(200)):
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


# ---------------------------------------------------------------------------- ONNX

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


def export_onnx(encoder, output, name, example_samples=crop_samples(200), metadata=None):
    """Export `encoder` (eval mode, front end included) as ONNX with dynamic batch and time
    axes to `output`, one file with its weights; `metadata` {key: text} go into the model's
    metadata_props. The torch.export-based exporter goes first; an encoder it cannot convert
    (RawNet3: pooled branches whose equal lengths it cannot prove) is traced by the older
    TorchScript-based one. Either way check_onnx compares the file with the eager model on
    other batch sizes and lengths. An encoder neither converts is a UserError naming it."""
    onnx_runtime()
    encoder.eval()
    example = (torch.randn(2, example_samples),)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                encoder, example, dynamo=True, opset_version=ONNX_OPSET, input_names=["wav"],
                output_names=["embedding"], verbose=False, optimize=False,
                # AUTO: the shortest input is the encoder's own (RawNet3, CAM++ on Kaldi
                # features need more than one window).
                dynamic_shapes=({0: torch.export.Dim("batch", min=1), 1: torch.export.Dim.AUTO},))
    except Exception as err:    # the exporter's errors have no common base class
        _export_traced(encoder, example, output, name, metadata, first_error=err)
        return
    for key, value in (metadata or {}).items():
        program.model.metadata_props[key] = str(value)
    program.save(str(output), external_data=False)


def _export_traced(encoder, example, output, name, metadata, first_error):
    """The TorchScript-based exporter, for encoders torch.export cannot convert."""
    import onnx
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(encoder, example, str(output), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["wav"], output_names=["embedding"],
                              dynamic_axes={"wav": {0: "batch", 1: "samples"}, "embedding": {0: "batch"}})
    except Exception:
        raise UserError(f"--export {name}: the ONNX exporter cannot convert this encoder "
                        f"({_one_line(first_error)}); use --format torchscript") from None
    if metadata:
        model = onnx.load(str(output))
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=str(value))
        onnx.save(model, str(output))


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
        metadata["speakernet.core.checkpoint"] = os.path.abspath(initial_model)
        stored = {} if os.path.isdir(initial_model) else checkpoint.load_file(initial_model)  # a public model folder
        if isinstance(stored, dict) and isinstance(stored.get("calibration"), dict):
            metadata["speakernet.calibration"] = json.dumps(stored["calibration"], sort_keys=True)
        if isinstance(stored, dict) and isinstance(stored.get("options"), dict):
            opts = stored["options"]
            metadata["speakernet.eval_frames"] = str(opts.get("eval_frames", ""))
            metadata["speakernet.num_eval"] = str(opts.get("num_eval", ""))
    return metadata
