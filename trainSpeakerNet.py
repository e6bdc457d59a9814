#!/usr/bin/env python3
"""Train a speaker-embedding network, or evaluate one with --eval.

    python trainSpeakerNet.py --config configs/ResNetSE34L_AP.yaml
    python trainSpeakerNet.py --eval --config configs/ResNetSE34L_AP.yaml --initial_model M

Every input is validated before any training time is spent or any file is written.
"""
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

import checkpoint
import plugins
from augment import Augmenter, planner_from_options
from DatasetLoader import (ListError, SpeakerBalancedSampler, TrainDataset, collate_views,
                           read_train_list, read_trial_list)
from errors import UserError
from options import OptionError, parse_options, save_options
from SpeakerNet import SpeakerNet, Trainer, objective_attr

log = logging.getLogger("trainSpeakerNet")


def resolve_device(name, local_rank=0):
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(options):
    kwargs = vars(options)
    encoder = plugins.factory("models", options.model)(**kwargs)
    objective = plugins.factory("loss", options.trainfunc)(**kwargs)
    return SpeakerNet(encoder, objective)


def views_per_group(options, objective):
    views = objective_attr(objective, "num_views", options.nPerSpeaker)
    needed = objective_attr(objective, "min_views", 1)
    if views < needed:
        raise OptionError(f"--trainfunc {options.trainfunc} needs at least {needed} utterances per "
                          f"speaker; set --nPerSpeaker {needed}")
    return views


def unique_path(path):
    """`path`, or `path` with a numbered suffix if it exists: results are never overwritten."""
    path = Path(path)
    counter = 1
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}.{counter}{path.suffix}")
        counter += 1
    return candidate


def write_scores(path, trials, result):
    """One line per trial: score, label (- when the list has none), the two files."""
    path = unique_path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for (a, b), label, score in zip(trials.pairs, trials.labels, result["scores"]):
            handle.write(f"{score:.6f} {label if label >= 0 else '-'} {trials.files[a]} {trials.files[b]}\n")
    tmp.replace(path)
    return path


def log_result(prefix, result, dcf_p_target):
    if result["trials"]:
        log.info("%s EER %.2f%%  minDCF(p=%.2g) %.4f  (%d trials, %.1f s)", prefix, result["eer"],
                 dcf_p_target, result["min_dcf"], result["trials"], result["seconds"])
    else:
        log.info("%s scored %d unlabelled trials (%.1f s)", prefix, len(result["scores"]), result["seconds"])


def prepare_save_path(save_path):
    """Create save_path's folders and prove they are writable before training starts."""
    save_path = Path(save_path)
    try:
        for sub in ("model", "result"):
            (save_path / sub).mkdir(parents=True, exist_ok=True)
        probe = save_path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as err:
        raise OptionError(f"--save_path {save_path} is not writable: {err.strerror}") from None
    return save_path


def add_log_file(path, is_main):
    """Also log to `path` until remove_log_file (one run's log never collects another's)."""
    if is_main:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.set_name("speakernet-run-log")
        logging.getLogger().addHandler(handler)


def remove_log_file():
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == "speakernet-run-log":
            root.removeHandler(handler)
            handler.close()


def init_distributed(options):
    """(rank, world_size, local_rank); initialises the process group under torchrun."""
    if not options.distributed:
        return 0, 1, 0
    if "RANK" not in os.environ:
        raise OptionError("--distributed needs torchrun (e.g. torchrun --nproc_per_node 2 trainSpeakerNet.py ...)")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if torch.cuda.is_available() and options.device != "cpu" else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), local_rank


