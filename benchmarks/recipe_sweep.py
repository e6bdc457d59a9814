#!/usr/bin/env python3
"""The current recipes on the demo corpus, each trained for the same wall-clock budget.

    python3 benchmarks/recipe_sweep.py                         # 4 minutes per run
    python3 benchmarks/recipe_sweep.py --budget 180 --out exps/recipe_sweep_3min

Runs (configs/demo.yaml for data, evaluation and the rest, plus the overrides below), each a
subprocess `trainSpeakerNet.py` with OMP_NUM_THREADS=1:
  a  demo.yaml as is: Fast ResNet-34 (ResNetSE34L) + softmaxproto, Adam, steplr;
  b  wespeaker ResNet-34 at half width (--resnet_channels 16; 80 mels, TSTP, 256-d) + AAM-softmax
     (scale 32, margin 0 -> 0.2 warm-up) + SGD with scheduler/warmup_exp.py (exp), the recipe of
     configs/ResNet34_wespeaker_AAM.yaml;
  c  CAM++ + AAM-softmax (margin warm-up) + SGD with warmup_exp (cosine), the recipe of
     configs/CAMPPlus_3dspeaker_AAM.yaml;
  d  large-margin fine-tuning (configs/ResNet34_wespeaker_LM.yaml's recipe) of b's last
     checkpoint for one epoch: margin 0.5, crops 3x b's (the recipe's 600 vs 200 frames).

The budget. A recipe's schedules (warm-up, margin warm-up, decay) are given in epochs of a
150- or 60-epoch run, so a run cut short would never decay its learning rate. Each run is
therefore planned to end within the budget: from the training speed measured for it on this
2-core machine (SPEED, crops per second; --speed NAME=VALUE overrides), 85% of the budget
gives the crops it can train; --max_seg_per_spk and --max_epoch are chosen so that about
TARGET_EPOCHS epochs fit, and the recipe's schedule is compressed to those epochs (warm-up
and margin epochs in proportion). d plans one epoch in half the budget (wespeaker's LM stage
is 5 epochs after 150). The budget is also enforced: a run still training when it is over
gets SIGINT (the trainer stops cleanly, exit 130, keeping its last checkpoint; mid-epoch
checkpoints are written every 30 s), and its newest checkpoint is evaluated with --eval.
The final evaluation is not counted in the budget.

Learning rates follow each toolkit's scaling rule for the batch used here (32 groups):
wespeaker's lr is per 64 utterances (scale_ratio = processes x batch / 64), 3D-Speaker's is
for its batch of 256. Evaluation: demo.yaml's 1.5 s crops, but --num_eval crops per file
(default 2 instead of demo.yaml's 10: with 10 the four evaluations alone take about 10 minutes
here, CAM++ 4.5 of them).

Output: a table of epochs done, training seconds, final loss and test EER / minDCF (read from
save_path/result/results_*.json) in the log and in OUT/results.md.
"""
import argparse
import json
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("recipe_sweep")

# Training crops per second of each run, OMP_NUM_THREADS=1, on the shared 2-core CPU this was
# written on (one epoch of each, with two other users' jobs running).
SPEED = {"a": 55.0, "b": 14.0, "c": 10.0, "d": 4.7}
TARGET_EPOCHS = {"a": 4, "b": 4, "c": 4, "d": 1}
BUDGET_SHARE = {"a": 0.85, "b": 0.85, "c": 0.85, "d": 0.5}
BATCH = 32                    # groups per batch of the AAM runs (a keeps demo.yaml's 25 x 2)
SPEAKERS = 200                # training speakers of the demo corpus
RESNET = ["--model", "ResNet", "--resnet_depth", "34", "--resnet_channels", "16",
          "--encoder_type", "TSTP", "--nOut", "256", "--n_mels", "80"]
AAM = ["--trainfunc", "aamsoftmax", "--nPerSpeaker", "1", "--batch_size", str(BATCH),
       "--scale", "32", "--optimizer", "sgd", "--weight_decay", "1e-4",
       "--scheduler", "warmup_exp"]


