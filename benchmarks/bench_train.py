#!/usr/bin/env python3
"""Training speed: segments per second of the trainer's step, per encoder and objective.

    python3 benchmarks/bench_train.py                       # every encoder x 3 objectives, short
    python3 benchmarks/bench_train.py --models ResNetSE34L --objectives angleproto --batch 100
    python3 benchmarks/bench_train.py --compare             # the plain baseline vs trainer variants

Table mode, for each (encoder, objective), in a fresh subprocess so that its peak memory is
its own:
  compute     segments/s of Trainer.train_epoch on one batch already in memory (forward,
              loss, backward, optimizer step, objective hooks), repeated;
  end to end  segments/s of Trainer.train_epoch fed by the real loader (sampler, workers,
              partial reads, --augment with the demo corpus's MUSAN/RIR, mixed where the
              trainer mixes: in the workers on a CPU with workers, else on the device)
              on data/demo (python3 data_prep.py --synthetic --save_path data/demo);
  peak memory torch.cuda.max_memory_allocated on CUDA; on the CPU the subprocess's peak
              resident set (getrusage ru_maxrss) after the compute steps, and beside it
              that peak less the process's resident set before the model was built
              ("+training": model, optimizer, batch, activations and gradients);
  GFLOP/s     achieved = 2 x MACs (encoder without its front end, torch.utils.flop_counter,
              as `python3 -m speakernet.tools.model_tools --profile`) x 3 (forward + backward) x compute segments/s,
              beside the machine's dense fp32 matmul GFLOP/s.
Each rate is the median over the timed steps after --warmup steps; the first step of a run
builds oneDNN primitives and fills the loader's pipeline. A segment is one view (a batch is
--batch groups x --views views of --frames frames).

Compare mode (the aim of issue #8): Fast ResNet-34 + angleproto, 100 groups x 2 views of
200 frames, against a plain fp32 eager implementation of the same network written here
(NCHW, stock Adam, nothing else; its weights are loaded from the project's model and its
embeddings checked equal, so it is the same function). Variants run interleaved A B C A B C
... in one process, --rounds times, and each row reports the median of its rounds, so load
from other jobs on the machine hits all variants alike.
"""
import argparse
import itertools
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("bench_train")

MODELS = ("ResNetSE34L", "ResNetSE34", "VGGVox", "ResNetSE34V2", "ECAPA_TDNN")
OBJECTIVES = ("angleproto", "softmaxproto", "aamsoftmax")
# Each encoder in its papers' configuration (see configs/): the trainer's option defaults
# (40 mels, SAP, 512-d) are Fast ResNet-34's.
MODEL_OPTIONS = {
    "ResNetSE34V2": ["--n_mels", "64", "--encoder_type", "ASP"],
    "ECAPA_TDNN": ["--n_mels", "80", "--encoder_type", "ASP", "--nOut", "192"],
}
DEMO = REPO / "data" / "demo"


# ---------------------------------------------------------------------------- shared pieces

def samples_for(frames):
    return frames * 160 + 240


def current_rss_mb():
    """Resident set of this process now (Linux /proc), in MB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device, size=2048, repeats=5):
    """Dense fp32 matrix-product rate: the best of `repeats` size^3 products."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def timed_batches(batches, count, marks):
    """Yield `count` batches, appending the time each is asked for to `marks` (and once more
    after the last): the gap between two marks is one trainer step including its data wait."""
    source = iter(batches)
    for _ in range(count):
        marks.append(time.perf_counter())
        yield next(source)
    marks.append(time.perf_counter())


def step_rates(marks, segments, warmup):
    """Segments/s of each step after the first `warmup`."""
    gaps = [b - a for a, b in zip(marks[:-1], marks[1:])]
    return [segments / gap for gap in gaps[warmup:]]


