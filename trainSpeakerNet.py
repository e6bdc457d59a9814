#!/usr/bin/env python3
"""Train a speaker-embedding network, evaluate one (--eval) or export embeddings (--extract).

    python trainSpeakerNet.py --config configs/ResNetSE34L_AP.yaml
    python trainSpeakerNet.py --eval --config configs/ResNetSE34L_AP.yaml --initial_model M

Every input is validated before any training time is spent or any file is written.
"""
import logging
import random
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from models._specaugment import attach_spec_augment
from speakernet.core import checkpoint
from speakernet.data import curriculum_data
from speakernet.eval import evaluation
from speakernet.run import plugins
from speakernet.tools import pseudo_rounds
from speakernet.run import resume
from speakernet.run import run_lock
from speakernet.run import run_log
from speakernet.run import tracking
from speakernet.run.distributed import close_distributed, init_distributed, share_buffers
# The modes besides training; their helpers stay importable from here too.
from speakernet.tools.commands import (calibrate_only, evaluate_only, extract_only,  # noqa: F401
                                 load_initial_weights, make_extractor, newest_checkpoint,
                                 prepare_save_path, verify_only)
from speakernet.tools.validation import Validation
from speakernet.model.embedder import resolve_device  # also checks Embedder's device
from speakernet.data.augment import Augmenter, planner_from_options
from speakernet.data.sampler import SpeakerBalancedSampler, check_speed_classes, speed_factors
from speakernet.data.train_data import CollateAndMix, TrainDataset, collate_views, training_packs
from speakernet.core.train_list import read_train_list
from speakernet.core.errors import UserError, message_of
from speakernet.run.options import OptionError, component_values, parse_options, save_options
from SpeakerNet import SpeakerNet, Trainer

log = logging.getLogger("trainSpeakerNet")
RUN_LOG_HANDLER = "speakernet-run-log"


# ---------------------------------------------------------------------------- set-up

def seed_everything(seed):
    seed %= 2 ** 32               # numpy's legacy seeding takes 32 bits (seed x 100003 + epoch)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(options):
    """The encoder and the objective, each built with its own options only (component_values);
    SpecAugment is the trainer's, attached to the encoder's front end here."""
    encoder = plugins.factory("models", options.model)(**component_values("models", options.model, options))
    encoder = attach_spec_augment(encoder, **vars(options))
    objective = plugins.factory("loss", options.trainfunc)(**component_values("loss", options.trainfunc, options))
    return SpeakerNet(encoder, objective)


def views_per_group(options, contract):
    views = contract.needs.views or options.nPerSpeaker
    needed = contract.needs.min_views
    if views < needed:
        raise OptionError(f"--trainfunc {options.trainfunc} needs at least {needed} utterances per "
                          f"speaker; set --nPerSpeaker {needed}")
    return views


