#! /usr/bin/python
# -*- encoding: utf-8 -*-
"""Time the evaluation path: extraction, scoring, AS-norm, metrics, outputs.

Usage:
    python benchmarks/bench_eval.py [--files 24] [--seconds 6] [--repeats 5]
                                    [--skip-extract] [--threads 0] [--whole-files N]

1. Extraction with Fast ResNet-34 (models/ResNetSE34L, nOut 512, log input) under the
   10x10 protocol's crops (10 crops of eval_frames 400 = 4 s) of synthetic random audio
   written to a temporary folder: files/s with batch_files 2 and 20 (Trainer.extract's CPU
   and GPU defaults), and
   the reference's per-file loop (whole float64 read, one pass per file) on the same model.
   Whole files (eval_frames 0) of 1-20 s: files/s one per forward pass (batch_files 1) and in
   padded length buckets of 2, 4, 8 and 20 files (models/_padded.py), the same model and files.
2. Scoring 37,720 random trials over 4,874 files (VoxCeleb1-O's size) from random crop
   embeddings: score_trials from crops, and from the file embeddings evaluation.py keeps.
3. AS-norm of those trials against 5,994 cohort speakers (VoxCeleb2's), top 300.
4. compute_metrics (EER, minDCF at 0.05 and 0.01, FRR@FAR=1%, FAR@FRR=1%) on a million
   random trials, and EER + one minDCF for comparison.
5. evaluate_lists end to end on the VoxCeleb1-O-sized set, writing scores, PNGs and JSON.
Times are the best of --repeats runs (least disturbed by other load on the machine).
"""
import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from speakernet.eval import evaluation as ev  # noqa: E402
from speakernet.eval import score_norm  # noqa: E402
from speakernet.eval.trial_sets import TrialList, TrialSet  # noqa: E402
from models.ResNetSE34L import MainModel  # noqa: E402
from speakernet.eval.scoring import pair_scores, score_trials  # noqa: E402
from SpeakerNet import SpeakerNet, Trainer  # noqa: E402
from tuneThreshold import compute_eer, compute_min_dcf  # noqa: E402
from bench_metrics import best_time  # noqa: E402  (this folder is on the path when run)

# The figures go to stdout through their own logger; the project's modules log warnings only.
report = logging.getLogger("bench_eval")

VOX1_O_FILES, VOX1_O_TRIALS, VOX2_SPEAKERS, DIM = 4874, 37720, 5994, 512


def reference_style_extract(encoder, files, root, eval_frames=400, num_eval=10):
    """The reference's evaluation loop, for comparison: per file, read it whole as float64,
    cut num_eval evenly spaced crops (wrap-padding short files), one forward pass per file."""
    length = eval_frames * 160 + 240
    out = []
    with torch.no_grad():
        for name in files:
            audio, _ = soundfile.read(Path(root) / name)
            if audio.shape[0] <= length:
                audio = np.pad(audio, (0, length - audio.shape[0] + 1), "wrap")
            starts = np.linspace(0, audio.shape[0] - length, num=num_eval)
            crops = np.stack([audio[int(s):int(s) + length] for s in starts]).astype(np.float32)
            out.append(encoder(torch.from_numpy(crops)))
    return out