def trainer_options(model, objective, args, extra=()):
    from speakernet.run import options
    argv = ["--model", model, "--trainfunc", objective, "--nClasses", "200",
            "--nPerSpeaker", str(args.views), "--batch_size", str(args.batch),
            "--max_frames", str(args.frames), "--device", args.device, "--log_input",
            "--train_list", str(DEMO / "train_list.txt"), "--train_path", str(DEMO / "wav"),
            "--test_list", str(DEMO / "test_list.txt"), "--test_path", str(DEMO / "wav"),
            "--augment", "--musan_path", str(DEMO / "musan"), "--rir_path", str(DEMO / "rirs"),
            "--nDataLoaderThread", str(args.workers), "--save_path", "/tmp/bench_train_unused"]
    return options.parse_options(argv + MODEL_OPTIONS.get(model, []) + list(extra))


def build_trainer(opts, device, fused=False, compile_encoder=False):
    from speakernet.run import plugins
    from SpeakerNet import Trainer
    from trainSpeakerNet import build_model
    torch.manual_seed(0)
    model = build_model(opts).to(device)
    if compile_encoder:
        model.encoder.compile()
    if fused:
        optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr, fused=True)
    else:
        optimizer = plugins.factory("optimizer", opts.optimizer)(model.parameters(), **vars(opts))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1000)
    return model, Trainer(model, optimizer, scheduler, "epoch", device, opts.mixedprec, is_main=False)


def memory_batch(opts, objective_views, device, seed=0):
    """One batch as the loader delivers it (views, labels, extras, frames), random audio."""
    generator = torch.Generator().manual_seed(seed)
    wav = 0.1 * torch.randn(opts.batch_size, objective_views, samples_for(opts.max_frames),
                            generator=generator)
    labels = torch.arange(opts.batch_size) % opts.nClasses
    return [wav.to(device)], labels.to(device), [None], (opts.max_frames,) * objective_views


def compute_rates(trainer, batch, steps, warmup):
    marks = []
    segments = sum(v.shape[0] * v.shape[1] for v in batch[0])
    trainer.train_epoch(timed_batches(itertools.repeat(batch), warmup + steps, marks), 1)
    synchronize(trainer.device)
    return step_rates(marks, segments, warmup)


# ---------------------------------------------------------------------------- table mode

def measure_configuration(model_name, objective, args):
    """Compute and end-to-end rates and peak memory of one (encoder, objective) -> dict."""
    from torch.utils.data import DataLoader

    from speakernet.data.augment import Augmenter, planner_from_options
    from speakernet.data.train_data import CollateAndMix
    from DatasetLoader import (SpeakerBalancedSampler, TrainDataset, collate_views,
                               read_train_list)
    from speakernet.tools.model_tools import count_macs
    from speakernet.data.packed_audio import packs_from_options
    from trainSpeakerNet import views_per_group
    device = torch.device(args.device)
    resident_before = current_rss_mb()
    extra = ["--mixedprec"] if args.mixedprec else []
    opts = trainer_options(model_name, objective, args, extra)
    model, trainer = build_trainer(opts, device, compile_encoder=args.compile)
    views = views_per_group(opts, model.objective)
    macs = count_macs(model.encoder, samples_for(args.frames))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    compute = compute_rates(trainer, memory_batch(opts, views, device), args.steps, args.warmup)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    added_mb = peak_mb - (0 if device.type == "cuda" else resident_before)
    end_to_end = []
    if not args.no_e2e:
        train_list = read_train_list(opts.train_list, opts.train_path)
        planner = planner_from_options(opts)
        sampler = SpeakerBalancedSampler(
            train_list.labels, opts.batch_size, views, opts.max_seg_per_spk, seed=opts.seed,
            view_frames=lambda epoch, rng: (opts.max_frames,) * views, augment_planner=planner)
        sampler.set_epoch(1)
        # As train() in trainSpeakerNet.py: on a CPU with workers the workers mix the noise in.
        mix_in_workers = device.type == "cpu" and args.workers > 0
        packs = packs_from_options(opts, train_list, planner.bank)
        loader = DataLoader(TrainDataset(train_list, planner.bank, packs), batch_sampler=sampler,
                            num_workers=args.workers,
                            collate_fn=CollateAndMix() if mix_in_workers else collate_views,
                            pin_memory=device.type == "cuda",
                            prefetch_factor=4 if args.workers else None)
        trainer.augment = None if mix_in_workers else Augmenter()
        count = min(args.warmup + args.steps, len(sampler))
        marks = []
        trainer.train_epoch(timed_batches(loader, count, marks), 1)
        end_to_end = step_rates(marks, opts.batch_size * views, args.warmup)
    return {"model": model_name, "objective": objective, "segments": opts.batch_size * views,
            "compute": statistics.median(compute), "e2e": statistics.median(end_to_end) if end_to_end else None,
            "peak_mb": peak_mb, "added_mb": added_mb, "macs": macs, "threads": torch.get_num_threads()}


