#!/usr/bin/env python3
"""Train the demo once per variant and print a table of validation EER / minDCF.

    python3 benchmarks/demo_sweep.py --out exps/sweep_objectives --common "--max_epoch 4" \
        --run "softmax: --trainfunc softmax" --run "ge2e: --trainfunc ge2e --nPerSpeaker 3"
    python3 benchmarks/demo_sweep.py --preset objectives      # the sets used in docs/results.md
    python3 benchmarks/demo_sweep.py --preset encoders
    python3 benchmarks/demo_sweep.py --preset ssl

Each variant is `trainSpeakerNet.py --config CONFIG COMMON RUN --save_path OUT/NAME`, run in a
subprocess with its log in OUT/NAME.log. A variant whose metrics file already holds the final
epoch is not trained again (its figures are read back), so an interrupted sweep resumes where
it stopped and nothing finished is overwritten; a half-trained variant resumes from its last
checkpoint (the trainer does that by itself). The table goes to stdout and OUT/results.md.
"""
import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("demo_sweep")

# Demo-sized runs of 1-3 epochs (the demo itself trains 8), so that a whole set fits in about
# an hour of a 2-core CPU: every variant shares configs/demo.yaml and the overrides in
# "common"; a run adds only what its variant needs (nPerSpeaker where the objective demands it).
# The "ssl" preset's DINO demo settings with DINO's learning-rate schedule (warm-up, cosine).
DINO_DEMO = ("--trainfunc dino --dino_head_bn 1 --dino_local_views 0 --dino_global_frames 100 "
             "--dino_out_dim 256 --dino_teacher_momentum 0.99 --dino_teacher_temp 0.02 "
             "--dino_freeze_last_layer 0 --lr 0.0005 --scheduler warmup_exp --warmup_decay cosine "
             "--warmup_epochs 1 --final_lr 0.00001")

