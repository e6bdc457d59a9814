"""Lists and checks: --make_list writes a train list of a speaker/video/utt.wav tree; --check reports
missing or unusable audio under a folder or in a train or trial list."""
import concurrent.futures
import glob
import os

import numpy as np
import soundfile
from tqdm import tqdm

from speakernet.core.audio_check import _read_header       # one place decides what a usable audio file is
from speakernet.prep.common import SHOW, SR, PrepError, log, write_atomic


# ---- lists
def make_list(args):
    """train_list lines 'speaker speaker/video/utt.wav' for every speaker/video/utt.wav under DIR.

    Files the trainer would refuse (unreadable, empty, not 16 kHz, not mono) are left out, with
    one warning that counts them and names the first: the list written is one the trainer
    accepts, and --check DIR lists every such file."""
    root = args.make_list
    if not os.path.isdir(root):
        raise PrepError("--make_list %s: no such folder" % root)
    if os.path.isdir(args.list_out):
        raise PrepError("--list_out %s is a folder (give the path of the list file to write)" % args.list_out)
    lines, stray = [], 0
    speakers = sorted(e.name for e in os.scandir(root) if e.is_dir())
    for spk in tqdm(speakers, desc="listing", unit="speaker"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, spk)):
            dirnames.sort()
            depth = os.path.relpath(dirpath, root).count(os.sep)
            for name in sorted(filenames):
                if name.lower().endswith(".wav"):
                    if depth == 1:
                        lines.append((spk, "%s/%s" % (os.path.relpath(dirpath, root).replace(os.sep, "/"), name)))
                    else:
                        stray += 1
    if stray:
        log.warning("%d .wav files under %s are not at speaker/video/utt.wav and were left out", stray, root)
    if not lines:
        raise PrepError("no speaker/video/utt.wav files under %s; run --extract (and --convert for "
                        "VoxCeleb2) first" % root)
    # Lists are split on whitespace: 'spk a b.wav' would read as three columns.
    spaced = [path for _, path in lines if len(path.split()) != 1]
    if spaced:
        raise PrepError("--make_list %s: %d file paths contain whitespace, the first '%s' (rename those "
                        "files and folders without spaces)" % (root, len(spaced), spaced[0]))
    undecodable = [path for _, path in lines if not_utf8(path)]
    if undecodable:
        raise PrepError("--make_list %s: %d file paths are not UTF-8, the first '%s' (rename those files and "
                        "folders: lists are UTF-8 text)" % (root, len(undecodable), shown(undecodable[0])))
    lines = ["%s %s" % entry for entry in usable_entries(lines, root)]
    text = "".join(line + "\n" for line in lines)
    if os.path.exists(args.list_out):
        with open(args.list_out, "rb") as old:
            same = old.read() == text.encode("utf-8")
        if same:
            print("%s is already up to date (%d utterances)" % (args.list_out, len(lines)))
            return
        if not args.overwrite:
            raise PrepError("%s already exists with other contents; pass --overwrite to replace it"
                            % args.list_out)
    os.makedirs(os.path.dirname(os.path.abspath(args.list_out)), exist_ok=True)
    write_atomic(args.list_out, lines)
    print("Wrote %s: %d utterances of %d speakers (train_path %s)"
          % (args.list_out, len(lines), len({line.split()[0] for line in lines}), root))


def not_utf8(name):
    """Whether a file name holds bytes that are not UTF-8 (Python gives them as surrogates): no
    list can name such a file, since lists are UTF-8 text."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def shown(name):
    """`name` printable, its bytes that are not UTF-8 as \\x escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def usable_entries(entries, root):
    """The (speaker, path) entries whose audio header passes the trainer's check; warns once,
    with a count and the first, about the others."""
    def problem(entry):
        return _read_header(os.path.join(root, entry[1]))[3]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        problems = list(tqdm(pool.map(problem, entries), total=len(entries), desc="checking headers",
                             unit="file", leave=False))
    bad = [(path, why) for (_, path), why in zip(entries, problems) if why]
    if len(bad) == len(entries):
        raise PrepError("none of the %d .wav files under %s is usable, e.g. %s: %s" % (len(bad), root, *bad[0]))
    if bad:
        log.warning("%d .wav files under %s are left out of the list because the trainer refuses them, "
                    "the first %s: %s (data_prep.py --check %s lists them all)", len(bad), root, *bad[0], root)
    return [entry for entry, why in zip(entries, problems) if not why]


# ---- check
PROBLEMS = ("malformed line", "missing", "unreadable", "empty", "wrong sample rate", "multi-channel",
            "non-finite samples", "other")
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")      # the only encodings that can hold NaN or Inf


