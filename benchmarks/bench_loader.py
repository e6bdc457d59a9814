#!/usr/bin/env python3
"""Training-data throughput without a model: segments per second and per CPU-second.

    python3 benchmarks/bench_loader.py                      # makes a small corpus in a temp dir
    python3 benchmarks/bench_loader.py --data data/demo     # any data_prep.py --synthetic folder
    python3 benchmarks/bench_loader.py --profile            # cProfile of our path, augmented, 0 workers
    python3 benchmarks/bench_loader.py --profile --packed   # the same, reading from packs

Ours is the training path itself: SpeakerBalancedSampler (with augmentation planning) ->
TrainDataset (partial reads of crops, noise crops and RIRs) -> collate_views ->
augment.Augmenter mixing on the CPU (in the loader workers when there are any, as the trainer
does on a CPU: train_data.CollateAndMix). The row "packed" is the same path reading the speech,
noise and RIR crops from packed int16 memory maps (packed_audio.py, what `--packs auto` uses
when the packs exist; made here in a temp dir). The reference-style loader, written here only
for the comparison, does what voxceleb_trainer's loader does: read each whole file (float64)
and crop it, then augment that one crop on the CPU (scipy.signal.convolve for reverberation,
whole-file noise reads and numpy mixing), one crop at a time.

Both see the same batches (the sampler's plan: 100 groups x 2 views of 200 frames). Wall-clock
rates depend on whatever else runs on the machine; the per-CPU-second rate (CPU time of the
main process and of its loader workers, from /proc) is the fairer comparison on a shared box.
"""
import argparse
import cProfile
import glob
import os
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
from scipy import signal
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from speakernet.data import augment  # noqa: E402
import data_prep  # noqa: E402
from speakernet.data import packed_audio  # noqa: E402
from speakernet.data.train_data import CollateAndMix  # noqa: E402
from DatasetLoader import (SpeakerBalancedSampler, TrainDataset, collate_views,  # noqa: E402
                           crop_samples, read_train_list)

SNR = {"noise": (0.0, 15.0), "speech": (13.0, 20.0), "music": (5.0, 15.0)}
BABBLE = (3, 7)


# ---------------------------------------------------------------------------- data
def prepare_data(args, tmp):
    """(train_list, train_path, musan_path, rir_path), generating what is missing into `tmp`."""
    if args.data is None:
        root = os.path.join(tmp, "corpus")
        # 100 speakers: a batch of 100 groups needs 100 different speakers
        data_prep.main(["--synthetic", "--save_path", root, "--num_train_speakers", "100",
                        "--utts_per_speaker", "8", "--num_test_speakers", "2", "--test_utts_per_speaker", "2",
                        "--num_trials", "2", "--min_dur", str(args.gen_dur[0]), "--max_dur", str(args.gen_dur[1]),
                        "--workers", "2"])
    else:
        root = args.data
    musan = args.musan_path or os.path.join(root, "musan")
    rirs = args.rir_path or os.path.join(root, "rirs")
    if not (os.path.isdir(musan) and os.path.isdir(rirs)):
        noise_root = os.path.join(tmp, "noise")      # never write into a corpus others may be using
        ns = argparse.Namespace(seed=0, num_noise=40, num_babble=60, num_music=40, num_rirs=60,
                                channel_strength=1.0, noise_snr_range=[15.0, 35.0], reverb_prob=0.3,
                                save_path=noise_root, overwrite=False, workers=2)
        data_prep.generate_noise_sets(ns)
        musan, rirs = os.path.join(noise_root, "musan"), os.path.join(noise_root, "rirs")
    return os.path.join(root, "train_list.txt"), os.path.join(root, "wav"), musan, rirs


def plan_batches(train_list, bank, args, count):
    """The real sampler's batches (several epochs if one is too short), with or without augmentation."""
    planner = augment.AugmentPlanner(bank, [0.2] * 5, SNR, BABBLE) if bank else None
    sampler = SpeakerBalancedSampler(train_list.labels, args.batch_size, args.views, max_seg_per_spk=500,
                                     seed=10, view_frames=lambda epoch, rng: (args.max_frames,) * args.views,
                                     augment_planner=planner)
    batches, epoch = [], 1
    while len(batches) < count:
        batches += sampler.plan(epoch)
        epoch += 1
    return batches[:count]


