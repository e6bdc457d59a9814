#!/usr/bin/env python3
"""Which project files one training batch passes through, from its list line to the gradient.

    python3 benchmarks/batch_walk.py [--config configs/demo.yaml] [--data DIR]

Builds the model and the optimiser as the trainer does (options parsed), then traces every
Python call while it reads the training list, plans the epoch, loads one batch (no workers, the
trainer's dataset and collation) and takes one optimizer step; prints the files of this
repository that ran, in order of first use (evaluation's set-up is not part of the walk).
"""
import argparse
import logging
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("batch_walk")


def walk(argv):
    from torch.utils.data import DataLoader

    import trainSpeakerNet
    from DatasetLoader import TrainDataset, collate_views, read_train_list
    from speakernet import plugins
    from speakernet.options import parse_options
    from speakernet.packed_audio import packs_from_options
    from DatasetLoader import SpeakerBalancedSampler
    options = parse_options(argv)
    model = trainSpeakerNet.build_model(options)
    seen = []

    def tracer(frame, event, arg):
        name = frame.f_code.co_filename
        if event == "call" and name.startswith(str(REPO)) and "benchmarks" not in name and name not in seen:
            seen.append(name)

    optimizer = plugins.factory("optimizer", options.optimizer)(model.parameters(), **vars(options))
    contract = model.contract
    sys.setprofile(tracer)
    try:
        train_list = read_train_list(options.train_list, options.train_path)
        packs = packs_from_options(options, train_list)
        sampler = SpeakerBalancedSampler(train_list.labels, options.batch_size, options.nPerSpeaker,
                                         options.max_seg_per_spk, seed=options.seed,
                                         view_frames=contract.view_frames, max_frames=options.max_frames)
        sampler.set_epoch(1)
        loader = DataLoader(TrainDataset(train_list, None, packs), batch_sampler=sampler, collate_fn=collate_views)
        views, labels, extras, frames = next(iter(loader))
        model.train()
        contract.on_batch_start(frames)
        loss, _ = model(views, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
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
