#!/usr/bin/env python3
"""Packed audio: many 16 kHz mono WAVs as one int16 file plus an index, read by memory map.

A training crop from a WAV costs an open(), a header parse, a seek and a libsndfile read (about
0.15-0.4 ms on a shared CPU); from a pack it is one slice of a memory map and an int16 -> float32
conversion (about 0.04 ms), and the operating system's page cache does the rest. Samples are
bit-identical to soundfile.read(..., dtype="float32") of the source files.

    python3 -m speakernet.data.packed_audio --list data/train_list.txt --root data/voxceleb2   # -> data/train_list.pack
    python3 -m speakernet.data.packed_audio --dir data/musan_split                             # -> data/musan_split.pack
    python3 -m speakernet.data.packed_audio --dir data/RIRS_NOISES/simulated_rirs

Without --out the pack goes where the trainer looks for it (`default_prefix`): beside the list
(its name without the extension, plus .pack) or beside the folder (its name plus .pack). With
`--packs auto` (the default) training then reads the list's crops and the MUSAN/RIR crops from
those packs; `--packs none` ignores them, `--packs A,B` names prefixes. A pack is used only for
the files whose length matches the list's validated header and whose size and modification
time are those they had when packed; others are read from their files. A pack that does not
match its index (a truncated .pcm, a damaged index) is not used, with a warning.

Files: PREFIX.pcm (the samples, little-endian int16, back to back) and PREFIX.index.npz
(names relative to the root, offsets, lengths, and each file's size and modification time in
ns). The index is written last, under a temporary name and renamed, so a pack with an index is
complete.

Use: `PackedAudio(prefix, root)`; `pack.read_crop(path, total, start, length)` has the signature
of DatasetLoader.read_crop, for paths as the loaders spell them (root / name).
"""
import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from speakernet.core.atomic import atomic_file, make_folders
from speakernet.core.audio import INT16_SCALE as SCALE, SAMPLE_RATE, to_float  # noqa: F401 (re-exported)
from speakernet.core.audio import list_lines, pack_exists as exists, pack_prefix as default_prefix
from speakernet.core.audio_check import arrays_problem, check_audio_files, load_npz
from speakernet.core.errors import ListError, UserError
from speakernet.core.option_types import resumable

log = logging.getLogger("packed_audio")
VERSION = 2          # 2: each file's size and modification time, to tell files changed since


def add_arguments(parser):
    g = parser.add_argument_group("packed audio (packed_audio.py)")
    resumable(g.add_argument("--packs", type=str, default="auto",
                             help="read training, MUSAN and RIR crops from int16 packs: 'auto' uses those "
                                  "packed_audio.py writes by default (train_list.pack beside the list, "
                                  "DIR.pack beside --musan_path/--rir_path), 'none' reads the audio files, "
                                  "or comma-separated pack prefixes"))


def pack(names, root, prefix, desc="packing"):
    """Write the files `names` (relative to `root`) into PREFIX.pcm and PREFIX.index.npz."""
    prefix = str(prefix)
    offsets, lengths, sizes, mtimes, position = [], [], [], [], 0
    with atomic_file(prefix + ".pcm") as out:
        for name in tqdm(names, desc=desc, unit="file"):
            stat, audio = _read_for_pack(os.path.join(root, name))
            out.write(audio.astype("<i2").tobytes())
            offsets.append(position)
            lengths.append(len(audio))
            sizes.append(stat.st_size)
            mtimes.append(stat.st_mtime_ns)
            position += len(audio)
    try:
        with atomic_file(prefix + ".index.npz") as handle:
            np.savez(handle, names=np.array(names, dtype=str), offsets=np.array(offsets, dtype=np.int64),
                     lengths=np.array(lengths, dtype=np.int64), sizes=np.array(sizes, dtype=np.int64),
                     mtimes=np.array(mtimes, dtype=np.int64), version=VERSION, sample_rate=SAMPLE_RATE)
    except BaseException:
        os.unlink(prefix + ".pcm")          # samples without their index are no pack
        raise
    return position