def add_log_file(path):
    """Also log to `path` until remove_log_file (one run's log never collects another's)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name(RUN_LOG_HANDLER)
    logging.getLogger().addHandler(handler)


def remove_log_file():
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == RUN_LOG_HANDLER:
            root.removeHandler(handler)
            handler.close()


@dataclass
class TrainingData:
    train_list: object
    sampler: SpeakerBalancedSampler
    loader: DataLoader
    mix_in_workers: bool
    planner: object
    evaluator: object = None
    signature: dict = None            # resume.list_signature, kept in every checkpoint


def build_data(options, model, device, rank, world_size):
    """The training list, sampler and loader, and the evaluation lists: every file is checked
    here, before any file is written or any step is taken."""
    data = build_training_data(options, model, device, rank, world_size)
    data.evaluator = evaluation.Evaluation.from_options(options, train_list=data.train_list)
    return data


def build_training_data(options, model, device, rank, world_size):
    """The training list (every file's header checked), the sampler and the loader."""
    contract = model.contract
    views = views_per_group(options, contract)
    uses_labels = contract.needs.labels
    train_list = read_train_list(options.train_list, options.train_path, need_labels=uses_labels,
                                 allow_outside=options.allow_outside_paths, recheck=options.recheck_audio)
    if uses_labels and len(train_list.speakers) > options.nClasses:
        raise OptionError(f"--nClasses {options.nClasses} is smaller than the {len(train_list.speakers)} "
                          f"speakers in {options.train_list}; set --nClasses {len(train_list.speakers)}")
    speeds = speed_factors(options)
    if uses_labels:
        check_speed_classes(options.nClasses, len(train_list.speakers), speeds, options.train_list,
                            contract.needs.classifier)
    request = contract.data_request()
    if request is not None:        # data an objective needs computed from the training set
        contract.receive_data(curriculum_data.answer(request, train_list, options))
    planner = planner_from_options(options) if options.augment else None      # noise and reverb
    packs = training_packs(options, train_list, planner.bank if planner else None)
    sampler = SpeakerBalancedSampler(
        train_list.labels, options.batch_size, views, options.max_seg_per_spk, seed=options.seed,
        group_by_utterance=not uses_labels, view_frames=contract.view_frames, rank=rank,
        world_size=world_size, augment_planner=planner, augment_fraction=contract.augment_fraction,
        utterance_subset=contract.utterance_subset, speeds=speeds, num_speakers=len(train_list.speakers),
        max_frames=options.max_frames)
    # On a CPU with loader workers the workers mix the noise in (CollateAndMix); elsewhere the
    # training device does, batched.
    mix_in_workers = planner is not None and device.type == "cpu" and options.nDataLoaderThread > 0
    loader = DataLoader(TrainDataset(train_list, planner.bank if planner else None, packs),
                        batch_sampler=sampler,
                        num_workers=options.nDataLoaderThread,
                        collate_fn=CollateAndMix() if mix_in_workers else collate_views,
                        pin_memory=device.type == "cuda", persistent_workers=options.nDataLoaderThread > 0,
                        prefetch_factor=4 if options.nDataLoaderThread > 0 else None)
    return TrainingData(train_list, sampler, loader, mix_in_workers, planner,
                        signature=resume.list_signature(train_list))


def build_trainer(options, model, device, data, is_main):
    optimizer = plugins.factory("optimizer", options.optimizer)(
        model.parameters(), **component_values("optimizer", options.optimizer, options))
    settings = component_values("scheduler", options.scheduler, options)
    settings["steps_per_epoch"] = data.sampler.planned_steps(1)      # iteration schedules, from the real plan
    scheduler, step_unit = plugins.factory("scheduler", options.scheduler)(optimizer, **settings)
    ddp_model = None
    if options.distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return Trainer(model, optimizer, scheduler, step_unit, device, options.mixedprec, ddp_model=ddp_model,
                   is_main=is_main, augment=Augmenter() if data.planner and not data.mix_in_workers else None,
                   max_bad_steps=options.max_bad_steps)


def resume_or_start(options, model, trainer, model_dir, signature):
    """Load the newest readable checkpoint (checked against the options and the training list's
    `signature`) or --initial_model; -> the ResumePoint, or None for a fresh start."""
    point = resume.find_resume_point(model_dir)
    if point is None:
        if options.initial_model:
            load_initial_weights(model, options.initial_model)
        return None
    resume.check_options(options, point)
    resume.check_training_list(point, signature, options.train_list)
    checkpoint.load_weights(model, point.state["model"], point.path)
    try:
        trainer.load_state_dict(point.state["trainer"])
        checkpoint.restore_rng(point.state["rng"])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
        raise checkpoint.CheckpointError(
            f"{point.path} holds a training state this run cannot restore ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'missing entry'}); the file was altered or "
            f"written by another version: move it away to resume from the checkpoint before it, or "
            f"use another --save_path") from None
    return point


def epoch_state(options, model, trainer, data, epoch, **extra):
    """Everything a resume needs, as saved in a checkpoint."""
    return {"format": checkpoint.FORMAT, "epoch": epoch, "model": model.state_dict(),
            "trainer": trainer.state_dict(), "rng": checkpoint.capture_rng(),
            "options": dict(vars(options)), "train_list": data.signature, **extra}


def train(options, model, device, rank, world_size):
    is_main = rank == 0
    tracking.check_available(options)
    data = build_data(options, model, device, rank, world_size)
    trainer = build_trainer(options, model, device, data, is_main)
    save_path = Path(options.save_path)
    model_dir = save_path / "model"
    if is_main:
        state_bytes = 4 * sum(p.numel() for p in model.parameters())
        prepare_save_path(save_path, needed_bytes=8 * state_bytes)
        run_log.check_run_files(save_path)
    with run_lock.locked(save_path, enabled=is_main):
        if is_main:
            checkpoint.remove_stale_temporaries(model_dir)
        point = resume_or_start(options, model, trainer, model_dir, data.signature)
        trainer.tracker = tracking.open_tracker(options, save_path, trainer.step, is_main)
        try:
            if is_main:
                start_run_log(options, save_path, model, data.train_list, device, point)
            return epoch_loop(options, model, trainer, data, save_path, point)
        finally:
            trainer.tracker.close()


def start_run_log(options, save_path, model, train_list, device, point):
    add_log_file(save_path / "train.log")
    save_options(options, evaluation.unique_path(save_path / "options.yaml"))
    if point:
        where = f"epoch {point.start_epoch}" + (f", batch {point.state['batch'] + 1}" if point.partial else "")
        log.info("resuming from %s at %s", point.path, where)
    log.info("options: %s", " ".join(f"{k}={v}" for k, v in sorted(vars(options).items())))
    log.info("%s: %d parameters; %d utterances of %d speakers; device %s", options.model,
             sum(p.numel() for p in model.encoder.parameters()), len(train_list.files),
             len(train_list.speakers), device)


def mid_epoch_saver(mid_epoch, options, model, trainer, data, epoch):
    """The epoch's after-step callback: a mid-epoch checkpoint whenever one is due."""
    def save_mid_epoch(batch, totals):
        if mid_epoch.due(batch):
            mid_epoch.save(epoch_state(options, model, trainer, data, epoch, batch=batch, totals=totals))
    return save_mid_epoch


def epoch_loop(options, model, trainer, data, save_path, point):
    is_main = trainer.is_main
    model_dir = save_path / "model"
    validation = Validation(options, model, trainer, data.evaluator, save_path)
    mid_epoch = resume.MidEpochCheckpoints(model_dir, options.checkpoint_minutes, options.checkpoint_steps,
                                           enabled=is_main)
    start_epoch = point.start_epoch if point else 1
    trainer.start_run(options.max_epoch, data.sampler.world_size)
    report = None
    if point and not point.partial and not validation.recorded(point.state["epoch"]):
        # The run stopped between writing this epoch's checkpoint and recording its evaluation.
        report = validation.evaluate(point.state["epoch"], point.state.get("stats", {}))
        if is_main:
            validation.keep_best(point.state, report)
    elif start_epoch > options.max_epoch:
        if is_main:
            log.info("training already reached epoch %d of %d; evaluating that checkpoint",
                     start_epoch - 1, options.max_epoch)
        report = validation.evaluate(start_epoch - 1)
    for epoch in range(start_epoch, options.max_epoch + 1):
        # Reseeding from (seed, epoch) makes every epoch reproducible on its own, so a resumed
        # run matches an uninterrupted one whatever evaluation consumed in between.
        seed_everything(options.seed * 100003 + epoch)
        within = (point.state if point and point.partial and point.plan_applies
                  and epoch == point.start_epoch else None)
        data.sampler.set_epoch(epoch, skip_batches=within["batch"] if within else 0)

        stats = trainer.train_epoch(data.loader, epoch, resume=within,
                                    after_step=mid_epoch_saver(mid_epoch, options, model, trainer, data, epoch))
        if is_main:
            used = data.sampler.stats
            stats["used_share"] = used["used"] / used["utterances"]
            log.info("epoch %d: loss %.4f metric %.2f lr %.3g | %.0f utt/s, data wait %.0f%% | "
                     "utterances used %.1f%% of list, %.1f%% of eligible", epoch, stats["loss"],
                     stats["metric"], stats["lr"], stats["utt_per_s"], 100 * stats["data_wait"],
                     100 * stats["used_share"], 100 * used["used"] / max(used["eligible"], 1))
        if epoch % options.test_interval == 0 or epoch == options.max_epoch:
            state = None
            if is_main:
                state = epoch_state(options, model, trainer, data, epoch, stats=stats)
                checkpoint.save_atomic(state, checkpoint.checkpoint_path(model_dir, epoch))
                mid_epoch.superseded()
            # Every rank embeds a share of the evaluation files; rank 0 scores and writes.
            if options.distributed:
                share_buffers(model.encoder)
            report = validation.evaluate(epoch, stats)
            if is_main:
                validation.keep_best(state, report)
                checkpoint.prune_checkpoints(model_dir, options.keep_last)
            if options.distributed:
                dist.barrier()
        elif is_main:
            validation.record(epoch, stats)
    return report


def train_stage(options):
    """One stage of the pseudo-label rounds: an ordinary single-process training run."""
    device = resolve_device(options.device)
    seed_everything(options.seed)
    try:
        return train(options, build_model(options).to(device), device, 0, 1)
    finally:
        remove_log_file()


def run(options, argv=None):
    if options.pseudo_rounds and not (options.eval or options.extract or options.calibrate or options.verify):
        return pseudo_rounds.Pipeline(argv, options, train_stage).run()
    rank, world_size, local_rank = init_distributed(options)
    finished = False
    try:
        device = resolve_device(options.device, local_rank)
        if options.verify:      # the encoder and its options come from the checkpoint
            result = verify_only(options, device)
            finished = True
            return result
        seed_everything(options.seed)
        model = build_model(options).to(device)
        if options.extract:
            result = extract_only(options, model, device, rank)
        elif options.calibrate:
            result = calibrate_only(options, model, device, rank)
        elif options.eval:
            result = evaluate_only(options, model, device, rank)
        else:
            result = train(options, model, device, rank, world_size)
        finished = True
        return result
    finally:
        close_distributed(finished)


class Interrupted(Exception):
    """SIGTERM (from schedulers and torchrun), raised in the main thread like KeyboardInterrupt."""


def _raise_interrupted(signum, frame):
    raise Interrupted()


def last_complete_checkpoint(save_path):
    """A line naming the checkpoint a rerun resumes from, for the interruption message."""
    try:
        point = resume.find_resume_point(Path(save_path) / "model")
    except UserError:
        point = None
    if point is None:
        return "no checkpoint was written yet"
    where = f"epoch {point.state['epoch']}" + (f", batch {point.state['batch']}" if point.partial else "")
    return f"the last complete checkpoint is {point.path} ({where}); run the same command to resume"


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if in_main_thread else None
    options = None
    try:
        options = parse_options(argv)
        run(options, argv)
    except UserError as err:
        log.error("%s", message_of(err))
        return 2
    except FloatingPointError as err:
        log.error("%s; the last good checkpoint is kept", err)
        return 3
    except OSError as err:
        if err.errno is None:
            raise
        # A write refused mid-run (a full disk, a folder turned read-only): what was written
        # before stays, and checkpoints are only ever replaced whole.
        log.error("%s: %s; nothing written before is lost (free some space or fix the folder's "
                  "permissions, then run the same command to resume)", err.filename or "a run file",
                  err.strerror or err)
        return 2
    except (KeyboardInterrupt, Interrupted) as err:
        name, code = ("SIGTERM", 143) if isinstance(err, Interrupted) else ("SIGINT", 130)
        training = options is not None and not (options.eval or options.extract)
        if training and options.pseudo_rounds:
            where = (f"the finished stages of {options.save_path} are kept (pipeline.json); run the "
                     f"same command to resume")
        else:
            where = last_complete_checkpoint(options.save_path) if training else "nothing was written"
        log.error("interrupted by %s; %s", name, where)
        return code
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        remove_log_file()
    return 0


if __name__ == "__main__":
    sys.exit(main())
