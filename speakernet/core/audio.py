"""Audio files and the lists that name them: the project's audio constants, the one conversion
between frames and samples, crop reads, pack locations, list lines, compact path tables, and
the validation of every file a list names before any training time is spent.

Crops are counted in 10 ms frames of a 25 ms window, as voxceleb_trainer does: a crop of F
frames holds F * 160 + 240 samples at 16 kHz.

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
import re
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from speakernet.core.atomic import atomic_file
from speakernet.core.errors import ChangedAudio, ListError, NonFiniteAudio  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------- constants and conversions

SAMPLE_RATE = 16000
HOP = 160                      # samples per 10 ms frame
WINDOW_EXTRA = 240             # a 25 ms window is 400 samples: 240 more than one hop


def crop_samples(frames):
    """Samples in a crop of `frames` frames."""
    return frames * HOP + WINDOW_EXTRA


INT16_SCALE = np.float32(1 / 32768)    # what libsndfile uses for PCM_16 -> float


def to_float(audio):
    """Waveform tensor as float32: int16 samples (packed crops sent as they are stored, half the
    bytes of float32 between processes and to the device) are scaled by 2^-15 exactly as
    libsndfile does, so the result equals a float read of the file."""
    if audio.dtype == torch.int16:
        # Convert, then scale in place: an int16 x float product (type promotion) is several
        # times slower on the CPU than the two passes.
        return audio.float().mul_(float(INT16_SCALE))
    return audio.float()


def read_crop(path, total, start, length):
    """`length` samples from `start`, reading only that span; shorter files wrap around.
    `total` is the file's cached length: ChangedAudio when the file no longer has it."""
    if total < length:
        audio, _ = soundfile.read(path, dtype="float32", always_2d=False)
        if len(audio) != total:
            raise changed_audio(path, f"{len(audio)} samples", total)
        return np.pad(check_finite(audio, path), (0, length - len(audio)), mode="wrap")
    audio, _ = soundfile.read(path, start=start, frames=length, dtype="float32", always_2d=False)
    if len(audio) < length:
        raise changed_audio(path, f"it ends at sample {start + len(audio)}", total)
    return check_finite(audio, path, start)


def changed_audio(path, found, total):
    """ChangedAudio for a read that disagrees with the cached length `total`: the file was
    rewritten in place after its header was cached, which only --recheck_audio notices (a crop
    would otherwise hold samples the file no longer has, or fail inside numpy)."""
    return ChangedAudio(f"{path}: {found}, but its cached header says {total} samples: the file changed "
                        f"after its list was checked; run again with --recheck_audio", path=str(path))


def pack_prefix(path):
    """Where a pack of a list (data/train_list.txt -> data/train_list.pack) or of a folder
    (data/musan_split -> data/musan_split.pack) is written and looked for."""
    path = Path(path)
    if path.is_dir():
        return str(path.parent / (path.name + ".pack"))
    return str(path.with_suffix(".pack"))


def pack_exists(prefix):
    return os.path.exists(str(prefix) + ".index.npz") and os.path.exists(str(prefix) + ".pcm")


# ---------------------------------------------------------------------------------- list lines

def list_lines(list_path):
    # utf-8-sig: a byte-order mark (written by some Windows editors) would otherwise become
    # part of the first speaker's name or label.
    try:
        with open(list_path, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if "\0" in line:        # else a path with it fails later as 'embedded null byte'
                    raise ListError(f"{list_path}:{number}: NUL byte in the line; the list is damaged "
                                    f"or not a text file (rewrite that line)")
                columns = line.split()
                if columns:
                    yield number, columns
    except FileNotFoundError:
        raise ListError(f"list file not found: {list_path}") from None
    except IsADirectoryError:
        raise ListError(f"{list_path} is a directory, not a list file (give the list's path)") from None
    except OSError as err:
        raise ListError(f"cannot read list {list_path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ListError(f"{list_path}: not a UTF-8 text list ({err.reason})") from None


def list_columns(list_path):
    """The fast reading of a big list whose non-blank lines all have as many columns -> (one
    list of values per column, line numbers array), exactly what list_lines gives for such a
    list; None when the list is anything else (lines of different lengths, no lines, NUL
    bytes, not UTF-8, whitespace beyond ASCII, unreadable), for list_lines to read and explain."""
    try:
        with open(list_path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError):
        return None
    if "\0" in text or not text.isascii() and re.search(r"[^\S\x00-\x7f]", text):
        return None
    lines, columns = _columns_per_line(text)
    if not len(lines) or (columns != columns[0]).any():
        return None
    count, tokens = int(columns[0]), text.split()
    return [tokens[i::count] for i in range(count)], lines


def _columns_per_line(text):
    """(numbers of the non-blank lines, columns on each): columns split at the characters
    str.split() splits at (the text's whitespace is ASCII), lines at newlines only, as a
    text file's lines are, counted over the UTF-8 bytes with numpy."""
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    space = (data == 32) | ((data - 9) <= 4) | ((data - 28) <= 3)       # \t\n\v\f\r, \x1c-\x1f
    word_starts = np.flatnonzero(~space[1:] & space[:-1]) + 1
    if len(data) and not space[0]:
        word_starts = np.concatenate(([0], word_starts))
    newlines = np.flatnonzero(data == 10)
    columns = np.bincount(np.searchsorted(newlines, word_starts), minlength=len(newlines) + 1)
    lines = np.flatnonzero(columns)
    return lines + 1, columns[lines]


def space_hint(columns, expected):
    if columns > expected:
        return " (a path with spaces reads as several columns: rename such files without spaces)"
    return ""


def warn_duplicates(list_path, entries, lines, what):
    """Warn once about entries (lines or trials) that repeat an earlier one."""
    if len(set(entries)) == len(entries):          # the usual case, in one pass
        return
    first, repeats = {}, []
    for entry, line in zip(entries, lines):
        if entry in first:
            repeats.append((line, first[entry]))
        else:
            first[entry] = line
    if repeats:
        line, earlier = repeats[0]
        log.warning("%s: %d duplicate %ss (line %d repeats line %d); each copy counts again", list_path,
                    len(repeats), what, line, earlier)


# --------------------------------------------------------------------------------- path tables

class PathTable:
    """Read-only sequence of paths `prefix + entry` (an absolute entry stands alone): the
    entries' UTF-8 bytes in one buffer, with offsets."""

    def __init__(self, entries, prefix=""):
        entries = list(entries)
        self.prefix = prefix
        blob = "".join(entries).encode("utf-8")
        sizes = np.fromiter(map(len, entries), dtype=np.int64, count=len(entries))
        if len(blob) != sizes.sum():           # non-ASCII names: count bytes, not characters
            sizes = np.fromiter((len(e.encode("utf-8")) for e in entries), dtype=np.int64, count=len(entries))
        self._offsets = np.zeros(len(entries) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self._offsets[1:])
        self._data = np.frombuffer(blob, dtype=np.uint8).copy()

    def __len__(self):
        return len(self._offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        entry = self._data[self._offsets[index]:self._offsets[index + 1]].tobytes().decode("utf-8")
        return entry if entry.startswith("/") else self.prefix + entry

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other):
        return list(self) == list(other)

    def update_digest(self, digest):
        """Feed the entries (as listed, without the prefix) to a hashlib object, in one pass."""
        digest.update(self._offsets.tobytes())
        digest.update(self._data.tobytes())

    def index(self, path):
        for i, candidate in enumerate(self):
            if candidate == path:
                return i
        raise ValueError(f"{path} is not in the table")


# --------------------------------------------------------------------------- header validation
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
