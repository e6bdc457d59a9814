#!/usr/bin/env python3
"""Run an ablation: variants of one config x seeds, each an ordinary training run, then one
table (markdown and CSV) and one figure with intervals and paired tests against the base.

    python3 ablate.py --config configs/demo.yaml --vary trainfunc=angleproto,softmaxproto --seeds 1,2,3
    python3 ablate.py --config X.yaml --variant "trainfunc=aamsoftmax margin=0.2" --variant "trainfunc=angleproto"
    python3 ablate.py --config X.yaml --vary margin=0.1,0.2 --vary scale=15,30 -- --max_epoch 4

`--vary` values make a grid (every combination); `--variant` gives the variants one by one
(a word without '=' is one more value of the list option before it: "cl_data=1:0.5 3:1.0").
The first variant is the base every other is compared with. Options after `--` go to every
run. With several GPUs the runs go one per device at a time (--devices, default every GPU).
Each run trains in save_path/<variant>/seed<S> as trainSpeakerNet.py would, so a stopped
ablation resumes where it stopped and finished runs are not run again; a run that fails is
marked in the table and the others go on. speakernet/eval/ablation.py computes the table.
"""
import argparse
import concurrent.futures
import difflib
import itertools
import logging
import os
import queue
import re
import subprocess
import sys
import time
from pathlib import Path

from speakernet.eval import ablation
from speakernet.core.errors import UserError
from speakernet.run.options import COMPONENT_OPTIONS, parse_options
from speakernet.core.option_types import option_argv

log = logging.getLogger("ablate")
TRAINER = Path(__file__).resolve().parent / "trainSpeakerNet.py"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the base YAML file of every run")
    p.add_argument("--vary", action="append", default=[], metavar="OPTION=V1,V2",
                   help="an option and its values; several --vary make a grid")
    p.add_argument("--variant", action="append", default=[], metavar="'OPTION=V OPTION=V'",
                   help="one variant as option=value pairs (instead of --vary)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated --seed values of every variant")
    p.add_argument("--save_path", default="exps/ablation", help="folder of the runs and the table")
    p.add_argument("--p_target", type=float, default=0.05, help="the minDCF prior in the table")
    p.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates of intervals and tests")
    p.add_argument("--devices", default="auto", help="CUDA indices to run on, one run per device at a "
                   "time (e.g. 0,1); auto: every GPU when there are several, else one run at a time")
    p.add_argument("--dry_run", action="store_true", help="list the runs and exit")
    p.add_argument("--report", action="store_true", help="write the table of the runs finished so far "
                   "and train nothing (another ablation may still be running them)")
    return p


def parse_assignments(text, origin):
    """'a=1 b=2 3' -> [('a', '1'), ('b', '2 3')]: a word without '=' is one more value of the
    option before it (a list option such as cl_data=1:0.5 3:1.0)."""
    pairs = []
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep and pairs:
            pairs[-1] = (pairs[-1][0], f"{pairs[-1][1]} {item}")
            continue
        if not sep or not key or not value:
            raise UserError(f"{origin} {text!r}: expected OPTION=VALUE items, got {item!r}")
        pairs.append((key.lstrip("-"), value))
    return pairs


def variants_of(args):
    """[(name, [(option, value)])], the base first."""
    if args.vary and args.variant:
        raise UserError("give either --vary (a grid) or --variant (a list), not both")
    if args.variant:
        return [(_name(pairs), pairs) for pairs in (parse_assignments(v, "--variant") for v in args.variant)]
    axes = []
    for text in args.vary:
        (key, values), = parse_assignments(text, "--vary")
        choices = [v for v in values.split(",") if v]
        if len(set(choices)) != len(choices):
            raise UserError(f"--vary {text}: a value is repeated")
        axes.append([(key, v) for v in choices])
    if not axes:
        raise UserError("nothing to compare: give --vary OPTION=V1,V2 or two --variant")
    return [(_name(list(combo)), list(combo)) for combo in itertools.product(*axes)]


def _name(pairs):
    return ",".join(f"{k}={v}" for k, v in pairs) or "base"


def seeds_of(text):
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: give whole numbers separated by commas, e.g. 1,2,3") from None
    if not seeds:
        raise UserError("--seeds is empty; give e.g. 1,2,3")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UserError(f"--seeds {text}: {', '.join(map(str, repeated))} repeated (each seed runs once)")
    return seeds


def folder_of(name):
    return re.sub(r"[^A-Za-z0-9_.,=-]+", "_", name)


def run_argv(args, extra, pairs, seed, save):
    argv = ["--config", args.config]
    for key, value in pairs:
        first, *more = value.split()
        argv += option_argv(key, first) + more   # key=true / key=false set a flag
    return argv + list(extra) + ["--seed", str(seed), "--save_path", str(save)]


