"""What the preparation steps share: the sample rate, the error they raise, atomic writes, the worker
pool, and the synthetic generators' check of what a folder already holds."""
import json
import logging
import multiprocessing
import os
import sys
import wave

import numpy as np

from speakernet.atomic import atomic_file, write_text
from speakernet.audio import SAMPLE_RATE as SR

log = logging.getLogger("data_prep")

F32 = np.float32                  # single precision: plenty for 16-bit output, and twice as fast
SHOW = 5                          # names shown per problem kind


class PrepError(Exception):
    """A preparation step cannot go on; the message names the input and the fix."""


def write_atomic(path, lines):
    write_text(path, "".join(line + "\n" for line in lines))


def write_wav(path, samples):
    """16-bit mono PCM at SR (a path or a binary file); the stdlib writer is faster here than
    soundfile."""
    with wave.open(path, "wb") as f:
        f.setparams((1, 2, SR, len(samples), "NONE", "not compressed"))
        f.writeframes(samples.astype("<i2").tobytes())


def write_wav_atomic(path, samples):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_file(path) as handle:
        write_wav(handle, samples)


def run_jobs(fn, jobs, workers, chunksize=1):
    """fn over jobs in `workers` processes (in this one when 1), results as they finish."""
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:
            yield from pool.imap_unordered(fn, jobs, chunksize)
    else:
        yield from map(fn, jobs)


def generated_config(args, keys, version, path):
    """(the settings `keys` of args with `version`, the ones a generator stored in `path` or None)."""
    config = dict({k: getattr(args, k) for k in keys}, version=version)
    old = json.loads(open(path).read() or "{}") if os.path.exists(path) else None
    return config, old


def refuse_other_outputs(args, old, config, outputs, refusal, replacing):
    """Exit when --save_path holds outputs made with other settings, or not by --synthetic at all
    (message `refusal` % (folder, differing settings)); with --overwrite only warn `replacing` % folder."""
    if old is None and any(map(os.path.exists, outputs)) or old not in (None, config):
        differ = sorted(k for k in config if old is not None and old.get(k) != config[k])
        differ = differ or ["not made by --synthetic"]
        if not args.overwrite:
            sys.exit(refusal % (args.save_path, ", ".join(differ)))
        log.warning(replacing, args.save_path)