PRESETS = {
    "objectives": {
        # Two epochs over 16 of each speaker's 24 utterances.
        "common": "--max_epoch 2 --test_interval 2 --max_seg_per_spk 16",
        "runs": [
            "softmaxproto: --trainfunc softmaxproto",
            "softmax: --trainfunc softmax",
            "amsoftmax: --trainfunc amsoftmax",
            "aamsoftmax: --trainfunc aamsoftmax",
            "adacos: --trainfunc adacos",
            "circle: --trainfunc circle",
            "triplet: --trainfunc triplet",
            "proto: --trainfunc proto",
            "angleproto: --trainfunc angleproto",
            "ge2e: --trainfunc ge2e --nPerSpeaker 3",
            "acont: --trainfunc acont",
        ],
    },
    "encoders": {
        # Fewer epochs for the costlier encoders (MACs per 2 s: Thin ResNet-34 2.2x, ECAPA-TDNN
        # 2.3x, the H/ASP ResNet-34 8x Fast ResNet-34's); the H/ASP one also sees a third of
        # the utterances (8 per speaker).
        "common": "--max_epoch 3 --test_interval 3",
        "runs": [
            "ResNetSE34L: --model ResNetSE34L",
            "VGGVox: --model VGGVox",
            "ResNetSE34: --model ResNetSE34 --max_epoch 2 --test_interval 2",
            "ECAPA_TDNN: --model ECAPA_TDNN --encoder_type ASP --nOut 192 --max_epoch 1 "
            "--test_interval 1",
            "ResNetSE34V2: --model ResNetSE34V2 --max_epoch 1 --test_interval 1 "
            "--max_seg_per_spk 8",
        ],
    },
    "ssl": {
        # Labels are never read: a group is one utterance and its views are crops of it, each
        # augmented on its own; three epochs (every utterance once per epoch, two crops or more
        # each). "untrained" runs one epoch at learning rate 1e-12 over a tenth of the list, so
        # its encoder keeps its random weights but has batch-norm statistics of the data (a
        # stronger baseline than raw initial weights). MoCo: a queue sized to the 4,800-utterance
        # corpus (paper: 65,536 keys of a million utterances) and key-encoder momentum 0.99
        # (paper: 0.999, which over the demo's few hundred steps would leave the key encoder
        # almost at its random initial weights). DINO trains 8 epochs: it starts slowest
        # (41.05% after 3, 29.10% after 8). Its settings are the best of the demo settings
        # tried: batch norm in the head, no local crops, 1 s global crops, 256 prototypes,
        # teacher momentum 0.99 and temperature 0.02, no last-layer freeze, learning rate
        # 5e-4; the paper's settings
        # (2 + 5 crops, 65,536 prototypes, momentum 0.996) got 47.75% after one epoch.
        "common": "--max_epoch 3 --test_interval 3 --batch_size 50 --augment "
                  "--musan_path data/demo/musan --rir_path data/demo/rirs "
                  "--aug_probs 0 0.25 0.25 0.25 0.25",
        "runs": [
            "untrained: --trainfunc cel --lr 1e-12 --cl_data 1:0.1 --max_epoch 1 --test_interval 1",
            "cel_ap: --trainfunc cel --cel_similarity ap",
            "cel_acont: --trainfunc cel --cel_similarity acont",
            "moco: --trainfunc moco --moco_queue_size 1024 --moco_momentum 0.99",
            "dino: --trainfunc dino --dino_head_bn 1 --dino_local_views 0 --dino_global_frames 100 "
            "--dino_out_dim 256 --dino_teacher_momentum 0.99 --dino_teacher_temp 0.02 "
            "--dino_freeze_last_layer 0 --lr 0.0005 --max_epoch 8 --test_interval 1",
        ],
    },
    "ssl_budget": {
        # DINO with its stabilisers against CEL at equal CPU time, and DINO with a data
        # curriculum against DINO alone. About 80 s per CEL epoch and 105 s per DINO epoch on
        # a 2-core CPU, so 4 CEL epochs ~ 3 DINO epochs ~ 5.5 minutes (the short budget) and
        # twice that for the long one. CEL's step schedule does not depend on --max_epoch, so
        # its long run evaluated at epoch 4 is also its short run; DINO's teacher momentum and
        # learning rate follow --max_epoch, so each budget is its own run. DINO: the "ssl"
        # preset's settings, plus per-iteration teacher momentum and gradient clipping at 3.0
        # (the defaults now) and a linear warm-up of one epoch then cosine decay of the learning
        # rate per iteration (DINO's schedule). The curriculum (CL_D, Heo et al. 2023) uses half,
        # then three quarters, then all of the utterances; with less data per early epoch it
        # runs 4 epochs in the time of 3.
        "common": "--batch_size 50 --augment --musan_path data/demo/musan --rir_path data/demo/rirs "
                  "--aug_probs 0 0.25 0.25 0.25 0.25",
        "runs": [
            "cel_long: --trainfunc cel --cel_similarity acont --max_epoch 8 --test_interval 4",
            "dino_short: " + DINO_DEMO + " --max_epoch 3 --test_interval 3",
            "dino_long: " + DINO_DEMO + " --max_epoch 6 --test_interval 6",
            "dino_cl_short: " + DINO_DEMO + " --max_epoch 4 --test_interval 4 --cl_data 1:0.5 2:0.75 3:1.0",
            "dino_short_seed11: " + DINO_DEMO + " --max_epoch 3 --test_interval 3 --seed 11",
            "dino_cl_short_seed11: " + DINO_DEMO + " --max_epoch 4 --test_interval 4 --cl_data 1:0.5 2:0.75 "
            "3:1.0 --seed 11",
        ],
    },
}


def parse_run(text):
    name, _, args = text.partition(":")
    name = name.strip()
    if not name or any(c in name for c in "/ \\"):
        raise SystemExit(f"--run {text!r}: start with a name without spaces or slashes, "
                         "then a colon and the options, e.g. 'ge2e: --trainfunc ge2e'")
    return name, shlex.split(args)