# ---------------------------------------------------------------------------- reference-style loader
class ReferenceStyleDataset(Dataset):
    """voxceleb_trainer's way: whole-file float64 reads, a random crop, CPU augmentation per crop."""

    def __init__(self, files, musan_path, rir_path, max_frames, augment_on):
        self.files = files
        self.max_audio = crop_samples(max_frames)
        self.augment_on = augment_on
        self.noises = {k: sorted(glob.glob(os.path.join(musan_path, k, "**", "*.wav"), recursive=True))
                       for k in augment.NOISE_KINDS}
        self.rirs = sorted(glob.glob(os.path.join(rir_path, "**", "*.wav"), recursive=True))

    def load(self, path):
        audio, _ = soundfile.read(path)                       # the whole file, float64
        if len(audio) <= self.max_audio:
            audio = np.pad(audio, (0, self.max_audio - len(audio) + 1), "wrap")
        start = int(random.random() * (len(audio) - self.max_audio))
        return audio[start:start + self.max_audio][None]

    def additive(self, kind, audio):
        clean_db = 10 * np.log10(np.mean(audio ** 2) + 1e-4)
        count = random.randint(*BABBLE) if kind == "speech" else 1
        mixed = []
        for path in random.sample(self.noises[kind], min(count, len(self.noises[kind]))):
            noise = self.load(path)
            noise_db = 10 * np.log10(np.mean(noise ** 2) + 1e-4)
            snr = random.uniform(*SNR[kind])
            mixed.append(np.sqrt(10 ** ((clean_db - noise_db - snr) / 10)) * noise)
        return np.sum(np.concatenate(mixed, axis=0), axis=0, keepdims=True) + audio

    def reverberate(self, audio):
        rir, _ = soundfile.read(random.choice(self.rirs))
        rir = rir[None] / np.sqrt(np.sum(rir ** 2))
        return signal.convolve(audio, rir, mode="full")[:, :self.max_audio]

    def __len__(self):
        return len(self.files)

    def __getitem__(self, request):
        crops = []
        for index in request.files:
            audio = self.load(self.files[index])
            if self.augment_on:
                kind = random.randint(0, 4)
                if kind == 1:
                    audio = self.reverberate(audio)
                elif kind > 1:
                    audio = self.additive(augment.KINDS[kind], audio)
            crops.append(audio)
        return torch.FloatTensor(np.concatenate(crops, axis=0)), request.label


# ---------------------------------------------------------------------------- measuring
def process_usage(pids):
    """(user + system CPU seconds, minor page faults) of processes `pids`, from /proc (Linux)."""
    tick, seconds, faults = os.sysconf("SC_CLK_TCK"), 0.0, 0
    for pid in pids:
        try:
            fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
            seconds += (int(fields[11]) + int(fields[12])) / tick
            faults += int(fields[7])
        except (OSError, IndexError, ValueError):
            pass
    return seconds, faults


class Phases:
    """A batch sampler of two passes: warm-up batches, then the timed ones. With persistent
    workers the second pass starts with idle workers and nothing prefetched, so the CPU time
    they spend during it is exactly the timed batches' work."""

    def __init__(self, *phases):
        self.phases = list(phases)
        self.current = 0              # DataLoader may call iter() more than once per pass

    def __iter__(self):
        return iter(self.phases[self.current])

    def __len__(self):
        return len(self.phases[self.current])


def measure(make_loader, step, batches, warmup):
    """-> (segments, wall seconds, CPU seconds and minor page faults of this process and its
    loader workers)."""
    phases = Phases(batches[:warmup], batches[warmup:])
    loader = make_loader(phases)
    for batch in loader:                                     # warm-up pass: workers start, caches fill
        step(batch)
    phases.current = 1
    it = iter(loader)
    pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]
    wall0, (cpu0, faults0) = time.perf_counter(), process_usage(pids)
    segments = sum(step(batch) for batch in it)
    wall = time.perf_counter() - wall0
    cpu, faults = process_usage(pids)
    return segments, wall, cpu - cpu0, faults - faults0


