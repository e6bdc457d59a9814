"""The training list: `speaker path` lines (or bare `path` lines where speakers are not
needed) read into a TrainList of paths, lengths from the checked headers and speaker indices.
The evaluation's AS-norm cohort and the pseudo-label rounds read their lists with it too."""
import os
from dataclasses import dataclass, field

import numpy as np

from speakernet.core.audio import ListError, PathTable, list_columns, list_lines, space_hint, warn_duplicates
from speakernet.core.audio_check import check_audio_files


@dataclass
class TrainList:
    files: list                      # absolute or train_path-relative paths, one per utterance
    lengths: np.ndarray              # samples per file, from the validated manifest
    labels: np.ndarray               # speaker index per file, -1 when the list has no speakers
    speakers: list = field(default_factory=list)   # speaker name per index
    source: str = ""                 # the list file, for messages
    line_numbers: np.ndarray = None  # list line of each file, for messages

    def origin(self, index):
        """'list:line' of file `index`, for error messages."""
        return f"{self.source}:{self.line_numbers[index]}" if self.line_numbers is not None else self.source


def read_train_list(list_path, train_path, need_labels=True, allow_outside=False, recheck=False):
    """Parse `speaker path` lines (or bare `path` lines when labels are not needed)."""
    names, files, lines = _list_entries(list_path, need_labels)
    if not files:
        raise ListError(f"{list_path}: the training list is empty")
    warn_duplicates(list_path, files, lines, "line")
    lengths = check_audio_files(list_path, train_path, files, lines, allow_outside, recheck)
    if None in names:
        labels = np.full(len(files), -1, dtype=np.int64)
        speakers = []
    else:
        speakers, labels = speaker_indices(names)
    return TrainList(files=PathTable(files, prefix=os.path.join(str(train_path), "")), lengths=lengths, labels=labels, speakers=speakers, source=str(list_path),
                     line_numbers=np.array(lines, dtype=np.int32))


def _list_entries(list_path, need_labels):
    """(speaker names, or None each without them; paths; line numbers) of the list."""
    fast = list_columns(list_path)
    if fast is not None and len(fast[0]) == 2:
        (names, files), lines = fast
        return names, files, lines.tolist()
    if fast is not None and len(fast[0]) == 1 and not need_labels:
        (files,), lines = fast
        return [None] * len(files), files, lines.tolist()
    names, files, lines = [], [], []
    for number, columns in list_lines(list_path):
        if len(columns) == 2:
            names.append(columns[0])
            files.append(columns[1])
        elif len(columns) == 1 and not need_labels:
            names.append(None)
            files.append(columns[0])
        else:
            expected = "'speaker path'" if need_labels else "'speaker path' or 'path'"
            raise ListError(f"{list_path}:{number}: expected {expected}, got {len(columns)} "
                            f"columns: {' '.join(columns)!r}{space_hint(len(columns), 2)}")
        lines.append(number)
    return names, files, lines


def speaker_indices(names):
    """(sorted distinct names, index of each name among them as int64), as np.unique gives
    them, through a dict rather than a sort of a million strings."""
    speakers = sorted(dict.fromkeys(names))
    index = {name: i for i, name in enumerate(speakers)}
    return speakers, np.fromiter(map(index.__getitem__, names), dtype=np.int64, count=len(names))