def bench_extraction(n_files, seconds, repeats):
    model = SpeakerNet(MainModel(nOut=512, log_input=True), torch.nn.Identity())
    trainer = Trainer(model, None, None, None, torch.device("cpu"), is_main=False)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        files = []
        for i in range(n_files):
            name = f"id{i:05d}/clip/00001.wav"
            (Path(root) / name).parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(Path(root) / name, 0.1 * rng.standard_normal(int(seconds * 16000)), 16000)
            files.append(name)
        lengths = np.full(n_files, int(seconds * 16000))
        trainer.extract(files[:2], lengths[:2], root, 400, 10, 0, batch_files=2)   # warm-up
        settings = {
            "ours, batch_files 2": lambda: trainer.extract(files, lengths, root, 400, 10, 0,
                                                           batch_files=2),
            "ours, batch_files 20": lambda: trainer.extract(files, lengths, root, 400, 10, 0,
                                                            batch_files=20),
            "reference-style loop": lambda: reference_style_extract(model.encoder, files, root),
        }
        # The settings alternate, so that changing load on the machine hits all alike.
        best = dict.fromkeys(settings, float("inf"))
        for _ in range(repeats):
            for name, run in settings.items():
                best[name] = min(best[name], best_time(run, 1))
        rates = {name: n_files / took for name, took in best.items()}
        for name, took in best.items():
            report.info(f"extract, {name:21s}: {rates[name]:6.2f} files/s "
                  f"({10 * rates[name]:.0f} crops of 4 s/s; {n_files} files in {took:.2f} s)")
    ours, reference = rates["ours, batch_files 2"], rates["reference-style loop"]
    report.info(f"  20 files per pass (the GPU default) against 2 (the CPU default): "
          f"x{rates['ours, batch_files 20'] / ours:.2f}; the CPU default against the reference-style "
          f"loop x{ours / reference:.2f}; VoxCeleb1-O "
          f"({VOX1_O_FILES} files) would take {VOX1_O_FILES / ours / 60:.1f} min here, "
          f"a 5-utterance cohort of {VOX2_SPEAKERS} speakers {5 * VOX2_SPEAKERS / ours / 60:.1f} min")


def write_random_files(root, seconds, seed=0):
    rng = np.random.default_rng(seed)
    files = []
    for i, length in enumerate(seconds):
        name = f"id{i:05d}/clip/00001.wav"
        (Path(root) / name).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(Path(root) / name, 0.1 * rng.standard_normal(int(length * 16000)), 16000)
        files.append(name)
    return files, np.array([int(s * 16000) for s in seconds])


def bench_whole_files(n_files, repeats, device="cpu"):
    """Whole-file embeddings of 1-20 s files: one per pass against padded length buckets."""
    model = SpeakerNet(MainModel(nOut=512, log_input=True), torch.nn.Identity()).to(device)
    trainer = Trainer(model, None, None, None, torch.device(device), is_main=False)
    seconds = np.random.default_rng(1).uniform(1.0, 20.0, n_files)
    with tempfile.TemporaryDirectory() as root:
        files, lengths = write_random_files(root, seconds)
        settings = {f"batch_files {b}": (lambda b=b: trainer.extract(files, lengths, root, 0, 1, 0, batch_files=b))
                    for b in (1, 2, 4, 8, 20)}
        first = trainer.extract(files, lengths, root, 0, 1, 0, batch_files=1)
        last = trainer.extract(files, lengths, root, 0, 1, 0, batch_files=20)
        cosine = torch.nn.functional.cosine_similarity(first[:, 0], last[:, 0]).min().item()
        best = dict.fromkeys(settings, float("inf"))
        for _ in range(repeats):                # interleaved, as above
            for name, run in settings.items():
                best[name] = min(best[name], best_time(run, 1))
    audio = seconds.sum()
    for name, took in best.items():
        report.info(f"whole files (1-20 s, {audio:.0f} s of audio), {name:14s}: {n_files / took:6.2f} files/s "
                    f"(x{best['batch_files 1'] / took:.2f} the one-at-a-time rate)")
    report.info(f"  lowest cosine between one-at-a-time and batched embeddings: {cosine:.7f}")


def vox1_o_like(seed=0):
    gen = torch.Generator().manual_seed(seed)
    crops = torch.randn(VOX1_O_FILES, 10, DIM, generator=gen)
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, VOX1_O_FILES, size=(VOX1_O_TRIALS, 2))
    labels = (rng.random(VOX1_O_TRIALS) < 0.5).astype(np.int64)
    return crops, pairs, labels


