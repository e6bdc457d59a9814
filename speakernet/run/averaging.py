"""Average the weights of a run's last N epoch checkpoints into one checkpoint:

    python3 -m speakernet.run.averaging --save_path exps/demo --last 2 [--output FILE]

then evaluate, verify or export it like any checkpoint (`--eval --initial_model FILE`).
wespeaker averages the last 10 checkpoints before evaluation and export (its recipes'
num_avg=10, wespeaker/bin/average_model.py); so do we, with N chosen by --last.

Every floating-point tensor of the model (encoder and objective) is the plain mean over the
checkpoints, batch-norm running means and variances included, as wespeaker does: each
checkpoint's statistics describe its own weights, and at the end of training the checkpoints
being averaged are close, so their statistics are too. Integer tensors (batch norm's
num_batches_tracked) are the newest checkpoint's. The output keeps the newest checkpoint's
options and epoch, so every command that reads a checkpoint reads it; it holds no optimizer
or scheduler state (training does not resume from it) and records the epochs averaged.
"""
import argparse
import logging
import sys
from pathlib import Path

import torch

from speakernet.core import checkpoint
from speakernet.core.errors import CheckpointError, OptionError, UserError

log = logging.getLogger("averaging")


def averaged_state(paths):
    """The mean of the 'model' state dicts of checkpoints `paths` (newest last) -> state dict."""
    states = [checkpoint.load_file(p) for p in paths]
    for path, state in zip(paths, states):
        if not isinstance(state, dict) or state.get("format") != checkpoint.FORMAT:
            raise CheckpointError(f"{path} is not a checkpoint of this project; average only "
                                  f"checkpoints written by trainSpeakerNet.py")
    models = [s["model"] for s in states]
    newest = models[-1]
    for path, model in zip(paths, models):
        if model.keys() != newest.keys() or any(model[k].shape != newest[k].shape for k in newest):
            raise CheckpointError(f"{path} holds another model than {paths[-1]} (other tensor names "
                                  f"or shapes); average checkpoints of one run")
    average = {}
    for key, value in newest.items():
        if value.is_floating_point():
            average[key] = (torch.stack([m[key].double() for m in models]).mean(0)).to(value.dtype)
        else:
            average[key] = value.clone()
    return states[-1], average


def average_last(save_path, last, output=None):
    """Average the `last` newest epoch checkpoints of `save_path` into `output` -> its path."""
    if last < 1:
        raise OptionError(f"--last {last}: average at least 1 checkpoint")
    found = checkpoint.list_checkpoints(Path(save_path) / "model")
    if len(found) < last:
        raise OptionError(f"--last {last}: {save_path}/model holds {len(found)} epoch checkpoints; "
                          f"lower --last (train with a smaller --test_interval and --keep_last 0 "
                          f"to keep more)")
    chosen = found[-last:]
    epochs = [epoch for epoch, _ in chosen]
    output = Path(output or Path(save_path) / "model" / f"average_{epochs[0]}-{epochs[-1]}.model")
    if output.exists():
        raise OptionError(f"{output} exists; give another --output (nothing is overwritten)")
    newest, average = averaged_state([path for _, path in chosen])
    result = {"format": checkpoint.FORMAT, "epoch": newest["epoch"], "model": average,
              "options": newest.get("options", {}), "averaged_epochs": epochs}
    checkpoint.save_atomic(result, output)
    log.info("averaged epochs %s of %s into %s", ", ".join(map(str, epochs)), save_path, output)
    return output


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--save_path", required=True, help="the run folder (its model/ holds the checkpoints)")
    p.add_argument("--last", type=int, default=10, help="how many of the newest epoch checkpoints")
    p.add_argument("--output", default=None, help="the averaged checkpoint (default: "
                                                   "save_path/model/average_FIRST-LAST.model)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        average_last(args.save_path, args.last, args.output)
    except UserError as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
