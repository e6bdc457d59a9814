#!/usr/bin/env python3
"""Soak run: train for many epochs with evaluation after each one and watch the process for leaks.

    python3 benchmarks/soak.py                                  # the demo, 30 epochs of 1/4 of it
    python3 benchmarks/soak.py --epochs 60 -- --batch_size 50   # extra trainSpeakerNet options

The trainer runs in a subprocess (configs/demo.yaml, --test_interval 1, a fresh save path).
Each time it appends a line to metrics.jsonl (the end of an epoch and its evaluation) this
script samples, from /proc (Linux): the resident memory of the trainer and of its children,
its open file descriptors, and how many child processes (loader workers) it has. It prints one
row per epoch and a verdict: growth of RSS, descriptors and workers from the middle of the run
to its end (the first epochs fill caches; see baseline()).
"""
import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("soak")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Sample:
    epoch: int
    seconds: float
    rss_mib: float            # trainer + children
    main_rss_mib: float
    fds: int
    children: int


def child_pids(pid):
    """Direct children of `pid` (the loader workers of a trainer)."""
    children = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:            # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * PAGE_KIB / 1024
    except OSError:
        return 0.0


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def sample(pid, epoch, start):
    children = child_pids(pid)
    main = rss_mib(pid)
    return Sample(epoch, time.monotonic() - start, main + sum(rss_mib(c) for c in children), main,
                  open_fds(pid), len(children))


def watch(command, metrics_path, cwd=REPO, env=None, timeout=None, poll=0.2):
    """Run `command`; sample the process each time metrics_path gains a line. -> (code, samples)

    The trainer's output goes to a file beside metrics_path: a pipe nobody reads while it runs
    would fill up and stop the trainer at its next progress-bar update."""
    start = time.monotonic()
    output = metrics_path.parent.parent / (metrics_path.parent.name + ".soak.log")
    samples, seen = [], 0
    with open(output, "w", encoding="utf-8") as log_file:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log_file, stderr=log_file)
        while process.poll() is None:
            if timeout and time.monotonic() - start > timeout:
                process.kill()
                raise TimeoutError(f"soak run took longer than {timeout} s; see {output}")
            lines = metrics_path.read_text().count("\n") if metrics_path.exists() else 0
            if lines > seen:
                seen = lines
                samples.append(sample(process.pid, lines, start))
            time.sleep(poll)
    if process.returncode != 0:
        log.error("trainer exited with %d:\n%s", process.returncode, output.read_text()[-3000:])
    return process.returncode, samples


def baseline(samples):
    """The sample growth is measured from: the middle of the run. The first epochs legitimately
    grow: allocator pools fill, and matplotlib keeps the font files of each face it has drawn
    with (regular, display, oblique: one descriptor each) open in a bounded cache."""
    return samples[(len(samples) - 1) // 2]


def verdict(samples):
    """Growth from the middle of the run to its end: RSS (MiB), descriptors, workers. A sample
    is taken while the trainer runs on, so it may catch a file open for a moment (a checkpoint
    or a plot being written); the end's descriptors and workers are the fewer of the last two
    samples: a leak stays open in both, a file being written closes before the next."""
    base, last = baseline(samples), samples[-1]
    end_fds = min(s.fds for s in samples[-2:])
    end_children = min(s.children for s in samples[-2:])
    return {"rss_growth_mib": last.rss_mib - base.rss_mib, "fd_growth": end_fds - base.fds,
            "worker_growth": end_children - base.children}


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max_seg_per_spk", type=int, default=6,
                        help="utterances per speaker and epoch (6 of 24: short epochs)")
    parser.add_argument("extra", nargs="*", help="more trainSpeakerNet.py options, after --")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak_") as tmp:
        save_path = Path(tmp) / "run"
        command = [sys.executable, str(REPO / "trainSpeakerNet.py"), "--config", args.config,
                   "--max_epoch", str(args.epochs), "--test_interval", "1",
                   "--max_seg_per_spk", str(args.max_seg_per_spk), "--keep_last", "2",
                   "--save_path", str(save_path), *args.extra]
        log.info("%s", " ".join(command))
        code, samples = watch(command, save_path / "metrics.jsonl")
    rows = [f"{'epoch':>5} {'time s':>7} {'RSS MiB':>8} {'trainer':>8} {'fds':>4} {'workers':>7}"]
    rows += [f"{s.epoch:5d} {s.seconds:7.0f} {s.rss_mib:8.1f} {s.main_rss_mib:8.1f} {s.fds:4d} "
             f"{s.children:7d}" for s in samples]
    log.info("samples after each epoch:\n%s", "\n".join(rows))
    if not samples:
        log.error("no epoch finished")
        return 1
    growth = verdict(samples)
    log.info(f"from epoch {baseline(samples).epoch} to {samples[-1].epoch}: RSS "
          f"{growth['rss_growth_mib']:+.1f} MiB, file descriptors {growth['fd_growth']:+d}, "
          f"worker processes {growth['worker_growth']:+d}")
    return code


if __name__ == "__main__":
    sys.exit(main())