def plan(args, extra):
    """[(variant, seed, save_path, argv, max_epoch)], every run's options checked first."""
    runs = []
    seeds = seeds_of(args.seeds)
    variants = variants_of(args)
    # The options after '--' may belong to a component that only the variants choose (dino_*
    # with trainfunc=dino), so the option names are those of the components the first variant chooses.
    base_name, base_pairs = variants[0]
    choices = [(key, value) for key, value in base_pairs if key in COMPONENT_OPTIONS]
    base_options = set(vars(_parsed(run_argv(args, extra, choices, seeds[0], args.save_path), base_name)))
    for name, pairs in variants:
        changes_components = any(key in COMPONENT_OPTIONS for key, _ in pairs)
        for key, _ in pairs:
            if key not in base_options and not changes_components:
                hint = difflib.get_close_matches(key, sorted(base_options), n=1)
                raise UserError(f"variant {name}: no option '{key}'" + (f"; did you mean '{hint[0]}'?" if hint else ""))
        for seed in seeds:
            save = Path(args.save_path) / folder_of(name) / f"seed{seed}"
            argv = run_argv(args, extra, pairs, seed, save)
            options = _parsed(argv, name)
            unknown = [k for k, _ in pairs if k not in vars(options)]
            if unknown:
                raise UserError(f"variant {name}: no option {', '.join(unknown)}")
            runs.append((name, seed, save, argv, options.max_epoch))
    return runs


def _parsed(argv, name):
    """The trainer's options of one run, or a UserError naming the variant."""
    try:
        return parse_options(argv)
    except SystemExit:          # argparse has printed why (an unknown option, say)
        raise UserError(f"variant {name}: the trainer refuses its options (see above)") from None
    except UserError as err:
        raise UserError(f"variant {name}: {err}") from None


def finished(save, max_epoch):
    return (save / "result" / f"results_epoch{max_epoch:04d}.json").is_file()


def train(argv, device=None):
    """One run as its own process (a crash or a bad input ends that run only) -> exit status;
    `device` (a CUDA index) is the only GPU the run sees."""
    env = None if device is None else {**os.environ, "CUDA_VISIBLE_DEVICES": str(device)}
    return subprocess.run([sys.executable, str(TRAINER), *argv], env=env).returncode


def devices_of(text):
    """--devices -> CUDA indices to run on, one run per device at a time ([None]: one run at a
    time on the device each run chooses). auto: every GPU when there are several."""
    if text == "auto":
        import torch
        count = torch.cuda.device_count()
        return list(range(count)) if count > 1 else [None]
    items = [d.strip() for d in text.split(",") if d.strip()]
    if not items or not all(d.isdigit() for d in items):
        raise UserError(f"--devices {text!r}: give CUDA indices separated by commas (e.g. 0,1) or auto")
    if len(set(items)) != len(items):
        raise UserError(f"--devices {text}: a device is repeated")
    return [int(d) for d in items]


def run_all(runs, devices=(None,), train_missing=True):
    """{variant: {seed: RunScores or why not}}, running what is not finished yet (unless not
    `train_missing`), one run per device at a time; the results are collected in the plan's order."""
    free = queue.Queue()
    for device in devices:
        free.put(device)

    def run_one(number, name, seed, save, argv, max_epoch):
        label = f"[{number}/{len(runs)}] {name}, seed {seed}"
        if finished(save, max_epoch):
            log.info("%s: finished earlier, in %s", label, save)
        elif not train_missing:
            return ablation.NOT_FINISHED
        else:
            device = free.get()
            try:
                log.info("%s: training in %s%s", label, save, "" if device is None else f" on cuda:{device}")
                code = train(argv) if device is None else train(argv, device)
            finally:
                free.put(device)
            if code != 0:
                log.error("%s: the run failed with exit status %d (its log: %s); going on", label, code,
                          save / "train.log")
                return f"exit status {code}"
        try:
            return ablation.read_run_scores(save)
        except UserError as err:
            return str(err)

    numbered = list(enumerate(runs, start=1))
    if len(devices) == 1:
        outcomes = [run_one(number, *run) for number, run in numbered]
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(devices)) as pool:
            outcomes = list(pool.map(lambda item: run_one(item[0], *item[1]), numbered))
    results = {}
    for (name, seed, *_), outcome in zip(runs, outcomes):
        results.setdefault(name, {})[seed] = outcome
    return results


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    argv = sys.argv[1:] if argv is None else list(argv)
    ours, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(ours)
    started = time.monotonic()
    try:
        if args.replicates < 10:
            raise UserError(f"--replicates must be at least 10, got {args.replicates}")
        runs = plan(args, extra)
        devices = devices_of(args.devices)
        if args.dry_run:
            for name, seed, save, run, _ in runs:
                log.info("%s, seed %d: trainSpeakerNet.py %s", name, seed, " ".join(run))
            return 0
        results = run_all(runs, devices, train_missing=not args.report)
        rows = ablation.summarise(results, args.p_target, args.replicates)
        paths = ablation.write_outputs(rows, args.save_path, args.p_target, title=f"ablation of {args.config}")
    except UserError as err:
        log.error("%s", err)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; finished runs are kept: run the same command to go on")
        return 130
    log.info("\n%s", ablation.markdown_table(rows, args.p_target))
    log.info("%d runs in %.1f min; wrote %s", len(runs), (time.monotonic() - started) / 60,
             ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
