"""Validate every audio file a list names before any training time is spent.

Headers (readable, 16 kHz, mono, non-empty) are checked once, in parallel, and cached in a
binary manifest beside the list (`<list>.manifest.npz`: numpy arrays of lengths, sizes and
modification times, and the modification time of every folder holding a listed file). A later
start with the same list and unchanged folders takes the lengths as they are, without a stat
call per file: adding, removing or replacing a file (a rename) changes its folder's time.
A file rewritten in place does not; `--recheck_audio` checks every file's size and time again
and rereads the headers of those that changed. The lengths let the loader place crops without
opening a file twice.
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from speakernet.errors import ListError, NonFiniteAudio  # noqa: F401 (re-exported)
from speakernet.atomic import atomic_file
from speakernet.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

MANIFEST_VERSION = 2
MAX_REPORTED = 10


def check_finite(audio, path, start=0):
    """Raise NonFiniteAudio naming `path` unless every sample of `audio` is finite.

    Only float-encoded files can hold NaN/Inf; one isfinite per crop costs far less than the
    read, and a single bad sample would otherwise end as a NaN loss or a NaN embedding."""
    finite = np.isfinite(audio)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise NonFiniteAudio(f"{path}: {len(bad)} NaN/Inf samples, the first at sample {start + int(bad[0])} "
                             f"(re-export the file; non-finite samples poison training and scores)",
                             path=str(path))
    return audio


def resolve(root, name, allow_outside=False):
    """Path of list entry `name` under `root`.

    Entries may not leave `root` (absolute paths, `..`) unless `allow_outside`: a list from
    elsewhere must not make the trainer read arbitrary files.
    """
    path = Path(name)
    if allow_outside:
        return path if path.is_absolute() else Path(root) / path
    joined = Path(os.path.normpath(Path(root) / path))       # an absolute path replaces root
    base = Path(os.path.normpath(os.path.abspath(root)))
    if not Path(os.path.abspath(joined)).is_relative_to(base):
        raise ListError(f"'{name}' points outside {root}; use paths relative to it, "
                        f"or pass --allow_outside_paths")
    return joined


def is_plain(name):
    """A relative entry without '..': joined to its root by string, no path parsing needed."""
    return not name.startswith("/") and ".." not in name.split("/")


# --recheck_audio: the entry point sets it for every list of the run (train, trials, cohort).
RECHECK_ALL = {"on": False}


def check_audio_files(list_path, root, names, line_numbers, allow_outside=False, recheck=False):
    """Samples per file for `names`, or ListError naming the list line of the first bad file."""
    recheck = recheck or RECHECK_ALL["on"]
    manifest_path = Path(f"{list_path}.manifest.npz")
    prefix, paths = os.path.join(str(root), ""), []
    for name, line in zip(names, line_numbers):
        if is_plain(name):
            paths.append(prefix + name)
            continue
        try:
            paths.append(str(resolve(root, name, allow_outside)))
        except ListError as err:
            raise ListError(f"{list_path}:{line}: {err}") from None
    folders, folder_of = np.unique(np.array([os.path.dirname(p) for p in paths]), return_inverse=True)
    cached = _load_manifest(manifest_path, list_path, root, len(paths))
    if cached is not None and not recheck and _folders_unchanged(cached, folders):
        return cached["lengths"]
    lengths, sizes, mtimes, problems = _check_each(list_path, paths, cached)
    if problems:
        _raise_first(list_path, line_numbers, problems)
    _save_manifest(manifest_path, list_path, root, lengths, sizes, mtimes, folders)
    return lengths


def _check_each(list_path, paths, cached):
    """Stat every file; read the header of those not in the manifest with the same size and
    time -> (lengths, sizes, mtimes, problems)."""
    count = len(paths)
    lengths = np.zeros(count, dtype=np.int64)
    sizes = np.zeros(count, dtype=np.int64)
    mtimes = np.zeros(count, dtype=np.int64)
    problems, todo = [], []
    for i, path in enumerate(paths):
        try:
            stat = os.stat(path)
        except OSError:
            problems.append((i, f"file not found: {path} (check --train_path/--test_path)"))
            continue
        sizes[i], mtimes[i] = stat.st_size, stat.st_mtime_ns
        if cached is not None and cached["sizes"][i] == sizes[i] and cached["mtimes"][i] == mtimes[i]:
            lengths[i] = cached["lengths"][i]
        else:
            todo.append(i)
    if todo:
        with ThreadPoolExecutor(max_workers=8) as pool:
            headers = pool.map(lambda i: _read_header(paths[i]), todo, chunksize=256)
            for i, (frames, problem) in tqdm(zip(todo, headers), total=len(todo), disable=len(todo) < 2000,
                                             unit="file", desc=f"checking audio in {Path(list_path).name}"):
                if problem:
                    problems.append((i, f"{paths[i]}: {problem}"))
                lengths[i] = frames
        log.info("checked %d audio headers of %s (%d taken from its manifest)", len(todo), list_path,
                 count - len(todo) - len(problems))
    return lengths, sizes, mtimes, problems


def _raise_first(list_path, line_numbers, problems):
    problems.sort()
    # The first problem is the raised error (logged once by the entry point); the next
    # few are logged here so that one run shows more than one file to fix.
    for i, message in problems[1:MAX_REPORTED]:
        log.error("%s:%d: %s", list_path, line_numbers[i], message)
    i, message = problems[0]
    more = f" ({len(problems) - 1} more bad files, see the log)" if len(problems) > 1 else ""
    raise ListError(f"{list_path}:{line_numbers[i]}: {message}{more}")


def _folders_unchanged(cached, folders):
    if len(cached["folders"]) != len(folders) or not np.array_equal(cached["folders"], folders):
        return False
    for folder, mtime in zip(folders.tolist(), cached["folder_mtimes"].tolist()):
        try:
            if os.stat(folder).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return True


def _wav_header(path):
    """(rate, channels, frames) of a plain RIFF/WAVE file from its first bytes, or None when the
    file is anything else (then libsndfile reads it): 44 bytes cost far less than its open."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
        size = os.fstat(handle.fileno()).st_size
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    position, fmt = 12, None
    while position + 8 <= len(head):
        kind, length = head[position:position + 4], int.from_bytes(head[position + 4:position + 8], "little")
        body = position + 8
        if kind == b"fmt " and body + 16 <= len(head):
            code, channels, rate = (int.from_bytes(head[body:body + 2], "little"),
                                    int.from_bytes(head[body + 2:body + 4], "little"),
                                    int.from_bytes(head[body + 4:body + 8], "little"))
            bits = int.from_bytes(head[body + 14:body + 16], "little")
            fmt = (code, channels, rate, bits)
        elif kind == b"data":
            if fmt is None or fmt[0] not in (1, 3) or fmt[1] < 1 or fmt[3] % 8:
                return None
            frame_bytes = fmt[1] * fmt[3] // 8
            return fmt[2], fmt[1], min(length, size - body) // frame_bytes
        position = body + length + (length & 1)
    return None


