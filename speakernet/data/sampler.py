"""The speaker-balanced sampler: every batch of an epoch planned from (seed, epoch) alone:
files, frames per view, crop offsets, speed and augmentation, the same for any number of
workers, ranks or a resumed run. Speed perturbation's options live here (the sampler draws
the speeds)."""
import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from speakernet.core.errors import UserError

log = logging.getLogger(__name__)


def add_arguments(parser):
    """Speed perturbation's options (the sampler draws the speeds)."""
    g = parser.add_argument_group("speed perturbation (--speed_perturb), in the loader")
    g.add_argument("--speed_perturb", action=argparse.BooleanOptionalAction, default=False,
                   help="play each group of views at one of --speed_factors (pitch and duration "
                        "change together); each speed is a new speaker, so classifier objectives "
                        "need --nClasses = factors x speakers")
    g.add_argument("--speed_factors", type=float, nargs="+", default=[1.0, 0.9, 1.1],
                   help="speeds drawn with equal probability; the i-th (from 0) maps speaker s "
                        "to label s + i x speakers (wespeaker's and 3D-Speaker's recipes)")


def speed_factors(options):
    """The speeds of --speed_perturb, or (1.0,) without it; rejects unusable values."""
    if not getattr(options, "speed_perturb", False):
        return (1.0,)
    factors = tuple(float(f) for f in options.speed_factors)
    if any(not 0.5 <= f <= 2.0 for f in factors) or len(set(factors)) != len(factors):
        raise UserError(f"--speed_factors {' '.join(map(str, factors))}: give distinct speeds "
                        f"between 0.5 and 2.0 (e.g. 1.0 0.9 1.1)")
    return factors