def loader_for(dataset, workers, collate_fn=None):
    kwargs = dict(num_workers=workers, persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    if collate_fn:
        kwargs["collate_fn"] = collate_fn
    return lambda batches: DataLoader(dataset, batch_sampler=batches, **kwargs)


def ours(train_list, bank, workers, augmenter, packs=()):
    """The trainer's path on a CPU: with workers they also mix (CollateAndMix), without them
    the training process does."""
    in_workers = augmenter is not None and workers > 0

    def step(batch):
        views, _, extras, _ = batch          # views, labels, augmentation extras, frames
        if augmenter is not None and not in_workers:
            views = augmenter(views, extras)
        return sum(v.shape[0] * v.shape[1] for v in views)
    collate = CollateAndMix() if in_workers else collate_views
    return loader_for(TrainDataset(train_list, bank, packs=packs), workers, collate), step


def reference(train_list, musan, rirs, workers, augment_on, max_frames):
    dataset = ReferenceStyleDataset(train_list.files, musan, rirs, max_frames, augment_on)
    return loader_for(dataset, workers), lambda batch: batch[0].shape[0] * batch[0].shape[1]


# ---------------------------------------------------------------------------- packs
def make_packs(train_list_path, train_path, musan, rirs, tmp):
    packs = []
    names = [line.split()[1] for line in open(train_list_path) if line.strip()]
    for prefix, root, files in (("train", train_path, names), ("musan", musan, None), ("rirs", rirs, None)):
        if files is None:
            files = sorted(str(f.relative_to(root)) for f in Path(root).rglob("*.wav"))
        packed_audio.pack(files, root, os.path.join(tmp, prefix), desc="packing " + prefix)
        packs.append(packed_audio.PackedAudio(os.path.join(tmp, prefix), root))
    return packs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a data_prep.py --synthetic folder (default: make a small one in a temp dir)")
    p.add_argument("--gen_dur", type=float, nargs=2, default=[2.0, 6.0], metavar=("MIN", "MAX"),
                   help="utterance seconds of the generated corpus (the demo's; VoxCeleb's average is ~8)")
    p.add_argument("--musan_path", help="default DATA/musan, else generated into a temp dir")
    p.add_argument("--rir_path", help="default DATA/rirs, else generated into a temp dir")
    p.add_argument("--batch_size", type=int, default=100, help="groups per batch")
    p.add_argument("--views", type=int, default=2, help="crops per group (nPerSpeaker)")
    p.add_argument("--max_frames", type=int, default=200, help="crop length, 10 ms frames")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="nDataLoaderThread values")
    p.add_argument("--batches", type=int, default=10, help="timed batches per run of ours")
    p.add_argument("--ref_batches", type=int, default=4, help="timed batches per run of the reference")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first (worker start-up, caches)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians are reported")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the main process")
    p.add_argument("--skip_reference", action="store_true")
    p.add_argument("--profile", action="store_true", help="cProfile our augmented path with 0 workers")
    p.add_argument("--packed", action="store_true",
                   help="--profile: read from packs (made in a temp dir) instead of the WAV files")
    p.add_argument("--skip_packed", action="store_true", help="no 'packed' rows")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        list_path, train_path, musan, rirs = prepare_data(args, tmp)
        train_list = read_train_list(list_path, train_path)
        bank = augment.AugmentBank(musan, rirs)
        count = args.warmup + max(args.batches, args.ref_batches)
        plans = {aug: plan_batches(train_list, bank if aug else None, args, count) for aug in (False, True)}
        augmenter = augment.Augmenter()
        use_packs = args.packed if args.profile else not args.skip_packed
        packs = make_packs(list_path, train_path, musan, rirs, tmp) if use_packs else ()
        if args.profile:
            make, step = ours(train_list, bank, 0, augmenter, packs)
            profiler = cProfile.Profile()
            profiler.enable()
            measure(make, step, plans[True][:args.warmup + args.batches], args.warmup)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
            return
        print("\n%d speakers, %d utterances; batches of %d x %d crops of %d samples; torch threads %d; "
              "load average %s" % (
                  len(train_list.speakers), len(train_list.files), args.batch_size, args.views,
                  crop_samples(args.max_frames), args.threads,
                  " ".join("%.1f" % x for x in os.getloadavg())))
        runs = [("ours", args.batches)] + ([] if args.skip_reference else [("reference", args.ref_batches)])
        runs += [("packed", args.batches)] if use_packs else []
        configs = [(w, aug, name, n) for w in args.workers for aug in (False, True) for name, n in runs]
        results = {c: [] for c in configs}
        # Rounds interleave the loaders, so that each sees the same mix of load from other jobs.
        for round_ in range(args.repeat):
            for config in tqdm(configs, desc="round %d of %d" % (round_ + 1, args.repeat), unit="run", leave=False):
                workers, aug, name, n = config
                if name == "reference":
                    make, step = reference(train_list, musan, rirs, workers, aug, args.max_frames)
                else:
                    make, step = ours(train_list, bank if aug else None, workers, augmenter if aug else None,
                                      packs if name == "packed" else ())
                results[config].append(measure(make, step, plans[aug][:args.warmup + n], args.warmup))
        print("medians of %d interleaved rounds" % args.repeat)
        print("%-10s %-8s %-8s %12s %12s %16s %14s" % ("loader", "augment", "workers", "segments/s",
                                                       "CPU s/batch", "segments/CPU-s", "faults/batch"))
        per_core = {}
        for config in configs:
            workers, aug, name, n = config
            segments = results[config][0][0]
            wall = float(np.median([r[1] for r in results[config]]))
            cpu = float(np.median([r[2] for r in results[config]]))
            faults = float(np.median([r[3] for r in results[config]]))
            per_core[name, aug, workers] = segments / cpu
            print("%-10s %-8s %-8d %12.0f %12.3f %16.0f %14.0f" % (
                name, "on" if aug else "off", workers, segments / wall, cpu / n, segments / cpu, faults / n))
        for name in [r for r, _ in runs if r != "reference"] if not args.skip_reference else []:
            for workers in args.workers:
                for aug in (False, True):
                    print("%s / reference per CPU core, augment %-3s, %d workers: %.1fx" % (
                        name, "on" if aug else "off", workers,
                        per_core[name, aug, workers] / per_core["reference", aug, workers]))


if __name__ == "__main__":
    main()
