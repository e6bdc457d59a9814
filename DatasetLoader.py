"""Training and test data: list parsing, header validation, crops, datasets and collation
(the speaker-balanced sampler is in sampler.py).

A training step's data path: the sampler plans every batch of an epoch (which files, how long
each view, where each crop starts, at which speed), workers only read those crops with partial
reads (or slices of packed_audio packs), and `collate_views` stacks them into N x V x samples
tensors; the DataLoader calls `TrainDataset.__getitems__`, which reads a whole batch straight
into those tensors with the same result.
"""
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import soundfile
import torch
from torch.utils.data import Dataset

from speakernet.errors import message_of
from speakernet.audio import INT16_SCALE as PACK_SCALE, crop_samples
from speakernet.path_table import PathTable

from speakernet.packed_audio import PackReader
from speakernet.audio_manifest import ListError, NonFiniteAudio, check_audio_files, check_finite, resolve
from speakernet.augment import (KINDS, NONE, REVERB, Augmenter, collate_augmentation, read_augmentation, speed_change,
                     speed_read_length)

from speakernet.sampler import CropRequest, SpeakerBalancedSampler  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


# Whole files shorter than one 25 ms analysis window are wrapped around to it.
MIN_WHOLE_FILE = 400


# ---------------------------------------------------------------------------- lists

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
    names, files, lines = [], [], []
    for number, columns in _list_lines(list_path):
        if len(columns) == 2:
            names.append(columns[0])
            files.append(columns[1])
        elif len(columns) == 1 and not need_labels:
            names.append(None)
            files.append(columns[0])
        else:
            expected = "'speaker path'" if need_labels else "'speaker path' or 'path'"
            raise ListError(f"{list_path}:{number}: expected {expected}, got {len(columns)} "
                            f"columns: {' '.join(columns)!r}{_space_hint(len(columns), 2)}")
        lines.append(number)
    if not files:
        raise ListError(f"{list_path}: the training list is empty")
    _warn_duplicates(list_path, files, lines, "line")
    lengths = check_audio_files(list_path, train_path, files, lines, allow_outside, recheck)
    if None in names:
        labels = np.full(len(files), -1, dtype=np.int64)
        speakers = []
    else:
        speakers, labels = np.unique(np.array(names), return_inverse=True)
        speakers, labels = speakers.tolist(), labels.astype(np.int64)
    return TrainList(files=PathTable(files, prefix=os.path.join(str(train_path), "")), lengths=lengths, labels=labels, speakers=speakers, source=str(list_path),
                     line_numbers=np.array(lines, dtype=np.int32))


@dataclass
class TrialList:
    labels: np.ndarray           # 1 target, 0 non-target, -1 unlabelled
    pairs: np.ndarray            # trials x 2 indices into `files`
    files: list                  # unique files, as written in the list
    lengths: np.ndarray
    origins: list = None         # 'list:line' where each file first appears, for messages


def read_trial_list(list_path, test_path, allow_outside=False):
    """Parse `label a b` (or unlabelled `a b`) trial lines; validate each unique file once."""
    labels, ends, lines = [], [], []
    for number, columns in _list_lines(list_path):
        if len(columns) == 3 and columns[0] in ("0", "1"):
            labels.append(int(columns[0]))
            ends.append(columns[1:])
        elif len(columns) == 2:
            labels.append(-1)
            ends.append(columns)
        else:
            raise ListError(f"{list_path}:{number}: expected 'label file1 file2' with label 0 or 1 "
                            f"(or 'file1 file2'), got: {' '.join(columns)!r}{_space_hint(len(columns), 3)}")
        lines.append(number)
    if not ends:
        raise ListError(f"{list_path}: the trial list is empty")
    _warn_duplicates(list_path, [tuple(sorted(pair)) for pair in ends], lines, "trial")
    files, first_line, index = [], [], {}
    for number, pair in zip(lines, ends):
        for name in pair:
            if name not in index:
                index[name] = len(files)
                files.append(name)
                first_line.append(number)
    lengths = check_audio_files(list_path, test_path, files, first_line, allow_outside)
    pairs = np.array([[index[a], index[b]] for a, b in ends], dtype=np.int64)
    return TrialList(labels=np.array(labels), pairs=pairs, files=files, lengths=lengths,
                     origins=[f"{list_path}:{n}" for n in first_line])


