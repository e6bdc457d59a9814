"""Every file a list names is checked before any training time is spent.

Headers (readable, 16 kHz, mono, non-empty) are checked once, in parallel, and cached in a
binary manifest beside the list (`<list>.manifest.npz`: numpy arrays of lengths, sizes and
modification times, and the modification time of every folder holding a listed file). A later
start with the same list and unchanged folders takes the lengths as they are, without a stat
call per file: adding, removing or replacing a file (a rename) changes its folder's time.
A file rewritten in place does not; `--recheck_audio` checks every file's size and time again
and rereads the headers of those that changed (a read that finds fewer samples than the cached
length, a sign of such a rewrite, stops with ChangedAudio, which says so). The lengths let the loader place crops without
opening a file twice. A manifest that cannot be read is rebuilt, with a warning.
"""
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from speakernet.core.atomic import atomic_file
from speakernet.core.audio import SAMPLE_RATE, all_plain, full_paths
from speakernet.core.errors import ListError

log = logging.getLogger(__name__)

MANIFEST_VERSION = 2
MAX_REPORTED = 10


def check_audio_files(list_path, root, names, line_numbers, allow_outside=False, recheck=False):
    """Samples per file for `names`, or ListError naming the list line of the first bad file."""
    manifest_path = Path(f"{list_path}.manifest.npz")
    plain = all_plain(names)
    # Entries leaving the root are refused before the manifest is consulted (it may have been
    # written by a run with --allow_outside_paths).
    paths = None if plain else full_paths(list_path, root, names, line_numbers, allow_outside)
    cached = _load_manifest(manifest_path, list_path, root, len(names))
    if cached is not None and not recheck and _folders_unchanged(cached, root, paths):
        return cached["lengths"]
    if paths is None:
        paths = full_paths(list_path, root, names, line_numbers, allow_outside)
    lengths, sizes, mtimes, problems = _check_each(list_path, paths, cached)
    if problems:
        _raise_first(list_path, line_numbers, problems)
    _save_manifest(manifest_path, list_path, root, lengths, sizes, mtimes, _folders_of(paths))
    return lengths


def _folders_of(paths):
    return sorted({path.rpartition("/")[0] for path in paths})


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


def _folders_unchanged(cached, root, paths=None):
    """Whether the manifest's folders are this list's and none has changed since.

    The manifest matches the list (its size and time) and the resolved root, so for plain
    entries (`paths` None) its folders are this list's whenever they are spelled under the
    same root; sorted, the first and the last bound all. Otherwise every folder is compared."""
    folders = cached["folders"].tolist()
    if paths is None:
        prefix = os.path.join(str(root), "")
        if folders and not (folders[0].startswith(prefix) and folders[-1].startswith(prefix)):
            return False
    elif folders != _folders_of(paths):
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
    """The manifest's arrays when it was written for this list and root, else None. A manifest
    that cannot be read or holds arrays that do not fit (a truncated file, another program's
    writes) is only a lost cache: warned about, and rebuilt by the caller."""
    try:
        arrays = load_npz(manifest_path)
        problem = _signature_problem(arrays)
        if problem is None:
            signature, resolved = _list_signature(list_path, root)
            if not np.array_equal(arrays["signature"], signature) or str(arrays["root"]) != resolved:
                return None                   # written for another list, root or version
            problem = _file_arrays_problem(arrays, count)
    except FileNotFoundError:                # the first start
        return None
    except Exception as err:  # zipfile, zlib and numpy raise many types for a damaged file
        problem = f"{type(err).__name__}: {str(err).strip() or 'unreadable'}"
    if problem is None:
        return {key: arrays[key] for key in ("lengths", "sizes", "mtimes", "folders", "folder_mtimes")}
    log.warning("%s is damaged (%s); checking every header again and rewriting it", manifest_path, problem)
    return None


def load_npz(path):
    """Every array of the .npz file `path`, read now, so that a damaged member fails here; no
    pickled objects (loading them could run code)."""
    with np.load(path, allow_pickle=False) as saved:
        return {key: saved[key] for key in saved.files}


def arrays_problem(arrays, expected):
    """Why `arrays` do not hold each key of `expected` as an array of its numpy kind ('i'
    integers, 'U' text) and shape, or None."""
    for key, (kind, shape) in expected.items():
        if key not in arrays:
            return f"no '{key}'"
        if arrays[key].dtype.kind != kind or arrays[key].shape != shape:
            return f"'{key}' is {arrays[key].dtype} of shape {arrays[key].shape}, expected {shape}"
    return None


def _signature_problem(arrays):
    return arrays_problem(arrays, {"signature": ("i", (3,)), "root": ("U", ())})


def _file_arrays_problem(arrays, count):
    """What is wrong with the per-file and per-folder arrays of a manifest of `count` files."""
    folders = arrays.get("folders", np.empty(0)).size
    problem = arrays_problem(arrays, {"lengths": ("i", (count,)), "sizes": ("i", (count,)),
                                      "mtimes": ("i", (count,)), "folders": ("U", (folders,)),
                                      "folder_mtimes": ("i", (folders,))})
    if problem is None and (arrays["lengths"] <= 0).any():
        problem = "lengths below 1 sample"
    return problem


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