def _read_for_pack(path):
    """(stat, int16 samples) of the 16 kHz mono file `path`. The stat is taken first: a file
    changed while it is packed then differs from its recorded time, and is read from the file."""
    try:
        stat = os.stat(path)
        audio, rate = soundfile.read(path, dtype="int16", always_2d=True)
    except Exception as err:  # OSError, and the several types libsndfile raises
        raise ListError(f"{path}: unreadable audio ({str(err).strip() or type(err).__name__}); "
                        f"re-encode it as 16 kHz mono WAV") from None
    if rate != SAMPLE_RATE or audio.shape[1] != 1:
        raise ListError("%s: %d Hz, %d channels; packs hold 16 kHz mono audio (resample it, e.g. "
                        "ffmpeg -i in -ar 16000 -ac 1 out.wav)" % (path, rate, audio.shape[1]))
    return stat, audio[:, 0]


class PackedAudio:
    """Read-only view of a pack; the memory map opens on first use, so each loader worker maps it
    for itself (cheap: pages are shared through the page cache). UserError naming the pack when
    its index cannot be read or does not match its .pcm."""

    def __init__(self, prefix, root):
        self.pcm_path = str(prefix) + ".pcm"
        index = _checked_index(prefix)
        self.offsets = index["offsets"]
        self.lengths = index["lengths"]
        self.sizes = index["sizes"]
        self.mtimes = index["mtimes"]
        self.names = [str(n) for n in index["names"]]
        self.lookup = {str(Path(root) / n): i for i, n in enumerate(self.names)}
        self._map = None

    def unchanged(self, i, path):
        """Whether file i, at `path`, has the size and modification time it had when packed."""
        try:
            stat = os.stat(path)
        except OSError:
            return False
        return stat.st_size == int(self.sizes[i]) and stat.st_mtime_ns == int(self.mtimes[i])

    def __contains__(self, path):
        return str(path) in self.lookup

    @property
    def samples(self):
        if self._map is None:
            self._map = np.memmap(self.pcm_path, dtype="<i2", mode="r")
        return self._map

    def crop(self, i, start, length):
        """float32 samples [start, start + length) of file i; files shorter than `length` wrap."""
        total = int(self.lengths[i])
        begin = int(self.offsets[i])
        if total < length:
            audio = self.samples[begin:begin + total].astype(np.float32) * SCALE
            return np.pad(audio, (0, length - total), mode="wrap")
        start = min(max(start, 0), total - length)
        # One pass: int16 -> float32 times 2^-15 (exact, so identical to convert-then-scale).
        return np.multiply(self.samples[begin + start:begin + start + length], SCALE, dtype=np.float32)

    def crop_into(self, i, start, length, out):
        """Write `crop` (float32 `out`) or `crop_int16` (int16 `out`) into `out` without a
        temporary array."""
        total = int(self.lengths[i])
        if total < length:
            out[:] = self.crop(i, start, length) if out.dtype != np.int16 else self.crop_int16(i, start, length)
            return
        begin = int(self.offsets[i]) + min(max(start, 0), total - length)
        if out.dtype == np.int16:
            out[:] = self.samples[begin:begin + length]
        else:
            np.multiply(self.samples[begin:begin + length], SCALE, out=out)

    def crop_int16(self, i, start, length):
        """The same samples as `crop`, as the stored int16 (crop = crop_int16 * 2^-15 exactly)."""
        total = int(self.lengths[i])
        begin = int(self.offsets[i])
        if total < length:
            return np.pad(self.samples[begin:begin + total], (0, length - total), mode="wrap")
        start = min(max(start, 0), total - length)
        return np.array(self.samples[begin + start:begin + start + length])

    def read_crop(self, path, total, start, length):
        """DatasetLoader.read_crop's signature (`total` is taken from the index)."""
        return self.crop(self.lookup[str(path)], start, length)


def _checked_index(prefix):
    """The arrays of PREFIX.index.npz, checked against each other and against PREFIX.pcm."""
    try:
        index = load_npz(str(prefix) + ".index.npz")
        problem = _index_problem(index, os.path.getsize(str(prefix) + ".pcm"))
    except Exception as err:  # zipfile, zlib, numpy and the file system raise many types
        problem = f"unreadable index ({type(err).__name__}: {str(err).strip()})"
    if problem:
        raise UserError(f"pack {prefix}: {problem}; delete {prefix}.pcm and {prefix}.index.npz and "
                        f"pack again with python3 -m speakernet.packed_audio")
    return index


