#!/usr/bin/env python3
"""Start-up and memory at VoxCeleb2 scale: a list of a million utterances of 5,994 speakers.

    python3 benchmarks/bench_scale.py                        # 1,000,000 utterances (~2 GB of links)
    python3 benchmarks/bench_scale.py --utterances 200000 --batches 100

The corpus is built in a temporary folder from 32 short WAV files and hard links to them
(real headers, almost no disk), laid out as speaker/video/utterance.wav, and removed at the
end. Each measurement runs in a fresh process:

    first start      read the list, check every header, write the manifest
    later start      the same with the manifest in place (list and files unchanged)
    resident memory  the main process's peak RSS after reading the list
    sampler plan     one epoch's plan, 200 speakers x 2 utterances per batch, and the reading
                     of all its batches (which the loader spreads over the epoch)
    first step       trainSpeakerNet from process start to the end of the first training step,
                     on the whole list and on 400 utterances of it (manifests cached)
    loader memory    summed PSS of the main process and 4 loader workers after the first
                     and the last of --batches batches (it must not grow)
"""
import argparse
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("bench_scale")

SPEAKERS = 5994
PER_VIDEO = 8


def build_corpus(root, utterances, seed=0):
    """root/wav/idNNNNN/vidNNNNN/NNNNN.wav hard links to 32 sources, and root/train_list.txt."""
    rng = np.random.default_rng(seed)
    sources = []
    for i in range(32):
        path = root / "sources" / f"{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), (0.1 * rng.standard_normal(16000 * (2 + i % 4))).astype(np.float32), 16000,
                        subtype="PCM_16")
        sources.append(str(path))
    speakers = np.arange(utterances) % SPEAKERS
    lines = []
    made = set()
    for i, speaker in enumerate(speakers):
        number = i // SPEAKERS
        rel = f"id{speaker:05d}/vid{number // PER_VIDEO:05d}/{number % PER_VIDEO:05d}.wav"
        folder = root / "wav" / os.path.dirname(rel)
        if folder not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(folder)
        os.link(sources[i % 32], root / "wav" / rel)
        lines.append(f"id{speaker:05d} {rel}\n")
    (root / "train_list.txt").write_text("".join(lines))
    # 400 utterances: the first two of 200 speakers; and four trials for the evaluation lists.
    (root / "small_list.txt").write_text("".join(lines[:200] + lines[SPEAKERS:SPEAKERS + 200]))
    first = [line.split()[1] for line in lines[:3]]
    second = lines[SPEAKERS].split()[1] if len(lines) > SPEAKERS else first[0]
    (root / "test_list.txt").write_text(f"1 {first[0]} {second}\n0 {first[0]} {first[1]}\n"
                                        f"0 {first[1]} {first[2]}\n1 {second} {first[0]}\n")
    return root / "train_list.txt", root / "wav"


def probe_start(list_path, root):
    """In this process: read the list -> (seconds, peak RSS MB)."""
    from DatasetLoader import read_train_list
    started = time.perf_counter()
    train = read_train_list(list_path, root)
    seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    from DatasetLoader import SpeakerBalancedSampler
    plan = SpeakerBalancedSampler(train.labels, 200, 2, 500).plan(1)
    planned = time.perf_counter() - started
    started = time.perf_counter()
    for _ in plan:
        pass
    return seconds, rss, planned, time.perf_counter() - started


def probe_first_step(list_path, root, save_path):
    """In this process: train a small ResNetSE34L on the list with 2 loader workers, and exit
    at the end of the first training step (the caller times the process)."""
    import SpeakerNet
    import trainSpeakerNet

    original = SpeakerNet.Trainer.train_epoch

    def stop_after_first_step(*_):
        os._exit(0)

    def train_epoch(self, loader, epoch, resume=None, after_step=None):
        return original(self, loader, epoch, resume=resume, after_step=stop_after_first_step)

    SpeakerNet.Trainer.train_epoch = train_epoch
    test_list = Path(list_path).with_name("test_list.txt")
    options = dict(model="ResNetSE34L", trainfunc="angleproto", nPerSpeaker=2, batch_size=200, max_frames=20,
                   eval_frames=30, num_eval=2, nOut=32, nDataLoaderThread=2, device="cpu", max_epoch=1,
                   train_list=list_path, train_path=root, test_list=test_list, test_path=root,
                   save_path=save_path)
    code = trainSpeakerNet.main([f"--{k}={v}" for k, v in options.items()])
    raise SystemExit(f"training ended (exit status {code}) before its first step")