def _list_lines(list_path):
    # utf-8-sig: a byte-order mark (written by some Windows editors) would otherwise become
    # part of the first speaker's name or label.
    try:
        with open(list_path, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
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


def _space_hint(columns, expected):
    if columns > expected:
        return " (a path with spaces reads as several columns: rename such files without spaces)"
    return ""


def _warn_duplicates(list_path, entries, lines, what):
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


def _join(root, name):
    # Entries were checked against the root when the list was validated.
    return str(resolve(root, name, allow_outside=True))


# ---------------------------------------------------------------------------- audio reads

def read_crop(path, total, start, length):
    """`length` samples from `start`, reading only that span; shorter files wrap around."""
    if total < length:
        audio, _ = soundfile.read(path, dtype="float32", always_2d=False)
        return np.pad(check_finite(audio, path), (0, length - len(audio)), mode="wrap")
    audio, _ = soundfile.read(path, start=start, frames=length, dtype="float32", always_2d=False)
    check_finite(audio, path, start)
    if len(audio) < length:          # header overstated the length: stay shape-stable
        audio = np.pad(audio, (0, length - len(audio)), mode="wrap")
    return audio


def eval_crop_starts(total, length, num_eval):
    """Evenly spaced crop offsets from the start to the end of the file."""
    return np.linspace(0, max(total - length, 0), num=num_eval).astype(np.int64)


# ---------------------------------------------------------------------------- sampler

class TrainDataset(Dataset):
    """Reads the crops a CropRequest names (and their noise and RIRs); nothing random here."""

    def __init__(self, train_list, augment_bank=None, packs=()):
        self.train_list = train_list
        self.files = train_list.files
        self.lengths = train_list.lengths
        self.augment_bank = augment_bank
        # Packs (packed_audio.py) serve the files they hold from a memory map; the rest are read
        # from their files.
        self.read_crop = PackReader(packs, read_crop)
        self.read_int16 = self.read_crop.read_int16 if packs else None

    def __len__(self):
        return len(self.files)

    def __getitem__(self, request):
        try:
            return self._read_group(request)
        except NonFiniteAudio as err:
            raise self._located(err) from None

    def _located(self, err):
        """`err` with the list line of its file (noise and RIR files are named by path alone)."""
        try:
            return NonFiniteAudio(f"{self.train_list.origin(self.files.index(err.path))}: {err}", err.path)
        except ValueError:
            return err

    def _read_group(self, request):
        views = []
        for index, frames, start in zip(request.files, request.frames, request.starts):
            length = crop_samples(frames)
            total = int(self.lengths[index])
            if request.speed == 1.0:
                offset = int(start * max(total - length, 0))
                # Packed crops travel as int16 (half the bytes); the device converts them.
                view = self.read_int16(self.files[index], total, offset, length) if self.read_int16 else None
                views.append(view if view is not None else self.read_crop(self.files[index], total, offset, length))
                continue
            # A proportionally longer (slower) or shorter (faster) crop, resampled to `length`.
            needed = speed_read_length(length, request.speed)
            audio = self.read_crop(self.files[index], total, int(start * max(total - needed, 0)), needed)
            views.append(speed_change(audio, length, request.speed))
        extras = None
        if request.augment:
            extras = [(*read_augmentation(self.augment_bank, spec, len(view), self.read_crop), spec.snr)
                      for spec, view in zip(request.augment, views)]
        return views, request.label, extras, tuple(request.frames)

    def __getitems__(self, requests):
        """A whole batch, collated: what collate_views makes of [self[r] for r in requests], bit
        for bit, but with every crop and noise crop read straight into its place in the batch
        (the DataLoader calls this instead of __getitem__ for batched samplers)."""
        try:
            return self._read_batch(requests)
        except NonFiniteAudio as err:
            raise self._located(err) from None

    def _read_batch(self, requests):
        lengths = [crop_samples(f) for f in requests[0].frames]
        labels = torch.tensor([r.label for r in requests], dtype=torch.long)
        augmented = bool(requests[0].augment)
        tensors, extras, begin = [], [], 0
        for end in range(1, len(lengths) + 1):
            if end < len(lengths) and lengths[end] == lengths[begin]:
                continue
            length = lengths[begin]
            as_int16 = all(r.speed == 1.0 and all(self.read_crop.holds(self.files[i]) for i in r.files[begin:end])
                           for r in requests)
            run = np.empty((len(requests), end - begin, length), dtype=np.int16 if as_int16 else np.float32)
            for group, request in zip(run, requests):
                for row, v in zip(group, range(begin, end)):
                    index, start = request.files[v], request.starts[v]
                    total = int(self.lengths[index])
                    if request.speed == 1.0:
                        self.read_crop.read_into(self.files[index], total, int(start * max(total - length, 0)),
                                                 length, row)
                    else:
                        row[:] = self._read_group(_single_view(request, v))[0][0]
            tensors.append(torch.from_numpy(run))
            extras.append(self._collated_augmentation([r.augment[v] for r in requests for v in range(begin, end)],
                                                      length) if augmented else None)
            begin = end
        return CollatedBatch((tensors, labels, extras, tuple(requests[0].frames)))

    def _collated_augmentation(self, specs, length):
        """collate_augmentation's result for `specs`, noise crops summed in place in the batch."""
        bank = self.augment_bank
        noisy = [s for s in specs if s.kind not in (NONE, REVERB)]
        noise = np.empty((len(noisy), length), dtype=np.float32) if noisy else None
        for row, spec in zip(noise if noisy else (), noisy):
            name = KINDS[spec.kind]
            for n, (index, start) in enumerate(zip(spec.files, spec.starts)):
                total = int(bank.lengths[name][index])
                offset = int(start * max(total - length, 0))
                if n == 0:
                    self.read_crop.read_into(bank.files[name][index], total, offset, length, row)
                else:
                    row += self.read_crop(bank.files[name][index], total, offset, length)
        rirs = [read_augmentation(bank, s, length, self.read_crop)[1] for s in specs if s.kind == REVERB]
        extra = collate_augmentation([(None, r, 0.0) for r in rirs]) if rirs else {"rir": None}
        return {"noise": torch.from_numpy(noise) if noisy else None, "rir": extra["rir"],
                "snr": torch.tensor([s.snr for s in specs], dtype=torch.float32),
                "noisy": torch.tensor([s.kind not in (NONE, REVERB) for s in specs], dtype=torch.bool),
                "reverb": torch.tensor([s.kind == REVERB for s in specs], dtype=torch.bool)}


class CollatedBatch(tuple):
    """(views, labels, extras, frames) already in collate_views' form; collate_views passes it on."""


def collate_views(batch):
    """-> (views, labels, extras, frames): views is a list of N x V_run x samples tensors, one
    per run of equal-length views (float32, or int16 samples when read from packs: the encoders'
    front ends and the Augmenter convert them); extras holds each run's batched noise/RIRs (None
    when clean); frames is the crop length of every view, as the sampler planned it."""
    if isinstance(batch, CollatedBatch):          # TrainDataset.__getitems__ built it already
        return tuple(batch)
    views = [item[0] for item in batch]
    labels = torch.tensor([item[1] for item in batch], dtype=torch.long)
    augmented = batch[0][2] is not None
    lengths = [len(v) for v in views[0]]
    tensors, extras, begin = [], [], 0
    for end in range(1, len(lengths) + 1):
        if end == len(lengths) or lengths[end] != lengths[begin]:
            # One preallocated array, filled once (stacking views then groups copies twice). int16
            # when every crop of the run came from a pack as int16, else float32 (int16 crops
            # scaled exactly as a float read would give them).
            pieces = [v for item in views for v in item[begin:end]]
            as_int16 = all(v.dtype == np.int16 for v in pieces)
            run = np.empty((len(views), end - begin, lengths[begin]), dtype=np.int16 if as_int16 else np.float32)
            for row, view in zip(run.reshape(-1, lengths[begin]), pieces):
                if view.dtype == np.int16 and not as_int16:
                    np.multiply(view, PACK_SCALE, out=row)
                else:
                    row[:] = view
            tensors.append(torch.from_numpy(run))
            extras.append(collate_augmentation([x for item in batch for x in item[2][begin:end]])
                          if augmented else None)
            begin = end
    return tensors, labels, extras, batch[0][3]


def _single_view(request, v):
    """A CropRequest for view `v` of `request` alone, clean (its augmentation is read apart)."""
    return CropRequest(files=(request.files[v],), frames=(request.frames[v],), starts=(request.starts[v],),
                       label=request.label, speed=request.speed)


class CollateAndMix:
    """collate_views, then the augmentation mixing, inside the loader workers.

    For training on a CPU with worker processes: the mixing then runs in the workers beside the
    model instead of in front of it in the training process, and only mixed crops cross the
    process boundary, not the noise and RIR rows. On a GPU the mixing stays on the device
    (Trainer's augment), where it is cheap. The sampler's plan fixes every random choice, so
    a batch is bit-identical wherever it is mixed.
    """

    def __init__(self):
        self.mix = Augmenter()

    def __call__(self, batch):
        views, labels, extras, frames = collate_views(batch)
        if any(extra is not None for extra in extras):
            views, extras = self.mix(views, extras), [None] * len(views)
        return views, labels, extras, frames


class TestDataset(Dataset):
    """num_eval evenly spaced crops of eval_frames per file; eval_frames 0 = the whole file.

    Files shorter than what is cut from them are wrapped around to that length: a crop of
    eval_frames, or MIN_WHOLE_FILE samples (one analysis window) for whole files."""

    def __init__(self, files, lengths, test_path, eval_frames, num_eval):
        self.paths = [_join(test_path, f) for f in files]
        self.lengths = lengths
        self.eval_frames = eval_frames
        self.num_eval = num_eval
        short = int((np.asarray(lengths) < MIN_WHOLE_FILE).sum()) if eval_frames == 0 else 0
        if short:
            log.warning("%d files are shorter than %d samples (one 25 ms window); whole-file scoring "
                        "wraps them around to that length", short, MIN_WHOLE_FILE)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        audio, _ = soundfile.read(self.paths[index], dtype="float32", always_2d=False)
        check_finite(audio, self.paths[index])
        if self.eval_frames == 0:
            if len(audio) < MIN_WHOLE_FILE:
                audio = np.pad(audio, (0, MIN_WHOLE_FILE - len(audio)), mode="wrap")
            return torch.from_numpy(audio).unsqueeze(0), index
        length = crop_samples(self.eval_frames)
        if len(audio) < length:
            audio = np.pad(audio, (0, length - len(audio)), mode="wrap")
        starts = eval_crop_starts(len(audio), length, self.num_eval)
        crops = np.stack([audio[s:s + length] for s in starts])
        return torch.from_numpy(crops), index


def locate_bad_audio(err, root, files, origins):
    """NonFiniteAudio `err` (possibly re-raised from a loader worker) with the list line of its
    file, found among `files` under `root` (as TestDataset reads them) with `origins`."""
    message = message_of(err)
    for name, origin in zip(files, origins or ()):
        path = _join(root, name)
        if message.startswith(f"{path}:"):
            return NonFiniteAudio(f"{origin}: {message}", path)
    return NonFiniteAudio(message, getattr(err, "path", None))
