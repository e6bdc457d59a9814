#!/usr/bin/env python3
"""Which project files one training batch passes through, from its list line to the gradient.

    python3 benchmarks/batch_walk.py [--config configs/demo.yaml] [--data DIR]

Parses the options and builds the model, then traces every Python call while the trainer's own
functions read the training list, plan the epoch and build the loader, then load one
batch (no workers) and take one optimizer step with the per-step callbacks a run makes
(progress, tracking, the mid-epoch checkpoint's check); prints the files of this repository whose code
ran, in order of first use (evaluation's set-up is not part of the walk, nor is the header
manifest's first write).
"""
import argparse
import logging
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("batch_walk")


class _FirstStepTaken(Exception):
    pass


def walk(argv):
    import torch

    import trainSpeakerNet
    from speakernet.core.train_list import read_train_list
    from speakernet.run.options import parse_options
    options = parse_options(argv)
    device = torch.device("cpu")
    model = trainSpeakerNet.build_model(options)
    # The first read of a list writes its header manifest (speakernet/core/atomic.py, once); the walk
    # is that of every later start.
    read_train_list(options.train_list, options.train_path)
    seen = []

    def tracer(frame, event, arg):
        name = frame.f_code.co_filename
        if event == "call" and name.startswith(str(REPO)) and "benchmarks" not in name and name not in seen:
            seen.append(name)

    from speakernet.run import resume
    checkpoints = resume.MidEpochCheckpoints(Path(options.save_path) / "model", options.checkpoint_minutes,
                                             options.checkpoint_steps)

    sys.setprofile(tracer)
    try:
        # What trainSpeakerNet.train does, up to the first optimizer step: the training data
        # (list, sampler, loader), then the epoch loop's first batch.
        data = trainSpeakerNet.build_training_data(options, model, device, rank=0, world_size=1)
        sys.setprofile(None)          # the optimiser's and scheduler's construction is set-up
        trainer = trainSpeakerNet.build_trainer(options, model, device, data, is_main=True)
        sys.setprofile(tracer)
        data.sampler.set_epoch(1)
        save_mid_epoch = trainSpeakerNet.mid_epoch_saver(checkpoints, options, model, trainer, data, 1)

        def after_step(batch, totals):     # the run's own per-step callback, then stop
            save_mid_epoch(batch, totals)
            raise _FirstStepTaken()
        trainer.train_epoch(data.loader, 1, after_step=after_step)
    except _FirstStepTaken:
        pass
    finally:
        sys.setprofile(None)
    return [str(Path(f).relative_to(REPO)) for f in seen]


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--data", default="data/demo", help="the demo corpus (data_prep.py --synthetic)")
    args = parser.parse_args(argv)
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as save:
        files = walk(["--config", args.config, "--train_list", str(data / "train_list.txt"),
                      "--train_path", str(data / "wav"), "--test_list", str(data / "test_list.txt"),
                      "--test_path", str(data / "wav"), "--save_path", save, "--nDataLoaderThread", "0",
                      "--device", "cpu"])
    for number, name in enumerate(files, start=1):
        log.info("%2d %s", number, name)
    log.info("%d files", len(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