def run_table(args):
    gflops_peak = matmul_gflops(torch.device(args.device))
    rows = []
    for model_name in args.models:
        for objective in args.objectives:
            log.info("measuring %s + %s", model_name, objective)
            command = [sys.executable, __file__, "--_one", f"{model_name},{objective}",
                       *sys.argv[1:]]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                log.error("%s + %s failed:\n%s", model_name, objective, done.stderr[-2000:])
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    device = torch.device(args.device)
    memory = "peak CUDA MB" if device.type == "cuda" else "peak RSS MB"
    added = "" if device.type == "cuda" else f" {'(+training)':>11}"
    print(f"device {device}, torch threads {torch.get_num_threads()} "
          f"(OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS', 'unset')}), "
          f"{'bf16/fp16 autocast' if args.mixedprec else 'fp32'}{', torch.compile' if args.compile else ''}; "
          f"batch {args.batch} groups x {args.views} views x {args.frames} frames; "
          f"median of {args.steps} steps after {args.warmup} warm-up; "
          f"end to end: data/demo, --augment, {args.workers} loader workers")
    print(f"dense fp32 matmul: {gflops_peak:.0f} GFLOP/s")
    print(f"{'model':<13} {'objective':<13} {'GMACs/seg':>9} {'compute seg/s':>13} "
          f"{'GFLOP/s':>8} {'e2e seg/s':>9} {memory:>12}{added}")
    for row in rows:
        achieved = 2 * row["macs"] * 3 * row["compute"] / 1e9
        e2e = f"{row['e2e']:9.1f}" if row["e2e"] is not None else f"{'-':>9}"
        print(f"{row['model']:<13} {row['objective']:<13} {row['macs'] / 1e9:9.3f} "
              f"{row['compute']:13.1f} {achieved:8.0f} {e2e} {row['peak_mb']:12.0f}"
              + ("" if device.type == "cuda" else f" {row['added_mb']:11.0f}"))


# ---------------------------------------------------------------------------- plain baseline

