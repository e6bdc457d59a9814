"""Training and test data: list parsing, header validation, crops, the speaker-balanced sampler.

A training step's data path: the sampler plans every batch of an epoch (which files, how long
each view, where each crop starts, at which speed), workers only read those crops with partial
reads (or slices of packed_audio packs), and `collate_views` stacks them into N x V x samples
tensors; the DataLoader calls `TrainDataset.__getitems__`, which reads a whole batch straight
into those tensors with the same result.
"""
import logging
from dataclasses import dataclass, field

import numpy as np
import soundfile
import torch
from torch.utils.data import Dataset

from errors import UserError
from packed_audio import SCALE as PACK_SCALE, PackReader
from audio_manifest import ListError, check_audio_files, resolve
from augment import (KINDS, NONE, REVERB, Augmenter, collate_augmentation, read_augmentation, speed_change,
                     speed_read_length)

log = logging.getLogger(__name__)


def crop_samples(frames):
    """Samples in a crop of `frames` 10 ms frames (25 ms window: 240 extra samples)."""
    return frames * 160 + 240


# ---------------------------------------------------------------------------- lists

@dataclass
class TrainList:
    files: list                      # absolute or train_path-relative paths, one per utterance
    lengths: np.ndarray              # samples per file, from the validated manifest
    labels: np.ndarray               # speaker index per file, -1 when the list has no speakers
    speakers: list = field(default_factory=list)   # speaker name per index


def read_train_list(list_path, train_path, need_labels=True, allow_outside=False):
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
                            f"columns: {' '.join(columns)!r}")
        lines.append(number)
    if not files:
        raise ListError(f"{list_path}: the training list is empty")
    lengths = check_audio_files(list_path, train_path, files, lines, allow_outside)
    if None in names:
        labels = np.full(len(files), -1, dtype=np.int64)
        speakers = []
    else:
        speakers = sorted(set(names))
        index = {name: i for i, name in enumerate(speakers)}
        labels = np.array([index[name] for name in names], dtype=np.int64)
    return TrainList(files=[_join(train_path, f) for f in files], lengths=lengths,
                     labels=labels, speakers=speakers)


@dataclass
class TrialList:
    labels: np.ndarray           # 1 target, 0 non-target, -1 unlabelled
    pairs: np.ndarray            # trials x 2 indices into `files`
    files: list                  # unique files, as written in the list
    lengths: np.ndarray


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
                            f"(or 'file1 file2'), got: {' '.join(columns)!r}")
        lines.append(number)
    if not ends:
        raise ListError(f"{list_path}: the trial list is empty")
    files, first_line, index = [], [], {}
    for number, pair in zip(lines, ends):
        for name in pair:
            if name not in index:
                index[name] = len(files)
                files.append(name)
                first_line.append(number)
    lengths = check_audio_files(list_path, test_path, files, first_line, allow_outside)
    pairs = np.array([[index[a], index[b]] for a, b in ends], dtype=np.int64)
    return TrialList(labels=np.array(labels), pairs=pairs, files=files, lengths=lengths)


