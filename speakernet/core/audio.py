"""Audio files and the lists that name them: the project's audio constants, the one conversion
between frames and samples, crop reads, pack locations, list lines, compact path tables and
the resolution of list entries under their root.

Crops are counted in 10 ms frames of a 25 ms window, as voxceleb_trainer does: a crop of F
frames holds F * 160 + 240 samples at 16 kHz.
The check of every file a list names, and its manifest: audio_check.py.
"""
import logging
import os
import re
from pathlib import Path

import numpy as np
import soundfile
import torch

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


# --------------------------------------------------------------------------- entries and samples

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