def pss_mb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def probe_loader(list_path, root, batches):
    """In this process: 4 workers over `batches` batches -> (PSS after the first, after the last)."""
    import torch
    from torch.utils.data import DataLoader

    from DatasetLoader import TrainDataset, collate_views, read_train_list
    from DatasetLoader import SpeakerBalancedSampler
    torch.set_num_threads(1)
    train = read_train_list(list_path, root)
    sampler = SpeakerBalancedSampler(train.labels, 200, 2, 500, max_frames=200)
    sampler.set_epoch(1)
    loader = DataLoader(TrainDataset(train), batch_sampler=sampler, num_workers=4, collate_fn=collate_views,
                        persistent_workers=True, prefetch_factor=2)
    samples = []
    for n, _ in enumerate(loader, start=1):
        if n in (1, batches):
            pids = [os.getpid()] + [w.pid for w in loader._iterator._workers]
            samples.append(sum(pss_mb(pid) for pid in pids))
        if n == batches:
            break
    return samples


def fresh(*args):
    """Run this script's probe in a new process -> its printed result."""
    done = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return [float(x) for x in done.stdout.split()]


def seconds_of(func, *args):
    started = time.perf_counter()
    func(*args)
    return time.perf_counter() - started


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=200, help="loader batches for the memory probe")
    parser.add_argument("--keep", help="build the corpus here and keep it (default: a temporary folder)")
    parser.add_argument("--probe", choices=("start", "loader", "first_step"), help=argparse.SUPPRESS)
    parser.add_argument("list_path", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("root", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("save_path", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe == "start":
        print(*probe_start(args.list_path, args.root))
        return 0
    if args.probe == "loader":
        print(*probe_loader(args.list_path, args.root, args.batches))
        return 0
    if args.probe == "first_step":
        probe_first_step(args.list_path, args.root, args.save_path)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        started = time.perf_counter()
        list_path, root = build_corpus(folder, args.utterances)
        log.info("built %d hard links in %.0f s", args.utterances, time.perf_counter() - started)
        first = fresh("--probe", "start", list_path, root)
        later = fresh("--probe", "start", list_path, root)
        memory = fresh("--probe", "loader", "--batches", args.batches, list_path, root)
        small = list_path.with_name("small_list.txt")
        fresh("--probe", "first_step", small, root, folder / "run_warm")          # writes its manifest
        steps = [seconds_of(fresh, "--probe", "first_step", path, root, folder / f"run_{i}")
                 for i, path in enumerate((small, list_path))]
        log.info("| step | %d utterances |", args.utterances)
        log.info("|---|---|")
        log.info("| first start: read the list, check every header, write the manifest | %.1f s |", first[0])
        log.info("| every later start (manifest cached) | %.1f s |", later[0])
        log.info("| resident memory of the main process after reading the list | %.0f MB |", later[1])
        log.info("| sampler epoch plan, 200 speakers x 2 per batch | %.2f s |", later[2])
        log.info("| reading all batches of that plan (spread over the epoch) | %.2f s |", later[3])
        log.info("| start to first training step: 400 utterances, this list, difference | %.1f s, %.1f s, "
                 "+%.1f s |", steps[0], steps[1], steps[1] - steps[0])
        log.info("| summed PSS, main + 4 workers, after batch 1 and batch %d | %.0f MB, %.0f MB |",
                 args.batches, memory[0], memory[1])
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
