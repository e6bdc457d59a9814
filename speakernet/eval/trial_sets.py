"""Trial lists and the AS-norm cohort, validated before any extraction: several lists share
one set of unique files, so a file named by two lists is embedded once."""
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speakernet.core.audio import ListError, list_lines, space_hint, warn_duplicates
from speakernet.core.audio_check import check_audio_files
from speakernet.core.errors import UserError
from speakernet.core.option_types import split_list

log = logging.getLogger("evaluation")


# ---------------------------------------------------------------------------- trial lists

@dataclass
class TrialList:
    labels: np.ndarray           # 1 target, 0 non-target, -1 unlabelled
    pairs: np.ndarray            # trials x 2 indices into `files`
    files: list                  # unique files, as written in the list
    lengths: np.ndarray
    origins: list = None         # 'list:line' where each file first appears, for messages


def parse_trial_lines(list_path):
    """(labels, file pairs, line numbers) of `label a b` (or unlabelled `a b`) trial lines.
    A repeated trial is a warning (it counts again); one labelled both 1 and 0 is an error
    naming both lines, since no score can be right for it."""
    labels, ends, lines = [], [], []
    for number, columns in list_lines(list_path):
        if len(columns) == 3 and columns[0] in ("0", "1"):
            labels.append(int(columns[0]))
            ends.append(columns[1:])
        elif len(columns) == 2:
            labels.append(-1)
            ends.append(columns)
        else:
            raise ListError(f"{list_path}:{number}: expected 'label file1 file2' with label 0 or 1 "
                            f"(or 'file1 file2'), got: {' '.join(columns)!r}{space_hint(len(columns), 3)}")
        lines.append(number)
    if not ends:
        raise ListError(f"{list_path}: the trial list is empty")
    trials = [tuple(sorted(pair)) for pair in ends]
    refuse_contradictions(list_path, trials, labels, lines)
    warn_duplicates(list_path, trials, lines, "trial")
    return labels, ends, lines


def refuse_contradictions(list_path, trials, labels, lines):
    """ListError naming the first trial labelled 1 on one line and 0 on another."""
    if len(set(trials)) == len(trials):            # no repeats at all: the usual case
        return
    first = {}                                     # (trial, label) -> its first line
    for trial, label, line in zip(trials, labels, lines):
        other = first.get((trial, 1 - label)) if label >= 0 else None
        if other is not None:
            raise ListError(f"{list_path}:{line}: the trial '{' '.join(trial)}' is labelled {label} here "
                            f"and {1 - label} on line {other}; correct or delete one of the two lines")
        first.setdefault((trial, label), line)


def read_trial_list(list_path, test_path, allow_outside=False, recheck=False):
    """Parse the trial lines (parse_trial_lines); validate each unique file once."""
    labels, ends, lines = parse_trial_lines(list_path)
    files, first_line, index = [], [], {}
    for number, pair in zip(lines, ends):
        for name in pair:
            if name not in index:
                index[name] = len(files)
                files.append(name)
                first_line.append(number)
    lengths = check_audio_files(list_path, test_path, files, first_line, allow_outside, recheck)
    pairs = np.array([[index[a], index[b]] for a, b in ends], dtype=np.int64)
    return TrialList(labels=np.array(labels), pairs=pairs, files=files, lengths=lengths,
                     origins=[f"{list_path}:{n}" for n in first_line])


@dataclass
class TrialSet:
    """Several trial lists over one set of unique files, so shared files are embedded once."""
    paths: list                 # the trial list files
    names: list                 # short unique names (from the file names) for logs and outputs
    lists: list                 # one TrialList per path; pairs index `files`
    files: list                 # unique files of all lists, as written in the lists
    lengths: np.ndarray         # samples per file
    origins: list = None        # 'list:line' where each file first appears, for messages


def list_names(paths):
    """File-name-safe short names: the stems, made unique with the folder or a number."""
    def safe(text):
        return re.sub(r"[^\w.-]", "_", text)

    stems = [safe(Path(p).stem) for p in paths]
    names = [s if stems.count(s) == 1 else f"{safe(Path(p).parent.name)}_{s}"
             for s, p in zip(stems, paths)]
    repeated = {name for name in names if names.count(name) > 1}
    seen = {}
    for i, name in enumerate(names):
        if name in repeated:
            seen[name] = seen.get(name, 0) + 1
            names[i] = f"{name}_{seen[name]}"
    return names


def unique_lists(list_paths):
    """The trial list paths (str, comma-separated str or list), each once: a list named twice
    is read and scored once, with a warning."""
    named = split_list(list_paths)
    if not named:
        raise ListError("no trial list given (--test_list)")
    paths = list(dict.fromkeys(named))
    if len(paths) < len(named):
        repeated = next(p for p in paths if named.count(p) > 1)
        log.warning("--test_list names %s %d times; it is scored once", repeated, named.count(repeated))
    return paths