def bench_scoring(repeats):
    crops, pairs, labels = vox1_o_like()
    took = best_time(lambda: score_trials(crops, pairs), repeats)
    report.info(f"score_trials from crops ({VOX1_O_FILES} x 10 x {DIM}): {1000 * took:.1f} ms "
          f"({VOX1_O_TRIALS / took:,.0f} trials/s)")
    means = ev.file_embeddings(crops)
    # Tens of milliseconds: many repeats, so that other load on the machine shows less.
    took = best_time(lambda: pair_scores(means, pairs, True), 4 * repeats)
    report.info(f"scoring from file embeddings (evaluate_lists): {1000 * took:.1f} ms "
          f"({VOX1_O_TRIALS / took:,.0f} trials/s); the crop mean itself "
          f"{1000 * best_time(lambda: ev.file_embeddings(crops), repeats):.1f} ms")
    cohort = torch.randn(VOX2_SPEAKERS, DIM, generator=torch.Generator().manual_seed(1))
    scores = pair_scores(means, pairs, True)
    took = best_time(lambda: score_norm.as_norm(scores, pairs, means, cohort, 300), repeats)
    report.info(f"AS-norm, {VOX1_O_FILES} files x {VOX2_SPEAKERS} cohort speakers, top 300: "
          f"{1000 * took:.0f} ms")
    return crops, pairs, labels, cohort


def bench_metrics(repeats):
    rng = np.random.default_rng(0)
    n = 1_000_000
    labels = (rng.random(n) < 0.5).astype(np.int64)
    scores = rng.normal(size=n) + 1.5 * labels
    took = best_time(lambda: ev.compute_metrics(scores, labels, (0.05, 0.01)), repeats)
    report.info(f"compute_metrics, 1M trials (EER, 2 minDCF, FRR@FAR, FAR@FRR): {took:.3f} s")
    took = best_time(lambda: (compute_eer(scores, labels), compute_min_dcf(scores, labels, 0.05)),
                     repeats)
    report.info(f"compute_eer + compute_min_dcf(0.05), 1M trials: {took:.3f} s")


def bench_outputs(crops, pairs, labels, cohort):
    files = [f"id{i // 10:05d}/clip/{i:05d}.wav" for i in range(VOX1_O_FILES)]
    trial_set = TrialSet(paths=["vox1_O.txt"], names=["vox1_O"], files=files,
                            lengths=np.zeros(VOX1_O_FILES, dtype=np.int64),
                            lists=[TrialList(labels=labels, pairs=pairs, files=files,
                                             lengths=np.zeros(VOX1_O_FILES, dtype=np.int64))])
    settings = ev.EvalSettings(asnorm_top_n=300)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        ev.evaluate_lists(crops, trial_set, settings, cohort=cohort, out_dir=out, tag="bench")
        took = time.perf_counter() - start
        written = sorted(p.name for p in Path(out).iterdir())
    report.info(f"evaluate_lists with AS-norm and outputs ({len(written)} files: 2 score files, DET, "
          f"histogram, JSON): {took:.2f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=24, help="synthetic files to embed")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each file")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-extract", action="store_true", help="skip the model part")
    parser.add_argument("--whole-files", type=int, default=0,
                        help="only time whole-file extraction of this many 1-20 s files")
    parser.add_argument("--device", default="cpu", help="for --whole-files: cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    report.addHandler(handler)
    report.setLevel(logging.INFO)
    report.propagate = False
    if args.threads:
        torch.set_num_threads(args.threads)
    report.info(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}")
    if args.whole_files:
        bench_whole_files(args.whole_files, max(1, min(args.repeats, 3)), args.device)
        return
    if not args.skip_extract:
        bench_extraction(args.files, args.seconds, max(1, min(args.repeats, 3)))
    data = bench_scoring(args.repeats)
    bench_metrics(args.repeats)
    bench_outputs(*data)


if __name__ == "__main__":
    main()