class PlainSEBlock(nn.Module):
    """The SE basic block of Fast ResNet-34, written out plainly (default NCHW tensors)."""

    def __init__(self, in_channels, channels, stride=1, reduction=8):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.se = nn.Module()
        self.se.fc = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(),
                                   nn.Linear(channels // reduction, channels), nn.Sigmoid())
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x):
        out = self.bn1(F.relu(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        gate = self.se.fc(out.mean(dim=(2, 3)))
        out = out * gate[:, :, None, None]
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class PlainFastResNet34(nn.Module):
    """Fast ResNet-34 (40 log-mels, SAP) as a plain eager fp32 NCHW network; the parameter
    names match models/ResNetSE34L.py so the project's weights load into it."""

    def __init__(self, nOut=512):
        super().__init__()
        from models._frontends import LogMelFrontend
        from models._pooling import SelfAttentivePooling
        self.features = LogMelFrontend(n_mels=40, log_input=True)
        self.conv1 = nn.Conv2d(1, 16, kernel_size=7, stride=(2, 1), padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_channels = 16
        for i, (width, blocks, stride) in enumerate(zip((16, 32, 64, 128), (3, 4, 6, 3),
                                                        (1, (2, 2), (2, 2), (1, 1))), start=1):
            stage = [PlainSEBlock(in_channels, width, stride)]
            stage += [PlainSEBlock(width, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
            in_channels = width
        self.pool = SelfAttentivePooling(128)
        self.fc = nn.Linear(128, nOut)

    def forward(self, wav):
        x = self.features(wav).unsqueeze(1)
        x = self.bn1(F.relu(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x.mean(dim=2).transpose(1, 2)))


class PlainTrainer:
    """for each batch: embeddings, angleproto loss, backward, Adam step; no tricks."""

    def __init__(self, encoder, objective, device):
        self.encoder = encoder.to(device)
        self.objective = objective.to(device)
        parameters = list(self.encoder.parameters()) + list(self.objective.parameters())
        self.optimizer = torch.optim.Adam(parameters, lr=0.001)
        self.device = device

    def rates(self, batch, steps, warmup):
        wav = batch[0][0]
        marks = []
        self.encoder.train()
        for _ in timed_batches(itertools.repeat(None), warmup + steps, marks):
            x = self.encoder(wav.flatten(0, 1)).unflatten(0, wav.shape[:2])
            loss, _ = self.objective(x)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss.item()
        return step_rates(marks, wav.shape[0] * wav.shape[1], warmup)


# ---------------------------------------------------------------------------- compare mode

class OneDNNBf16Math:
    """oneDNN may compute fp32 convolutions and matmuls with bf16 inputs (fp32 accumulation)."""

    def __enter__(self):
        self.saved = (torch.backends.mkldnn.conv.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision)
        torch.backends.mkldnn.conv.fp32_precision = "bf16"
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"

    def __exit__(self, *exc):
        torch.backends.mkldnn.conv.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision = self.saved


class FlushDenormals:
    """Treat subnormal floats as zero (x86 FTZ/DAZ): subnormal arithmetic is slow on CPUs."""

    def __enter__(self):
        torch.set_flush_denormal(True)

    def __exit__(self, *exc):
        torch.set_flush_denormal(False)


class Threads:
    def __init__(self, count):
        self.count = count

    def __enter__(self):
        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.count)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


def run_compare(args):
    import contextlib

    from loss.angleproto import LossFunction as AngleProto
    device = torch.device(args.device)
    opts = trainer_options("ResNetSE34L", "angleproto", args)
    mixed = trainer_options("ResNetSE34L", "angleproto", args, ["--mixedprec"])
    batch = memory_batch(opts, args.views, device)
    threads = torch.get_num_threads()

    project, trainer = build_trainer(opts, device)
    plain_encoder = PlainFastResNet34(nOut=opts.nOut)
    plain_encoder.load_state_dict(project.encoder.state_dict())
    with torch.no_grad():
        probe = batch[0][0][:4, 0]
        difference = (plain_encoder.eval()(probe) - project.encoder.eval()(probe)).abs().max().item()
    log.info("plain and project encoders: same weights, max embedding difference %.2g", difference)
    if difference > 1e-3:
        raise SystemExit("the plain baseline is not the same network as models/ResNetSE34L.py")
    plain = PlainTrainer(plain_encoder, AngleProto(), device)

    def trainer_variant(option_set, **kwargs):
        return lambda: build_trainer(option_set, device, **kwargs)[1]

    variants = {  # name -> (builder, context around its steps)
        "plain fp32 NCHW (baseline)": (lambda: plain, contextlib.nullcontext),
        "trainer: channels-last fp32": (trainer_variant(opts), contextlib.nullcontext),
        "  + fused Adam": (trainer_variant(opts, fused=True), contextlib.nullcontext),
        "  + oneDNN bf16 fp32-math": (trainer_variant(opts), OneDNNBf16Math),
        "  + flush denormals": (trainer_variant(opts), FlushDenormals),
        "  + bf16 autocast (--mixedprec)": (trainer_variant(mixed), contextlib.nullcontext),
    }
    other_threads = 1 if threads > 1 else 2
    variants[f"  with {other_threads} threads instead of {threads}"] = (
        trainer_variant(opts), lambda: Threads(other_threads))
    if args.compile:
        variants["  + torch.compile (encoder)"] = (trainer_variant(opts, compile_encoder=True),
                                                   contextlib.nullcontext)
    if args.variants:
        keep = ("baseline", "trainer:", *args.variants)
        variants = {name: v for name, v in variants.items() if any(k in name for k in keep)}
    built = {name: builder() for name, (builder, _) in variants.items()}
    rates = {name: [] for name in variants}
    for round_index in range(args.rounds):
        for name, (_, context) in variants.items():
            runner = built[name]
            with context():
                if isinstance(runner, PlainTrainer):
                    got = runner.rates(batch, args.steps, args.warmup if round_index == 0 else 0)
                else:
                    got = compute_rates(runner, batch, args.steps, args.warmup if round_index == 0 else 0)
            rates[name].append(statistics.median(got))
            log.info("round %d %-34s %.1f segments/s", round_index + 1, name.strip(), rates[name][-1])

    macs = count_encoder_macs(project, args.frames)
    front_end = front_end_share(project, batch, rates["trainer: channels-last fp32"])
    base = statistics.median(rates["plain fp32 NCHW (baseline)"])
    print(f"Fast ResNet-34 + angleproto, {args.batch} x {args.views} views x {args.frames} frames, "
          f"device {device}, {threads} threads; median of {args.rounds} interleaved rounds of "
          f"{args.steps} steps (first round after {args.warmup} warm-up)")
    print(f"dense fp32 matmul: {matmul_gflops(device):.0f} GFLOP/s; encoder {macs / 1e9:.3f} GMACs "
          f"per segment; log-mel front end {100 * front_end:.1f}% of a trainer step")
    print("x plain: ratio of the medians; paired: median over rounds of the ratio to the "
          "baseline's rate in the same round")
    print(f"{'variant':<36} {'seg/s':>7} {'x plain':>8} {'paired':>7} {'GFLOP/s':>8}  rounds")
    baseline_rounds = rates["plain fp32 NCHW (baseline)"]
    for name, values in rates.items():
        rate = statistics.median(values)
        paired = statistics.median(v / b for v, b in zip(values, baseline_rounds))
        print(f"{name:<36} {rate:7.1f} {rate / base:8.2f} {paired:7.2f} {6 * macs * rate / 1e9:8.0f}  "
              + " ".join(f"{v:.1f}" for v in values))


def count_encoder_macs(model, frames):
    from speakernet.tools.model_tools import count_macs
    return count_macs(model.encoder, samples_for(frames))


def front_end_share(model, batch, trainer_rates):
    """Time of the log-mel front end on the batch / time of one trainer step."""
    wav = batch[0][0].flatten(0, 1)
    model.encoder.features(wav)
    start = time.perf_counter()
    for _ in range(3):
        model.encoder.features(wav)
    seconds = (time.perf_counter() - start) / 3
    return seconds / (wav.shape[0] / statistics.median(trainer_rates))


# ---------------------------------------------------------------------------- command line

def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS),
                   help="comma-separated encoders (files in models/)")
    p.add_argument("--objectives", type=lambda s: s.split(","), default=list(OBJECTIVES),
                   help="comma-separated objectives (files in loss/)")
    p.add_argument("--batch", type=int, default=16, help="groups per batch (100 in --compare)")
    p.add_argument("--views", type=int, default=2, help="views per group (nPerSpeaker)")
    p.add_argument("--frames", type=int, default=200, help="crop length in 10 ms frames")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (per round)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--workers", type=int, default=2, help="loader workers for the end-to-end rate")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: PyTorch's default)")
    p.add_argument("--mixedprec", action="store_true", help="table: train under autocast, as --mixedprec")
    p.add_argument("--compile", action="store_true",
                   help="table: torch.compile the encoder; compare: add it as a variant")
    p.add_argument("--no_e2e", action="store_true", help="table: skip the end-to-end rate")
    p.add_argument("--compare", action="store_true",
                   help="plain fp32 baseline vs the trainer's variants on Fast ResNet-34 + angleproto")
    p.add_argument("--rounds", type=int, default=5, help="compare: interleaved rounds")
    p.add_argument("--variants", type=lambda s: s.split(","), default=None,
                   help="compare: only the variants whose names contain one of these words "
                        "(besides the baseline and the trainer), e.g. compile,autocast")
    p.add_argument("--_one", help=argparse.SUPPRESS)      # table: one configuration, JSON out
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._one:
        model_name, objective = args._one.split(",")
        print(json.dumps(measure_configuration(model_name, objective, args)))
    elif args.compare:
        if "--batch" not in (argv if argv is not None else sys.argv):
            args.batch = 100
        run_compare(args)
    else:
        run_table(args)


if __name__ == "__main__":
    main()