def load_trial_lists(list_paths, test_path, allow_outside=False, recheck=False):
    """Read and validate every list (str, comma-separated str or list of paths) -> TrialSet.

    Every file of every list is checked before this returns; problems in all lists are
    reported together as one ListError naming each list and line.
    """
    paths = unique_lists(list_paths)
    loaded, problems = [], []
    for path in paths:
        try:
            loaded.append(read_trial_list(path, test_path, allow_outside, recheck))
        except ListError as err:
            problems.append(str(err))
    if problems:
        if len(problems) == 1:
            raise ListError(problems[0])
        raise ListError(f"{len(problems)} trial lists cannot be used:\n  " + "\n  ".join(problems))
    index, files, lengths, remaps, origins = {}, [], [], [], []
    for trials in loaded:
        remap = np.empty(len(trials.files), dtype=np.int64)
        for i, (name, length, origin) in enumerate(zip(trials.files, trials.lengths, trials.origins)):
            if name not in index:
                index[name] = len(files)
                files.append(name)
                lengths.append(int(length))
                origins.append(origin)
            remap[i] = index[name]
        remaps.append(remap)
    lengths = np.array(lengths, dtype=np.int64)
    lists = [TrialList(labels=t.labels, pairs=remap[t.pairs], files=files, lengths=lengths)
             for t, remap in zip(loaded, remaps)]
    return TrialSet(paths=paths, names=list_names(paths), lists=lists, files=files, lengths=lengths,
                    origins=origins)


def with_dev_list(list_paths, dev_list, test_path, allow_outside=False, recheck=False):
    """(TrialSet of the --test_list lists over the files of those lists and the dev list,
    the dev list's TrialList); files named by both are embedded once."""
    paths = unique_lists(list_paths)
    if dev_list in paths:
        log.warning("--calibrate %s is also a --test_list list: its actDCF and Cllr are measured on "
                    "the trials the calibration was fitted to (optimistic)", dev_list)
    combined = load_trial_lists(paths + [dev_list] if dev_list not in paths else paths, test_path, allow_outside, recheck)
    dev = combined.lists[combined.paths.index(dev_list)]
    if not ((dev.labels == 1).any() and (dev.labels == 0).any()):
        raise UserError(f"--calibrate {dev_list}: needs labelled target (1) and non-target (0) "
                        f"trials ('label file1 file2' lines)")
    lists = [combined.lists[combined.paths.index(p)] for p in paths]
    return TrialSet(paths=paths, names=list_names(paths), lists=lists, files=combined.files,
                    lengths=combined.lengths, origins=combined.origins), dev


# ---------------------------------------------------------------------------- cohort

@dataclass
class Cohort:
    """The utterances whose embeddings make up the AS-norm cohort, one mean per speaker."""
    files: list                 # paths as stored in the TrainList (already joined with its root)
    lengths: np.ndarray
    speaker: np.ndarray         # cohort speaker index of each file
    speakers: list              # speaker names


def select_cohort(train_list, utts_per_speaker=5, max_speakers=0, seed=10):
    """Pick at most utts_per_speaker random utterances of (at most max_speakers random)
    speakers of a TrainList. Chosen once, so every evaluation of a run uses the same cohort.
    A list without speaker labels counts each utterance as its own speaker."""
    labels = np.asarray(train_list.labels)
    rng = np.random.default_rng([seed, 2])
    if (labels < 0).all():
        labels = np.arange(len(labels))
        names = list(train_list.files)
    else:
        names = list(train_list.speakers)
    speakers = np.unique(labels)
    if max_speakers and max_speakers < len(speakers):
        speakers = np.sort(rng.choice(speakers, size=max_speakers, replace=False))
    # Random order within each speaker (sort by speaker, then by a random key); keep the
    # first utts_per_speaker of each: vectorised, so a million-utterance list is quick.
    candidates = np.flatnonzero(np.isin(labels, speakers))
    order = candidates[np.lexsort((rng.random(len(candidates)), labels[candidates]))]
    grouped = labels[order]
    first = np.searchsorted(grouped, grouped, side="left")
    chosen = np.sort(order[np.arange(len(order)) - first < utts_per_speaker])
    if len(speakers) > 20000:
        log.warning("the AS-norm cohort has %d speakers; --cohort_speakers limits the extra "
                    "extraction time", len(speakers))
    position = {int(s): i for i, s in enumerate(speakers)}
    return Cohort(files=[train_list.files[i] for i in chosen],
                  lengths=np.asarray(train_list.lengths)[chosen],
                  speaker=np.array([position[int(labels[i])] for i in chosen], dtype=np.int64),
                  speakers=[names[int(s)] for s in speakers])