def classify(problem):
    for key, kind in (("unreadable", "unreadable"), ("empty", "empty"), ("sample rate", "wrong sample rate"),
                      ("channels", "multi-channel"), ("NaN/Inf", "non-finite samples")):
        if key in problem:
            return kind
    return "other"


def non_finite(path, blocksize=1 << 16):
    """None, or the problem of a float-encoded file with NaN/Inf samples (read in blocks: flat memory).
    Integer PCM cannot hold them, so those files are not read at all."""
    if soundfile.info(path).subtype not in FLOAT_SUBTYPES:
        return None
    count, first, start = 0, None, 0
    try:
        for block in soundfile.blocks(path, blocksize=blocksize, dtype="float32"):
            bad = np.flatnonzero(~np.isfinite(block))
            if len(bad) and first is None:
                first = start + int(bad[0])
            count += len(bad)
            start += len(block)
    except Exception as err:  # a header that reads but data that does not: truncated or corrupt
        return "unreadable audio after sample %d (%s); re-encode it as 16 kHz mono WAV" % (
            start, str(err).strip() or type(err).__name__)
    if count:
        return "%d NaN/Inf samples, the first at sample %d (re-export the file; NaN/Inf samples " \
               "poison training)" % (count, first)
    return None


def list_entries(path, fmt):
    """[(line, name)] of the audio files a train ('spk path') or trial ('label a b', 'a b') list names."""
    entries, malformed = [], []
    # utf-8-sig: a byte-order mark (Windows editors) must not become part of the first name.
    try:
        with open(path, encoding="utf-8-sig") as f:
            rows = [(n, line.split()) for n, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError as err:
        raise PrepError("--list %s: byte %d is not UTF-8 (save the list as UTF-8 text)"
                        % (path, err.start)) from None
    if fmt == "auto":
        first = rows[0][1] if rows else []
        trial = len(first) == 3 or len(first) == 2 and first[0].lower().endswith((".wav", ".flac", ".m4a"))
        fmt = "trial" if trial else "train"
    for number, cols in rows:
        if fmt == "train" and len(cols) == 2:
            entries.append((number, cols[1]))
        elif fmt == "trial" and (len(cols) == 3 and cols[0] in ("0", "1") or len(cols) == 2):
            entries += [(number, c) for c in cols[-2:]]
        else:
            malformed.append((number, " ".join(cols)))
    return fmt, entries, malformed


def check(args):
    """Report missing, unreadable, empty, wrong-rate and multi-channel files of a dataset (or list)."""
    root = args.check
    if not os.path.isdir(root):
        raise PrepError("--check %s: no such folder" % root)
    problems = {k: [] for k in PROBLEMS}
    if args.list:
        fmt, entries, malformed = list_entries(args.list, args.list_format)
        problems["malformed line"] = ["%s:%d: %s" % (args.list, n, text) for n, text in malformed]
        seen, todo = set(), []
        for number, name in entries:
            if name not in seen:
                seen.add(name)
                todo.append(("%s (line %d)" % (name, number), os.path.join(root, name)))
        what = "%s (%s list)" % (args.list, fmt)
    else:
        pattern = os.path.join(glob.escape(root), "**", "*")     # escape: a '[' in DIR is no pattern
        todo = [(os.path.relpath(p, root), p) for p in sorted(glob.glob(pattern, recursive=True))
                if p.lower().endswith((".wav", ".flac"))]
        what = root
    lengths = []

    def header(item):
        label, path = item
        if not_utf8(path):
            return shown(label), 0, "the file name is not UTF-8 (rename it: lists are UTF-8 text)"
        if not os.path.exists(path):
            return label, 0, "missing"
        frames, _, _, problem = _read_header(path)
        return label, frames, problem or non_finite(path)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for label, frames, problem in tqdm(pool.map(header, todo), total=len(todo), desc="checking", unit="file"):
            if problem:
                problems["missing" if problem == "missing" else classify(problem)].append(
                    label if problem == "missing" else "%s: %s" % (label, problem))
            else:
                lengths.append(frames)
    bad = sum(len(v) for v in problems.values())
    hours = sum(lengths) / SR / 3600
    print("Checked %d files of %s under %s: %d usable (%.1f h), %d problems" % (len(todo), what, root,
                                                                             len(lengths), hours, bad))
    for kind in PROBLEMS:
        if problems[kind]:
            print("  %d %s, e.g.:" % (len(problems[kind]), kind))
            for item in problems[kind][:SHOW]:
                print("    " + item)
    if bad:
        raise PrepError("%d problems in %s (see above); fix or remove those files, or regenerate the list "
                        "with --make_list" % (bad, what))