def _index_problem(index, pcm_bytes):
    """What makes a pack's index unusable with a .pcm of `pcm_bytes` bytes, or None."""
    problem = arrays_problem(index, {"version": ("i", ())})
    if problem is None and int(index["version"]) != VERSION:
        problem = f"pack version {int(index['version'])}, expected {VERSION}"
    files = (index["names"].size if "names" in index else 0,)
    problem = problem or arrays_problem(index, {"names": ("U", files), "offsets": ("i", files), "lengths": ("i", files),
                                                "sizes": ("i", files), "mtimes": ("i", files)})
    if problem:
        return problem
    ends = np.cumsum(index["lengths"])
    if (index["lengths"] < 0).any() or not np.array_equal(index["offsets"], ends - index["lengths"]):
        return "the index's offsets and lengths do not follow each other"
    total = int(ends[-1]) if len(ends) else 0
    if pcm_bytes != 2 * total:
        return f"the .pcm holds {pcm_bytes // 2} samples, its index {total} (a truncated or replaced file)"
    return None


class PackReader:
    """read_crop(path, total, start, length) from the first pack holding `path`, else `fallback`.

    A class rather than a closure so that loader workers can receive it under any start method.
    """

    def __init__(self, packs, fallback):
        self.packs = list(packs)
        self.fallback = fallback

    def __call__(self, path, total, start, length):
        for p in self.packs:
            i = p.lookup.get(str(path))
            if i is not None:
                return p.crop(i, start, length)
        return self.fallback(path, total, start, length)

    def holds(self, path):
        return any(str(path) in p.lookup for p in self.packs)

    def read_into(self, path, total, start, length, out):
        """Write the crop into `out` (int16 or float32 row): straight from the memory map when a
        pack holds `path` (int16 rows only then), else through `fallback`."""
        for p in self.packs:
            i = p.lookup.get(str(path))
            if i is not None:
                p.crop_into(i, start, length, out)
                return
        if out.dtype == np.int16:
            raise ValueError(f"{path} is not packed: it has no int16 samples to copy")
        out[:] = self.fallback(path, total, start, length)

    def read_int16(self, path, total, start, length):
        """The crop as int16 when a pack holds `path`, else None (read it as float instead)."""
        for p in self.packs:
            i = p.lookup.get(str(path))
            if i is not None:
                return p.crop_int16(i, start, length)
        return None


def reader(packs, fallback):
    """read_crop(path, total, start, length) from the first pack holding `path`, else `fallback`."""
    return PackReader(packs, fallback)


def restrict(pack, paths, lengths, what):
    """Keep in `pack` only `paths` whose packed length equals `lengths` (the validated headers)
    and whose size and modification time are those they had when packed: a pack made before a
    file changed, even to one of the same length, must not feed stale audio. Logs the coverage."""
    keep, other_length, changed = {}, 0, 0
    for path, length in zip(paths, lengths):
        i = pack.lookup.get(str(path))
        if i is None:
            continue
        if int(pack.lengths[i]) != int(length):
            other_length += 1
        elif not pack.unchanged(i, str(path)):
            changed += 1
        else:
            keep[str(path)] = i
    pack.lookup = keep
    if other_length:
        log.warning("%s: %d files differ in length from %s.pcm and are read from their files; "
                    "pack again", what, other_length, pack.pcm_path[:-4])
    if changed:
        log.warning("%s: %d files changed (size or modification time) since they were packed into %s "
                    "and are read from their files; pack again", what, changed, pack.pcm_path)
    log.info("%s: %d of %d files read from %s", what, len(keep), len(paths), pack.pcm_path)
    return pack