def _list_lines(list_path):
    try:
        with open(list_path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                columns = line.split()
                if columns:
                    yield number, columns
    except FileNotFoundError:
        raise ListError(f"list file not found: {list_path}") from None
    except UnicodeDecodeError as err:
        raise ListError(f"{list_path}: not a UTF-8 text list ({err.reason})") from None


def _join(root, name):
    # Entries were checked against the root when the list was validated.
    return str(resolve(root, name, allow_outside=True))


# ---------------------------------------------------------------------------- audio reads

def read_crop(path, total, start, length):
    """`length` samples from `start`, reading only that span; shorter files wrap around."""
    if total < length:
        audio, _ = soundfile.read(path, dtype="float32", always_2d=False)
        return np.pad(audio, (0, length - len(audio)), mode="wrap")
    audio, _ = soundfile.read(path, start=start, frames=length, dtype="float32", always_2d=False)
    if len(audio) < length:          # header overstated the length: stay shape-stable
        audio = np.pad(audio, (0, length - len(audio)), mode="wrap")
    return audio


def eval_crop_starts(total, length, num_eval):
    """Evenly spaced crop offsets from the start to the end of the file."""
    return np.linspace(0, max(total - length, 0), num=num_eval).astype(np.int64)


# ---------------------------------------------------------------------------- sampler

@dataclass
class CropRequest:
    """One group of views: which files, how many frames per view, where each crop starts."""
    files: tuple
    frames: tuple
    starts: tuple                # fractions in [0, 1) of the free range before each crop
    label: int                   # speaker, offset by speed index x speakers when speed-perturbed
    augment: tuple = ()          # one augment.AugmentSpec per view, or () for clean crops
    speed: float = 1.0           # playback speed of every view of the group (--speed_perturb)


class SpeakerBalancedSampler:
    """Plans an epoch of batches of `groups_per_batch` groups of `views` crops each.

    Supervised (group_by_utterance=False): a group is `views` different utterances of one
    speaker, at most `max_seg_per_spk` utterances per speaker per epoch, and no speaker twice
    in a batch. A group whose speaker is already in the batch being filled waits for a later
    batch (first fit) instead of being dropped. Self-supervised: a group is `views` crops of
    one utterance and utterances are assumed to be different speakers.

    The plan depends only on (seed, epoch), so every rank and every resumed run sees the
    same epoch; ranks take disjoint, equally many batches.
    """

    def __init__(self, labels, groups_per_batch, views, max_seg_per_spk, seed=10,
                 group_by_utterance=False, view_frames=None, rank=0, world_size=1,
                 augment_planner=None, augment_fraction=None, utterance_subset=None,
                 speeds=(1.0,), num_speakers=0):
        self.labels = np.asarray(labels)
        self.groups_per_batch = groups_per_batch
        self.views = views
        self.max_seg_per_spk = max_seg_per_spk
        self.seed = seed
        self.group_by_utterance = group_by_utterance
        self.view_frames = view_frames or (lambda epoch, rng: (200,) * views)
        self.rank = rank
        self.world_size = world_size
        self.augment_planner = augment_planner
        self.augment_fraction = augment_fraction      # epoch -> share augmented (curricula)
        self.utterance_subset = utterance_subset      # (epoch, count) -> usable indices
        # Speed perturbation: each group plays at one of `speeds`; the i-th speed turns
        # speaker s into s + i * num_speakers (labelled groups only).
        self.speeds = tuple(speeds)
        self.num_speakers = num_speakers
        self.epoch = 0
        self.stats = {}
        self._planned = (None, [])
        self._check_feasible()

    def _check_feasible(self):
        if self.group_by_utterance:
            usable = len(self.labels)
            what = "utterances"
        else:
            if self.max_seg_per_spk < self.views:
                raise UserError(f"--max_seg_per_spk {self.max_seg_per_spk} is smaller than the "
                                f"{self.views} utterances per group; raise it to at least {self.views}")
            _, counts = np.unique(self.labels, return_counts=True)
            usable = int((counts >= self.views).sum())
            skipped = int((counts < self.views).sum())
            if skipped:
                log.warning("%d speakers have fewer than nPerSpeaker=%d utterances and are skipped",
                            skipped, self.views)
            what = f"speakers with at least nPerSpeaker={self.views} utterances"
        if usable < self.groups_per_batch * self.world_size:
            raise UserError(f"--batch_size {self.groups_per_batch} (x {self.world_size} ranks) is "
                             f"larger than the {usable} {what} in the training list; lower --batch_size")

    def set_epoch(self, epoch):
        self.epoch = epoch

    def plan(self, epoch):
        """All batches of `epoch` (for every rank), each a list of CropRequest."""
        rng = np.random.default_rng([self.seed, epoch])
        allowed = None
        if self.utterance_subset is not None:
            subset = self.utterance_subset(epoch, len(self.labels))
            if subset is not None:
                allowed = np.zeros(len(self.labels), dtype=bool)
                allowed[np.asarray(subset, dtype=np.int64)] = True
        groups, keys = self._groups(rng, allowed)
        batches = self._pack(groups, keys)
        usable = len(batches) // self.world_size * self.world_size
        batches = batches[:usable]
        if not batches:
            raise UserError(f"epoch {epoch} has no complete batch of {self.groups_per_batch} groups "
                            f"(x {self.world_size} ranks); lower --batch_size")
        planner = self.augment_planner
        if planner is not None and self.augment_fraction is not None:
            planner.fraction = float(self.augment_fraction(epoch))
        requests = []
        for batch in batches:
            frames = tuple(int(f) for f in self.view_frames(epoch, rng))
            if len(frames) != self.views:
                raise ValueError(f"objective asked for {len(frames)} view lengths, sampler draws {self.views}")
            # Drawn only when perturbing, so plans without it stay as they were.
            speed_index = (rng.integers(len(self.speeds), size=len(batch)) if len(self.speeds) > 1
                           else [0] * len(batch))
            requests.append([CropRequest(
                files=group, frames=frames, starts=tuple(rng.random(self.views)),
                label=self._label(group, int(index)),
                augment=tuple(planner.draw(rng) for _ in group) if planner else (),
                speed=self.speeds[index])
                for group, index in zip(batch, speed_index)])
        per_group = 1 if self.group_by_utterance else self.views
        self.stats = {"utterances": len(self.labels), "eligible": len(groups) * per_group,
                      "used": len(batches) * self.groups_per_batch * per_group,
                      "batches": len(batches)}
        self._planned = (epoch, requests)
        return requests

    def _label(self, group, speed_index):
        label = int(self.labels[group[0]])
        return label + speed_index * self.num_speakers if label >= 0 else label

    def _groups(self, rng, allowed=None):
        candidates = np.arange(len(self.labels)) if allowed is None else np.flatnonzero(allowed)
        if self.group_by_utterance:
            order = rng.permutation(candidates)
            return [(int(i),) * self.views for i in order], order.tolist()
        groups, keys = [], []
        by_speaker = candidates[np.argsort(self.labels[candidates], kind="stable")]
        speakers, starts = np.unique(self.labels[by_speaker], return_index=True)
        bounds = list(starts[1:]) + [len(by_speaker)]
        for speaker, begin, end in zip(speakers, starts, bounds):
            utterances = rng.permutation(by_speaker[begin:end])
            count = min(len(utterances), self.max_seg_per_spk) // self.views * self.views
            for i in range(0, count, self.views):
                groups.append(tuple(int(u) for u in utterances[i:i + self.views]))
                keys.append(int(speaker))
        order = rng.permutation(len(groups))
        return [groups[i] for i in order], [keys[i] for i in order]

    def _pack(self, groups, keys):
        """First-fit packing of groups into batches with distinct keys, in creation order.

        A key's next group can only go after the batch its last group went to (earlier
        batches are full or already hold it), and full batches are skipped through a
        path-compressed pointer, so packing stays near-linear on a million groups.
        """
        size = self.groups_per_batch
        batches, members = [], []
        next_open = []                       # skip pointer past full batches
        last_batch = {}

        def first_open(i):
            skipped = []
            while i < len(batches) and len(batches[i]) == size:
                skipped.append(i)
                i = next_open[i]
            for j in skipped:
                next_open[j] = i
            return i

        for group, key in zip(groups, keys):
            slot = first_open(last_batch.get(key, -1) + 1)
            if slot == len(batches):
                batches.append([])
                members.append(set())
                next_open.append(slot + 1)
            batches[slot].append(group)
            members[slot].add(key)
            last_batch[key] = slot
        return [batch for batch in batches if len(batch) == size]

    def _epoch_plan(self):
        if self._planned[0] != self.epoch:
            self.plan(self.epoch)
        return self._planned[1]

    def __iter__(self):
        yield from self._epoch_plan()[self.rank::self.world_size]

    def __len__(self):
        return len(self._epoch_plan()) // self.world_size


# ---------------------------------------------------------------------------- datasets

class TrainDataset(Dataset):
    """Reads the crops a CropRequest names (and their noise and RIRs); nothing random here."""

    def __init__(self, train_list, augment_bank=None, packs=()):
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
        return views, request.label, extras

    def __getitems__(self, requests):
        """A whole batch, collated: what collate_views makes of [self[r] for r in requests], bit
        for bit, but with every crop and noise crop read straight into its place in the batch
        (the DataLoader calls this instead of __getitem__ for batched samplers)."""
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
                        row[:] = self[_single_view(request, v)][0][0]
            tensors.append(torch.from_numpy(run))
            extras.append(self._collated_augmentation([r.augment[v] for r in requests for v in range(begin, end)],
                                                      length) if augmented else None)
            begin = end
        return CollatedBatch((tensors, labels, extras))

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
    """(views, labels, extras) already in collate_views' form; collate_views passes it on."""


def collate_views(batch):
    """-> (views, labels, extras): views is a list of N x V_run x samples tensors, one per run
    of equal-length views (float32, or int16 samples when read from packs: the encoders' front
    ends and the Augmenter convert them); extras holds each run's batched noise/RIRs (None when
    clean)."""
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
    return tensors, labels, extras


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
        views, labels, extras = collate_views(batch)
        if any(extra is not None for extra in extras):
            views, extras = self.mix(views, extras), [None] * len(views)
        return views, labels, extras


class TestDataset(Dataset):
    """num_eval evenly spaced crops of eval_frames per file; eval_frames 0 = the whole file."""

    def __init__(self, files, lengths, test_path, eval_frames, num_eval):
        self.paths = [_join(test_path, f) for f in files]
        self.lengths = lengths
        self.eval_frames = eval_frames
        self.num_eval = num_eval

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        audio, _ = soundfile.read(self.paths[index], dtype="float32", always_2d=False)
        if self.eval_frames == 0:
            return torch.from_numpy(audio).unsqueeze(0), index
        length = crop_samples(self.eval_frames)
        if len(audio) < length:
            audio = np.pad(audio, (0, length - len(audio)), mode="wrap")
        starts = eval_crop_starts(len(audio), length, self.num_eval)
        crops = np.stack([audio[s:s + length] for s in starts])
        return torch.from_numpy(crops), index