def plan(name, budget, speed, views):
    """(utterances per speaker per epoch, epochs) that fit `budget` seconds at `speed`."""
    crops = BUDGET_SHARE[name] * budget * speed
    per_speaker = crops / (SPEAKERS * TARGET_EPOCHS[name])
    seg = max(views, int(round(per_speaker / views)) * views)
    if name == "d":
        return seg, 1
    return seg, max(1, int(crops // (SPEAKERS * seg)))


def margin_warm_up(epochs, hold, ramp, total):
    """The recipe's margin warm-up (hold epochs at 0, ramp epochs up) compressed to `epochs`."""
    return (["--aam_initial_margin", "0", "--margin", "0.2",
             "--aam_curriculum_epochs", str(max(1, round(hold / total * epochs)) if epochs > 1 else 0),
             "--aam_ramp_epochs", str(max(1, round(ramp / total * epochs)))])


def run_args(name, seg, epochs, initial_model=None):
    """Overrides of demo.yaml for run `name`."""
    schedule = ["--max_seg_per_spk", str(seg), "--max_epoch", str(epochs), "--test_interval", str(epochs)]
    if name == "a":
        return schedule
    if name == "b":          # wespeaker resnet.yaml: 150 epochs, margin 0 (19) -> 0.2 (40), warm-up 6
        return [*RESNET, *AAM, *schedule, *margin_warm_up(epochs, 20, 20, 150),
                "--lr", f"{0.1 * BATCH / 64:g}", "--final_lr", f"{5e-5 * BATCH / 64:g}",
                "--warmup_decay", "exp", "--warmup_epochs", f"{6 / 150 * epochs:g}"]
    if name == "c":          # 3D-Speaker cam++.yaml: 60 epochs, margin 0 (15) -> 0.2 (25), warm-up 5
        return ["--model", "CAMPPlus", "--encoder_type", "TSTP", "--nOut", "512", "--n_mels", "80",
                *AAM, *schedule, *margin_warm_up(epochs, 15, 10, 60),
                "--lr", f"{0.1 * BATCH / 256:g}", "--final_lr", f"{1e-4 * BATCH / 256:g}",
                "--warmup_decay", "cosine", "--warmup_epochs", f"{5 / 60 * epochs:g}"]
    if name == "d":          # wespeaker resnet_lm.yaml: 5 epochs, margin 0.5, 600 frames, warm-up 1
        return [*RESNET, *AAM, *schedule, "--margin", "0.5", "--max_frames", "300",
                "--lr", f"{1e-4 * BATCH / 64:g}", "--final_lr", f"{2.5e-5 * BATCH / 64:g}",
                "--warmup_decay", "exp", "--warmup_epochs", f"{1 / 5 * epochs:g}",
                "--initial_model", str(initial_model)]
    raise ValueError(name)


LABELS = {"a": "a ResNetSE34L + softmaxproto (demo.yaml)",
          "b": "b ResNet34-c16 + AAM, margin warm-up, warmup_exp",
          "c": "c CAM++ + AAM, margin warm-up, warmup cosine",
          "d": "d LM fine-tuning of b (1 epoch, margin 0.5)"}


def ensure_demo_data(data):
    if (data / "train_list.txt").exists() and (data / "test_list.txt").exists():
        return
    log.info("writing the demo corpus to %s (once; it is shared, never deleted here)", data)
    subprocess.run([sys.executable, str(REPO / "data_prep.py"), "--synthetic", "--save_path", str(data)],
                   cwd=REPO, check=True)


def epoch_line_seen(train_log, epoch):
    try:
        text = train_log.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return False
    return f"epoch {epoch}: loss" in text


def train_within(command, save_path, epochs, budget, eval_timeout, env, log_file):
    """Run `command`; SIGINT when still training after `budget` s -> (exit code, train s, stopped)."""
    start = time.monotonic()
    with open(log_file, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        trained, stopped = None, False
        while process.poll() is None:
            time.sleep(1.0)
            elapsed = time.monotonic() - start
            if trained is None and epoch_line_seen(save_path / "train.log", epochs):
                trained = elapsed                     # the last epoch is done; evaluation runs
            if trained is None and elapsed > budget:
                log.info("budget of %.0f s reached while training: SIGINT", budget)
                process.send_signal(signal.SIGINT)
                stopped, trained = True, elapsed
                process.wait()
            elif trained is not None and elapsed > trained + eval_timeout:
                log.warning("evaluation still running after %.0f s: SIGINT", eval_timeout)
                process.send_signal(signal.SIGINT)
                process.wait()
        if trained is None:
            trained = time.monotonic() - start
    return process.returncode, trained, stopped


def newest_checkpoint(save_path):
    from speakernet.run import resume
    point = resume.find_resume_point(save_path / "model")
    return (point.path, point.state) if point else (None, None)


def read_result(save_path):
    """(EER %, {p_target: minDCF}) of the newest results_*.json in save_path/result."""
    files = sorted((save_path / "result").glob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None, {}
    report = json.loads(files[-1].read_text())
    raw = next(iter(report["lists"].values()))["metrics"]["raw"]
    return raw["eer"], {p: v["value"] for p, v in raw["min_dcf"].items()}


def read_epochs(save_path):
    """(completed epochs, last training loss) from metrics.jsonl."""
    metrics = save_path / "metrics.jsonl"
    if not metrics.exists():
        return 0, None
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    records = [r for r in records if "loss" in r]
    if not records:
        return 0, None
    return max(r["epoch"] for r in records), records[-1]["loss"]


def run_one(name, args, common, out, budget, eval_timeout, env, python):
    save_path = out / name
    command = [python, str(REPO / "trainSpeakerNet.py"), *common, *args, "--save_path", str(save_path)]
    log.info("%s: %s", name, shlex.join(command))
    epochs = int(args[args.index("--max_epoch") + 1])
    code, trained, stopped = train_within(command, save_path, epochs, budget, eval_timeout, env,
                                          out / f"{name}.log")
    done, loss = read_epochs(save_path)
    path, state = newest_checkpoint(save_path)
    partial = ""
    if state is not None and "batch" in state:
        partial = f" + {state['batch']} batches"
    eval_seconds = None
    if stopped or code != 0:
        log.info("%s: exit %d after %.0f s of training; evaluating its newest checkpoint %s",
                 name, code, trained, path)
        if path is None:
            return dict(name=name, error=f"exit {code}, no checkpoint", seconds=trained)
        start = time.monotonic()
        subprocess.run([python, str(REPO / "trainSpeakerNet.py"), *common, *args, "--eval",
                        "--initial_model", str(path), "--save_path", str(save_path)],
                       stdout=open(out / f"{name}.eval.log", "w"), stderr=subprocess.STDOUT,
                       cwd=REPO, env=env, check=False)
        eval_seconds = time.monotonic() - start
    eer, dcf = read_result(save_path)
    if eer is None:
        return dict(name=name, error=f"exit {code}, no result (see {out / (name + '.log')})",
                    seconds=trained)
    return dict(name=name, epochs=f"{done}{partial} of {epochs}", seconds=trained, loss=loss,
                eer=eer, dcf=dcf, stopped=stopped, eval_seconds=eval_seconds, checkpoint=path)


def table(rows):
    keys = sorted({p for r in rows for p in r.get("dcf", {})}, reverse=True)
    head = ["run", "epochs done", "train s", "last loss", "EER %", *[f"minDCF({p})" for p in keys]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {LABELS[r['name']]} | {r['error']} |" + " |" * (len(head) - 2))
            continue
        cells = [LABELS[r["name"]], r["epochs"] + (" (SIGINT)" if r["stopped"] else ""),
                 f"{r['seconds']:.0f}", f"{r['loss']:.3f}" if r["loss"] is not None else "",
                 f"{r['eer']:.2f}", *[f"{r['dcf'].get(p, math.nan):.3f}" for p in keys]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=240.0,
                        help="wall-clock seconds of training per run (default 4 minutes)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/demo_data"),
                        help="demo corpus (written by data_prep.py --synthetic if absent)")
    parser.add_argument("--out", type=Path, default=REPO / "exps" / "recipe_sweep",
                        help="a new folder for the runs, their logs and results.md")
    parser.add_argument("--num_eval", type=int, default=2,
                        help="evaluation crops per file (demo.yaml: 10; see the module docstring)")
    parser.add_argument("--eval_timeout", type=float, default=600.0,
                        help="seconds a final evaluation may take before it is interrupted")
    parser.add_argument("--speed", action="append", default=[], metavar="RUN=CROPS_PER_S",
                        help="training speed of a run on this machine (e.g. b=20), for planning")
    parser.add_argument("--only", default="abcd", help="runs to do, e.g. 'ab' (d needs b)")
    args = parser.parse_args(argv)

    speed = dict(SPEED)
    for item in args.speed:
        key, _, value = item.partition("=")
        if key not in speed:
            parser.error(f"--speed {item}: the runs are {', '.join(speed)}")
        speed[key] = float(value)
    if "d" in args.only and "b" not in args.only and not (args.out / "b" / "model").exists():
        parser.error("run d fine-tunes b's checkpoint: include b")
    for name in args.only:
        if (args.out / name).exists():
            parser.error(f"{args.out / name} exists: give a new --out (runs are not resumed, so "
                         f"that every run gets exactly one budget)")
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    ensure_demo_data(data)
    common = ["--config", str(REPO / "configs" / "demo.yaml"),
              "--train_list", str(data / "train_list.txt"), "--train_path", str(data / "wav"),
              "--test_list", str(data / "test_list.txt"), "--test_path", str(data / "wav"),
              "--num_eval", str(args.num_eval), "--checkpoint_minutes", "0.5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    rows, b_model = [], None
    started = time.monotonic()
    for name in args.only:
        views = 2 if name == "a" else 1
        seg, epochs = plan(name, args.budget, speed[name], views)
        if name == "d":
            b_model = b_model or newest_checkpoint(args.out / "b")[0]
            if b_model is None:
                rows.append(dict(name="d", error="b left no checkpoint", seconds=0))
                continue
        log.info("%s: planned %d epochs of %d utterances per speaker (%.0f crops/s expected)",
                 name, epochs, seg, speed[name])
        row = run_one(name, run_args(name, seg, epochs, b_model), common, args.out, args.budget,
                      args.eval_timeout, env, sys.executable)
        if name == "b" and "checkpoint" in row:
            b_model = row["checkpoint"]
        rows.append(row)
        log.info("%s: %s", name, {k: v for k, v in row.items() if k != "checkpoint"})
    text = table(rows)
    minutes = (time.monotonic() - started) / 60
    (args.out / "results.md").write_text(
        f"Budget {args.budget:.0f} s per run, {args.num_eval} evaluation crops per file, "
        f"{minutes:.1f} minutes in all.\n\n{text}\n")
    log.info("results (%.1f minutes in all; %s):\n%s", minutes, args.out / "results.md", text)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