def loader_packs(spec, train_list_path, train_path, train_files, train_lengths, bank=None,
                 musan_path=None, rir_path=None):
    """Packs for the training loader, from --packs: 'auto' (those at the default places),
    'none', or comma-separated prefixes (each holding list files or MUSAN/RIR files). A pack
    that cannot be used is skipped with a warning: its files are read from the files."""
    spec = str(spec or "none").strip()
    if spec == "none":
        return []
    bank_paths = [p for kind in (bank.files if bank else {}) for p in bank.files[kind]]
    bank_lengths = [n for kind in (bank.lengths if bank else {}) for n in bank.lengths[kind]]
    if spec == "auto":
        wanted = [(default_prefix(train_list_path), train_path, train_files, train_lengths, "training list")]
        if bank is not None:
            for kind, root in (("musan", musan_path), ("rir", rir_path)):
                wanted.append((default_prefix(root), root, bank_paths, bank_lengths, kind))
        found = [w for w in wanted if exists(w[0])]
    else:
        found = []
        for prefix in (p.strip() for p in spec.split(",") if p.strip()):
            if not exists(prefix):
                raise UserError(f"--packs {prefix}: no {prefix}.pcm and {prefix}.index.npz; "
                                        f"write it with python3 -m speakernet.packed_audio")
            # A named pack may hold either kind of file: try each root it could be relative to.
            for root, paths, lengths, what in ((train_path, train_files, train_lengths, "training list"),
                                               (musan_path, bank_paths, bank_lengths, "musan"),
                                               (rir_path, bank_paths, bank_lengths, "rir")):
                if root is not None and paths:
                    found.append((prefix, root, paths, lengths, what))
    packs, broken, unused = [], set(), {f[0] for f in found} if spec != "auto" else set()
    for prefix, root, paths, lengths, what in found:
        if prefix in broken:
            continue
        try:
            pack = restrict(PackedAudio(prefix, root), paths, lengths, f"{what} ({prefix})")
        except UserError as err:
            log.warning("%s; meanwhile its files are read from the audio files", err)
            broken.add(prefix)
            unused.discard(prefix)
            continue
        if pack.lookup:
            packs.append(pack)
            unused.discard(prefix)
    for prefix in sorted(unused):
        log.warning("--packs %s holds none of the files of this run (packed with another --root, or "
                    "from another list?); they are read from the audio files", prefix)
    return packs


def packs_from_options(options, train_list, bank=None):
    """The training loader's packs for --packs (see loader_packs)."""
    return loader_packs(getattr(options, "packs", "none"), options.train_list, options.train_path,
                        train_list.files, train_list.lengths, bank, options.musan_path, options.rir_path)


def main(argv=None):
    """The command line: 0 when packed (or already packed), 2 with one logged line for a bad input."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", help="train list ('speaker path' lines): pack the files it names")
    p.add_argument("--root", help="folder the list's paths are relative to")
    p.add_argument("--dir", help="pack every .wav under this folder instead (MUSAN split, RIRs)")
    p.add_argument("--out", help="output prefix: PREFIX.pcm and PREFIX.index.npz (default: where the "
                                 "trainer's --packs auto finds it, LIST without extension + .pack or DIR.pack)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if bool(args.list) == bool(args.dir):
        p.error("give --list (with --root) or --dir")
    if args.list and not args.root:
        p.error("--list needs --root")
    try:
        pack_command(args.list, args.root, args.dir, args.out)
    except UserError as err:
        log.error("%s", err)
        return 2
    return 0


def pack_command(list_path, root, folder, out):
    """Check the input, then pack it (UserError, and nothing written, for a bad input)."""
    names = _names_in_list(list_path, root) if list_path else _names_in_folder(folder)
    root = root if list_path else folder
    out = out or default_prefix(list_path or folder.rstrip("/"))
    if os.path.exists(out + ".index.npz"):
        print("%s is already packed" % out)
        return
    if list_path:           # every header first, each bad file named with its list line
        check_audio_files(list_path, root, names, list(names.values()), allow_outside=True)
    try:
        make_folders(Path(out).parent)
        samples = pack(list(names), root, out)
    except OSError as err:
        raise UserError(f"cannot write the pack {out}: {err.strerror or err} (choose another --out, "
                        f"or free some space; nothing was written)") from None
    print("Packed %d files (%.1f h) into %s.pcm" % (len(names), samples / SAMPLE_RATE / 3600, out))


def _names_in_list(list_path, root):
    """{file named by the list's last column: its first line}."""
    if not os.path.isdir(root):
        raise UserError(f"--root {root} is not a folder (give the folder the list's paths are relative to)")
    names = {}
    for number, columns in list_lines(list_path):
        names.setdefault(columns[-1], number)
    if not names:
        raise ListError(f"{list_path}: the list names no files; nothing to pack")
    return names


def _names_in_folder(folder):
    """{every .wav under `folder`, relative to it: None}, sorted."""
    if not os.path.isdir(folder):
        what = "not a folder" if os.path.exists(folder) else "no such folder"
        raise UserError(f"--dir {folder}: {what} (give the folder of .wav files to pack)")
    names = sorted(str(f.relative_to(folder)) for f in Path(folder).rglob("*.wav"))
    if not names:
        raise UserError(f"--dir {folder} holds no .wav files; nothing to pack (give the folder of "
                        f".wav files, e.g. data/musan_split)")
    return dict.fromkeys(names)


if __name__ == "__main__":
    sys.exit(main())
