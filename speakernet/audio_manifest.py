"""Validate every audio file a list names before any training time is spent.

Headers (readable, 16 kHz, mono, non-empty) are checked once and cached in a manifest beside
the list (`<list>.manifest.json`); later starts reuse each entry while the list and the file's
size and modification time are unchanged, so a million-file list is read once. The lengths
also let the loader place crops without opening a file twice.
"""
import json
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

MANIFEST_VERSION = 1
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


def check_audio_files(list_path, root, names, line_numbers, allow_outside=False):
    """Samples per file for `names`, or ListError naming the list line of the first bad file."""
    manifest_path = Path(f"{list_path}.manifest.json")
    cached = _load_manifest(manifest_path, list_path, root)
    paths = []
    for name, line in zip(names, line_numbers):
        try:
            paths.append(resolve(root, name, allow_outside))
        except ListError as err:
            raise ListError(f"{list_path}:{line}: {err}") from None
    lengths = np.zeros(len(names), dtype=np.int64)
    todo, problems, entries = [], [], {}
    for i, path in enumerate(paths):
        try:
            stat = os.stat(path)
        except OSError:
            problems.append((i, f"file not found: {path} (check --train_path/--test_path)"))
            continue
        key = str(path)
        entry = cached.get(key)
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            lengths[i] = entry[2]
            entries[key] = entry
        else:
            todo.append((i, path, stat))
    if todo:
        show = len(todo) > 2000
        with ThreadPoolExecutor(max_workers=8) as pool:
            headers = pool.map(lambda job: _read_header(job[1]), todo)
            for (i, path, stat), (frames, problem) in tqdm(
                    zip(todo, headers), total=len(todo), disable=not show, unit="file",
                    desc=f"checking audio in {Path(list_path).name}"):
                if problem:
                    problems.append((i, f"{path}: {problem}"))
                else:
                    lengths[i] = frames
                    entries[str(path)] = [stat.st_size, stat.st_mtime_ns, frames]
    if problems:
        problems.sort()
        # The first problem is the raised error (logged once by the entry point); the next
        # few are logged here so that one run shows more than one file to fix.
        for i, message in problems[1:MAX_REPORTED]:
            log.error("%s:%d: %s", list_path, line_numbers[i], message)
        i, message = problems[0]
        more = f" ({len(problems) - 1} more bad files, see the log)" if len(problems) > 1 else ""
        raise ListError(f"{list_path}:{line_numbers[i]}: {message}{more}")
    if todo:
        _save_manifest(manifest_path, list_path, root, entries)
    return lengths


def _read_header(path):
    """(frames, None) for a usable file, else (0, what is wrong and how to fix it)."""
    try:
        info = soundfile.info(str(path))
    except Exception as err:  # libsndfile raises several types for broken files
        return 0, f"unreadable audio ({str(err).strip() or type(err).__name__}); re-encode it as 16 kHz mono WAV"
    if info.samplerate != SAMPLE_RATE:
        return 0, (f"sample rate {info.samplerate} Hz, expected {SAMPLE_RATE} Hz; resample it, "
                   f"e.g. ffmpeg -i in -ar 16000 -ac 1 out.wav")
    if info.channels != 1:
        return 0, f"{info.channels} channels, expected mono; downmix it, e.g. ffmpeg -i in -ac 1 out.wav"
    if info.frames <= 0:
        return 0, "empty audio (0 samples)"
    return info.frames, None


def _list_signature(list_path, root):
    stat = os.stat(list_path)
    return {"version": MANIFEST_VERSION, "list_size": stat.st_size,
            "list_mtime_ns": stat.st_mtime_ns, "root": str(Path(root).resolve())}


def _load_manifest(manifest_path, list_path, root):
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            data = json.load(handle)
        if data.get("signature") == _list_signature(list_path, root):
            return data["files"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {}


def _save_manifest(manifest_path, list_path, root, entries):
    """Write atomically; a list in a read-only folder is simply checked again next time."""
    data = {"signature": _list_signature(list_path, root), "files": entries}
    try:
        with atomic_file(manifest_path, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
    except OSError as err:
        log.warning("could not cache audio headers in %s (%s); the run goes on, and the headers "
                    "are checked again next time", manifest_path, err.strerror or err)
