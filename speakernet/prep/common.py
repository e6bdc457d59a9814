"""What the preparation steps share: the sample rate, the error they raise, atomic writes, the worker
pool, and the synthetic generators' check of what a folder already holds."""
import errno
import json
import logging
import multiprocessing
import os
import wave

import numpy as np

from speakernet.core.atomic import atomic_file, write_text
from speakernet.core.audio import SAMPLE_RATE as SR
from speakernet.core.errors import UserError

log = logging.getLogger("data_prep")

F32 = np.float32                  # single precision: plenty for 16-bit output, and twice as fast
SHOW = 5                          # names shown per problem kind


class PrepError(UserError):
    """A preparation step cannot go on; the message names the input and the fix."""


def blocking_file(path):
    """The first part of `path` that exists but is not a folder (a file where a folder must be
    created), or None."""
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return None if os.path.isdir(path) else path


def os_error_line(err):
    """One line naming the path of an OSError and what to do about it."""
    path = err.filename or "a file"
    if err.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = blocking_file(path)
        if blocker is not None:
            return ("%s: %s is a file where a folder is needed (move that file away, or choose "
                    "another path)" % (path, blocker))
    if err.errno == errno.ENOENT:
        return "%s: no such file or folder (check the path)" % path
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "%s: %s (choose a writable folder, or fix its permissions)" % (path, err.strerror)
    if err.errno == errno.ENOSPC:
        return ("%s: no space left on the device (free some space and run the same command again; "
                "finished files are kept)" % path)
    if err.errno == errno.EISDIR:
        return "%s is a folder where a file is needed (give a file path)" % path
    return "%s: %s" % (path, err.strerror or err)


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
    """(the settings `keys` of args with `version`, the ones a generator stored in `path` or None).
    A damaged record (not UTF-8 or not JSON, a folder) counts as none: the outputs beside it are
    then refused as not made by --synthetic, and never deleted."""
    config = dict({k: getattr(args, k) for k in keys}, version=version)
    try:
        with open(path, encoding="utf-8") as handle:
            old = json.loads(handle.read() or "{}")
    except (OSError, ValueError):        # absent, a folder, not UTF-8, not JSON
        return config, None
    return config, old if isinstance(old, dict) else None


def refuse_other_outputs(args, old, config, outputs, refusal, replacing):
    """Exit when --save_path holds outputs made with other settings, or not by --synthetic at all
    (message `refusal` % (folder, differing settings)); with --overwrite only warn `replacing` % folder."""
    if old is None and any(map(os.path.exists, outputs)) or old not in (None, config):
        differ = sorted(k for k in config if old is not None and old.get(k) != config[k])
        differ = differ or ["not made by --synthetic"]
        if not args.overwrite:
            raise PrepError(refusal % (args.save_path, ", ".join(differ)))
        log.warning(replacing, args.save_path)
