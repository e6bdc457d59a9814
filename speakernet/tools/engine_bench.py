"""Inference speed of an encoder in PyTorch (eager) and in onnxruntime on its ONNX export
(`python3 -m speakernet.tools.model_tools --bench`): single files, one CPU thread each, interleaved rounds so that
a machine shared with other jobs slows both engines alike."""
import logging
import statistics
import time

import torch

from speakernet.tools.export import onnx_session
from speakernet.core.audio import SAMPLE_RATE

log = logging.getLogger("speakernet.tools.model_tools")


def random_files(seconds, files):
    """`files` random waveforms of `seconds`, each 1 x samples (seeded: runs compare)."""
    samples = int(round(seconds * SAMPLE_RATE))
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(1, samples, generator=generator) for _ in range(files)]


def engines(encoder, onnx_path, inputs):
    """{label: callable} that embeds every input once with that engine."""
    session = onnx_session(onnx_path, threads=1)
    arrays = [w.numpy() for w in inputs]

    def run_pytorch():
        with torch.inference_mode():
            for w in inputs:
                encoder(w)

    def run_onnxruntime():
        for a in arrays:
            session.run(None, {"wav": a})

    return {"pytorch": run_pytorch, "onnxruntime": run_onnxruntime}


def timed_rounds(runners, files, rounds):
    """files/s of every runner per round, the order alternating between rounds."""
    for run_engine in runners.values():            # warm-up (allocations, kernels)
        run_engine()
    rates = {label: [] for label in runners}
    for r in range(rounds):
        order = list(runners) if r % 2 == 0 else list(runners)[::-1]
        for label in order:
            start = time.perf_counter()
            runners[label]()
            rates[label].append(files / (time.perf_counter() - start))
        log.info("round %d: %s", r + 1, ", ".join(f"{k} {v[-1]:.2f} files/s" for k, v in rates.items()))
    return rates


def compare_engines(name, encoder, onnx_path, seconds, files, rounds):
    """files/s of `encoder` and of its ONNX file at `onnx_path` on single `seconds`-long
    inputs, one CPU thread each -> {'pytorch': [...], 'onnxruntime': [...]}; logs medians."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder.eval()
        rates = timed_rounds(engines(encoder, onnx_path, random_files(seconds, files)), files, rounds)
    finally:
        torch.set_num_threads(threads)
    pytorch, onnxruntime = statistics.median(rates["pytorch"]), statistics.median(rates["onnxruntime"])
    log.info("%s on %g s inputs, 1 thread, %d files x %d rounds: PyTorch %.2f files/s, "
             "onnxruntime %.2f files/s (medians; %.2fx)", name, seconds, files, rounds,
             pytorch, onnxruntime, onnxruntime / pytorch)
    return rates