def final_epoch(args):
    """The --max_epoch a run ends at: the last one given on its command line."""
    value = None
    for i, arg in enumerate(args[:-1]):
        if arg == "--max_epoch":
            value = int(args[i + 1])
    return value


def read_validations(save_path):
    metrics = save_path / "metrics.jsonl"
    if not metrics.exists():
        return []
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [r for r in records if any(k.startswith("val_eer") for k in r)]


def summarise(name, records, seconds):
    last = records[-1]
    eer = next(v for k, v in last.items() if k.startswith("val_eer/"))
    dcf = {k.split("@")[1].split("/")[0]: v for k, v in last.items()
           if k.startswith("val_min_dcf@")}
    return {"name": name, "epoch": last["epoch"], "eer": eer, "min_dcf": dcf,
            "loss": last.get("loss"), "utt_per_s": last.get("utt_per_s"), "seconds": seconds}


def run_variant(config, out, name, args, python):
    save_path = out / name
    records = read_validations(save_path)
    end = final_epoch(args)
    if records and end is not None and records[-1]["epoch"] >= end:
        log.info("%s: already done (epoch %d), reading its figures", name, records[-1]["epoch"])
        return summarise(name, records, None)
    command = [python, str(REPO / "trainSpeakerNet.py"), "--config", str(config), *args,
               "--save_path", str(save_path)]
    log.info("%s: %s", name, shlex.join(command))
    start = time.monotonic()
    with open(out / f"{name}.log", "a", encoding="utf-8") as handle:
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    seconds = time.monotonic() - start
    records = read_validations(save_path)
    if code != 0 or not records:
        log.error("%s: exit code %d, see %s", name, code, out / f"{name}.log")
        return {"name": name, "error": f"exit {code}", "seconds": seconds}
    return summarise(name, records, seconds)


def table(rows):
    dcf_keys = sorted({p for r in rows for p in r.get("min_dcf", {})}, reverse=True)
    head = ["variant", "epoch", "EER %", *[f"minDCF({p})" for p in dcf_keys], "train utt/s",
            "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['error']} |" + " |" * (len(head) - 2))
            continue
        cells = [r["name"], str(r["epoch"]), f"{r['eer']:.2f}",
                 *[f"{r['min_dcf'].get(p, float('nan')):.3f}" for p in dcf_keys],
                 f"{r['utt_per_s']:.0f}" if r.get("utt_per_s") else "",
                 f"{r['seconds']:.0f}" if r.get("seconds") else "(earlier)"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=REPO / "configs" / "demo.yaml", type=Path)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a predefined set of runs")
    parser.add_argument("--common", default=None,
                        help="options of every run (replaces the preset's)")
    parser.add_argument("--extra", default="",
                        help="options added to every run after the common ones, e.g. "
                             "'--nDataLoaderThread 1'")
    parser.add_argument("--run", action="append", default=[],
                        help="'NAME: OPTIONS' for one variant; repeat for more")
    parser.add_argument("--only", default=None, help="comma-separated names to run from the set")
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs and results.md")
    args = parser.parse_args(argv)

    preset = PRESETS.get(args.preset, {"common": "", "runs": []})
    common = shlex.split(preset["common"] if args.common is None else args.common)
    common += shlex.split(args.extra)
    runs = [parse_run(text) for text in preset["runs"] + args.run]
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {name for name, _ in runs}
        if unknown:
            parser.error(f"--only names {sorted(unknown)} that are not in the set")
        runs = [(n, a) for n, a in runs if n in wanted]
    if not runs:
        parser.error("nothing to run: give --preset or --run")
    out = args.out or REPO / "exps" / f"sweep_{args.preset or 'custom'}"
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    for name, extra in runs:
        rows.append(run_variant(args.config, out, name, common + extra, sys.executable))
        (out / "results.md").write_text(table(rows) + "\n")
    log.info("results:\n%s", table(rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
