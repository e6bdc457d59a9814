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
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
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


def all_plain(names):
    """Whether every entry is plain, in one pass over the joined text (a million entries)."""
    text = "\n".join(names)
    return not text.startswith("/") and "\n/" not in text and ".." not in text


def full_paths(list_path, root, names, line_numbers, allow_outside=False):
    """The path of every entry (ListError naming the line of one that leaves the root)."""
    prefix = os.path.join(str(root), "")
    if all_plain(names):
        return [prefix + name for name in names]
    paths = []
    for name, line in zip(names, line_numbers):
        try:
            paths.append(prefix + name if is_plain(name) else str(resolve(root, name, allow_outside)))
        except ListError as err:
            raise ListError(f"{list_path}:{line}: {err}") from None
    return paths


# --recheck_audio: the entry point sets it for every list of the run (train, trials, cohort).
RECHECK_ALL = {"on": False}


def check_audio_files(list_path, root, names, line_numbers, allow_outside=False, recheck=False):
    """Samples per file for `names`, or ListError naming the list line of the first bad file."""
    recheck = recheck or RECHECK_ALL["on"]
    manifest_path = Path(f"{list_path}.manifest.npz")
    paths = full_paths(list_path, root, names, line_numbers, allow_outside)
    folders = sorted({path.rpartition("/")[0] for path in paths})
    cached = _load_manifest(manifest_path, list_path, root, len(paths))
    if cached is not None and not recheck and _folders_unchanged(cached, folders):
        return cached["lengths"]
    lengths, sizes, mtimes, problems = _check_each(list_path, paths, cached)
    if problems:
        _raise_first(list_path, line_numbers, problems)
    _save_manifest(manifest_path, list_path, root, lengths, sizes, mtimes, folders)
    return lengths


def _check_each(list_path, paths, cached, block=4096):
    """Headers of the files not in the manifest with the same size and time (all of them
    without a manifest), read in parallel a block at a time -> (lengths, sizes, mtimes, problems)."""
    count = len(paths)
    lengths, sizes, mtimes = (np.zeros(count, dtype=np.int64) for _ in range(3))
    problems, todo = [], range(count)
    if cached is not None:                 # stat first: only changed files are read again
        todo = []
        for i, path in enumerate(paths):
            try:
                stat = os.stat(path)
            except OSError:
                problems.append((i, f"{path}: file not found (check --train_path/--test_path)"))
                continue
            if cached["sizes"][i] == stat.st_size and cached["mtimes"][i] == stat.st_mtime_ns:
                lengths[i], sizes[i], mtimes[i] = cached["lengths"][i], stat.st_size, stat.st_mtime_ns
            else:
                todo.append(i)
    chunks = [todo[begin:begin + block] for begin in range(0, len(todo), block)]
    with _header_pool(len(todo)) as pool, \
            tqdm(total=len(todo), disable=len(todo) < 2000, unit="file",
                 desc=f"checking audio in {Path(list_path).name}") as bar:
        for chunk, headers in zip(chunks, pool.map(_read_headers, ([paths[i] for i in c] for c in chunks))):
            for i, (frames, size, mtime, problem) in zip(chunk, headers):
                lengths[i], sizes[i], mtimes[i] = frames, size, mtime
                if problem:
                    problems.append((i, f"{paths[i]}: {problem}"))
            bar.update(len(chunk))
    if len(todo):
        log.info("checked %d audio headers of %s (%d taken from its manifest)", len(todo), list_path,
                 count - len(todo) - len(problems))
    return lengths, sizes, mtimes, problems


def _read_headers(paths):
    return [_read_header(path) for path in paths]


def _header_pool(count):
    """Processes for many headers (reading them is Python work the GIL would serialise),
    threads for a few (a process pool costs more to start than they take)."""
    if count >= 20000 and os.name == "posix" and (os.cpu_count() or 1) > 1:
        return ProcessPoolExecutor(max_workers=os.cpu_count(), mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(max_workers=4)


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
    if cached["folders"].tolist() != folders:
        return False
    for folder, mtime in zip(folders, cached["folder_mtimes"].tolist()):
        try:
            if os.stat(folder).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return True


def _wav_header(handle):
    """(rate, channels, frames) of a plain RIFF/WAVE file from its first bytes, or None when the
    file is anything else (then libsndfile reads it): 4 kB cost far less than libsndfile's open."""
    head = handle.read(4096)
    size = os.fstat(handle.fileno()).st_size
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    position, fmt = 12, None
    while position + 8 <= len(head):
        kind, length = head[position:position + 4], int.from_bytes(head[position + 4:position + 8], "little")
        body = position + 8
        if kind == b"fmt " and body + 16 <= len(head):
            fmt = tuple(int.from_bytes(head[body + a:body + b], "little") for a, b in ((0, 2), (2, 4), (4, 8), (14, 16)))
        elif kind == b"data":
            code, channels, rate, bits = fmt or (0, 0, 0, 0)
            if code not in (1, 3) or channels < 1 or bits % 8 or bits == 0:
                return None
            return rate, channels, min(length, size - body) // (channels * bits // 8)
        position = body + length + (length & 1)
    return None


def _read_header(path):
    """(frames, size, mtime_ns, None) for a usable file, else (0, size, mtime_ns, what is wrong
    and how to fix it)."""
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            wav = _wav_header(handle)
    except FileNotFoundError:
        return 0, 0, 0, "file not found (check --train_path/--test_path)"
    except OSError as err:
        return 0, 0, 0, f"cannot read it ({err.strerror or err})"
    size, mtime = stat.st_size, stat.st_mtime_ns
    try:
        if wav is None:
            info = soundfile.info(str(path))
            wav = info.samplerate, info.channels, info.frames
    except Exception as err:  # libsndfile raises several types for broken files
        return 0, size, mtime, (f"unreadable audio ({str(err).strip() or type(err).__name__}); "
                                f"re-encode it as 16 kHz mono WAV")
    rate, channels, frames = wav
    if rate != SAMPLE_RATE:
        return 0, size, mtime, (f"sample rate {rate} Hz, expected {SAMPLE_RATE} Hz; resample it, "
                                f"e.g. ffmpeg -i in -ar 16000 -ac 1 out.wav")
    if channels != 1:
        return 0, size, mtime, f"{channels} channels, expected mono; downmix it, e.g. ffmpeg -i in -ac 1 out.wav"
    if frames <= 0:
        return 0, size, mtime, "empty audio (0 samples)"
    return frames, size, mtime, None


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
    folder_mtimes = np.array([os.stat(f).st_mtime_ns for f in folders], dtype=np.int64)
    signature, resolved = _list_signature(list_path, root)
    try:
        with atomic_file(manifest_path) as handle:
            np.savez(handle, signature=signature, root=np.array(resolved), lengths=lengths, sizes=sizes,
                     mtimes=mtimes, folders=np.array(folders), folder_mtimes=folder_mtimes)
    except OSError as err:
        log.warning("could not cache audio headers in %s (%s); the run goes on, and the headers "
                    "are checked again next time", manifest_path, err.strerror or err)