def run(options):
    rank, world_size, local_rank = init_distributed(options)
    is_main = rank == 0
    device = resolve_device(options.device, local_rank)
    seed_everything(options.seed)
    model = build_model(options).to(device)
    dcf = {"p_target": options.dcf_p_target, "c_miss": options.dcf_c_miss, "c_fa": options.dcf_c_fa}
    workers = options.nDataLoaderThread

    if options.eval:
        trials = read_trial_list(options.test_list, options.test_path)
        source = options.initial_model or newest_checkpoint(options.save_path)
        checkpoint.load_weights(model, checkpoint.model_state(checkpoint.load_file(source), model), source)
        log.info("evaluating %s on %s (%d files)", source, options.test_list, len(trials.files))
        trainer = Trainer(model, None, None, None, device, options.mixedprec, is_main=is_main)
        result = trainer.evaluate(trials, options.test_path, options.eval_frames, options.num_eval, workers, dcf)
        if is_main:
            save_path = prepare_save_path(options.save_path)
            path = write_scores(save_path / "result" / "eval_scores.txt", trials, result)
            log_result("eval", result, options.dcf_p_target)
            log.info("scores written to %s", path)
        return result

    # Validate everything before any file is written or any step is taken.
    views = views_per_group(options, model.objective)
    uses_labels = objective_attr(model.objective, "uses_labels", True)
    train = read_train_list(options.train_list, options.train_path, need_labels=uses_labels)
    if uses_labels and len(train.speakers) > options.nClasses:
        raise OptionError(f"--nClasses {options.nClasses} is smaller than the {len(train.speakers)} "
                          f"speakers in {options.train_list}; set --nClasses {len(train.speakers)}")
    trials = read_trial_list(options.test_list, options.test_path)
    max_frames = options.max_frames
    view_frames = getattr(model.objective, "view_frames", None) or (lambda epoch, rng: (max_frames,) * views)
    planner = planner_from_options(options)
    sampler = SpeakerBalancedSampler(
        train.labels, options.batch_size, views, options.max_seg_per_spk, seed=options.seed,
        group_by_utterance=not uses_labels, view_frames=view_frames, rank=rank, world_size=world_size,
        augment_planner=planner, augment_fraction=getattr(model.objective, "augment_fraction", None),
        utterance_subset=getattr(model.objective, "utterance_subset", None))
    optimizer = plugins.factory("optimizer", options.optimizer)(model.parameters(), **vars(options))
    settings = {k: v for k, v in vars(options).items() if k != "optimizer"}
    scheduler, step_unit = plugins.factory("scheduler", options.scheduler)(optimizer, **settings)
    start_epoch, resume = 1, None
    found = checkpoint.list_checkpoints(Path(options.save_path) / "model")
    if found:
        resume = checkpoint.load_file(found[-1][1])
        if resume.get("format") != checkpoint.FORMAT:
            raise checkpoint.CheckpointError(f"{found[-1][1]} is not a resumable checkpoint of this project")
        checkpoint.load_weights(model, resume["model"], found[-1][1])
        start_epoch = resume["epoch"] + 1
    elif options.initial_model:
        state = checkpoint.model_state(checkpoint.load_file(options.initial_model), model)
        checkpoint.load_weights(model, state, options.initial_model)

    ddp_model = None
    if options.distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    trainer = Trainer(model, optimizer, scheduler, step_unit, device, options.mixedprec,
                      ddp_model=ddp_model, is_main=is_main, augment=Augmenter() if planner else None)
    if resume:
        trainer.load_state_dict(resume["trainer"])
        checkpoint.restore_rng(resume["rng"])
    save_path = prepare_save_path(options.save_path) if is_main else Path(options.save_path)
    if is_main:
        add_log_file(save_path / "train.log", is_main)
        save_options(options, unique_path(save_path / "options.yaml"))
        if resume:
            log.info("resuming from %s at epoch %d", found[-1][1], start_epoch)
        log.info("options: %s", " ".join(f"{k}={v}" for k, v in sorted(vars(options).items())))
        log.info("%s: %d parameters; %d utterances of %d speakers; %d trials; device %s",
                 options.model, sum(p.numel() for p in model.encoder.parameters()), len(train.files),
                 len(train.speakers), len(trials.labels), device)

    loader = DataLoader(TrainDataset(train, planner.bank if planner else None), batch_sampler=sampler, num_workers=workers,
                        collate_fn=collate_views, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    result = None
    if start_epoch > options.max_epoch and is_main:
        log.info("training already reached epoch %d of %d; evaluating that checkpoint",
                 start_epoch - 1, options.max_epoch)
        result = trainer.evaluate(trials, options.test_path, options.eval_frames, options.num_eval,
                                  workers, dcf)
        log_result(f"epoch {start_epoch - 1}:", result, options.dcf_p_target)
    for epoch in range(start_epoch, options.max_epoch + 1):
        # Reseeding from (seed, epoch) makes every epoch reproducible on its own, so a resumed
        # run matches an uninterrupted one whatever evaluation consumed in between.
        seed_everything(options.seed * 100003 + epoch)
        sampler.set_epoch(epoch)
        stats = trainer.train_epoch(loader, epoch)
        if is_main:
            used = sampler.stats
            log.info("epoch %d: loss %.4f metric %.2f lr %.3g | %.0f utt/s, data wait %.0f%% | "
                     "utterances used %.1f%% of list, %.1f%% of eligible", epoch, stats["loss"],
                     stats["metric"], stats["lr"], stats["utt_per_s"], 100 * stats["data_wait"],
                     100 * used["used"] / used["utterances"], 100 * used["used"] / max(used["eligible"], 1))
        if epoch % options.test_interval == 0 or epoch == options.max_epoch:
            if is_main:
                state = {"format": checkpoint.FORMAT, "epoch": epoch, "model": model.state_dict(),
                         "trainer": trainer.state_dict(), "rng": checkpoint.capture_rng(),
                         "options": {k: v for k, v in vars(options).items()}}
                checkpoint.save_atomic(state, checkpoint.checkpoint_path(save_path / "model", epoch))
                result = trainer.evaluate(trials, options.test_path, options.eval_frames,
                                          options.num_eval, workers, dcf)
                log_result(f"epoch {epoch}:", result, options.dcf_p_target)
                write_scores(save_path / "result" / f"scores_epoch{epoch:04d}.txt", trials, result)
                with open(save_path / "result" / "scores.txt", "a", encoding="utf-8") as handle:
                    handle.write(f"epoch {epoch}, EER {result['eer']:.4f}, MinDCF {result['min_dcf']:.5f}\n")
            if options.distributed:
                dist.barrier()
    return result


def newest_checkpoint(save_path):
    found = checkpoint.list_checkpoints(Path(save_path) / "model")
    if not found:
        raise OptionError(f"--eval needs --initial_model, or a checkpoint in {save_path}/model")
    return found[-1][1]


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        options = parse_options(argv)
        run(options)
    except UserError as err:
        log.error("%s", err)
        return 2
    finally:
        remove_log_file()
    return 0


if __name__ == "__main__":
    sys.exit(main())