def _read_header(path):
    """(frames, None) for a usable file, else (0, what is wrong and how to fix it)."""
    try:
        wav = _wav_header(path)
        if wav is None:
            info = soundfile.info(str(path))
            wav = info.samplerate, info.channels, info.frames
    except Exception as err:  # libsndfile raises several types for broken files
        return 0, f"unreadable audio ({str(err).strip() or type(err).__name__}); re-encode it as 16 kHz mono WAV"
    rate, channels, frames = wav
    if rate != SAMPLE_RATE:
        return 0, (f"sample rate {rate} Hz, expected {SAMPLE_RATE} Hz; resample it, "
                   f"e.g. ffmpeg -i in -ar 16000 -ac 1 out.wav")
    if channels != 1:
        return 0, f"{channels} channels, expected mono; downmix it, e.g. ffmpeg -i in -ac 1 out.wav"
    if frames <= 0:
        return 0, "empty audio (0 samples)"
    return frames, None


def _list_signature(list_path, root):
    stat = os.stat(list_path)
    return np.array([MANIFEST_VERSION, stat.st_size, stat.st_mtime_ns], dtype=np.int64), str(Path(root).resolve())


def _load_manifest(manifest_path, list_path, root, count):
    """The manifest's arrays when it was written for this list and root, else None."""
    try:
        with np.load(manifest_path, allow_pickle=False) as saved:
            signature, resolved = _list_signature(list_path, root)
            if (not np.array_equal(saved["signature"], signature) or str(saved["root"]) != resolved
                    or len(saved["lengths"]) != count):
                return None
            return {key: saved[key] for key in ("lengths", "sizes", "mtimes", "folders", "folder_mtimes")}
    except (OSError, ValueError, KeyError):
        return None


def _save_manifest(manifest_path, list_path, root, lengths, sizes, mtimes, folders):
    """Write atomically; a list in a read-only folder is simply checked again next time."""
    folder_mtimes = np.array([os.stat(f).st_mtime_ns for f in folders.tolist()], dtype=np.int64)
    signature, resolved = _list_signature(list_path, root)
    try:
        with atomic_file(manifest_path) as handle:
            np.savez(handle, signature=signature, root=np.array(resolved), lengths=lengths, sizes=sizes,
                     mtimes=mtimes, folders=folders, folder_mtimes=folder_mtimes)
    except OSError as err:
        log.warning("could not cache audio headers in %s (%s); the run goes on, and the headers "
                    "are checked again next time", manifest_path, err.strerror or err)