def check_speed_classes(num_classes, num_speakers, factors, list_path, classifier=True):
    """Classifier heads need one class per (speaker, speed): say what --nClasses must be."""
    needed = num_speakers * len(factors)
    if not classifier:
        return
    if len(factors) > 1 and num_classes < needed:
        raise UserError(f"--nClasses {num_classes} is too small for --speed_perturb: each of the "
                        f"{len(factors)} speeds is a new speaker, {len(factors)} x {num_speakers} "
                        f"speakers in {list_path} = {needed}; set --nClasses {needed} "
                        f"(or train without --speed_perturb)")


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
                 speeds=(1.0,), num_speakers=0, max_frames=200):
        self.labels = np.asarray(labels)
        self.groups_per_batch = groups_per_batch
        self.views = views
        self.max_seg_per_spk = max_seg_per_spk
        self.seed = seed
        self.group_by_utterance = group_by_utterance
        # view_frames(epoch, rng) -> frames per view, or None for max_frames (--max_frames) each.
        self.view_frames = view_frames or (lambda epoch, rng: None)
        self.max_frames = max_frames
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
        self._skip = 0                # batches of this rank that this epoch skips (a resume)
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
            needed = self.groups_per_batch * self.world_size
            if usable < needed and (usable == 0 or needed <= len(counts)):     # not a batch_size problem
                self._too_few_utterances(usable, len(counts), int(counts.max(initial=0)))
        if usable < self.groups_per_batch * self.world_size:
            raise UserError(f"--batch_size {self.groups_per_batch} (x {self.world_size} ranks) is "
                             f"larger than the {usable} {what} in the training list; lower --batch_size")

    def _too_few_utterances(self, usable, speakers, most):
        """No speaker, or fewer than a batch needs while all of them would fill it, has
        --nPerSpeaker utterances."""
        if usable == 0:
            raise UserError(f"no speaker has enough utterances for --nPerSpeaker {self.views}: the most "
                            f"any of the {speakers} speakers has is {most}; lower --nPerSpeaker to at most {most}")
        raise UserError(f"only {usable} of the {speakers} speakers have at least --nPerSpeaker {self.views} "
                        f"utterances (the most any has is {most}), fewer than --batch_size "
                        f"{self.groups_per_batch} (x {self.world_size} ranks); lower --nPerSpeaker "
                        f"(or --batch_size)")

    def set_epoch(self, epoch, skip_batches=0):
        """Plan `epoch`; its iterations start after `skip_batches` of this rank's batches
        (resuming from a mid-epoch checkpoint). Kept until the next set_epoch: the loader may
        call __iter__ more than once for one epoch (a new multi-worker iterator does)."""
        self.epoch = epoch
        self._skip = skip_batches

    def plan(self, epoch):
        """All batches of `epoch` (for every rank): an EpochPlan, whose batches are lists of
        CropRequest."""
        rng = np.random.default_rng([self.seed, epoch])
        allowed = None
        if self.utterance_subset is not None:
            subset = self.utterance_subset(epoch, len(self.labels))
            if subset is not None:
                allowed = np.zeros(len(self.labels), dtype=bool)
                allowed[np.asarray(subset, dtype=np.int64)] = True
        groups, keys = self._groups(rng, allowed)
        batches = self._pack(keys)
        batches = batches[:len(batches) // self.world_size * self.world_size]
        if not len(batches):
            raise UserError(f"epoch {epoch} has no complete batch of {self.groups_per_batch} groups "
                            f"(x {self.world_size} ranks); lower --batch_size")
        planner = self.augment_planner
        fraction = self.augment_fraction(epoch) if self.augment_fraction is not None else None
        if planner is not None and fraction is not None:
            planner.fraction = float(fraction)
        requests = self._draw(epoch, rng, groups[batches])
        per_group = 1 if self.group_by_utterance else self.views
        self.stats = {"utterances": len(self.labels), "eligible": len(groups) * per_group,
                      "used": len(batches) * self.groups_per_batch * per_group,
                      "batches": len(batches)}
        self._planned = (epoch, requests)
        return requests

    def _draw(self, epoch, rng, files):
        """The random part of each batch of `files` (batches x groups x views), in the order
        the draws have always been made: per batch its frames and speeds, then per group its
        crop starts and (when augmenting) one AugmentSpec per view."""
        count, size = files.shape[:2]
        starts = np.empty(files.shape, dtype=np.float64)
        speed_index = np.zeros((count, size), dtype=np.int64)
        frames, augment = [], [] if self.augment_planner else None
        for b in range(count):
            drawn = self.view_frames(epoch, rng)
            drawn = (self.max_frames,) * self.views if drawn is None else tuple(int(f) for f in drawn)
            if len(drawn) != self.views:
                raise ValueError(f"objective asked for {len(drawn)} view lengths, sampler draws {self.views}")
            frames.append(drawn)
            if len(self.speeds) > 1:           # drawn only when perturbing: plans without stay as they were
                speed_index[b] = rng.integers(len(self.speeds), size=size)
            if augment is None:                # one call draws what a call per group would
                starts[b] = rng.random((size, self.views))
                continue
            specs = []
            for g in range(size):
                starts[b, g] = rng.random(self.views)
                specs.append(tuple(self.augment_planner.draw(rng) for _ in range(self.views)))
            augment.append(specs)
        labels = self.labels[files[:, :, 0]].astype(np.int64)
        labels = np.where(labels >= 0, labels + speed_index * self.num_speakers, labels)
        return EpochPlan(files, starts, labels, np.asarray(self.speeds, dtype=np.float64)[speed_index],
                         frames, augment)

    def _groups(self, rng, allowed=None):
        """-> (groups x views file indices, key per group): the key is the speaker, or the
        utterance itself when grouping by utterance."""
        candidates = np.arange(len(self.labels)) if allowed is None else np.flatnonzero(allowed)
        if self.group_by_utterance:
            order = rng.permutation(candidates)
            return np.repeat(order[:, None], self.views, axis=1), order
        by_speaker = candidates[np.argsort(self.labels[candidates], kind="stable")]
        speakers, starts = np.unique(self.labels[by_speaker], return_index=True)
        ends = np.append(starts[1:], len(by_speaker)).astype(np.int64)
        counts = np.minimum(ends - starts, self.max_seg_per_spk) // self.views * self.views
        chosen = np.empty(int(counts.sum()), dtype=np.int64)
        position = 0
        # One permutation per speaker, every speaker (even one with too few utterances), so
        # that the generator advances as it always has.
        for begin, end, count in zip(starts.tolist(), ends.tolist(), counts.tolist()):
            chosen[position:position + count] = rng.permutation(by_speaker[begin:end])[:count]
            position += count
        groups = chosen.reshape(-1, self.views)
        keys = np.repeat(speakers, counts // self.views)
        order = rng.permutation(len(groups))
        return groups[order], keys[order]

    def _pack(self, keys):
        """First-fit packing of groups into batches with distinct keys, in creation order ->
        full batches x groups_per_batch indices of groups (in the order they were placed)."""
        size = self.groups_per_batch
        _, key_ids = np.unique(keys, return_inverse=True)
        slots = np.array(first_fit_slots(key_ids.ravel().tolist(), size), dtype=np.int64)
        if not len(slots):
            return np.empty((0, size), dtype=np.int64)
        in_slot_order = np.argsort(slots, kind="stable")
        full = np.bincount(slots)[slots[in_slot_order]] == size
        return in_slot_order[full].reshape(-1, size)

    def _epoch_plan(self):
        if self._planned[0] != self.epoch:
            self.plan(self.epoch)
        return self._planned[1]

    def __iter__(self):
        return iter(self._epoch_plan()[self.rank::self.world_size][self._skip:])

    def __len__(self):
        return len(self._epoch_plan()) // self.world_size - self._skip

    def planned_steps(self, epoch):
        """Batches (optimizer steps) `epoch` plans for each rank, skipped ones included."""
        if self._planned[0] != epoch:
            self.plan(epoch)
        return len(self._planned[1]) // self.world_size


def first_fit_slots(keys, size):
    """The batch of each group when groups (given by their keys, small ints) are placed in
    turn into the first batch with room after the one their key's previous group went to
    (earlier batches are full or already hold the key), new batches opened as needed.

    Batches before `front` are all full, so most groups go straight to `front`; the others
    skip full batches through path-compressed pointers: near-linear on a million groups."""
    slots = [0] * len(keys)
    last = [-1] * (max(keys) + 1 if keys else 0)
    fill, skip = [], []                  # groups per batch; pointer past a full batch
    front = opened = 0
    for i, key in enumerate(keys):
        slot = last[key] + 1
        if slot <= front:
            slot = front
        elif slot < opened and fill[slot] == size:
            passed = []
            while slot < opened and fill[slot] == size:
                passed.append(slot)
                slot = skip[slot]
            for j in passed:
                skip[j] = slot
        if slot == opened:
            fill.append(1)
            skip.append(slot + 1)
            opened += 1
        else:
            fill[slot] += 1
        slots[i] = last[key] = slot
        if slot == front and fill[slot] == size:
            front += 1
            while front < opened and fill[front] == size:
                front += 1
    return slots


class EpochPlan(Sequence):
    """An epoch's batches, kept as arrays (a million utterances plan in well under a second and
    stay small in memory); each batch is built as a list of CropRequest when it is read.
    Slicing gives the plan of those batches (ranks, a resumed epoch's remainder)."""

    def __init__(self, files, starts, labels, speeds, frames, augment=None, batches=None):
        self.files, self.starts, self.labels, self.speeds = files, starts, labels, speeds
        self.frames, self.augment = frames, augment
        self.batches = np.arange(len(files)) if batches is None else batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return EpochPlan(self.files, self.starts, self.labels, self.speeds, self.frames,
                             self.augment, self.batches[index])
        return self._batch(int(self.batches[index]))

    def __iter__(self):
        return (self._batch(b) for b in self.batches.tolist())

    def __eq__(self, other):
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None

    def __repr__(self):
        return f"EpochPlan({len(self)} batches)"

    def _batch(self, b):
        frames = self.frames[b]
        augment = self.augment[b] if self.augment is not None else [()] * len(self.files[b])
        return [CropRequest(files=tuple(files), frames=frames, starts=tuple(starts), label=label,
                            augment=specs, speed=speed)
                for files, starts, label, speed, specs in zip(
                    self.files[b].tolist(), self.starts[b].tolist(), self.labels[b].tolist(),
                    self.speeds[b].tolist(), augment)]


