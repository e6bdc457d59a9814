"""Size and speed of the encoders: parameters, MACs of one forward pass, and training
throughput (`python3 -m speakernet.tools.model_tools --profile`).

MACs are counted for the network without its front end, as in "In defence of metric
learning", Table 1: torch.utils.flop_counter's FLOPs / 2 over convolutions and matrix products.
"""
import copy
import logging
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from speakernet.run import plugins
from speakernet.core.audio import crop_samples
from speakernet.core.errors import UserError

log = logging.getLogger("speakernet.tools.model_tools")

samples_for = crop_samples        # frames -> samples, as the trainer crops


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


def resolve_device(name):
    """torch.device of --device (auto, cpu, cuda or cuda:N); UserError for any other name, or
    CUDA on a machine without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    index = name.partition(":")[2] if name.startswith("cuda:") else ""
    if name not in ("cpu", "cuda") and not index.isdigit():
        raise UserError(f"--device '{name}': use auto, cpu, cuda or cuda:N")
    if name != "cpu":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index or 0) >= available:
            raise UserError(f"--device {name}: this machine has {available} CUDA devices; use --device cpu "
                            f"or another index")
    return torch.device(name)


def profile(names, model_kwargs, device, batch, frames, iterations):
    """Print one row per encoder: parameters, GMACs for 2 s, forward+backward segments/s.
    The table is the command's output (stdout); progress goes to the log."""
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
        try:
            rate = f"{training_throughput(model.to(device), batch, samples_for(frames), device, iterations):14.1f}"
        except torch.OutOfMemoryError:
            rate = f"out of memory on {device}: lower --batch or --frames"
        rows.append((name, f"{params / 1e6:10.3f} {params:>12,} {macs / 1e9:10.3f} {rate}"))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"device {device}, forward+backward on {batch} x {frames} frames, "
          f"MACs for 2 s ({two_seconds} samples)")
    print(f"{'model':<14} {'params (M)':>10} {'params':>12} {'GMACs/2 s':>10} {'segments/s':>14}")
    for name, text in rows:
        print(f"{name:<14} {text}")
