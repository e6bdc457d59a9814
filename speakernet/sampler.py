"""The speaker-balanced sampler: it plans every batch of an epoch from the seed and the epoch.

A plan is a list of batches of CropRequest (files, view lengths, crop positions, augmentation
and speed per group); the loader workers only read what it names, so any number of workers,
ranks or a resumed run sees the same epoch.
"""
import argparse
import logging
from dataclasses import dataclass

import numpy as np

from speakernet.errors import UserError

log = logging.getLogger(__name__)


def add_arguments(parser):
    g = parser.add_argument_group("speed perturbation (--speed_perturb), in the loader")
    g.add_argument("--speed_perturb", action=argparse.BooleanOptionalAction, default=False,
                   help="play each group of views at one of --speed_factors (pitch and duration "
                        "change together); each speed is a new speaker, so classifier objectives "
                        "need --nClasses = factors x speakers")
    g.add_argument("--speed_factors", type=float, nargs="+", default=[1.0, 0.9, 1.1],
                   help="speeds drawn with equal probability; the i-th (from 0) maps speaker s "
                        "to label s + i x speakers (wespeaker's and 3D-Speaker's recipes)")


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
        if usable < self.groups_per_batch * self.world_size:
            raise UserError(f"--batch_size {self.groups_per_batch} (x {self.world_size} ranks) is "
                             f"larger than the {usable} {what} in the training list; lower --batch_size")

    def set_epoch(self, epoch, skip_batches=0):
        """Plan `epoch`; its iterations start after `skip_batches` of this rank's batches
        (resuming from a mid-epoch checkpoint). Kept until the next set_epoch: the loader may
        call __iter__ more than once for one epoch (a new multi-worker iterator does)."""
        self.epoch = epoch
        self._skip = skip_batches

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
        fraction = self.augment_fraction(epoch) if self.augment_fraction is not None else None
        if planner is not None and fraction is not None:
            planner.fraction = float(fraction)
        requests = []
        for batch in batches:
            frames = self.view_frames(epoch, rng)
            frames = (self.max_frames,) * self.views if frames is None else tuple(int(f) for f in frames)
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
        return iter(self._epoch_plan()[self.rank::self.world_size][self._skip:])

    def __len__(self):
        return len(self._epoch_plan()) // self.world_size - self._skip


# ---------------------------------------------------------------------------- datasets
